package checkpoint

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/mambabyte/mambabyte/internal/model"
)

// File names inside a checkpoint directory.
const (
	ConfigFile      = "config.json"
	SafetensorsFile = "model.safetensors"
	TorchFile       = "pytorch_model.bin"
)

// mamba_ssm spells the embedding without the s.
const mambaSSMEmbed = "backbone.embedding.weight"

// Load reads the checkpoint in dir: config.json in any Format, and the
// weights from model.safetensors or, if there is none, pytorch_model.bin.
// Tensors are returned under the canonical names of Config.TensorSpecs, as
// float32 in the layout TensorSpecs gives (conv1d.weight stored as (E,K) is
// the same data as (E,1,K)). A tied checkpoint's lm_head.weight is dropped.
// Every tensor the config needs must be present with its shape, and no
// other tensor may be; errors name the file, the tensor and the config
// field that disagree.
func Load(dir string) (model.Config, map[string][]float32, Format, error) {
	cfgPath := filepath.Join(dir, ConfigFile)
	data, err := readSmallFile(cfgPath, maxConfigSize)
	if err != nil {
		return model.Config{}, nil, "", err
	}
	cfg, format, info, err := parseConfig(cfgPath, data)
	if err != nil {
		return model.Config{}, nil, "", err
	}
	var (
		wpath   string
		tensors map[string]*Tensor
	)
	st := filepath.Join(dir, SafetensorsFile)
	pt := filepath.Join(dir, TorchFile)
	switch {
	case exists(st):
		wpath = st
		tensors, err = ReadSafetensors(st)
	case exists(pt):
		wpath = pt
		tensors, err = ReadTorchZip(pt)
	case exists(filepath.Join(dir, SafetensorsFile+".index.json")), exists(filepath.Join(dir, TorchFile+".index.json")):
		return model.Config{}, nil, "", fmt.Errorf("%s: sharded checkpoints (*.index.json) are not supported; merge the shards into one file", dir)
	default:
		return model.Config{}, nil, "", fmt.Errorf("%s: no %s or %s", dir, SafetensorsFile, TorchFile)
	}
	return finish(cfg, format, info, wpath, tensors, err)
}

// finish checks the tensors read from wpath (or the error reading them)
// against the parsed config and returns Load's results.
func finish(cfg model.Config, format Format, info *configInfo, wpath string, tensors map[string]*Tensor, err error) (model.Config, map[string][]float32, Format, error) {
	if err != nil {
		return model.Config{}, nil, "", err
	}
	out, err := matchTensors(wpath, cfg, format, info, tensors)
	if err != nil {
		return model.Config{}, nil, "", err
	}
	return cfg, out, format, nil
}

func exists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// readSmallFile reads a file, refusing one larger than limit.
func readSmallFile(path string, limit int64) ([]byte, error) {
	f, _, err := openRegular(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("%s: larger than %d bytes", path, limit)
	}
	return b, nil
}

// dimSymbols gives, for each dimension of a canonical tensor, the config
// symbols it depends on (see configInfo.hint).
func dimSymbols(name string) []string {
	switch {
	case name == model.NameEmbed || name == model.NameHead:
		return []string{"V", "D"}
	case strings.HasSuffix(name, model.SufInProj):
		return []string{"E", "D"}
	case strings.HasSuffix(name, model.SufConvW):
		return []string{"E", "", "K"}
	case strings.HasSuffix(name, model.SufXProj):
		return []string{"RN", "E"}
	case strings.HasSuffix(name, model.SufDtProj):
		return []string{"E", "R"}
	case strings.HasSuffix(name, model.SufALog):
		return []string{"E", "N"}
	case strings.HasSuffix(name, model.SufOutProj):
		return []string{"D", "E"}
	case strings.HasSuffix(name, "norm.weight"), strings.HasSuffix(name, "norm.bias"),
		strings.HasSuffix(name, "norm_f.weight"), strings.HasSuffix(name, "norm_f.bias"):
		return []string{"D"}
	}
	return []string{"E"} // conv1d.bias, dt_proj.bias, D
}

// layerIndex returns l for "backbone.layers.<l>.…", or -1.
func layerIndex(name string) int {
	rest, ok := strings.CutPrefix(name, "backbone.layers.")
	if !ok {
		return -1
	}
	i := strings.IndexByte(rest, '.')
	if i <= 0 {
		return -1
	}
	l, err := strconv.Atoi(rest[:i])
	if err != nil || l < 0 {
		return -1
	}
	return l
}

// matchTensors checks the tensors read from wpath against cfg and returns
// them under canonical names.
func matchTensors(wpath string, cfg model.Config, format Format, info *configInfo, tensors map[string]*Tensor) (map[string][]float32, error) {
	if format == FormatMambaSSM {
		if t, ok := tensors[mambaSSMEmbed]; ok {
			if _, dup := tensors[model.NameEmbed]; dup {
				return nil, fmt.Errorf("%s: has both %q and %q", wpath, mambaSSMEmbed, model.NameEmbed)
			}
			delete(tensors, mambaSSMEmbed)
			t.Name = model.NameEmbed
			tensors[model.NameEmbed] = t
		}
	}
	if cfg.TieEmbeddings {
		// Both mamba_ssm and HF state dicts may carry the tied head.
		delete(tensors, model.NameHead)
	}
	layers := 0 // layers present in the weights
	for name := range tensors {
		if l := layerIndex(name); l+1 > layers {
			layers = l + 1
		}
	}
	out := make(map[string][]float32, len(tensors))
	for _, spec := range cfg.TensorSpecs() {
		t, ok := tensors[spec.Name]
		if !ok {
			return nil, fmt.Errorf("%s: tensor %q is missing%s", wpath, spec.Name, missingHint(spec.Name, cfg, info, layers))
		}
		if !shapeOK(spec, t.Shape) {
			return nil, fmt.Errorf("%s: tensor %q has shape %v, %s %v",
				wpath, spec.Name, t.Shape, info.blame(mismatchSymbols(spec, t.Shape)), spec.Shape)
		}
		out[spec.Name] = t.Data
		delete(tensors, spec.Name)
	}
	if len(tensors) > 0 {
		extra := make([]string, 0, len(tensors))
		for name := range tensors {
			extra = append(extra, name)
		}
		slices.Sort(extra)
		msg := fmt.Sprintf("%s: tensor %q is not part of the model%s", wpath, extra[0], extraHint(extra[0], cfg, info))
		if len(extra) > 1 {
			msg += fmt.Sprintf(" (and %d more unknown tensors)", len(extra)-1)
		}
		return nil, errors.New(msg)
	}
	return out, nil
}

// shapeOK accepts the spec's shape, and (E,K) for a conv1d weight.
func shapeOK(spec model.TensorSpec, got []int) bool {
	if slices.Equal(spec.Shape, got) {
		return true
	}
	if strings.HasSuffix(spec.Name, model.SufConvW) && len(got) == 2 {
		return got[0] == spec.Shape[0] && got[1] == spec.Shape[2]
	}
	return false
}

// mismatchSymbols returns the config symbols behind the first dimension in
// which got differs from the spec, or all of them if the ranks differ.
func mismatchSymbols(spec model.TensorSpec, got []int) string {
	syms := dimSymbols(spec.Name)
	if len(got) == len(spec.Shape) && len(syms) == len(got) {
		for i := range got {
			if got[i] != spec.Shape[i] {
				return syms[i]
			}
		}
	}
	all := ""
	for _, s := range syms {
		for _, r := range s {
			if !strings.ContainsRune(all, r) {
				all += string(r)
			}
		}
	}
	return all
}

func missingHint(name string, cfg model.Config, info *configInfo, layers int) string {
	if l := layerIndex(name); l >= 0 && l >= layers {
		return fmt.Sprintf(": config.json's %s but the weights have %d layers", info.hint["L"], layers)
	}
	switch {
	case strings.HasSuffix(name, "norm.bias"), strings.HasSuffix(name, "norm_f.bias"):
		return fmt.Sprintf(": config.json's %s wants LayerNorm biases", info.hint["norm"])
	case strings.HasSuffix(name, model.SufConvB):
		return fmt.Sprintf(": config.json's %s", info.hint["convBias"])
	case name == model.NameHead:
		return fmt.Sprintf(": config.json's %s wants a separate output head", info.hint["tie"])
	}
	return ""
}

func extraHint(name string, cfg model.Config, info *configInfo) string {
	if l := layerIndex(name); l >= cfg.NLayer {
		return fmt.Sprintf(": config.json's %s", info.hint["L"])
	}
	switch {
	case strings.HasSuffix(name, "norm.bias"), strings.HasSuffix(name, "norm_f.bias"):
		return fmt.Sprintf(": config.json's %s has no biases", info.hint["norm"])
	case strings.HasSuffix(name, model.SufConvB):
		return fmt.Sprintf(": config.json's %s", info.hint["convBias"])
	}
	return ""
}

// nativeConfig is the config.json Save writes: HF MambaConfig's fields (so
// transformers loads an RMSNorm model as is) plus our own.
type nativeConfig struct {
	Architectures        []string `json:"architectures"`
	ModelType            string   `json:"model_type"`
	VocabSize            int      `json:"vocab_size"`
	HiddenSize           int      `json:"hidden_size"`
	StateSize            int      `json:"state_size"`
	NumHiddenLayers      int      `json:"num_hidden_layers"`
	ConvKernel           int      `json:"conv_kernel"`
	Expand               int      `json:"expand"`
	IntermediateSize     int      `json:"intermediate_size"`
	TimeStepRank         any      `json:"time_step_rank"`
	LayerNormEpsilon     float64  `json:"layer_norm_epsilon"`
	UseBias              bool     `json:"use_bias"`
	UseConvBias          bool     `json:"use_conv_bias"`
	TieWordEmbeddings    bool     `json:"tie_word_embeddings"`
	HiddenAct            string   `json:"hidden_act"`
	ResidualInFP32       bool     `json:"residual_in_fp32"`
	TimeStepMin          float64  `json:"time_step_min"`
	TimeStepMax          float64  `json:"time_step_max"`
	TimeStepFloor        float64  `json:"time_step_floor"`
	InitializerRange     float64  `json:"initializer_range"`
	PadVocabSizeMultiple int      `json:"pad_vocab_size_multiple,omitempty"`
	TorchDtype           string   `json:"torch_dtype"`
	NormType             string   `json:"norm_type"`
	MambabyteVersion     int      `json:"mambabyte_version"`
}

// Save writes cfg and tensors to dir (created if needed) in the native
// layout: model.safetensors with float32 tensors in TensorSpecs order and
// shapes, then config.json. tensors must hold exactly the tensors of
// cfg.TensorSpecs with their sizes; otherwise nothing is written. Each file
// is replaced atomically.
func Save(dir string, cfg model.Config, tensors map[string][]float32) error {
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("save %s: %w", dir, err)
	}
	specs := cfg.TensorSpecs()
	ts := make([]*Tensor, 0, len(specs))
	for _, s := range specs {
		d, ok := tensors[s.Name]
		if !ok {
			return fmt.Errorf("save %s: tensor %q is missing", dir, s.Name)
		}
		if len(d) != s.Size() {
			return fmt.Errorf("save %s: tensor %q has %d values, shape %v needs %d", dir, s.Name, len(d), s.Shape, s.Size())
		}
		ts = append(ts, &Tensor{Name: s.Name, Shape: s.Shape, Data: d})
	}
	if len(tensors) != len(specs) {
		for name := range tensors {
			if !slices.ContainsFunc(specs, func(s model.TensorSpec) bool { return s.Name == name }) {
				return fmt.Errorf("save %s: tensor %q is not part of the model", dir, name)
			}
		}
	}
	nc := nativeConfig{
		Architectures:        []string{"MambaForCausalLM"},
		ModelType:            "mamba",
		VocabSize:            cfg.VocabSize,
		HiddenSize:           cfg.DModel,
		StateSize:            cfg.DState,
		NumHiddenLayers:      cfg.NLayer,
		ConvKernel:           cfg.DConv,
		Expand:               cfg.Expand,
		IntermediateSize:     cfg.DInner(),
		TimeStepRank:         "auto",
		LayerNormEpsilon:     cfg.NormEps,
		UseConvBias:          cfg.ConvBias,
		TieWordEmbeddings:    cfg.TieEmbeddings,
		HiddenAct:            "silu",
		ResidualInFP32:       true,
		TimeStepMin:          cfg.DtMin,
		TimeStepMax:          cfg.DtMax,
		TimeStepFloor:        cfg.DtFloor,
		InitializerRange:     cfg.InitStd,
		PadVocabSizeMultiple: cfg.PadVocabTo,
		TorchDtype:           "float32",
		NormType:             string(cfg.Norm),
		MambabyteVersion:     nativeVersion,
	}
	if cfg.DTRank > 0 {
		nc.TimeStepRank = cfg.DTRank
	}
	cj, err := json.MarshalIndent(nc, "", "  ")
	if err != nil {
		return fmt.Errorf("save %s: %w", dir, err)
	}
	cj = append(cj, '\n')
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("save %s: %w", dir, err)
	}
	if err := WriteSafetensors(filepath.Join(dir, SafetensorsFile), ts, map[string]string{"format": "pt"}); err != nil {
		return err
	}
	// A stale pytorch_model.bin is harmless: Load prefers model.safetensors.
	return writeAtomic(filepath.Join(dir, ConfigFile), func(w io.Writer) error {
		_, err := w.Write(cj)
		return err
	})
}
