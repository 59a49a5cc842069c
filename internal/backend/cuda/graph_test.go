package cuda_test

import (
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/mambabyte/mambabyte/internal/backend"
	"github.com/mambabyte/mambabyte/internal/model"
)

// Gemm with few rows and a transposed B (x·Wᵀ at decode) takes a kernel of
// its own; TestGemm covers its scalar path, this its 16-byte path (k and
// the row strides multiples of 4, aligned rows) and the partial tails of
// its unrolled loop.
func TestGemmFewRows(t *testing.T) {
	g32, g16 := gpus(t)
	for _, mode := range []struct {
		name string
		tol  float64
		e    *env
	}{{"fp32", tolFP32, newEnv(t, g32, 3)}, {"bf16", tolBF16, newEnv(t, g16, 4)}} {
		e := mode.e
		for _, m := range []int{1, 2, 3, 5, 8} {
			for _, k := range []int{4, 64, 516, 1036} {
				for _, beta := range []float32{0, 1} {
					n, lda, ldb, ldc := 37, k+4, k, 40
					a := e.randn(m*lda, 0, 1)
					b := e.randn(n*ldb, 0, 1)
					var c *pair
					if beta == 0 {
						c = e.nan(m * ldc)
					} else {
						c = e.randn(m*ldc, 0, 1)
					}
					e.run(func(be backend.Backend, s side) {
						be.Gemm(false, true, m, n, k, 0.7, a.on(s), lda, b.on(s), ldb, beta, c.on(s), ldc)
					})
					// Columns beyond n of each row stay NaN (or untouched).
					e.check(fmt.Sprintf("%s m=%d k=%d beta=%g", mode.name, m, k, beta), "gemm few rows "+mode.name, c, mode.tol)
				}
			}
		}
	}
}

// The Stepper replaying CUDA graphs gives the logits of the Stepper running
// each operation (MAMBABYTE_CUDA_GRAPHS=0) exactly, and in fp32 those of
// the CPU, over 50 steps
// that alternate two States, restore a snapshot with CopyFrom, step a
// Clone, go through more States than the Stepper keeps recordings for, and
// change the parameters half way.
func TestStepperGraphs(t *testing.T) {
	for _, prec := range precisions(t) {
		if prec.name == "bf16" {
			continue // bf16-perturbed covers the bf16 GEMMs
		}
		for _, name := range []string{"d96", "rmsnorm-odd"} {
			cfg := modelConfigs()[name]
			for _, B := range []int{1, 3, 64} {
				t.Run(fmt.Sprintf("%s/%s/B%d", prec.name, name, B), func(t *testing.T) {
					stepperGraphs(t, prec, cfg, B)
				})
			}
		}
	}
}

// side3 is one way of stepping: a model, a Stepper and its States.
type side3 struct {
	m      *model.Model
	sp     *model.Stepper
	a, b   *model.State
	snap   *model.State
	logits []float32
}

func stepperGraphs(t *testing.T, prec precision, cfg model.Config, B int) {
	cm, gm := twins(t, cfg, prec.g, 5, prec.perturb)
	dm, err := model.New(cfg, prec.g)
	if err != nil {
		t.Fatal(err)
	}
	if err := dm.SetParams(cm.ParamsHost()); err != nil {
		t.Fatal(err)
	}
	newSide := func(m *model.Model, graphs string) *side3 {
		t.Setenv("MAMBABYTE_CUDA_GRAPHS", graphs)
		return &side3{m: m, sp: m.NewStepper(B), a: m.NewState(B), b: m.NewState(B)}
	}
	sides := []*side3{newSide(cm, "1"), newSide(gm, "1"), newSide(dm, "0")}
	const cpuSide, graphSide, directSide = 0, 1, 2

	r := rand.New(rand.NewPCG(uint64(B), 7))
	V := cfg.VocabSize
	// New parameters for step 25, the same on every side.
	p2 := cm.ParamsHost()
	for _, v := range p2 {
		for i := range v {
			v[i] *= 0.9
		}
	}
	for step := 0; step < 50; step++ {
		bytes := ids(r, B, V)
		for si, s := range sides {
			st := s.a
			switch {
			case step%2 == 1:
				st = s.b
			case step == 20:
				s.snap = s.a.Clone()
			case step == 30 || step == 36:
				if err := s.a.CopyFrom(s.snap); err != nil {
					t.Fatal(err)
				}
			case step == 34:
				st = s.snap.Clone()
			case step >= 40 && step < 48:
				// A fresh State each time: more than the Stepper keeps.
				st = s.a.Clone()
				if step == 46 {
					s.a = st
				}
			}
			if step == 25 {
				if err := s.m.SetParams(p2); err != nil {
					t.Fatal(err)
				}
			}
			l, err := s.sp.Step(st, bytes)
			if err != nil {
				t.Fatalf("side %d step %d: %v", si, step, err)
			}
			s.logits = append(s.logits[:0], l...)
		}
		what := fmt.Sprintf("step %d", step)
		if prec.name == "fp32" {
			// bf16: TestFusedStep holds the step to the CPU.
			checkVec(t, what+": graphs vs CPU", "stepper graphs vs CPU "+prec.name, sides[graphSide].logits, sides[cpuSide].logits, prec.tol)
		}
		checkVec(t, what+": graphs vs direct", "stepper graphs vs direct "+prec.name, sides[graphSide].logits, sides[directSide].logits, prec.tol)
		if t.Failed() {
			return
		}
	}
	if n := sides[graphSide].sp.Graphs(); n == 0 {
		t.Errorf("the graph Stepper holds no graphs")
	}
	if n := sides[directSide].sp.Graphs(); n != 0 {
		t.Errorf("with MAMBABYTE_CUDA_GRAPHS=0 the Stepper holds %d graphs", n)
	}
	sides[graphSide].sp.Free()
}
