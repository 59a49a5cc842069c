package model

import (
	"fmt"
	"math"
	"math/rand/v2"

	"github.com/mambabyte/mambabyte/internal/backend"
)

// Model is a configured network whose parameters live in one backend
// allocation, with a named view per tensor.
type Model struct {
	Cfg Config
	BE  backend.Backend

	Params backend.Tensor // every parameter, in TensorSpecs order
	Grads  backend.Tensor // same layout; nil until AllocGrads

	specs   []TensorSpec
	offsets map[string]int
	p       weights // views into Params
	g       weights // views into Grads

	// version counts parameter changes; negA holds A = -exp(A_log) of every
	// layer (L,E,N) as of negAVersion.
	version     uint64
	negA        backend.Tensor
	negAVersion uint64

	// Each layer's matrices rounded for the backend's products
	// (backend.WeightRounder), as of roundedVersion: in_proj and out_proj,
	// and with roundedThin x_proj and dt_proj; nil until a training pass
	// reads them.
	rounded        []roundedLayer
	roundedVersion uint64
	roundedThin    bool

	// The backend's copy of the weights for its fused step
	// (backend.StepFuser), as of fusedVersion; fusedErr is why there is
	// none when the backend declined.
	fused        backend.StepWeights
	fusedVersion uint64
	fusedErr     error
}

// Touch records that the parameters changed outside SetParams (an
// optimizer step), so values derived from them are recomputed.
func (m *Model) Touch() { m.version++ }

// decay returns A = -exp(A_log) of layer l, recomputing every layer's
// after a parameter change.
func (m *Model) decay(l int) backend.Tensor {
	EN := m.Cfg.DInner() * m.Cfg.DState
	if m.negA == nil {
		m.negA = m.BE.Alloc(m.Cfg.NLayer * EN)
		m.negAVersion = m.version - 1
	}
	if m.negAVersion != m.version {
		for i, w := range m.p.layers {
			m.BE.NegExp(m.negA.Slice(i*EN, EN), w.alog)
		}
		m.negAVersion = m.version
	}
	return m.negA.Slice(l*EN, EN)
}

// roundedLayer holds a layer's matrices as a backend.WeightRounder rounds
// them (x_proj and dt_proj only where the thin products take them).
type roundedLayer struct{ inProj, outProj, xProj, dtProj backend.Tensor }

// roundedWeights returns layer l's rounded in_proj and out_proj, and with
// thin its x_proj and dt_proj, making every layer's again after a
// parameter change (wr is m.BE). Once asked for, x_proj and dt_proj are
// made with the others.
func (m *Model) roundedWeights(wr backend.WeightRounder, l int, thin bool) roundedLayer {
	if m.rounded == nil || m.roundedVersion != m.version || thin && !m.roundedThin {
		if m.rounded == nil {
			m.rounded = make([]roundedLayer, m.Cfg.NLayer)
		}
		m.roundedThin = m.roundedThin || thin
		for i, w := range m.p.layers {
			r := &m.rounded[i]
			r.inProj = wr.RoundWeight(r.inProj, w.inProj)
			r.outProj = wr.RoundWeight(r.outProj, w.outProj)
			if m.roundedThin {
				r.xProj = wr.RoundWeight(r.xProj, w.xProj)
				r.dtProj = wr.RoundWeight(r.dtProj, w.dtProj)
			}
		}
		m.roundedVersion = m.version
	}
	return m.rounded[l]
}

// stepWeights returns the backend's fused step and its copy of the
// weights, brought up to date, or nil when the backend has none (or
// declined to prepare one).
func (m *Model) stepWeights() (backend.StepFuser, backend.StepWeights) {
	f, ok := m.BE.(backend.StepFuser)
	if !ok || m.fusedErr != nil {
		return nil, nil
	}
	m.decay(0) // NegA is current, and allocated
	if m.fused == nil {
		c := m.Cfg
		EN := c.DInner() * c.DState
		layers := make([]backend.StepLayer, c.NLayer)
		for l, w := range m.p.layers {
			layers[l] = backend.StepLayer{
				Norm: w.norm, NormB: w.normB, InProj: w.inProj, ConvW: w.convW, ConvB: w.convB,
				XProj: w.xProj, DtProj: w.dtProj, DtBias: w.dtBias, NegA: m.negA.Slice(l*EN, EN),
				DSkip: w.dskip, OutProj: w.outProj,
			}
		}
		shape := backend.StepShape{
			D: c.DModel, E: c.DInner(), N: c.DState, K: c.DConv, R: c.Rank(), V: c.VocabSize,
			Eps: float32(c.NormEps), RMS: c.Norm == RMSNorm,
		}
		w, err := f.PrepareStep(layers, backend.StepHead{Norm: m.p.normF, NormB: m.p.normFB, W: m.p.head}, shape)
		if err != nil {
			m.fusedErr = err
			return nil, nil
		}
		m.fused, m.fusedVersion = w, m.version
	}
	if m.fusedVersion != m.version {
		m.fused.Refresh()
		m.fusedVersion = m.version
	}
	return f, m.fused
}

// layerWeights are one layer's tensors (views).
type layerWeights struct {
	norm, normB, inProj, convW, convB, xProj, dtProj, dtBias, alog, dskip, outProj backend.Tensor
}

type weights struct {
	embed, normF, normFB, head backend.Tensor
	layers                     []layerWeights
}

// New allocates a model with zero parameters on be. Call Init or
// SetParams before use.
func New(cfg Config, be backend.Backend) (*Model, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	m := &Model{Cfg: cfg, BE: be, specs: cfg.TensorSpecs(), offsets: map[string]int{}}
	off := 0
	for _, s := range m.specs {
		m.offsets[s.Name] = off
		off += s.Size()
	}
	m.Params = be.Alloc(off)
	m.p = m.views(m.Params)
	return m, nil
}

// AllocGrads allocates the gradient buffer (zeroed) if it is missing.
func (m *Model) AllocGrads() {
	if m.Grads == nil {
		m.Grads = m.BE.Alloc(m.Params.Len())
		m.g = m.views(m.Grads)
	}
}

// ZeroGrads clears the gradients.
func (m *Model) ZeroGrads() {
	m.AllocGrads()
	m.BE.Zero(m.Grads)
}

func (m *Model) views(buf backend.Tensor) weights {
	view := func(name string) backend.Tensor {
		off, ok := m.offsets[name]
		if !ok {
			return nil
		}
		for _, s := range m.specs {
			if s.Name == name {
				return buf.Slice(off, s.Size())
			}
		}
		return nil
	}
	w := weights{
		embed:  view(NameEmbed),
		normF:  view(NameNormF),
		normFB: view(NameNormFB),
		head:   view(NameHead),
		layers: make([]layerWeights, m.Cfg.NLayer),
	}
	if w.head == nil {
		w.head = w.embed
	}
	for l := range w.layers {
		p := LayerPrefix(l)
		w.layers[l] = layerWeights{
			norm: view(p + SufNorm), normB: view(p + SufNormB),
			inProj: view(p + SufInProj), convW: view(p + SufConvW), convB: view(p + SufConvB),
			xProj: view(p + SufXProj), dtProj: view(p + SufDtProj), dtBias: view(p + SufDtBias),
			alog: view(p + SufALog), dskip: view(p + SufD), outProj: view(p + SufOutProj),
		}
	}
	return w
}

// Specs lists the parameter tensors in storage order.
func (m *Model) Specs() []TensorSpec { return m.specs }

// ParamsHost returns a host copy of every parameter by name.
func (m *Model) ParamsHost() map[string][]float32 { return m.hostTensors(m.Params) }

// GradsHost returns a host copy of every gradient by name.
func (m *Model) GradsHost() map[string][]float32 { return m.hostTensors(m.Grads) }

func (m *Model) hostTensors(buf backend.Tensor) map[string][]float32 {
	all := make([]float32, buf.Len())
	m.BE.Download(all, buf)
	out := make(map[string][]float32, len(m.specs))
	for _, s := range m.specs {
		off := m.offsets[s.Name]
		out[s.Name] = all[off : off+s.Size() : off+s.Size()]
	}
	return out
}

// SetParams copies named tensors into the model. Every parameter must be
// present with its exact size; extra names are an error.
func (m *Model) SetParams(t map[string][]float32) error {
	all := make([]float32, m.Params.Len())
	for _, s := range m.specs {
		v, ok := t[s.Name]
		if !ok {
			return fmt.Errorf("missing tensor %q", s.Name)
		}
		if len(v) != s.Size() {
			return fmt.Errorf("tensor %q has %d values, want %d (shape %v)", s.Name, len(v), s.Size(), s.Shape)
		}
		copy(all[m.offsets[s.Name]:], v)
	}
	if len(t) != len(m.specs) {
		for name := range t {
			if _, ok := m.offsets[name]; !ok {
				return fmt.Errorf("unexpected tensor %q", name)
			}
		}
	}
	m.BE.Upload(m.Params, all)
	m.Touch()
	return nil
}

// Init fills the parameters as mamba_ssm initialises them:
// embedding ~ N(0, InitStd); linear layers ~ U(±1/sqrt(fan_in)) (PyTorch's
// default) with out_proj further scaled by 1/sqrt(L); conv weights and bias
// ~ U(±1/sqrt(K)); dt_proj.weight ~ U(±R^-0.5); dt_proj.bias the inverse
// softplus of dt = exp(U(ln DtMin, ln DtMax)) floored at DtFloor;
// A_log[e,n] = ln(n+1); D = 1; norm weights 1 and biases 0.
func (m *Model) Init(seed uint64) {
	c := m.Cfg
	r := rand.New(rand.NewPCG(seed, 0x6d616d6261))
	D, E, N, K, R := c.DModel, c.DInner(), c.DState, c.DConv, c.Rank()
	t := map[string][]float32{}
	uniform := func(n int, bound float64) []float32 {
		s := make([]float32, n)
		for i := range s {
			s[i] = float32((2*r.Float64() - 1) * bound)
		}
		return s
	}
	fill := func(n int, v float32) []float32 {
		s := make([]float32, n)
		for i := range s {
			s[i] = v
		}
		return s
	}
	emb := make([]float32, c.VocabSize*D)
	for i := range emb {
		emb[i] = float32(r.NormFloat64() * c.InitStd)
	}
	t[NameEmbed] = emb
	for l := 0; l < c.NLayer; l++ {
		p := LayerPrefix(l)
		t[p+SufNorm] = fill(D, 1)
		if c.Norm == LayerNorm {
			t[p+SufNormB] = fill(D, 0)
		}
		t[p+SufInProj] = uniform(2*E*D, 1/math.Sqrt(float64(D)))
		t[p+SufConvW] = uniform(E*K, 1/math.Sqrt(float64(K)))
		if c.ConvBias {
			t[p+SufConvB] = uniform(E, 1/math.Sqrt(float64(K)))
		}
		t[p+SufXProj] = uniform((R+2*N)*E, 1/math.Sqrt(float64(E)))
		t[p+SufDtProj] = uniform(E*R, 1/math.Sqrt(float64(R)))
		bias := make([]float32, E)
		lo, hi := math.Log(c.DtMin), math.Log(c.DtMax)
		for e := range bias {
			dt := max(math.Exp(lo+r.Float64()*(hi-lo)), c.DtFloor)
			bias[e] = float32(dt + math.Log(-math.Expm1(-dt)))
		}
		t[p+SufDtBias] = bias
		alog := make([]float32, E*N)
		for e := 0; e < E; e++ {
			for n := 0; n < N; n++ {
				alog[e*N+n] = float32(math.Log(float64(n + 1)))
			}
		}
		t[p+SufALog] = alog
		t[p+SufD] = fill(E, 1)
		t[p+SufOutProj] = uniform(D*E, 1/math.Sqrt(float64(E))/math.Sqrt(float64(c.NLayer)))
	}
	t[NameNormF] = fill(D, 1)
	if c.Norm == LayerNorm {
		t[NameNormFB] = fill(D, 0)
	}
	if !c.TieEmbeddings {
		t[NameHead] = uniform(c.VocabSize*D, 1/math.Sqrt(float64(D)))
	}
	if err := m.SetParams(t); err != nil {
		panic(err) // the names come from TensorSpecs: a mismatch is a bug here
	}
}

// NoDecay reports whether a parameter is excluded from weight decay
// (A_log, D, norms and biases).
func NoDecay(name string) bool {
	switch {
	case hasSuffix(name, SufALog), hasSuffix(name, SufD):
		return true
	case hasSuffix(name, ".bias"):
		return true
	case hasSuffix(name, "norm.weight"), name == NameNormF:
		return true
	}
	return false
}

func hasSuffix(s, suf string) bool { return len(s) >= len(suf) && s[len(s)-len(suf):] == suf }

// Run is a contiguous range of the parameter buffer whose tensors share
// their weight-decay treatment.
type Run = backend.Run

// DecayRuns splits the parameter buffer into maximal runs of tensors that
// are all decayed or all excluded from decay (see NoDecay).
func (m *Model) DecayRuns() []Run {
	var runs []Run
	for _, s := range m.specs {
		decay := !NoDecay(s.Name)
		off := m.offsets[s.Name]
		if n := len(runs); n > 0 && runs[n-1].Decay == decay && runs[n-1].Off+runs[n-1].Len == off {
			runs[n-1].Len += s.Size()
			continue
		}
		runs = append(runs, Run{Off: off, Len: s.Size(), Decay: decay})
	}
	return runs
}
