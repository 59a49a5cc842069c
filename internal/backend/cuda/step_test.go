package cuda_test

import (
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/mambabyte/mambabyte/internal/model"
)

// The fused step (four kernels per block, bf16 weight copies in bf16 mode)
// gives the CPU's logits, over steps that run directly and from CUDA
// graphs, for every test configuration and one wide enough to exercise
// the vector loops' tails, and for stream counts on both sides of the
// switch from its own matrix-vector kernels to the many-stream paths.
// In bf16 mode those are the tensor-core kernels (by default up to 16
// streams; with MAMBABYTE_CUDA_STEP_MMA=all for any number, 70 taking two
// tiles of 64) and cuBLAS (above 16, or all with =0); each is checked.
// The cuBLAS path makes x_proj's sums in its conv kernel unless
// MAMBABYTE_CUDA_STEP_FUSE_X=0, which each stream count runs as well.
//
// One stream in bf16 mode runs block by block, and with
// MAMBABYTE_CUDA_WHOLE=1 or global through the one-kernel step
// (whole.cuh) in its two ways of reading the weights; all three are
// checked. Block by block, one stream is checked in both precisions with
// x_proj inside in_proj (the default) and as its own kernel
// (MAMBABYTE_CUDA_STEP_FUSE_X=0).
//
// On weights far off their initialisation in bf16 mode the reference is
// the CPU model with the same matrices rounded to bf16 (roundMatrices),
// and only where that is the whole difference: an untied head (a tied
// one would round the embedding the CPU looks up, which the GPU does
// not) and one stream (the many-stream paths also round the activations).
func TestFusedStep(t *testing.T) {
	cfgs := modelConfigs()
	wide := cfgs["d96"]
	wide.DModel = 264 // E 528, R 17: tails in every 16-byte loop
	wide.TieEmbeddings = false
	cfgs["d264-untied"] = wide
	// The many-stream scan with one lane a channel (N 4; a rank of 40, ten
	// groups of four for the lane) and with eight lanes a channel (N 32;
	// the rank of 6 padded with zeros to 32).
	n4 := cfgs["layernorm-tied"]
	n4.DState, n4.DTRank = 4, 40
	cfgs["n4-rank40"] = n4
	n32 := cfgs["d96"]
	n32.DState = 32
	cfgs["d96-n32"] = n32
	// x_proj's rows past 96 (40 + 2·32): the many-stream conv kernel
	// stages W_x's slice rather than holding it in registers (cx_reg).
	n32.DTRank = 40
	cfgs["d96-n32-rank40"] = n32
	// Two layers of the 353M and 972M models: the one-kernel step with many
	// channels per block, staged and (972M) not, and the tensor-core path.
	for name, d := range map[string]int{"353m-layers": 1024, "972m-layers": 1792} {
		c := model.DefaultConfig()
		c.DModel, c.NLayer, c.TieEmbeddings = d, 2, false
		cfgs[name] = c
	}
	for _, prec := range precisions(t) {
		for _, name := range []string{"layernorm-tied", "rmsnorm-odd", "no-conv-bias-K1", "d264-untied", "n4-rank40", "d96-n32", "d96-n32-rank40", "353m-layers", "972m-layers"} {
			for _, B := range []int{1, 2, 3, 9, 64, 70} {
				if strings.HasSuffix(name, "-layers") && (B > 2 || prec.name == "fp32" && !(name == "972m-layers" && B == 1)) {
					// They are here for the one-kernel step (bf16, one
					// stream), for the tensor-core kernels at the
					// models' widths (two streams; 972M's products stage
					// their columns in more than one piece), and for
					// 972M's one-stream out_proj in blocks of more than
					// 256 threads (on 132 SMs; in float32 its rows do not
					// fit in the registers it loads before the wait).
					continue
				}
				if prec.name == "bf16-perturbed" && (B > 1 || cfgs[name].TieEmbeddings) {
					continue
				}
				if prec.name == "fp32" {
					t.Run(fmt.Sprintf("%s/%s/B%d", prec.name, name, B), func(t *testing.T) {
						fusedStep(t, prec, cfgs[name], B)
					})
					if B == 1 {
						t.Run(fmt.Sprintf("%s/%s/B%d/fuse_x=0", prec.name, name, B), func(t *testing.T) {
							t.Setenv("MAMBABYTE_CUDA_STEP_FUSE_X", "0")
							fusedStep(t, prec, cfgs[name], B)
						})
					}
					continue
				}
				if B > 1 {
					for _, mma := range []string{"", "0", "all"} {
						t.Run(fmt.Sprintf("%s/%s/B%d/mma=%q", prec.name, name, B, mma), func(t *testing.T) {
							t.Setenv("MAMBABYTE_CUDA_STEP_MMA", mma)
							before := prec.g.StepMMACount()
							fusedStep(t, prec, cfgs[name], B)
							used, want := prec.g.StepMMACount() > before, mmaPath(cfgs[name], B, mma)
							if used != want {
								t.Errorf("tensor-core path used: %v, want %v", used, want)
							}
						})
					}
					t.Run(fmt.Sprintf("%s/%s/B%d/mma=0/fuse_x=0", prec.name, name, B), func(t *testing.T) {
						t.Setenv("MAMBABYTE_CUDA_STEP_MMA", "0")
						t.Setenv("MAMBABYTE_CUDA_STEP_FUSE_X", "0")
						fusedStep(t, prec, cfgs[name], B)
					})
					continue
				}
				// One stream in bf16: the step block by block (the
				// default), and the one-kernel step with its weights
				// staged in shared memory or read from global memory.
				t.Run(fmt.Sprintf("%s/%s/B%d/fuse_x=0", prec.name, name, B), func(t *testing.T) {
					t.Setenv("MAMBABYTE_CUDA_STEP_FUSE_X", "0")
					fusedStep(t, prec, cfgs[name], B)
				})
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

// mmaPath says whether a bf16 step of B streams of cfg takes the
// tensor-core path under MAMBABYTE_CUDA_STEP_MMA=mma (step.cuh's
// step_mma_ok and scan_quad_ok).
func mmaPath(cfg model.Config, B int, mma string) bool {
	D, E, N := cfg.DModel, cfg.DInner(), cfg.DState
	p := N / 4
	fits := B >= 2 && D%8 == 0 && E%8 == 0 && N%4 == 0 && p <= 32 && p&(p-1) == 0
	switch mma {
	case "0":
		return false
	case "all":
		return fits
	}
	return fits && B <= 16
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

// x_proj's sums move in fixed point when in_proj (one stream) or the conv
// kernel (many streams on the cuBLAS path, bf16) makes them (step.cuh,
// kXAccLimit): a sum out of that range must turn the step's output into
// NaN, not into a wrapped value. The dt rows of x_proj are scaled far past
// the range (Δ then is huge, which the float32 path carries through to
// finite logits).
func TestFusedStepXRange(t *testing.T) {
	for _, c := range []struct {
		prec precision
		B    int
	}{{precisions(t)[0], 1}, {precisions(t)[1], 1}, {precisions(t)[1], 64}} {
		prec, B := c.prec, c.B
		cfg := modelConfigs()["d96"]
		_, gm := twins(t, cfg, prec.g, 5, 0)
		p := gm.ParamsHost()
		x := p[model.LayerPrefix(0)+model.SufXProj]
		for i := range cfg.Rank() * cfg.DInner() {
			x[i] *= 1e8
		}
		if err := gm.SetParams(p); err != nil {
			t.Fatal(err)
		}
		for _, fuse := range []string{"", "0"} {
			t.Run(fmt.Sprintf("%s/B%d/fuse_x=%q", prec.name, B, fuse), func(t *testing.T) {
				t.Setenv("MAMBABYTE_CUDA_STEP_FUSE_X", fuse)
				bytes := make([]int32, B)
				for i := range bytes {
					bytes[i] = 65
				}
				logits, err := gm.NewStepper(B).Step(gm.NewState(B), bytes)
				if err != nil {
					t.Fatal(err)
				}
				nans := 0
				for _, v := range logits {
					if math.IsNaN(float64(v)) {
						nans++
					} else if math.IsInf(float64(v), 0) {
						t.Fatalf("logit %v", v)
					}
				}
				want := 0 // the x_proj kernel sums in float32
				if fuse == "" {
					want = len(logits)
				}
				if nans != want {
					t.Errorf("%d of %d logits are NaN, want %d", nans, len(logits), want)
				}
			})
		}
	}
}
