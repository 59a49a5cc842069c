package cuda_test

import (
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/mambabyte/mambabyte/internal/model"
)

// The fused step (four kernels per block, bf16 weight copies in bf16 mode)
// gives the CPU's logits, over steps that run directly and from CUDA
// graphs, for every test configuration and one wide enough to exercise
// the vector loops' tails, and for stream counts on both sides of the
// switch from its own matrix-vector kernels to cuBLAS.
//
// On weights far off their initialisation in bf16 mode the reference is
// the CPU model with the same matrices rounded to bf16 (roundMatrices),
// and only where that is the whole difference: an untied head (a tied
// one would round the embedding the CPU looks up, which the GPU does
// not) and one stream (more go through cuBLAS, which also rounds the
// activations; the bf16 GEMM tests cover that).
func TestFusedStep(t *testing.T) {
	cfgs := modelConfigs()
	wide := cfgs["d96"]
	wide.DModel = 264 // E 528, R 17: tails in every 16-byte loop
	wide.TieEmbeddings = false
	cfgs["d264-untied"] = wide
	for _, prec := range precisions(t) {
		for _, name := range []string{"layernorm-tied", "rmsnorm-odd", "no-conv-bias-K1", "d264-untied"} {
			for _, B := range []int{1, 2, 3, 9, 64} {
				if prec.name == "bf16-perturbed" && (B > 1 || cfgs[name].TieEmbeddings) {
					continue
				}
				t.Run(fmt.Sprintf("%s/%s/B%d", prec.name, name, B), func(t *testing.T) {
					fusedStep(t, prec, cfgs[name], B)
				})
			}
		}
	}
}

func fusedStep(t *testing.T, prec precision, cfg model.Config, B int) {
	cm, gm := twins(t, cfg, prec.g, 11, prec.perturb)
	if prec.perturb != 0 && prec.name != "fp32" {
		if err := cm.SetParams(roundMatrices(cm.ParamsHost())); err != nil {
			t.Fatal(err)
		}
	}
	csp, gsp := cm.NewStepper(B), gm.NewStepper(B)
	if !gsp.Fused() {
		t.Fatal("the CUDA Stepper does not use the fused step")
	}
	cs, gs := cm.NewState(B), gm.NewState(B)
	r := rand.New(rand.NewPCG(uint64(B), 3))
	for step := 0; step < 12; step++ {
		bytes := ids(r, B, cfg.VocabSize)
		want, err := csp.Step(cs, bytes)
		if err != nil {
			t.Fatal(err)
		}
		got, err := gsp.Step(gs, bytes)
		if err != nil {
			t.Fatal(err)
		}
		checkVec(t, fmt.Sprintf("step %d", step), "fused step vs CPU "+prec.name, got, want, prec.tol)
		if t.Failed() {
			return
		}
	}
	if gsp.Graphs() == 0 {
		t.Errorf("the fused Stepper recorded no graph")
	}
}
