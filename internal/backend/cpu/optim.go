package cpu

import (
	"math"

	"github.com/mambabyte/mambabyte/internal/parallel"
)

// SumSquares returns Σ x[i]² accumulated in float64.
func SumSquares(x []float32) float64 {
	parts := parallel.Parts(len(x), elemGrain)
	sums := make([]float64, parts)
	parallel.Chunks(len(x), elemGrain, func(p, lo, hi int) {
		var s float64
		for _, v := range x[lo:hi] {
			s += float64(v) * float64(v)
		}
		sums[p] = s
	})
	var s float64
	for _, v := range sums {
		s += v
	}
	return s
}

// Scale multiplies x by s in place.
func Scale(x []float32, s float32) {
	parallel.For(len(x), elemGrain, func(lo, hi int) {
		for i := lo; i < hi; i++ {
			x[i] *= s
		}
	})
}

// AdamW applies one AdamW update (decoupled weight decay) to param given
// grad, updating the moments m and v in place:
//
//	m = β1·m + (1-β1)·g;  v = β2·v + (1-β2)·g²
//	param -= lr·( m/bc1 / (sqrt(v/bc2) + eps) + wd·param )
//
// where bc1 = 1-β1^step and bc2 = 1-β2^step are the bias corrections.
func AdamW(param, grad, m, v []float32, lr, beta1, beta2, eps, wd, bc1, bc2 float32) {
	parallel.For(len(param), elemGrain, func(lo, hi int) {
		for i := lo; i < hi; i++ {
			g := grad[i]
			mi := beta1*m[i] + (1-beta1)*g
			vi := beta2*v[i] + (1-beta2)*g*g
			m[i], v[i] = mi, vi
			den := float32(math.Sqrt(float64(vi/bc2))) + eps
			param[i] -= lr * (mi/bc1/den + wd*param[i])
		}
	})
}
