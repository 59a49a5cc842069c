package cuda_test

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/mambabyte/mambabyte/internal/model"
)

// The fused step (four kernels per block, bf16 weight copies in bf16 mode)
// gives the CPU's logits, over steps that run directly and from CUDA
// graphs, for every test configuration and one wide enough to exercise
// the vector loops' tails, and for stream counts on both sides of the
// switch from its own matrix-vector kernels to cuBLAS.
//
// One stream in bf16 mode runs block by block, and with
// MAMBABYTE_CUDA_WHOLE=1 or global through the one-kernel step
// (whole.cuh) in its two ways of reading the weights; all three are
// checked.
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
	// Two layers of the 353M and 972M models, one stream: the one-kernel
	// step with many channels per block, staged and (972M) not.
	for name, d := range map[string]int{"353m-layers": 1024, "972m-layers": 1792} {
		c := model.DefaultConfig()
		c.DModel, c.NLayer, c.TieEmbeddings = d, 2, false
		cfgs[name] = c
	}
	for _, prec := range precisions(t) {
		for _, name := range []string{"layernorm-tied", "rmsnorm-odd", "no-conv-bias-K1", "d264-untied", "353m-layers", "972m-layers"} {
			for _, B := range []int{1, 2, 3, 9, 64} {
				if strings.HasSuffix(name, "-layers") && (B > 1 || prec.name == "fp32") {
					continue // they are here for the one-kernel step (bf16, one stream)
				}
				if prec.name == "bf16-perturbed" && (B > 1 || cfgs[name].TieEmbeddings) {
					continue
				}
				if B > 1 || prec.name == "fp32" {
					t.Run(fmt.Sprintf("%s/%s/B%d", prec.name, name, B), func(t *testing.T) {
						fusedStep(t, prec, cfgs[name], B)
					})
					continue
				}
				// One stream in bf16: the step block by block (the
				// default), and the one-kernel step with its weights
				// staged in shared memory or read from global memory.
				for _, whole := range []string{"", "1", "global"} {
					t.Run(fmt.Sprintf("%s/%s/B%d/whole=%q", prec.name, name, B, whole), func(t *testing.T) {
						t.Setenv("MAMBABYTE_CUDA_WHOLE", whole)
						before := prec.g.WholeSteps()
						fusedStep(t, prec, cfgs[name], B)
						if used := prec.g.WholeSteps() > before; used != (whole != "") {
							t.Errorf("one-kernel step used: %v", used)
						}
					})
				}
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
