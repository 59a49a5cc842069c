package dist_test

import (
	"context"
	"math"
	"math/rand/v2"
	"testing"

	"github.com/mambabyte/mambabyte/internal/backend/cuda"
	"github.com/mambabyte/mambabyte/internal/dist"
	"github.com/mambabyte/mambabyte/internal/model"
	"github.com/mambabyte/mambabyte/internal/train"
)

// synthData serves windows of a synthetic text (no corpus on the GPU
// machine): window (step, micro, row) depends on those only.
type synthData struct {
	text []byte
	T, B int
}

func newSynthData(T, B int) *synthData {
	r := rand.New(rand.NewPCG(1, 2))
	words := []string{"the ", "byte ", "model ", "reads ", "raw ", "text ", "and ", "writes ", "it ", "back. "}
	var text []byte
	for len(text) < 200_000 {
		text = append(text, words[r.IntN(len(words))]...)
	}
	return &synthData{text: text, T: T, B: B}
}

func (d *synthData) Batch(step, micro int, dst []byte) error {
	for b := 0; b < len(dst)/(d.T+1); b++ {
		off := (step*7919 + micro*104729 + b*1299709) % (len(d.text) - d.T - 1)
		copy(dst[b*(d.T+1):], d.text[off:off+d.T+1])
	}
	return nil
}

func (d *synthData) Validation() [][]byte { return [][]byte{d.text[:d.T+1], d.text[d.T : 2*d.T+1]} }

// One GPU trained through the data-parallel path (the gradients of each
// layer summed by NCCL over one rank on the communication stream while
// the backward goes on, the loss through the Group) takes the steps the
// plain path takes.
func TestTrainingThroughNCCLOnOneGPU(t *testing.T) {
	run := func(withComm bool) ([]train.Metrics, map[string][]float32) {
		be, err := cuda.New(cuda.Options{Precision: "fp32"})
		if err != nil {
			t.Skipf("no GPU: %v", err)
		}
		if _, err := dist.LoadNCCL(); err != nil {
			t.Skipf("no NCCL: %v", err)
		}
		cfg := model.DefaultConfig()
		cfg.DModel, cfg.NLayer = 64, 3
		o := train.Defaults(cfg)
		o.Batch, o.Accum, o.SeqLen, o.Steps = 4, 2, 128, 6
		o.Warmup, o.ValEvery, o.CkptEvery, o.LogEvery = 2, 0, 3, 1
		tr, err := train.New(o, be, newSynthData(o.SeqLen, o.Batch), t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		if withComm {
			c, err := dist.Connect(context.Background(), dist.Env{World: 1}, be, false, true)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if _, ok := c.(*dist.NCCL); !ok {
				t.Fatalf("got a %T, want NCCL", c)
			}
			tr.Comm = c
		}
		var ms []train.Metrics
		tr.Progress = func(m train.Metrics) { ms = append(ms, m) }
		if err := tr.Run(context.Background()); err != nil {
			t.Fatal(err)
		}
		return ms, tr.Model.ParamsHost()
	}
	plainM, plainP := run(false)
	ncclM, ncclP := run(true)
	for i, m := range ncclM {
		w := plainM[i]
		if math.Abs(m.Loss-w.Loss) > 1e-5*w.Loss || math.Abs(m.GradNorm-w.GradNorm) > 1e-4*w.GradNorm {
			t.Errorf("step %d: loss %.7f, grad norm %.6f through NCCL; %.7f, %.6f plain", m.Step, m.Loss, m.GradNorm, w.Loss, w.GradNorm)
		}
	}
	var worst float64
	for name, w := range plainP {
		for i := range w {
			worst = max(worst, math.Abs(float64(ncclP[name][i]-w[i])))
		}
	}
	if worst > 1e-4 {
		t.Errorf("weights differ by up to %g", worst)
	}
	t.Logf("%d steps; loss %.4f → %.4f; largest weight difference %.2g", len(ncclM), ncclM[0].Loss, ncclM[len(ncclM)-1].Loss, worst)
}
