package cuda_test

import (
	"math/rand/v2"
	"testing"

	"github.com/mambabyte/mambabyte/internal/backend/cuda"
	"github.com/mambabyte/mambabyte/internal/model"
)

// Benchmarks of whole-model work on the GPU. Run them with
// MAMBABYTE_CUDA_NOSYNC=1 (tests otherwise wait for the device after every
// operation): go test -run '^$' -bench CUDA ./internal/backend/cuda

func benchConfig() model.Config {
	cfg := model.DefaultConfig()
	cfg.DModel, cfg.NLayer = 512, 4
	return cfg
}

// BenchmarkCUDATrainStep is one forward and backward over a (4, 1024) batch
// (SetBytes: bytes trained per op).
func BenchmarkCUDATrainStep(b *testing.B) {
	g32, g16 := gpus(b)
	for _, prec := range []struct {
		name string
		g    *cuda.Backend
	}{{"fp32", g32}, {"bf16", g16}} {
		b.Run(prec.name, func(b *testing.B) {
			cfg := benchConfig()
			m, err := model.New(cfg, prec.g)
			if err != nil {
				b.Fatal(err)
			}
			m.Init(1)
			B, T := 4, 1024
			r := rand.New(rand.NewPCG(1, 2))
			id := ids(r, B*T, cfg.VocabSize)
			tg := nextTargets(id, B, T)
			p := m.NewPass(B, T, true)
			step := func() {
				m.ZeroGrads()
				if _, _, err := p.Forward(id, tg, nil, nil, 1/float32(B*(T-1))); err != nil {
					b.Fatal(err)
				}
				if err := p.Backward(); err != nil {
					b.Fatal(err)
				}
			}
			step()
			prec.g.Sync()
			b.SetBytes(int64(B * T))
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				step()
			}
			prec.g.Sync()
		})
	}
}

// BenchmarkCUDADecode is one recurrent step of one stream (SetBytes: 1).
func BenchmarkCUDADecode(b *testing.B) {
	g32, _ := gpus(b)
	cfg := benchConfig()
	m, err := model.New(cfg, g32)
	if err != nil {
		b.Fatal(err)
	}
	m.Init(1)
	st := m.NewState(1)
	sp := m.NewStepper(1)
	in := []int32{'a'}
	b.SetBytes(1)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := sp.Step(st, in); err != nil {
			b.Fatal(err)
		}
	}
}
