package checkpoint

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"

	"github.com/mambabyte/mambabyte/internal/model"
)

// Format is the layout of a checkpoint directory's config.json.
type Format string

const (
	// FormatNative is what Save writes: the HF layout plus "norm_type" and
	// "mambabyte_version".
	FormatNative Format = "native"
	// FormatHF is HF transformers' MambaForCausalLM (always RMSNorm).
	FormatHF Format = "hf"
	// FormatMambaSSM is mamba_ssm's MambaLMHeadModel, the format of the
	// released MambaByte checkpoints.
	FormatMambaSSM Format = "mamba_ssm"
)

// nativeVersion is the "mambabyte_version" Save writes; Load refuses newer.
const nativeVersion = 1

// Limits beyond which a config is rejected before any tensor is listed.
const (
	maxConfigSize = 16 << 20
	maxLayers     = 4096
	maxParams     = 1 << 36
)

// Defaults for the initialisation fields when a config does not carry them.
const (
	defaultInitStd = 0.02
	defaultDtMin   = 1e-3
	defaultDtMax   = 0.1
	defaultDtFloor = 1e-4
)

// configInfo remembers how config.json spelled the fields that determine
// tensor shapes, so that a mismatch can be blamed on the right field.
type configInfo struct {
	file string
	// hint maps a symbol to "field=value" text: V D E N K R L (dimensions),
	// norm, convBias, tie.
	hint map[string]string
}

// ParseConfig parses a config.json in any of the three formats and returns
// the model configuration it describes. Errors name config.json.
func ParseConfig(data []byte) (model.Config, Format, error) {
	cfg, f, _, err := parseConfig("config.json", data)
	return cfg, f, err
}

// jsonObj reads typed fields of a JSON object, naming the file and field in
// errors. JSON null counts as absent.
type jsonObj struct {
	file, prefix string
	m            map[string]any
}

func (o jsonObj) errorf(key, format string, args ...any) error {
	return fmt.Errorf("%s: field %q %s", o.file, o.prefix+key, fmt.Sprintf(format, args...))
}

func (o jsonObj) has(key string) bool { return o.m[key] != nil }

// intField returns an integer field; a JSON number with no fraction (2 or
// 2.0) is accepted. The bool says whether the field was present.
func (o jsonObj) intField(key string, def int) (int, bool, error) {
	v := o.m[key]
	if v == nil {
		return def, false, nil
	}
	num, ok := v.(json.Number)
	if !ok {
		return 0, true, o.errorf(key, "must be an integer, got %s", jsonKind(v))
	}
	if i, err := strconv.ParseInt(string(num), 10, 64); err == nil {
		if i < math.MinInt32 || i > math.MaxInt32 {
			return 0, true, o.errorf(key, "= %d is out of range", i)
		}
		return int(i), true, nil
	}
	f, err := strconv.ParseFloat(string(num), 64)
	if err != nil || f != math.Trunc(f) || math.Abs(f) > math.MaxInt32 {
		return 0, true, o.errorf(key, "must be an integer, got %s", num)
	}
	return int(f), true, nil
}

func (o jsonObj) floatField(key string, def float64) (float64, error) {
	v := o.m[key]
	if v == nil {
		return def, nil
	}
	num, ok := v.(json.Number)
	if !ok {
		return 0, o.errorf(key, "must be a number, got %s", jsonKind(v))
	}
	f, err := strconv.ParseFloat(string(num), 64)
	if err != nil {
		return 0, o.errorf(key, "must be a finite number, got %s", num)
	}
	return f, nil
}

func (o jsonObj) boolField(key string, def bool) (bool, error) {
	v := o.m[key]
	if v == nil {
		return def, nil
	}
	b, ok := v.(bool)
	if !ok {
		return false, o.errorf(key, "must be true or false, got %s", jsonKind(v))
	}
	return b, nil
}

func (o jsonObj) stringField(key, def string) (string, error) {
	v := o.m[key]
	if v == nil {
		return def, nil
	}
	s, ok := v.(string)
	if !ok {
		return "", o.errorf(key, "must be a string, got %s", jsonKind(v))
	}
	return s, nil
}

// rankField reads a dt rank: "auto" (returned as 0) or a positive integer.
func (o jsonObj) rankField(key string) (int, error) {
	if s, ok := o.m[key].(string); ok {
		if s != "auto" {
			return 0, o.errorf(key, "must be \"auto\" or an integer, got %q", s)
		}
		return 0, nil
	}
	r, present, err := o.intField(key, 0)
	if err != nil {
		return 0, err
	}
	if present && r <= 0 {
		return 0, o.errorf(key, "must be \"auto\" or a positive integer, got %d", r)
	}
	return r, nil
}

func jsonKind(v any) string {
	switch v := v.(type) {
	case bool:
		return "a boolean"
	case string:
		if len(v) > 40 {
			v = v[:40] + "..."
		}
		return strconv.Quote(v)
	case json.Number:
		return string(v)
	case []any:
		return "an array"
	case map[string]any:
		return "an object"
	}
	return "null"
}

func parseConfig(file string, data []byte) (model.Config, Format, *configInfo, error) {
	var cfg model.Config
	if len(data) > maxConfigSize {
		return cfg, "", nil, fmt.Errorf("%s: %d bytes is too large for a config", file, len(data))
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	var m map[string]any
	if err := dec.Decode(&m); err != nil {
		return cfg, "", nil, fmt.Errorf("%s: not a JSON object: %v", file, err)
	}
	if m == nil {
		return cfg, "", nil, fmt.Errorf("%s: not a JSON object", file)
	}
	if _, err := dec.Token(); err != io.EOF {
		return cfg, "", nil, fmt.Errorf("%s: trailing data after the JSON object", file)
	}
	o := jsonObj{file: file, m: m}
	mt, err := o.stringField("model_type", "")
	if err != nil {
		return cfg, "", nil, err
	}
	if mt != "" && mt != "mamba" {
		return cfg, "", nil, fmt.Errorf("%s: model_type %q is not supported; only Mamba-1 (\"mamba\") models are", file, mt)
	}
	ssm := o.has("d_model") || o.has("n_layer") || o.has("ssm_cfg")
	hf := o.has("hidden_size") || o.has("num_hidden_layers") || (mt == "mamba" && !ssm)
	var (
		info *configInfo
		f    Format
	)
	switch {
	case ssm && hf:
		return cfg, "", nil, fmt.Errorf("%s: has both HF (hidden_size) and mamba_ssm (d_model) fields; cannot tell the format", file)
	case ssm:
		f = FormatMambaSSM
		cfg, info, err = parseMambaSSM(o)
	case hf:
		f = FormatHF
		cfg, info, err = parseHF(o)
		if o.has("mambabyte_version") {
			f = FormatNative
		}
	default:
		return cfg, "", nil, fmt.Errorf("%s: neither an HF Mamba config (hidden_size) nor a mamba_ssm one (d_model)", file)
	}
	if err != nil {
		return model.Config{}, "", nil, err
	}
	if err := checkSize(file, cfg); err != nil {
		return model.Config{}, "", nil, err
	}
	if err := cfg.Validate(); err != nil {
		return model.Config{}, "", nil, fmt.Errorf("%s: %w", file, err)
	}
	return cfg, f, info, nil
}

// checkSize rejects configs too large to list cheaply, before
// Config.Validate enumerates their tensors.
func checkSize(file string, c model.Config) error {
	dims := []struct {
		name string
		v    int
	}{{"vocab", c.VocabSize}, {"model width", c.DModel}, {"layer count", c.NLayer},
		{"state size", c.DState}, {"conv width", c.DConv}, {"expand", c.Expand}, {"dt rank", c.DTRank}}
	for _, d := range dims {
		if d.v < 0 || d.v > 1<<20 {
			return fmt.Errorf("%s: %s %d is out of range", file, d.name, d.v)
		}
	}
	if c.NLayer > maxLayers {
		return fmt.Errorf("%s: %d layers is beyond any supported model (limit %d)", file, c.NLayer, maxLayers)
	}
	V, D, L := float64(c.VocabSize), float64(c.DModel), float64(c.NLayer)
	E, N, K, R := float64(c.Expand)*D, float64(c.DState), float64(c.DConv), float64(c.Rank())
	p := V*D*2 + D*2 + L*(2*D+2*E*D+E*K+E+(R+2*N)*E+E*R+E+E*N+E+D*E)
	if p > maxParams {
		return fmt.Errorf("%s: about %.3g parameters is beyond any supported model", file, p)
	}
	return nil
}

func parseHF(o jsonObj) (model.Config, *configInfo, error) {
	cfg := model.Config{
		InitStd: defaultInitStd, DtMin: defaultDtMin, DtMax: defaultDtMax, DtFloor: defaultDtFloor,
	}
	var err error
	for _, req := range []string{"hidden_size", "num_hidden_layers", "vocab_size"} {
		if !o.has(req) {
			return cfg, nil, fmt.Errorf("%s: field %q is missing", o.file, req)
		}
	}
	ints := []struct {
		key string
		dst *int
		def int
	}{
		{"hidden_size", &cfg.DModel, 0},
		{"num_hidden_layers", &cfg.NLayer, 0},
		{"vocab_size", &cfg.VocabSize, 0},
		{"state_size", &cfg.DState, 16},
		{"conv_kernel", &cfg.DConv, 4},
		{"expand", &cfg.Expand, 2},
		{"pad_vocab_size_multiple", &cfg.PadVocabTo, 0},
	}
	for _, f := range ints {
		if *f.dst, _, err = o.intField(f.key, f.def); err != nil {
			return cfg, nil, err
		}
	}
	if cfg.DTRank, err = o.rankField("time_step_rank"); err != nil {
		return cfg, nil, err
	}
	if cfg.NormEps, err = o.floatField("layer_norm_epsilon", 1e-5); err != nil {
		return cfg, nil, err
	}
	useBias, err := o.boolField("use_bias", false)
	if err != nil {
		return cfg, nil, err
	}
	if useBias {
		return cfg, nil, fmt.Errorf("%s: \"use_bias\": true (biases on in_proj and out_proj) is not supported", o.file)
	}
	if cfg.ConvBias, err = o.boolField("use_conv_bias", true); err != nil {
		return cfg, nil, err
	}
	if cfg.TieEmbeddings, err = o.boolField("tie_word_embeddings", true); err != nil {
		return cfg, nil, err
	}
	act, err := o.stringField("hidden_act", "silu")
	if err != nil {
		return cfg, nil, err
	}
	if act != "silu" {
		return cfg, nil, fmt.Errorf("%s: hidden_act %q is not supported; Mamba uses \"silu\"", o.file, act)
	}
	if is, present, err := o.intField("intermediate_size", 0); err != nil {
		return cfg, nil, err
	} else if present && is != cfg.Expand*cfg.DModel {
		return cfg, nil, fmt.Errorf("%s: intermediate_size=%d contradicts expand=%d × hidden_size=%d", o.file, is, cfg.Expand, cfg.DModel)
	}
	nt, err := o.stringField("norm_type", string(model.RMSNorm))
	if err != nil {
		return cfg, nil, err
	}
	cfg.Norm = model.NormKind(nt)
	if cfg.Norm != model.LayerNorm && cfg.Norm != model.RMSNorm {
		return cfg, nil, fmt.Errorf("%s: norm_type %q must be %q or %q", o.file, nt, model.LayerNorm, model.RMSNorm)
	}
	if cfg.DtMin, err = o.floatField("time_step_min", defaultDtMin); err != nil {
		return cfg, nil, err
	}
	if cfg.DtMax, err = o.floatField("time_step_max", defaultDtMax); err != nil {
		return cfg, nil, err
	}
	if cfg.DtFloor, err = o.floatField("time_step_floor", defaultDtFloor); err != nil {
		return cfg, nil, err
	}
	if o.has("mambabyte_version") {
		v, _, err := o.intField("mambabyte_version", 0)
		if err != nil {
			return cfg, nil, err
		}
		if v < 1 || v > nativeVersion {
			return cfg, nil, fmt.Errorf("%s: mambabyte_version %d is not one this build reads (1 to %d)", o.file, v, nativeVersion)
		}
		// HF's initializer_range means something else (its default is
		// 0.1); only our own files store the embedding std there.
		if cfg.InitStd, err = o.floatField("initializer_range", defaultInitStd); err != nil {
			return cfg, nil, err
		}
	}
	rank := "auto (" + strconv.Itoa(cfg.Rank()) + ")"
	if cfg.DTRank > 0 {
		rank = strconv.Itoa(cfg.DTRank)
	}
	normHint := "norm_type=" + string(cfg.Norm)
	if !o.has("norm_type") {
		normHint = "HF Mamba's RMSNorm (no \"norm_type\" field)"
	}
	info := &configInfo{file: o.file, hint: map[string]string{
		"V":        "vocab_size=" + strconv.Itoa(cfg.VocabSize),
		"D":        "hidden_size=" + strconv.Itoa(cfg.DModel),
		"E":        "expand=" + strconv.Itoa(cfg.Expand) + " and hidden_size=" + strconv.Itoa(cfg.DModel),
		"N":        "state_size=" + strconv.Itoa(cfg.DState),
		"K":        "conv_kernel=" + strconv.Itoa(cfg.DConv),
		"R":        "time_step_rank=" + rank,
		"L":        "num_hidden_layers=" + strconv.Itoa(cfg.NLayer),
		"norm":     normHint,
		"convBias": "use_conv_bias=" + strconv.FormatBool(cfg.ConvBias),
		"tie":      "tie_word_embeddings=" + strconv.FormatBool(cfg.TieEmbeddings),
	}}
	return cfg, info, nil
}

func parseMambaSSM(o jsonObj) (model.Config, *configInfo, error) {
	cfg := model.Config{
		NormEps: 1e-5, InitStd: defaultInitStd, DtMin: defaultDtMin, DtMax: defaultDtMax, DtFloor: defaultDtFloor,
	}
	var err error
	for _, req := range []string{"d_model", "n_layer", "vocab_size"} {
		if !o.has(req) {
			return cfg, nil, fmt.Errorf("%s: field %q is missing", o.file, req)
		}
	}
	if cfg.DModel, _, err = o.intField("d_model", 0); err != nil {
		return cfg, nil, err
	}
	if cfg.NLayer, _, err = o.intField("n_layer", 0); err != nil {
		return cfg, nil, err
	}
	vocab, _, err := o.intField("vocab_size", 0)
	if err != nil {
		return cfg, nil, err
	}
	mult, _, err := o.intField("pad_vocab_size_multiple", 8)
	if err != nil {
		return cfg, nil, err
	}
	if mult <= 0 || mult > 1<<20 {
		return cfg, nil, fmt.Errorf("%s: pad_vocab_size_multiple=%d must be in [1, 2^20]", o.file, mult)
	}
	if vocab <= 0 || vocab > 1<<20 {
		return cfg, nil, fmt.Errorf("%s: vocab_size=%d must be in [1, 2^20]", o.file, vocab)
	}
	cfg.PadVocabTo = mult
	cfg.VocabSize = (vocab + mult - 1) / mult * mult
	rms, err := o.boolField("rms_norm", true)
	if err != nil {
		return cfg, nil, err
	}
	cfg.Norm = model.LayerNorm
	if rms {
		cfg.Norm = model.RMSNorm
	}
	if cfg.TieEmbeddings, err = o.boolField("tie_embeddings", true); err != nil {
		return cfg, nil, err
	}
	for _, k := range []string{"residual_in_fp32", "fused_add_norm"} {
		if _, err := o.boolField(k, true); err != nil {
			return cfg, nil, err
		}
	}
	if di, _, err := o.intField("d_intermediate", 0); err != nil {
		return cfg, nil, err
	} else if di != 0 {
		return cfg, nil, fmt.Errorf("%s: d_intermediate=%d (MLP blocks between mixers) is not supported", o.file, di)
	}
	if v := o.m["attn_layer_idx"]; v != nil {
		if l, ok := v.([]any); !ok || len(l) > 0 {
			return cfg, nil, fmt.Errorf("%s: attn_layer_idx (attention layers) is not supported", o.file)
		}
	}

	// ssm_cfg: the Mamba mixer's arguments, defaults as mamba_ssm's Mamba.
	sm := map[string]any{}
	if v := o.m["ssm_cfg"]; v != nil {
		var ok bool
		if sm, ok = v.(map[string]any); !ok {
			return cfg, nil, fmt.Errorf("%s: ssm_cfg must be an object, got %s", o.file, jsonKind(v))
		}
	}
	s := jsonObj{file: o.file, prefix: "ssm_cfg.", m: sm}
	layer, err := s.stringField("layer", "Mamba1")
	if err != nil {
		return cfg, nil, err
	}
	if layer != "Mamba1" {
		return cfg, nil, fmt.Errorf("%s: ssm_cfg.layer %q is not supported; only Mamba1 is", o.file, layer)
	}
	if cfg.DState, _, err = s.intField("d_state", 16); err != nil {
		return cfg, nil, err
	}
	if cfg.DConv, _, err = s.intField("d_conv", 4); err != nil {
		return cfg, nil, err
	}
	if cfg.Expand, _, err = s.intField("expand", 2); err != nil {
		return cfg, nil, err
	}
	if cfg.DTRank, err = s.rankField("dt_rank"); err != nil {
		return cfg, nil, err
	}
	if cfg.ConvBias, err = s.boolField("conv_bias", true); err != nil {
		return cfg, nil, err
	}
	bias, err := s.boolField("bias", false)
	if err != nil {
		return cfg, nil, err
	}
	if bias {
		return cfg, nil, fmt.Errorf("%s: ssm_cfg.bias=true (biases on in_proj and out_proj) is not supported", o.file)
	}
	if cfg.DtMin, err = s.floatField("dt_min", defaultDtMin); err != nil {
		return cfg, nil, err
	}
	if cfg.DtMax, err = s.floatField("dt_max", defaultDtMax); err != nil {
		return cfg, nil, err
	}
	if cfg.DtFloor, err = s.floatField("dt_init_floor", defaultDtFloor); err != nil {
		return cfg, nil, err
	}

	rank := "auto (" + strconv.Itoa(cfg.Rank()) + ")"
	if cfg.DTRank > 0 {
		rank = strconv.Itoa(cfg.DTRank)
	}
	v := "vocab_size=" + strconv.Itoa(vocab)
	if cfg.VocabSize != vocab {
		v += fmt.Sprintf(" padded to a multiple of pad_vocab_size_multiple=%d (%d)", mult, cfg.VocabSize)
	}
	info := &configInfo{file: o.file, hint: map[string]string{
		"V":        v,
		"D":        "d_model=" + strconv.Itoa(cfg.DModel),
		"E":        "expand=" + strconv.Itoa(cfg.Expand) + " and d_model=" + strconv.Itoa(cfg.DModel),
		"N":        "d_state=" + strconv.Itoa(cfg.DState),
		"K":        "d_conv=" + strconv.Itoa(cfg.DConv),
		"R":        "dt_rank=" + rank,
		"L":        "n_layer=" + strconv.Itoa(cfg.NLayer),
		"norm":     "rms_norm=" + strconv.FormatBool(rms),
		"convBias": "ssm_cfg.conv_bias=" + strconv.FormatBool(cfg.ConvBias),
		"tie":      "tie_embeddings=" + strconv.FormatBool(cfg.TieEmbeddings),
	}}
	return cfg, info, nil
}

// blame names the config fields behind the given dimension symbols, as
// "config.json's d_state=16 wants" (or "want" for several fields).
func (ci *configInfo) blame(syms string) string {
	var parts []string
	for _, s := range syms {
		if h, ok := ci.hint[string(s)]; ok {
			parts = append(parts, h)
		}
	}
	if len(parts) == 0 {
		return "config.json wants"
	}
	verb := " wants"
	if len(parts) > 1 || strings.Contains(parts[0], " and ") {
		verb = " want"
	}
	return "config.json's " + strings.Join(parts, " and ") + verb
}
