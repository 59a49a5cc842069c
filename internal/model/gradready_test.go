package model_test

import (
	"math"
	"math/rand/v2"
	"testing"

	"github.com/mambabyte/mambabyte/internal/model"
)

// Each range OnGradReady reports already holds its final gradient (on the
// CPU, whose operations finish before they return), the ranges come in
// GradRanges' order and cover the buffer exactly once, for both norms,
// tied and separate heads, and the recomputing pass. The gradients were
// accumulated over two backward passes, as gradient accumulation does.
func TestGradReadyRangesAreFinal(t *testing.T) {
	for name, cfg := range testConfigs() {
		for _, recompute := range []bool{false, true} {
			m := perturbed(t, cfg, 3)
			m.ZeroGrads()
			const B, T = 2, 9
			p := m.NewPass(B, T, true)
			if recompute {
				p = m.NewRecomputePass(B, T)
			}
			r := rand.New(rand.NewPCG(1, 2))
			step := func() {
				ids := randomBytes(r, B*T, cfg.VocabSize)
				if _, _, err := p.Forward(ids, nextTargets(ids, B, T), nil, nil, 0.1); err != nil {
					t.Fatal(err)
				}
				if err := p.Backward(); err != nil {
					t.Fatal(err)
				}
			}
			step() // an earlier micro-batch, not reported
			var got []model.GradRange
			snap := map[model.GradRange][]float32{}
			p.OnGradReady(func(g model.GradRange) {
				got = append(got, g)
				v := make([]float32, g.Len)
				m.BE.Download(v, m.Grads.Slice(g.Off, g.Len))
				snap[g] = v
			})
			step()
			p.OnGradReady(nil)
			final := make([]float32, m.Grads.Len())
			m.BE.Download(final, m.Grads)

			want := m.GradRanges()
			if len(got) != len(want) || len(want) != cfg.NLayer+2 {
				t.Fatalf("%s: %d ranges reported, GradRanges has %d, want L+2 = %d", name, len(got), len(want), cfg.NLayer+2)
			}
			covered := make([]int, len(final))
			for i, g := range got {
				if g != want[i] {
					t.Fatalf("%s: range %d is %+v, GradRanges says %+v", name, i, g, want[i])
				}
				for j, v := range snap[g] {
					covered[g.Off+j]++
					if math.Float32bits(v) != math.Float32bits(final[g.Off+j]) {
						t.Fatalf("%s recompute=%v: range %d (%+v) reported at %v, final gradient %v at offset %d", name, recompute, i, g, v, final[g.Off+j], g.Off+j)
					}
				}
			}
			for i, c := range covered {
				if c != 1 {
					t.Fatalf("%s: gradient %d is in %d ranges", name, i, c)
				}
			}
			// A third backward without the hook reports nothing.
			n := len(got)
			step()
			if len(got) != n {
				t.Fatalf("%s: OnGradReady(nil) still reports", name)
			}
		}
	}
}
