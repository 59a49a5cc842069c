package train

import (
	"math"

	"github.com/mambabyte/mambabyte/internal/backend"
	"github.com/mambabyte/mambabyte/internal/model"
)

// AdamW is the optimizer: Adam moments with decoupled weight decay, applied
// only to the parameters model.NoDecay does not exclude.
type AdamW struct {
	Beta1, Beta2, Eps, WeightDecay float64

	M, V backend.Tensor // first and second moments, laid out as the parameters
	runs []model.Run
}

// NewAdamW allocates zero moments for m's parameters.
func NewAdamW(m *model.Model, beta1, beta2, eps, wd float64) *AdamW {
	n := m.Params.Len()
	return &AdamW{
		Beta1: beta1, Beta2: beta2, Eps: eps, WeightDecay: wd,
		M: m.BE.Alloc(n), V: m.BE.Alloc(n), runs: m.DecayRuns(),
	}
}

// Step applies update number step (counting from 1) at learning rate lr.
func (o *AdamW) Step(m *model.Model, step int, lr float64) {
	bc1 := 1 - math.Pow(o.Beta1, float64(step))
	bc2 := 1 - math.Pow(o.Beta2, float64(step))
	if ar, ok := m.BE.(backend.AdamWRunner); ok {
		ar.AdamWRuns(m.Params, m.Grads, o.M, o.V, o.runs, float32(lr), float32(o.Beta1), float32(o.Beta2),
			float32(o.Eps), float32(o.WeightDecay), float32(bc1), float32(bc2))
	} else {
		for _, r := range o.runs {
			wd := 0.0
			if r.Decay {
				wd = o.WeightDecay
			}
			m.BE.AdamW(m.Params.Slice(r.Off, r.Len), m.Grads.Slice(r.Off, r.Len),
				o.M.Slice(r.Off, r.Len), o.V.Slice(r.Off, r.Len),
				float32(lr), float32(o.Beta1), float32(o.Beta2), float32(o.Eps), float32(wd),
				float32(bc1), float32(bc2))
		}
	}
	m.Touch()
}

// ClipGradNorm scales the gradients so their global L2 norm is at most
// maxNorm (no clipping when maxNorm <= 0) and returns the norm before
// clipping.
func ClipGradNorm(m *model.Model, maxNorm float64) float64 {
	norm := math.Sqrt(m.BE.SumSquares(m.Grads))
	clipToNorm(m, norm, maxNorm)
	return norm
}

// clipToNorm scales gradients whose global norm is norm so that it is at
// most maxNorm (nothing when maxNorm <= 0).
func clipToNorm(m *model.Model, norm, maxNorm float64) {
	if maxNorm > 0 && norm > maxNorm {
		m.BE.Scale(m.Grads, float32(maxNorm/(norm+1e-6)))
	}
}

// LR is the learning rate at step (counting from 1): linear warm-up from
// 0 to peak over warmup steps, then cosine decay to minLR at step total.
func LR(step, warmup, total int, peak, minLR float64) float64 {
	if step <= warmup {
		return peak * float64(step) / float64(max(1, warmup))
	}
	if step >= total {
		return minLR
	}
	frac := float64(step-warmup) / float64(max(1, total-warmup))
	return minLR + 0.5*(peak-minLR)*(1+math.Cos(math.Pi*frac))
}
