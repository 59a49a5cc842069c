package cuda_test

import (
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"sort"
	"strings"
	"testing"

	"github.com/mambabyte/mambabyte/internal/backend"
	"github.com/mambabyte/mambabyte/internal/backend/cpu"
	"github.com/mambabyte/mambabyte/internal/backend/cuda"
	"github.com/mambabyte/mambabyte/internal/model"
	"github.com/mambabyte/mambabyte/internal/train"
)

// Whole-model tests: the same parameters on the CPU and the GPU give the
// same loss, logits, gradients, recurrent steps and optimizer updates.

// modelConfigs are internal/model's test configurations (both norms, tied
// and separate heads, odd K, expand, N and R, no conv bias with K 1) and a
// wider one.
func modelConfigs() map[string]model.Config {
	base := model.DefaultConfig()
	base.DModel, base.NLayer = 16, 2
	odd := base
	odd.DModel, odd.NLayer, odd.DConv, odd.Expand, odd.DState, odd.DTRank = 12, 3, 3, 3, 5, 3
	odd.Norm, odd.TieEmbeddings = model.RMSNorm, false
	odd.VocabSize = 40
	nobias := base
	nobias.ConvBias = false
	nobias.DConv = 1
	wide := base
	wide.DModel = 96
	return map[string]model.Config{"layernorm-tied": base, "rmsnorm-odd": odd, "no-conv-bias-K1": nobias, "d96": wide}
}

// precision is a GPU backend, the tolerance its results must meet, and
// how far the test model's weights are moved off their initialisation.
type precision struct {
	name    string
	g       *cuda.Backend
	tol     float64
	perturb float64
}

// precisions lists the backends under test. fp32 is held to 1e-4 on
// weights moved far off their initialisation (every term matters). bf16
// GEMMs round their operands to 8 significant bits: on initialised weights
// the model stays within 1e-2; on the far-moved weights, whose large
// activations amplify the rounding through the layers, within 5e-2 (about
// 3e-2 seen on an H100).
func precisions(t *testing.T) []precision {
	g32, g16 := gpus(t)
	return []precision{
		{"fp32", g32, tolFP32, 0.3},
		{"bf16", g16, tolBF16, 0},
		{"bf16-perturbed", g16, 5e-2, 0.3},
	}
}

// twins returns a CPU model and a GPU model with the same parameters: as
// initialised, or with perturb > 0 moved off the initialisation by
// N(0, perturb²) noise and with N(0,1) embeddings.
func twins(t *testing.T, cfg model.Config, g backend.Backend, seed uint64, perturb float64) (cm, gm *model.Model) {
	t.Helper()
	cm, err := model.New(cfg, cpu.New())
	if err != nil {
		t.Fatal(err)
	}
	cm.Init(seed)
	r := rand.New(rand.NewPCG(seed, 99))
	p := cm.ParamsHost()
	names := make([]string, 0, len(p))
	for name := range p {
		names = append(names, name)
	}
	sort.Strings(names) // the same draws for the same tensors every run
	for _, name := range names {
		v := p[name]
		for i := range v {
			switch {
			case perturb == 0:
			case name == model.NameEmbed:
				v[i] = float32(r.NormFloat64())
			default:
				v[i] += float32(r.NormFloat64() * perturb)
			}
		}
	}
	if err := cm.SetParams(p); err != nil {
		t.Fatal(err)
	}
	gm, err = model.New(cfg, g)
	if err != nil {
		t.Fatal(err)
	}
	if err := gm.SetParams(p); err != nil {
		t.Fatal(err)
	}
	return cm, gm
}

// roundMatrices returns p with the tensors that the fused step reads as bf16
// copies in bf16 mode (the four projections of every layer and the head,
// which is the embedding in a tied model) rounded to bf16, the reference
// for that path on weights far off their initialisation, where rounding the
// weights alone moves the logits by several percent.
func roundMatrices(p map[string][]float32) map[string][]float32 {
	out := make(map[string][]float32, len(p))
	_, untied := p[model.NameHead]
	for name, v := range p {
		w := append([]float32(nil), v...)
		if strings.HasSuffix(name, "_proj.weight") || name == model.NameHead || (name == model.NameEmbed && !untied) {
			for i, x := range w {
				w[i] = bf16Round(x)
			}
		}
		out[name] = w
	}
	return out
}

// bf16Round rounds x to the nearest bf16 value, ties to even (NaN stays NaN).
func bf16Round(x float32) float32 {
	if x != x {
		return x
	}
	b := math.Float32bits(x)
	b += 0x7fff + (b>>16)&1
	return math.Float32frombits(b &^ 0xffff)
}

func nextTargets(ids []int32, B, T int) []int32 {
	tg := make([]int32, len(ids))
	for b := 0; b < B; b++ {
		for t := 0; t < T; t++ {
			if t+1 < T {
				tg[b*T+t] = ids[b*T+t+1]
			} else {
				tg[b*T+t] = -1
			}
		}
	}
	return tg
}

// checkVec fails when got differs from want by more than tol relative.
func checkVec(t *testing.T, name, table string, got, want []float32, tol float64) {
	t.Helper()
	d, problem := compare(got, want)
	if problem != "" {
		record(table, math.NaN())
		t.Errorf("%s: %s", name, problem)
		return
	}
	record(table, d)
	if d > tol {
		t.Errorf("%s: relative error %.3g > %.3g", name, d, tol)
	} else if testing.Verbose() {
		t.Logf("%s: relative error %.3g", name, d)
	}
}

func checkScalar(t *testing.T, name, table string, got, want, tol float64) {
	t.Helper()
	d := math.Abs(got-want) / math.Max(math.Abs(want), 1e-30)
	record(table, d)
	if !(d <= tol) {
		t.Errorf("%s: %g, want %g (relative error %.3g > %.3g)", name, got, want, d, tol)
	}
}

func TestModelForwardBackward(t *testing.T) {
	for _, prec := range precisions(t) {
		for name, cfg := range modelConfigs() {
			t.Run(prec.name+"/"+name, func(t *testing.T) {
				checkForwardBackward(t, prec, cfg, 2, 150) // T spans three scan chunks
			})
		}
	}
}

// TestModelPackedGEMMs is TestModelForwardBackward in bf16 on a model whose
// in_proj and out_proj GEMMs (and their backwards) have every side at least
// 512, so they run on bf16 copies of their operands, on initialised
// weights; the thin x_proj and dt_proj products then read bf16 operands as
// well (backend.ThinRounder), and once more float32 ones
// (MAMBABYTE_CUDA_THIN16=0). (Weights moved 0.3 off their initialisation
// make this model's activations so large that the bf16 rounding grows
// through the layers to gradient errors of 0.17 even without the copies,
// past any useful bound.)
func TestModelPackedGEMMs(t *testing.T) {
	cfg := model.DefaultConfig()
	cfg.DModel, cfg.NLayer = 512, 2
	const B, T = 2, 300
	for _, prec := range precisions(t) {
		if prec.name != "bf16" {
			continue
		}
		for _, thin := range []bool{true, false} {
			p := prec
			p.name += "-d512"
			if !thin {
				p.name += "-thin32"
			}
			t.Run(p.name, func(t *testing.T) {
				if !thin {
					t.Setenv("MAMBABYTE_CUDA_THIN16", "0")
				}
				if got := p.g.RoundsThin(min(B*T, cfg.DInner())); got != thin {
					if os.Getenv("MAMBABYTE_CUDA_GEMM_PACK") == "0" {
						t.Skip("MAMBABYTE_CUDA_GEMM_PACK=0: no product reads bf16 operands")
					}
					t.Fatalf("the thin products on bf16 operands: %v, want %v", got, thin)
				}
				checkForwardBackward(t, p, cfg, B, T)
			})
		}
	}
}

// checkForwardBackward compares the GPU's logits, loss and gradients on a
// (B, T) batch with the CPU's, for the same weights.
func checkForwardBackward(t *testing.T, prec precision, cfg model.Config, B, T int) {
	cm, gm := twins(t, cfg, prec.g, 7, prec.perturb)
	r := rand.New(rand.NewPCG(1, 1))
	V := cfg.VocabSize
	ids := ids(r, B*T, V)
	tg := nextTargets(ids, B, T)
	tab := func(s string) string { return "model " + s + " " + prec.name }

	// Inference logits.
	logits := func(m *model.Model) []float32 {
		p := m.NewPass(B, T, false)
		if _, _, err := p.Forward(ids, nil, nil, nil, 0); err != nil {
			t.Fatal(err)
		}
		out := make([]float32, B*T*V)
		p.Logits(out)
		return out
	}
	checkVec(t, "logits", tab("logits"), logits(gm), logits(cm), prec.tol)

	// A training step: loss, per-position nll, dlogits, gradients.
	type result struct {
		sum    float64
		nll    []float32
		dl     []float32
		grads  map[string][]float32
		gnorm2 float64
	}
	step := func(m *model.Model, recompute bool) result {
		var res result
		m.ZeroGrads()
		p := m.NewPass(B, T, true)
		if recompute {
			p = m.NewRecomputePass(B, T)
		}
		res.nll = make([]float32, B*T)
		sum, count, err := p.Forward(ids, tg, nil, res.nll, 1/float32(B*(T-1)))
		if err != nil {
			t.Fatal(err)
		}
		if count != B*(T-1) {
			t.Fatalf("count %d", count)
		}
		res.sum = sum
		res.dl = make([]float32, B*T*V)
		p.Logits(res.dl)
		if err := p.Backward(); err != nil {
			t.Fatal(err)
		}
		res.grads = m.GradsHost()
		res.gnorm2 = m.BE.SumSquares(m.Grads)
		return res
	}
	want := step(cm, false)
	// The GPU with every activation kept, and with each layer's
	// recomputed in the backward pass.
	for _, recompute := range []bool{false, true} {
		got := step(gm, recompute)
		pre := ""
		if recompute {
			pre = "recompute: "
		}
		checkScalar(t, pre+"loss", tab("loss"), got.sum, want.sum, prec.tol)
		checkVec(t, pre+"nll", tab("loss"), got.nll, want.nll, prec.tol)
		checkVec(t, pre+"dlogits", tab("dlogits"), got.dl, want.dl, prec.tol)
		names := make([]string, 0, len(want.grads))
		for n := range want.grads {
			names = append(names, n)
		}
		sort.Strings(names)
		for _, n := range names {
			checkVec(t, pre+"gradient "+n, tab("gradients"), got.grads[n], want.grads[n], prec.tol)
		}
		checkScalar(t, pre+"gradient sum of squares", tab("gradients"), got.gnorm2, want.gnorm2, 2*prec.tol)
	}
}

// The recurrent step (T = 1 with a carried state) and a forward over chunks
// of several lengths with a carried state match the CPU.
func TestModelStepAndChunks(t *testing.T) {
	for _, prec := range precisions(t) {
		for name, cfg := range modelConfigs() {
			t.Run(prec.name+"/"+name, func(t *testing.T) {
				cm, gm := twins(t, cfg, prec.g, 3, prec.perturb)
				r := rand.New(rand.NewPCG(2, 2))
				B, T, V := 2, 90, cfg.VocabSize
				ids := ids(r, B*T, V)
				stepped := func(m *model.Model) []float32 {
					st := m.NewState(B)
					sp := m.NewStepper(B)
					out := make([]float32, 0, B*T*V)
					for tt := 0; tt < T; tt++ {
						l, err := sp.Step(st, []int32{ids[tt], ids[T+tt]})
						if err != nil {
							t.Fatal(err)
						}
						out = append(out, l...)
					}
					// Snapshot and restore, then one more step.
					snap := st.Clone()
					l1, _ := sp.Step(st, []int32{1, 2})
					a := append([]float32(nil), l1...)
					if err := st.CopyFrom(snap); err != nil {
						t.Fatal(err)
					}
					l2, _ := sp.Step(st, []int32{1, 2})
					for i := range a {
						if a[i] != l2[i] {
							t.Fatalf("after restore, logit %d is %g, first run gave %g", i, l2[i], a[i])
						}
					}
					return out
				}
				checkVec(t, "stepped logits", "model step "+prec.name, stepped(gm), stepped(cm), prec.tol)

				chunked := func(m *model.Model) []float32 {
					st := m.NewState(B)
					var out []float32
					off := 0
					for _, n := range []int{1, 70, 3, 16} {
						p := m.NewPass(B, n, false)
						cids := make([]int32, 0, B*n)
						for b := 0; b < B; b++ {
							cids = append(cids, ids[b*T+off:b*T+off+n]...)
						}
						if _, _, err := p.Forward(cids, nil, st, nil, 0); err != nil {
							t.Fatal(err)
						}
						l := make([]float32, B*n*V)
						p.Logits(l)
						out = append(out, l...)
						off += n
					}
					return out
				}
				checkVec(t, "chunked logits", "model chunks "+prec.name, chunked(gm), chunked(cm), prec.tol)
			})
		}
	}
}

// A few AdamW steps with clipping, through internal/train, leave the same
// parameters. bf16 runs only on the perturbed weights: Adam's first steps
// move every parameter by about ±lr whatever the gradient's size, so on
// initialised weights (biases at zero, tiny gradients) a bf16-sized change
// of a gradient flips whole updates of parameters that are themselves
// update-sized, and a relative comparison measures nothing.
func TestModelAdamW(t *testing.T) {
	for _, prec := range precisions(t) {
		if prec.perturb == 0 && prec.name != "fp32" {
			continue
		}
		for _, name := range []string{"layernorm-tied", "rmsnorm-odd"} {
			cfg := modelConfigs()[name]
			t.Run(prec.name+"/"+name, func(t *testing.T) {
				cm, gm := twins(t, cfg, prec.g, 5, prec.perturb)
				B, T := 2, 70
				run := func(m *model.Model) ([]float64, map[string][]float32) {
					opt := train.NewAdamW(m, 0.9, 0.95, 1e-8, 0.1)
					p := m.NewPass(B, T, true)
					rr := rand.New(rand.NewPCG(4, 4))
					var norms []float64
					for step := 1; step <= 3; step++ {
						id := ids(rr, B*T, cfg.VocabSize)
						m.ZeroGrads()
						if _, _, err := p.Forward(id, nextTargets(id, B, T), nil, nil, 1/float32(B*(T-1))); err != nil {
							t.Fatal(err)
						}
						if err := p.Backward(); err != nil {
							t.Fatal(err)
						}
						norms = append(norms, train.ClipGradNorm(m, 1))
						opt.Step(m, step, 1e-2)
					}
					return norms, m.ParamsHost()
				}
				wantN, want := run(cm)
				gotN, got := run(gm)
				for i := range wantN {
					checkScalar(t, fmt.Sprintf("gradient norm at step %d", i+1), "model adamw "+prec.name, gotN[i], wantN[i], prec.tol)
				}
				for _, s := range cm.Specs() {
					checkVec(t, "parameter "+s.Name, "model adamw "+prec.name, got[s.Name], want[s.Name], prec.tol)
				}
			})
		}
	}
}

// TestModelRepeatability reports (without failing) whether two identical
// training steps give bit-identical gradients: the embedding gradient, and
// dBt/dCt in the general scan kernels (not the four-state ones, which this
// model's N takes), are summed with atomics, in an order that may vary.
func TestModelRepeatability(t *testing.T) {
	g, _ := gpus(t)
	cfg := modelConfigs()["d96"]
	_, gm := twins(t, cfg, g, 9, 0.3)
	r := rand.New(rand.NewPCG(5, 5))
	B, T := 4, 300
	id := ids(r, B*T, cfg.VocabSize)
	tg := nextTargets(id, B, T)
	p := gm.NewPass(B, T, true)
	grads := func() map[string][]float32 {
		gm.ZeroGrads()
		if _, _, err := p.Forward(id, tg, nil, nil, 1/float32(B*(T-1))); err != nil {
			t.Fatal(err)
		}
		if err := p.Backward(); err != nil {
			t.Fatal(err)
		}
		return gm.GradsHost()
	}
	a, b := grads(), grads()
	var differ []string
	for _, s := range gm.Specs() {
		for i := range a[s.Name] {
			if a[s.Name][i] != b[s.Name][i] {
				differ = append(differ, s.Name)
				break
			}
		}
	}
	if len(differ) == 0 {
		t.Logf("two identical steps gave bit-identical gradients")
	} else {
		t.Logf("two identical steps differ in %d of %d gradient tensors: %v", len(differ), len(gm.Specs()), differ)
	}
}

// TestModelWeightCopies runs training steps with the model's bf16 copies
// of in_proj and out_proj (backend.WeightRounder) and with products that
// round the weights themselves (MAMBABYTE_CUDA_WEIGHT_COPIES=0): a step on
// the first weights, and one after SetParams moves every weight by up to
// 0.01, on the same batches. The copies hold the values the products'
// own would, so the losses and gradients must agree to float32 rounding
// (gradients summed with atomics may differ in their last bits:
// TestModelRepeatability); a copy left stale after the change would be
// off by far more.
func TestModelWeightCopies(t *testing.T) {
	_, g16 := gpus(t)
	cfg := model.DefaultConfig()
	cfg.DModel, cfg.NLayer = 512, 2
	B, T := 2, 300
	if !g16.RoundsWeights(min(B*T, cfg.DModel, cfg.DInner())) {
		t.Skip("the bf16 backend's products do not round their operands here")
	}
	type result struct {
		sum   float64
		grads map[string][]float32
	}
	run := func() []result {
		_, m := twins(t, cfg, g16, 11, 0)
		p := m.NewPass(B, T, true)
		rr := rand.New(rand.NewPCG(6, 6))
		var out []result
		for step := 0; step < 2; step++ {
			if step > 0 {
				moved := m.ParamsHost()
				for _, v := range moved {
					for i := range v {
						v[i] += 0.01 * float32(math.Sin(float64(i)))
					}
				}
				if err := m.SetParams(moved); err != nil {
					t.Fatal(err)
				}
			}
			id := ids(rr, B*T, cfg.VocabSize)
			m.ZeroGrads()
			sum, _, err := p.Forward(id, nextTargets(id, B, T), nil, nil, 1/float32(B*(T-1)))
			if err != nil {
				t.Fatal(err)
			}
			if err := p.Backward(); err != nil {
				t.Fatal(err)
			}
			out = append(out, result{sum, m.GradsHost()})
		}
		return out
	}
	got := run()
	t.Setenv("MAMBABYTE_CUDA_WEIGHT_COPIES", "0")
	if g16.RoundsWeights(min(B*T, cfg.DModel, cfg.DInner())) {
		t.Fatal("MAMBABYTE_CUDA_WEIGHT_COPIES=0 did not turn the copies off")
	}
	want := run()
	for i := range want {
		checkScalar(t, fmt.Sprintf("loss at step %d", i+1), "model weight copies", got[i].sum, want[i].sum, 1e-6)
		for name, w := range want[i].grads {
			checkVec(t, fmt.Sprintf("gradient %s at step %d", name, i+1), "model weight copies", got[i].grads[name], w, 1e-5)
		}
	}
}
