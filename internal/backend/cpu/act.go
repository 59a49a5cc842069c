package cpu

import (
	"math"

	"github.com/mambabyte/mambabyte/internal/parallel"
)

// elemGrain is the smallest run of elements one worker takes in
// element-wise kernels.
const elemGrain = 4096

// DtForward adds the bias (E) to raw (rows,E) in place and writes
// delta = softplus(raw).
func DtForward(delta, raw, bias []float32, rows, E int) {
	parallel.For(rows, elemGrain/E+1, func(lo, hi int) {
		for r := lo; r < hi; r++ {
			softplusRows(delta[r*E:(r+1)*E], raw[r*E:(r+1)*E], bias)
		}
	})
}

// DtBackward writes draw = ddelta·sigmoid(raw) (rows,E), where raw is the
// biased pre-activation DtForward left, and adds Σ draw into dbias (E).
func DtBackward(draw, dbias, ddelta, raw []float32, rows, E int) {
	parts := parallel.Parts(rows, elemGrain/E+1)
	part := make([]float32, parts*E)
	parallel.Chunks(rows, elemGrain/E+1, func(p, lo, hi int) {
		pb := part[p*E : (p+1)*E]
		for r := lo; r < hi; r++ {
			sigmoidMulRows(draw[r*E:(r+1)*E], pb, ddelta[r*E:(r+1)*E], raw[r*E:(r+1)*E])
		}
	})
	for p := 0; p < parts; p++ {
		for e := 0; e < E; e++ {
			dbias[e] += part[p*E+e]
		}
	}
}

// GateForward writes out = y·silu(z) for (rows,E); z has row stride ldz.
func GateForward(out, y, z []float32, ldz, rows, E int) {
	parallel.For(rows, elemGrain/E+1, func(lo, hi int) {
		for r := lo; r < hi; r++ {
			gateRows(out[r*E:(r+1)*E], y[r*E:(r+1)*E], z[r*ldz:r*ldz+E])
		}
	})
}

// GateBackward writes dy (rows,E) and dz (rows,E, row stride ldz) given
// dout and the forward's inputs.
func GateBackward(dy, dz, dout, y, z []float32, ldz, rows, E int) {
	parallel.For(rows, elemGrain/E+1, func(lo, hi int) {
		for r := lo; r < hi; r++ {
			gateBackRows(dy[r*E:(r+1)*E], dz[r*ldz:r*ldz+E], dout[r*E:(r+1)*E], y[r*E:(r+1)*E], z[r*ldz:r*ldz+E])
		}
	})
}

// Add computes dst += src.
func Add(dst, src []float32) {
	parallel.For(len(dst), elemGrain, func(lo, hi int) {
		d, s := dst[lo:hi], src[lo:hi]
		for i := range d {
			d[i] += s[i]
		}
	})
}

// EmbedForward copies row ids[i] of W (V,D) into row i of out (n,D).
func EmbedForward(out []float32, ids []int32, W []float32, n, D int) {
	parallel.For(n, 64, func(lo, hi int) {
		for i := lo; i < hi; i++ {
			id := int(ids[i])
			copy(out[i*D:(i+1)*D], W[id*D:(id+1)*D])
		}
	})
}

// EmbedBackward adds row i of dout (n,D) into row ids[i] of dW (V,D).
func EmbedBackward(dW []float32, dout []float32, ids []int32, n, D int) {
	parallel.For(D, 64, func(lo, hi int) {
		for i := 0; i < n; i++ {
			id := int(ids[i])
			dst := dW[id*D+lo : id*D+hi]
			src := dout[i*D+lo : i*D+hi]
			for j := range dst {
				dst[j] += src[j]
			}
		}
	})
}

// CrossEntropy scores logits (n,V) against targets (n), where a negative
// target means the row is not scored. It returns the sum of -ln p(target)
// over scored rows. If dlogits is not nil it receives
// (softmax - onehot(target))·scale for scored rows and zeros for the rest;
// dlogits may alias logits. If nll is not nil, nll[i] receives row i's
// -ln p(target) (0 for unscored rows).
func CrossEntropy(dlogits, nll, logits []float32, targets []int32, n, V int, scale float32) float64 {
	parts := parallel.Parts(n, 16)
	sums := make([]float64, parts)
	parallel.Chunks(n, 16, func(p, lo, hi int) {
		for r := lo; r < hi; r++ {
			x := logits[r*V : (r+1)*V]
			tg := targets[r]
			if tg < 0 {
				if dlogits != nil {
					clear(dlogits[r*V : (r+1)*V])
				}
				if nll != nil {
					nll[r] = 0
				}
				continue
			}
			mx := x[0]
			for _, v := range x {
				mx = max(mx, v)
			}
			var z float64
			for _, v := range x {
				z += float64(expf(v - mx))
			}
			lz := math.Log(z)
			l := lz - float64(x[tg]-mx)
			sums[p] += l
			if nll != nil {
				nll[r] = float32(l)
			}
			if dlogits != nil {
				inv := float32(1 / z)
				d := dlogits[r*V : (r+1)*V]
				for i, v := range x {
					d[i] = expf(v-mx) * inv * scale
				}
				d[tg] -= scale
			}
		}
	})
	var s float64
	for _, v := range sums {
		s += v
	}
	return s
}
