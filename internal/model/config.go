// Package model holds the MambaByte network: its configuration, its
// parameters, the parallel forward and backward over a (B,T) batch of bytes,
// and the recurrent State used for generation.
//
// Glossary (used in comments and hot loops):
//
//	B batch, T time (bytes), D d_model, E d_inner = Expand·D, N d_state,
//	R dt_rank, K d_conv, V vocab, L layers.
package model

import (
	"fmt"
	"strconv"
)

// NormKind selects the normalisation used before every mixer and at the end.
type NormKind string

const (
	// LayerNorm normalises to zero mean and unit variance, then applies a
	// weight and a bias (the MambaByte paper's choice).
	LayerNorm NormKind = "layernorm"
	// RMSNorm divides by the root mean square and applies a weight (HF
	// transformers' Mamba).
	RMSNorm NormKind = "rmsnorm"
)

// Config describes one Mamba-1 language model. The zero value is not valid;
// start from DefaultConfig or a checkpoint's config.
type Config struct {
	VocabSize     int      `json:"vocab_size"`         // V: 256 for bytes
	DModel        int      `json:"d_model"`            // D
	NLayer        int      `json:"n_layer"`            // L
	DState        int      `json:"d_state"`            // N
	DConv         int      `json:"d_conv"`             // K
	Expand        int      `json:"expand"`             // E = Expand·D
	DTRank        int      `json:"dt_rank"`            // R; 0 means ceil(D/16)
	Norm          NormKind `json:"norm"`               // layernorm or rmsnorm
	NormEps       float64  `json:"norm_eps"`           // 1e-5
	TieEmbeddings bool     `json:"tie_embeddings"`     // head shares the embedding
	ConvBias      bool     `json:"conv_bias"`          // conv1d has a bias (true in every released model)
	PadVocabTo    int      `json:"pad_vocab_multiple"` // informational; the vocab stored is VocabSize

	// Initialisation (as mamba_ssm).
	InitStd float64 `json:"init_std"` // embedding std, 0.02
	DtMin   float64 `json:"dt_min"`   // 1e-3
	DtMax   float64 `json:"dt_max"`   // 0.1
	DtFloor float64 `json:"dt_floor"` // 1e-4
}

// DefaultConfig returns a small byte-level MambaByte configuration that
// trains on a CPU. Fields follow the paper's code: N 16, K 4, expand 2,
// LayerNorm with bias, eps 1e-5.
func DefaultConfig() Config {
	return Config{
		VocabSize:     256,
		DModel:        256,
		NLayer:        8,
		DState:        16,
		DConv:         4,
		Expand:        2,
		Norm:          LayerNorm,
		NormEps:       1e-5,
		TieEmbeddings: true,
		ConvBias:      true,
		InitStd:       0.02,
		DtMin:         1e-3,
		DtMax:         0.1,
		DtFloor:       1e-4,
	}
}

// DInner is E = Expand·D.
func (c Config) DInner() int { return c.Expand * c.DModel }

// Rank is R: DTRank, or ceil(D/16) when DTRank is 0.
func (c Config) Rank() int {
	if c.DTRank > 0 {
		return c.DTRank
	}
	return (c.DModel + 15) / 16
}

// Validate reports the first field that makes the configuration unusable.
func (c Config) Validate() error {
	pos := []struct {
		name string
		v    int
	}{
		{"vocab_size", c.VocabSize}, {"d_model", c.DModel}, {"n_layer", c.NLayer},
		{"d_state", c.DState}, {"d_conv", c.DConv}, {"expand", c.Expand},
	}
	for _, p := range pos {
		if p.v <= 0 {
			return fmt.Errorf("config: %s must be positive, got %d", p.name, p.v)
		}
	}
	if c.DTRank < 0 {
		return fmt.Errorf("config: dt_rank must not be negative, got %d", c.DTRank)
	}
	const limit = 1 << 20
	for _, p := range pos {
		if p.v > limit {
			return fmt.Errorf("config: %s = %d is beyond any supported model", p.name, p.v)
		}
	}
	if c.DTRank > limit {
		return fmt.Errorf("config: dt_rank = %d is beyond any supported model", c.DTRank)
	}
	if c.Norm != LayerNorm && c.Norm != RMSNorm {
		return fmt.Errorf("config: norm must be %q or %q, got %q", LayerNorm, RMSNorm, c.Norm)
	}
	if !(c.NormEps > 0 && c.NormEps < 1) {
		return fmt.Errorf("config: norm_eps must be in (0,1), got %g", c.NormEps)
	}
	if c.NumParams() > 1<<36 {
		return fmt.Errorf("config: %d parameters is beyond any supported model", c.NumParams())
	}
	return nil
}

// TensorSpec names one parameter tensor and its shape.
type TensorSpec struct {
	Name  string
	Shape []int
}

// Size is the number of elements.
func (s TensorSpec) Size() int {
	n := 1
	for _, d := range s.Shape {
		n *= d
	}
	return n
}

// Tensor names, as in HF transformers' MambaForCausalLM (the native format).
const (
	NameEmbed  = "backbone.embeddings.weight"
	NameNormF  = "backbone.norm_f.weight"
	NameNormFB = "backbone.norm_f.bias"
	NameHead   = "lm_head.weight"
)

// LayerPrefix is the name prefix of layer l's tensors.
func LayerPrefix(l int) string { return "backbone.layers." + strconv.Itoa(l) + "." }

// Layer tensor suffixes, after LayerPrefix.
const (
	SufNorm    = "norm.weight"
	SufNormB   = "norm.bias"
	SufInProj  = "mixer.in_proj.weight"
	SufConvW   = "mixer.conv1d.weight"
	SufConvB   = "mixer.conv1d.bias"
	SufXProj   = "mixer.x_proj.weight"
	SufDtProj  = "mixer.dt_proj.weight"
	SufDtBias  = "mixer.dt_proj.bias"
	SufALog    = "mixer.A_log"
	SufD       = "mixer.D"
	SufOutProj = "mixer.out_proj.weight"
)

// TensorSpecs lists every parameter in storage order with its shape as the
// checkpoint stores it (conv1d.weight is (E,1,K) there).
func (c Config) TensorSpecs() []TensorSpec {
	D, E, N, K, R, V := c.DModel, c.DInner(), c.DState, c.DConv, c.Rank(), c.VocabSize
	specs := []TensorSpec{{NameEmbed, []int{V, D}}}
	for l := 0; l < c.NLayer; l++ {
		p := LayerPrefix(l)
		specs = append(specs, TensorSpec{p + SufNorm, []int{D}})
		if c.Norm == LayerNorm {
			specs = append(specs, TensorSpec{p + SufNormB, []int{D}})
		}
		specs = append(specs,
			TensorSpec{p + SufInProj, []int{2 * E, D}},
			TensorSpec{p + SufConvW, []int{E, 1, K}},
		)
		if c.ConvBias {
			specs = append(specs, TensorSpec{p + SufConvB, []int{E}})
		}
		specs = append(specs,
			TensorSpec{p + SufXProj, []int{R + 2*N, E}},
			TensorSpec{p + SufDtProj, []int{E, R}},
			TensorSpec{p + SufDtBias, []int{E}},
			TensorSpec{p + SufALog, []int{E, N}},
			TensorSpec{p + SufD, []int{E}},
			TensorSpec{p + SufOutProj, []int{D, E}},
		)
	}
	specs = append(specs, TensorSpec{NameNormF, []int{D}})
	if c.Norm == LayerNorm {
		specs = append(specs, TensorSpec{NameNormFB, []int{D}})
	}
	if !c.TieEmbeddings {
		specs = append(specs, TensorSpec{NameHead, []int{V, D}})
	}
	return specs
}

// NumParams is the number of scalar parameters.
func (c Config) NumParams() int64 {
	var n int64
	for _, s := range c.TensorSpecs() {
		n += int64(s.Size())
	}
	return n
}

// TensorSpecsKey is a string that two configs share exactly when their
// parameter tensors have the same names and shapes.
func (c Config) TensorSpecsKey() string {
	var b []byte
	for _, s := range c.TensorSpecs() {
		b = fmt.Appendf(b, "%s%v;", s.Name, s.Shape)
	}
	return string(b)
}
