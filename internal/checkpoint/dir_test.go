package checkpoint

import (
	"encoding/json"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/mambabyte/mambabyte/internal/model"
)

// tinyConfig is a small model: D 16, E 32, N 16, K 4, R 1, L 2.
func tinyConfig(norm model.NormKind, tied bool) model.Config {
	c := model.DefaultConfig()
	c.DModel, c.NLayer, c.Norm, c.TieEmbeddings = 16, 2, norm, tied
	return c
}

// randomTensors fills every tensor of cfg with deterministic values.
func randomTensors(cfg model.Config, seed uint64) map[string][]float32 {
	r := rand.New(rand.NewPCG(seed, 1))
	m := map[string][]float32{}
	for _, s := range cfg.TensorSpecs() {
		d := make([]float32, s.Size())
		for i := range d {
			d[i] = float32(r.NormFloat64())
		}
		m[s.Name] = d
	}
	return m
}

func checkSame(t *testing.T, got, want map[string][]float32) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("got %d tensors, want %d", len(got), len(want))
	}
	for name, w := range want {
		if !slices.Equal(got[name], w) {
			t.Errorf("tensor %q differs", name)
		}
	}
}

func TestSaveLoadRoundTrip(t *testing.T) {
	ln := tinyConfig(model.LayerNorm, false)
	ln.PadVocabTo = 8
	rms := tinyConfig(model.RMSNorm, true)
	rms.DTRank, rms.ConvBias, rms.DState, rms.DConv, rms.NormEps = 3, false, 8, 3, 1e-6
	for _, cfg := range []model.Config{ln, rms} {
		t.Run(string(cfg.Norm), func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "ckpt")
			want := randomTensors(cfg, 7)
			if err := Save(dir, cfg, want); err != nil {
				t.Fatal(err)
			}
			gotCfg, got, format, err := Load(dir)
			if err != nil {
				t.Fatal(err)
			}
			if format != FormatNative {
				t.Errorf("format = %q, want %q", format, FormatNative)
			}
			if !reflect.DeepEqual(gotCfg, cfg) {
				t.Errorf("config = %+v\nwant %+v", gotCfg, cfg)
			}
			checkSame(t, got, want)

			// The config is readable by HF transformers: its field names.
			var m map[string]any
			b, _ := os.ReadFile(filepath.Join(dir, ConfigFile))
			if err := json.Unmarshal(b, &m); err != nil {
				t.Fatal(err)
			}
			for k, v := range map[string]any{
				"model_type": "mamba", "hidden_size": 16.0, "num_hidden_layers": 2.0, "state_size": float64(cfg.DState),
				"conv_kernel": float64(cfg.DConv), "norm_type": string(cfg.Norm), "mambabyte_version": 1.0,
				"tie_word_embeddings": cfg.TieEmbeddings, "use_conv_bias": cfg.ConvBias, "use_bias": false,
			} {
				if m[k] != v {
					t.Errorf("config.json %s = %v, want %v", k, m[k], v)
				}
			}
			if a, _ := m["architectures"].([]any); len(a) != 1 || a[0] != "MambaForCausalLM" {
				t.Errorf("architectures = %v", m["architectures"])
			}
			// Saving again over the old checkpoint works and leaves no
			// temporary files.
			if err := Save(dir, cfg, want); err != nil {
				t.Fatal(err)
			}
			ents, _ := os.ReadDir(dir)
			if len(ents) != 2 {
				t.Errorf("directory holds %d entries, want 2", len(ents))
			}
		})
	}
}

func TestSaveRejects(t *testing.T) {
	cfg := tinyConfig(model.LayerNorm, true)
	short := randomTensors(cfg, 1)
	short["backbone.layers.1.mixer.D"] = short["backbone.layers.1.mixer.D"][:3]
	missing := randomTensors(cfg, 1)
	delete(missing, "backbone.norm_f.bias")
	extra := randomTensors(cfg, 1)
	extra["lm_head.weight"] = make([]float32, 256*16)
	bad := cfg
	bad.DState = 0
	tests := []struct {
		name    string
		cfg     model.Config
		tensors map[string][]float32
		want    string
	}{
		{"short", cfg, short, `tensor "backbone.layers.1.mixer.D" has 3 values, shape [32] needs 32`},
		{"missing", cfg, missing, `tensor "backbone.norm_f.bias" is missing`},
		{"extra", cfg, extra, `tensor "lm_head.weight" is not part of the model`},
		{"bad config", bad, randomTensors(cfg, 1), "d_state must be positive"},
	}
	for _, tt := range tests {
		dir := filepath.Join(t.TempDir(), "out")
		err := Save(dir, tt.cfg, tt.tensors)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: err = %v, want %q", tt.name, err, tt.want)
		}
		if _, err := os.Stat(dir); !os.IsNotExist(err) {
			t.Errorf("%s: directory was created", tt.name)
		}
	}
}

// mambaSSMState turns canonical tensors into a mamba_ssm state dict: the
// embedding under its mamba_ssm name and, when tied, lm_head.weight sharing
// the embedding's storage (as torch.save writes a tied model).
func mambaSSMState(cfg model.Config, tensors map[string][]float32) ([]pickleTensor, map[string][]byte) {
	var ts []pickleTensor
	storages := map[string][]byte{}
	for i, s := range cfg.TensorSpecs() {
		key := strconv.Itoa(i)
		name := s.Name
		if name == model.NameEmbed {
			name = mambaSSMEmbed
		}
		shape := make([]int64, len(s.Shape))
		for j, d := range s.Shape {
			shape[j] = int64(d)
		}
		ts = append(ts, pickleTensor{name: name, storage: "FloatStorage", key: key, numel: int64(s.Size()), shape: shape})
		storages[key] = f32Bytes(tensors[s.Name])
	}
	if cfg.TieEmbeddings {
		e := ts[0]
		e.name = model.NameHead
		ts = append(ts, e)
	}
	return ts, storages
}

func writeMambaSSMDir(t *testing.T, dir string, cfgJSON string, cfg model.Config, tensors map[string][]float32) {
	t.Helper()
	ts, storages := mambaSSMState(cfg, tensors)
	w := newPickleWriter(2)
	w.stateDict(ts)
	writeFile(t, dir, ConfigFile, []byte(cfgJSON))
	writeFile(t, dir, TorchFile, torchZip(t, "pytorch_model", w.stop(), storages, "little"))
}

// writeSafetensorsDir writes tensors (with their canonical shapes, conv1d
// as (E,K) if convEK) and a config to dir.
func writeSafetensorsDir(t *testing.T, dir, cfgJSON string, cfg model.Config, tensors map[string][]float32, convEK bool, rename map[string]string) {
	t.Helper()
	var ts []*Tensor
	for _, s := range cfg.TensorSpecs() {
		shape := s.Shape
		if convEK && strings.HasSuffix(s.Name, model.SufConvW) {
			shape = []int{s.Shape[0], s.Shape[2]}
		}
		name := s.Name
		if r, ok := rename[name]; ok {
			name = r
		}
		ts = append(ts, &Tensor{Name: name, Shape: shape, Data: tensors[s.Name]})
	}
	writeFile(t, dir, ConfigFile, []byte(cfgJSON))
	if err := WriteSafetensors(filepath.Join(dir, SafetensorsFile), ts, nil); err != nil {
		t.Fatal(err)
	}
}

func TestLoadMambaSSM(t *testing.T) {
	tests := []struct {
		name    string
		json    string
		want    model.Config
		useST   bool
		convEK  bool
		vocabIn int // rows actually stored
	}{
		{
			name: "released MambaByte layout (LayerNorm, tied, pytorch_model.bin)",
			json: `{"d_model": 16, "n_layer": 2, "vocab_size": 256, "ssm_cfg": {}, "rms_norm": false,
				"residual_in_fp32": true, "fused_add_norm": true, "pad_vocab_size_multiple": 8}`,
			want: func() model.Config { c := tinyConfig(model.LayerNorm, true); c.PadVocabTo = 8; return c }(),
		},
		{
			name: "RMSNorm by default, untied, explicit ssm_cfg, padded vocab",
			json: `{"d_model": 16, "n_layer": 2, "vocab_size": 250, "pad_vocab_size_multiple": 16, "tie_embeddings": false,
				"ssm_cfg": {"d_state": 8, "d_conv": 3, "expand": 2, "dt_rank": 2, "conv_bias": false, "dt_min": 0.002}}`,
			want: func() model.Config {
				c := tinyConfig(model.RMSNorm, false)
				c.PadVocabTo, c.DState, c.DConv, c.DTRank, c.ConvBias, c.DtMin = 16, 8, 3, 2, false, 0.002
				return c
			}(),
		},
		{
			name:   "safetensors with (E,K) conv weights",
			json:   `{"d_model": 16, "n_layer": 2, "vocab_size": 256, "ssm_cfg": {"dt_rank": "auto"}}`,
			want:   func() model.Config { c := tinyConfig(model.RMSNorm, true); c.PadVocabTo = 8; return c }(),
			useST:  true,
			convEK: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			want := randomTensors(tt.want, 3)
			if tt.useST {
				writeSafetensorsDir(t, dir, tt.json, tt.want, want, tt.convEK, map[string]string{model.NameEmbed: mambaSSMEmbed})
			} else {
				writeMambaSSMDir(t, dir, tt.json, tt.want, want)
			}
			cfg, got, format, err := Load(dir)
			if err != nil {
				t.Fatal(err)
			}
			if format != FormatMambaSSM {
				t.Errorf("format = %q", format)
			}
			if !reflect.DeepEqual(cfg, tt.want) {
				t.Errorf("config = %+v\nwant %+v", cfg, tt.want)
			}
			checkSame(t, got, want)
		})
	}
}

func TestLoadHF(t *testing.T) {
	cfg := tinyConfig(model.RMSNorm, true)
	js := `{"architectures": ["MambaForCausalLM"], "model_type": "mamba", "hidden_size": 16, "num_hidden_layers": 2,
		"vocab_size": 256, "intermediate_size": 32, "time_step_rank": 1, "state_size": 16, "expand": 2, "conv_kernel": 4,
		"use_bias": false, "use_conv_bias": true, "layer_norm_epsilon": 1e-05, "initializer_range": 0.1, "hidden_act": "silu",
		"bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 0, "torch_dtype": "float32"}`
	dir := t.TempDir()
	want := randomTensors(cfg, 5)
	// HF state dicts of tied models may still carry lm_head.weight.
	withHead := maps(want)
	withHead[model.NameHead] = want[model.NameEmbed]
	c2 := cfg
	c2.TieEmbeddings = false
	writeSafetensorsDir(t, dir, js, c2, withHead, true, nil)
	got, gotT, format, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	cfg.DTRank = 1
	if format != FormatHF || !reflect.DeepEqual(got, cfg) {
		t.Errorf("got %q %+v\nwant %q %+v", format, got, FormatHF, cfg)
	}
	checkSame(t, gotT, want)
}

func maps(m map[string][]float32) map[string][]float32 {
	c := map[string][]float32{}
	for k, v := range m {
		c[k] = v
	}
	return c
}

func TestLoadErrors(t *testing.T) {
	ssmJSON := `{"d_model": 16, "n_layer": 2, "vocab_size": 256, "rms_norm": false, "ssm_cfg": {}}`
	ln := tinyConfig(model.LayerNorm, true)
	ln250 := ln
	ln250.VocabSize = 250
	hfJSON := `{"model_type": "mamba", "hidden_size": 16, "num_hidden_layers": 2, "vocab_size": 256}`
	rms := tinyConfig(model.RMSNorm, true)
	type mod func(t *testing.T, dir string)
	ssmDir := func(json string, edit func(map[string][]float32)) mod {
		return func(t *testing.T, dir string) {
			ts := randomTensors(ln, 1)
			if edit != nil {
				edit(ts)
			}
			ts2, storages := mambaSSMState(ln, ts)
			// Drop entries deleted by edit, keep added ones out of
			// TensorSpecs order.
			var kept []pickleTensor
			for _, x := range ts2 {
				name := x.name
				if name == mambaSSMEmbed {
					name = model.NameEmbed
				}
				if _, ok := ts[name]; ok || name == model.NameHead {
					x.numel = int64(len(ts[name]))
					if name == model.NameHead {
						x.numel = int64(len(ts[model.NameEmbed]))
					}
					kept = append(kept, x)
				}
			}
			w := newPickleWriter(2)
			w.stateDict(kept)
			writeFile(t, dir, ConfigFile, []byte(json))
			writeFile(t, dir, TorchFile, torchZip(t, "archive", w.stop(), storages, "little"))
		}
	}
	// stDir writes a safetensors checkpoint of the tensors of cfg after
	// edit, which may change shapes and add or drop tensors.
	stDir := func(json string, cfg model.Config, edit func([]*Tensor) []*Tensor) mod {
		return func(t *testing.T, dir string) {
			ts := randomTensors(cfg, 1)
			var list []*Tensor
			for _, s := range cfg.TensorSpecs() {
				list = append(list, &Tensor{Name: s.Name, Shape: s.Shape, Data: ts[s.Name]})
			}
			if edit != nil {
				list = edit(list)
			}
			writeFile(t, dir, ConfigFile, []byte(json))
			if err := WriteSafetensors(filepath.Join(dir, SafetensorsFile), list, nil); err != nil {
				t.Fatal(err)
			}
		}
	}
	setShape := func(name string, shape ...int) func([]*Tensor) []*Tensor {
		return func(ts []*Tensor) []*Tensor {
			for _, x := range ts {
				if x.Name == name {
					x.Shape = shape
					x.Data = make([]float32, numel(shape))
				}
			}
			return ts
		}
	}
	add := func(name string) func([]*Tensor) []*Tensor {
		return func(ts []*Tensor) []*Tensor {
			return append(ts, &Tensor{Name: name, Shape: []int{16}, Data: make([]float32, 16)})
		}
	}
	tests := []struct {
		name  string
		setup mod
		want  string // after "DIR/"
	}{
		{"missing tensor", ssmDir(ssmJSON, func(m map[string][]float32) { delete(m, "backbone.layers.1.mixer.A_log") }),
			`pytorch_model.bin: tensor "backbone.layers.1.mixer.A_log" is missing`},
		{"wrong shape", stDir(hfJSON, rms, setShape("backbone.layers.0.mixer.A_log", 32, 8)),
			`model.safetensors: tensor "backbone.layers.0.mixer.A_log" has shape [32 8], config.json's state_size=16 wants [32 16]`},
		{"wrong shape mamba_ssm", stDir(ssmJSON, ln, setShape("backbone.layers.0.mixer.A_log", 32, 8)),
			`model.safetensors: tensor "backbone.layers.0.mixer.A_log" has shape [32 8], config.json's d_state=16 wants [32 16]`},
		{"d_state contradicts weights", stDir(strings.Replace(ssmJSON, `"ssm_cfg": {}`, `"ssm_cfg": {"d_state": 8}`, 1), ln, nil),
			`model.safetensors: tensor "backbone.layers.0.mixer.x_proj.weight" has shape [33 32], config.json's dt_rank=auto (1) and d_state=8 want [17 32]`},
		{"d_model contradicts weights", stDir(strings.Replace(hfJSON, `"hidden_size": 16`, `"hidden_size": 8`, 1), rms, nil),
			`model.safetensors: tensor "backbone.embeddings.weight" has shape [256 16], config.json's hidden_size=8 wants [256 8]`},
		{"expand contradicts weights", stDir(strings.Replace(hfJSON, `"hidden_size": 16`, `"hidden_size": 16, "expand": 3`, 1), rms, nil),
			`tensor "backbone.layers.0.mixer.in_proj.weight" has shape [64 16], config.json's expand=3 and hidden_size=16 want [96 16]`},
		{"too many layers in config", stDir(strings.Replace(ssmJSON, `"n_layer": 2`, `"n_layer": 3`, 1), ln, nil),
			`model.safetensors: tensor "backbone.layers.2.norm.weight" is missing: config.json's n_layer=3 but the weights have 2 layers`},
		{"too few layers in config", stDir(strings.Replace(ssmJSON, `"n_layer": 2`, `"n_layer": 1`, 1), ln, nil),
			`model.safetensors: tensor "backbone.layers.1.mixer.A_log" is not part of the model: config.json's n_layer=1 (and 10 more unknown tensors)`},
		{"unknown tensor", stDir(hfJSON, rms, add("backbone.extra.weight")),
			`model.safetensors: tensor "backbone.extra.weight" is not part of the model`},
		{"rms_norm contradicts weights", stDir(strings.Replace(ssmJSON, `"rms_norm": false`, `"rms_norm": true`, 1), ln, nil),
			`model.safetensors: tensor "backbone.layers.0.norm.bias" is not part of the model: config.json's rms_norm=true has no biases (and 2 more unknown tensors)`},
		{"layernorm config, rms weights", stDir(ssmJSON, rms, nil),
			`model.safetensors: tensor "backbone.layers.0.norm.bias" is missing: config.json's rms_norm=false wants LayerNorm biases`},
		{"untied without head", stDir(strings.Replace(hfJSON, `"vocab_size": 256`, `"vocab_size": 256, "tie_word_embeddings": false`, 1), rms, nil),
			`model.safetensors: tensor "lm_head.weight" is missing: config.json's tie_word_embeddings=false wants a separate output head`},
		{"unpadded vocab", stDir(strings.Replace(ssmJSON, `"vocab_size": 256`, `"vocab_size": 250`, 1), ln250, nil),
			`model.safetensors: tensor "backbone.embeddings.weight" has shape [250 16], config.json's vocab_size=250 padded to a multiple of pad_vocab_size_multiple=8 (256) wants [256 16]`},
		{"use_bias", stDir(strings.Replace(hfJSON, `"vocab_size": 256`, `"vocab_size": 256, "use_bias": true`, 1), rms, nil),
			`config.json: "use_bias": true (biases on in_proj and out_proj) is not supported`},
		{"mamba2", stDir(`{"model_type": "mamba2", "hidden_size": 16}`, rms, nil),
			`config.json: model_type "mamba2" is not supported`},
		{"bad json", stDir(`{"hidden_size": 16,`, rms, nil), `config.json: not a JSON object`},
		{"wrong type", stDir(strings.Replace(hfJSON, `"hidden_size": 16`, `"hidden_size": "16"`, 1), rms, nil),
			`config.json: field "hidden_size" must be an integer, got "16"`},
		{"no weights", func(t *testing.T, dir string) { writeFile(t, dir, ConfigFile, []byte(hfJSON)) },
			`: no model.safetensors or pytorch_model.bin`},
		{"no config", func(t *testing.T, dir string) {}, `config.json: no such file`},
		{"hostile weights", func(t *testing.T, dir string) {
			writeFile(t, dir, ConfigFile, []byte(ssmJSON))
			writeFile(t, dir, TorchFile, torchZip(t, "archive", hostilePickles()[0].pkl, nil, "little"))
		}, `pytorch_model.bin: pickle names global "os.system"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			tt.setup(t, dir)
			_, _, _, err := Load(dir)
			if err == nil {
				t.Fatalf("no error, want %q", tt.want)
			}
			if !strings.Contains(err.Error(), tt.want) || !strings.HasPrefix(err.Error(), dir) {
				t.Errorf("err = %q\nwant it to start with %s and contain %q", err, dir, tt.want)
			}
		})
	}
}

func TestParseConfig(t *testing.T) {
	tests := []struct {
		json   string
		format Format
		check  func(model.Config) bool
	}{
		{`{"hidden_size": 64, "num_hidden_layers": 1, "vocab_size": 256}`, FormatHF,
			func(c model.Config) bool {
				return c.Norm == model.RMSNorm && c.DState == 16 && c.DConv == 4 && c.Expand == 2 && c.NormEps == 1e-5 && c.ConvBias && c.TieEmbeddings && c.InitStd == 0.02
			}},
		{`{"hidden_size": 64, "num_hidden_layers": 1, "vocab_size": 256, "time_step_rank": "auto", "expand": 2.0, "norm_type": "layernorm", "mambabyte_version": 1, "initializer_range": 0.05}`, FormatNative,
			func(c model.Config) bool { return c.Norm == model.LayerNorm && c.DTRank == 0 && c.InitStd == 0.05 }},
		{`{"d_model": 64, "n_layer": 1, "vocab_size": 256}`, FormatMambaSSM,
			func(c model.Config) bool {
				return c.Norm == model.RMSNorm && c.TieEmbeddings && c.DState == 16 && c.Rank() == 4 && c.PadVocabTo == 8
			}},
		{`{"d_model": 64, "n_layer": 1, "vocab_size": 256, "model_type": "mamba"}`, FormatMambaSSM,
			func(c model.Config) bool { return c.DModel == 64 }},
		{`{"model_type": "mamba"}`, FormatHF, nil},
		{`{"d_model": 64, "n_layer": 1, "vocab_size": 50277, "ssm_cfg": null}`, FormatMambaSSM,
			func(c model.Config) bool { return c.VocabSize == 50280 }},
	}
	for _, tt := range tests {
		c, f, err := ParseConfig([]byte(tt.json))
		if tt.check == nil { // detected, but incomplete
			if err == nil || !strings.Contains(err.Error(), `field "hidden_size" is missing`) {
				t.Errorf("ParseConfig(%s): err = %v", tt.json, err)
			}
			continue
		}
		if err != nil || f != tt.format || !tt.check(c) {
			t.Errorf("ParseConfig(%s) = %+v %q %v", tt.json, c, f, err)
		}
	}
	bad := []struct{ json, want string }{
		{`[]`, "not a JSON object"},
		{`null`, "not a JSON object"},
		{`{}`, "neither an HF Mamba config"},
		{`{"hidden_size": 8, "d_model": 8}`, "both"},
		{`{"hidden_size": 8, "num_hidden_layers": 1}`, `field "vocab_size" is missing`},
		{`{"hidden_size": 8, "num_hidden_layers": 1, "vocab_size": 256, "time_step_rank": "big"}`, `"time_step_rank" must be "auto" or an integer`},
		{`{"hidden_size": 8, "num_hidden_layers": 1, "vocab_size": 256, "time_step_rank": -1}`, `must be "auto" or a positive integer`},
		{`{"hidden_size": 8, "num_hidden_layers": 1, "vocab_size": 256, "norm_type": "batchnorm"}`, `norm_type "batchnorm"`},
		{`{"hidden_size": 8, "num_hidden_layers": 1, "vocab_size": 256, "intermediate_size": 7}`, "intermediate_size=7 contradicts"},
		{`{"hidden_size": 8, "num_hidden_layers": 1, "vocab_size": 256, "hidden_act": "gelu"}`, `hidden_act "gelu"`},
		{`{"hidden_size": 8, "num_hidden_layers": 1, "vocab_size": 256, "mambabyte_version": 2}`, "mambabyte_version 2"},
		{`{"hidden_size": 8, "num_hidden_layers": 100000, "vocab_size": 256}`, "layers is beyond"},
		{`{"hidden_size": 1000000, "num_hidden_layers": 64, "vocab_size": 256}`, "parameters is beyond"},
		{`{"hidden_size": 0, "num_hidden_layers": 1, "vocab_size": 256}`, "d_model must be positive"},
		{`{"hidden_size": 1e30, "num_hidden_layers": 1, "vocab_size": 256}`, "must be an integer"},
		{`{"d_model": 8, "n_layer": 1, "vocab_size": 256, "ssm_cfg": {"layer": "Mamba2"}}`, `ssm_cfg.layer "Mamba2"`},
		{`{"d_model": 8, "n_layer": 1, "vocab_size": 256, "ssm_cfg": {"bias": true}}`, "ssm_cfg.bias=true"},
		{`{"d_model": 8, "n_layer": 1, "vocab_size": 256, "ssm_cfg": {"d_state": "x"}}`, `field "ssm_cfg.d_state" must be an integer`},
		{`{"d_model": 8, "n_layer": 1, "vocab_size": 256, "ssm_cfg": 3}`, "ssm_cfg must be an object"},
		{`{"d_model": 8, "n_layer": 1, "vocab_size": 256, "d_intermediate": 32}`, "d_intermediate=32"},
		{`{"d_model": 8, "n_layer": 1, "vocab_size": 256, "attn_layer_idx": [0]}`, "attention layers"},
		{`{"d_model": 8, "n_layer": 1, "vocab_size": 256, "pad_vocab_size_multiple": 0}`, "pad_vocab_size_multiple=0"},
		{`{"d_model": 8, "n_layer": 1, "vocab_size": 256, "rms_norm": "yes"}`, `"rms_norm" must be true or false`},
		{`{"d_model": 8, "n_layer": 1, "vocab_size": 256} trailing`, "trailing data"},
	}
	for _, tt := range bad {
		_, _, err := ParseConfig([]byte(tt.json))
		if err == nil || !strings.Contains(err.Error(), tt.want) || !strings.HasPrefix(err.Error(), "config.json: ") {
			t.Errorf("ParseConfig(%s): err = %v, want %q", tt.json, err, tt.want)
		}
	}
}

func FuzzParseConfig(f *testing.F) {
	f.Add([]byte(`{"hidden_size": 64, "num_hidden_layers": 1, "vocab_size": 256}`))
	f.Add([]byte(`{"model_type": "mamba", "hidden_size": 16, "num_hidden_layers": 2, "vocab_size": 256, "time_step_rank": "auto", "norm_type": "layernorm", "mambabyte_version": 1, "tie_word_embeddings": false, "use_conv_bias": false, "state_size": 8, "conv_kernel": 3, "expand": 2, "layer_norm_epsilon": 1e-6}`))
	f.Add([]byte(`{"d_model": 1024, "n_layer": 53, "vocab_size": 256, "ssm_cfg": {"d_state": 16, "d_conv": 4, "expand": 2, "dt_rank": "auto"}, "rms_norm": false, "residual_in_fp32": true, "fused_add_norm": true, "pad_vocab_size_multiple": 8, "tie_embeddings": true}`))
	f.Add([]byte(`{"d_model": 64, "n_layer": 1, "vocab_size": 50277, "ssm_cfg": null}`))
	f.Add([]byte(`{"hidden_size": 1e30}`))
	f.Add([]byte(`[]`))
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, format, err := ParseConfig(data)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "config.json: ") {
				t.Errorf("error does not name config.json: %v", err)
			}
			return
		}
		if format != FormatHF && format != FormatNative && format != FormatMambaSSM {
			t.Fatalf("format %q", format)
		}
		if err := cfg.Validate(); err != nil {
			t.Fatalf("accepted an invalid config: %v", err)
		}
	})
}
