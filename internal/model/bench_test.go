package model_test

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/mambabyte/mambabyte/internal/backend/cpu"
	"github.com/mambabyte/mambabyte/internal/model"
)

// benchConfig is the ~10M-parameter model of the CPU training benchmark
// (BENCHMARKS.md, scripts/bench_cpu_train.sh): D 512, L 6, N 16, K 4,
// expand 2 (E 1024), R 32, LayerNorm, tied embeddings. It has 10,306,560
// parameters. scripts/bench_torch_cpu.py builds the same network.
func benchConfig() model.Config {
	c := model.DefaultConfig()
	c.VocabSize = 256
	c.DModel = 512
	c.NLayer = 6
	c.DState = 16
	c.DConv = 4
	c.Expand = 2
	c.DTRank = 0 // ceil(D/16) = 32
	c.Norm = model.LayerNorm
	c.TieEmbeddings = true
	c.ConvBias = true
	return c
}

// benchModel returns the benchmark model on the CPU backend with its
// weights as mamba_ssm initialises them (a training run's first step).
func benchModel(b *testing.B) *model.Model {
	b.Helper()
	cfg := benchConfig()
	m, err := model.New(cfg, cpu.New())
	if err != nil {
		b.Fatal(err)
	}
	m.Init(1)
	return m
}

// reportRate reports text bytes per second over the timed loop, and the
// parameter count.
func reportRate(b *testing.B, bytesPerOp int, m *model.Model) {
	if s := b.Elapsed().Seconds(); s > 0 {
		b.ReportMetric(float64(bytesPerOp)*float64(b.N)/s, "bytes/s")
	}
	b.ReportMetric(float64(m.Cfg.NumParams()), "params")
}

var benchShapes = []struct{ B, T int }{{4, 1024}, {1, 1024}}

// BenchmarkTrainStep times one training step over a (B,T) batch: clear the
// gradients, forward with next-byte targets and the mean loss's gradient
// scale, backward. MB/s is millions of text bytes (B·T per step) per
// second.
func BenchmarkTrainStep(b *testing.B) {
	for _, sh := range benchShapes {
		b.Run(fmt.Sprintf("B%d_T%d", sh.B, sh.T), func(b *testing.B) {
			m := benchModel(b)
			r := rand.New(rand.NewPCG(2, 3))
			ids := randomBytes(r, sh.B*sh.T, m.Cfg.VocabSize)
			tg := nextTargets(ids, sh.B, sh.T)
			count := sh.B * (sh.T - 1)
			pass := m.NewPass(sh.B, sh.T, true)
			step := func() float64 {
				m.ZeroGrads()
				sum, n, err := pass.Forward(ids, tg, nil, nil, 1/float32(count))
				if err != nil {
					b.Fatal(err)
				}
				if n != count {
					b.Fatalf("%d scored positions, want %d", n, count)
				}
				if err := pass.Backward(); err != nil {
					b.Fatal(err)
				}
				return sum / float64(n)
			}
			step() // warm-up: the first step touches every buffer
			b.SetBytes(int64(sh.B * sh.T))
			b.ReportAllocs()
			var loss float64
			for b.Loop() {
				loss = step()
			}
			// At initialisation the mean loss is close to ln 256 = 5.55.
			if math.IsNaN(loss) || math.Abs(loss-math.Log(256)) > 0.5 {
				b.Fatalf("mean loss %g, want about ln 256", loss)
			}
			reportRate(b, sh.B*sh.T, m)
		})
	}
}

// BenchmarkForward times an inference pass with targets (the loss, as
// evaluation computes it) over a (B,T) batch.
func BenchmarkForward(b *testing.B) {
	for _, sh := range benchShapes {
		b.Run(fmt.Sprintf("B%d_T%d", sh.B, sh.T), func(b *testing.B) {
			m := benchModel(b)
			r := rand.New(rand.NewPCG(2, 3))
			ids := randomBytes(r, sh.B*sh.T, m.Cfg.VocabSize)
			tg := nextTargets(ids, sh.B, sh.T)
			pass := m.NewPass(sh.B, sh.T, false)
			fwd := func() {
				if _, _, err := pass.Forward(ids, tg, nil, nil, 0); err != nil {
					b.Fatal(err)
				}
			}
			fwd() // warm-up
			b.SetBytes(int64(sh.B * sh.T))
			b.ReportAllocs()
			for b.Loop() {
				fwd()
			}
			reportRate(b, sh.B*sh.T, m)
		})
	}
}

// BenchmarkStep times the recurrent step of one stream: one byte in, the
// next byte's logits out (generation's inner loop, without sampling).
func BenchmarkStep(b *testing.B) {
	m := benchModel(b)
	st := m.NewState(1)
	sp := m.NewStepper(1)
	r := rand.New(rand.NewPCG(4, 5))
	in := []int32{0}
	for i := 0; i < 16; i++ { // warm-up
		if _, err := sp.Step(st, in); err != nil {
			b.Fatal(err)
		}
	}
	b.SetBytes(1)
	b.ReportAllocs()
	for b.Loop() {
		in[0] = int32(r.IntN(m.Cfg.VocabSize))
		if _, err := sp.Step(st, in); err != nil {
			b.Fatal(err)
		}
	}
	reportRate(b, 1, m)
}
