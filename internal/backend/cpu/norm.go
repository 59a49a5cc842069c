package cpu

import (
	"math"

	"github.com/mambabyte/mambabyte/internal/parallel"
)

// normRow normalises one row (NormForward's loop body) and returns its
// mean (0 for RMSNorm) and rstd; normBackRow is NormBackward's for one row,
// adding into dr, and into pw and pb (the caller's partial dw and db).
// rows_simd.go replaces both with 16-lane versions where it can.
var (
	normRow     = normRowPlain
	normBackRow = normBackRowPlain
)

// NormForward normalises each of rows rows of x (rows,D) into out (rows,D).
// LayerNorm (rms false): out = (x-mean)·rstd·w + b. RMSNorm (rms true):
// out = x·rstd·w, b unused, mean set to 0. mean and rstd (rows) keep what
// NormBackward needs; either may be nil when no backward follows.
func NormForward(out, mean, rstd, x, w, b []float32, rows, D int, eps float32, rms bool) {
	parallel.For(rows, 16, func(lo, hi int) {
		for r := lo; r < hi; r++ {
			m, rs := normRow(out[r*D:(r+1)*D], x[r*D:(r+1)*D], w[:D], b, eps, rms)
			if mean != nil {
				mean[r] = m
			}
			if rstd != nil {
				rstd[r] = rs
			}
		}
	})
}

func normRowPlain(or, xr, w, b []float32, eps float32, rms bool) (m, rs float32) {
	D := len(xr)
	var mu float64
	if !rms {
		for _, v := range xr {
			mu += float64(v)
		}
		mu /= float64(D)
	}
	var ss float64
	for _, v := range xr {
		d := float64(v) - mu
		ss += d * d
	}
	rs = float32(1 / math.Sqrt(ss/float64(D)+float64(eps)))
	m = float32(mu)
	if rms {
		for i, v := range xr {
			or[i] = v * rs * w[i]
		}
	} else {
		for i, v := range xr {
			or[i] = (v-m)*rs*w[i] + b[i]
		}
	}
	return m, rs
}

// NormBackward adds the gradient with respect to x into dx (rows,D) and the
// weight and bias gradients into dw and db (D) (db unused for RMSNorm),
// given dout (rows,D) and what NormForward saved.
func NormBackward(dx, dw, db, dout, x, w, mean, rstd []float32, rows, D int, rms bool) {
	parts := parallel.Parts(rows, 16)
	part := make([]float32, parts*2*D)
	parallel.Chunks(rows, 16, func(p, lo, hi int) {
		pw := part[p*2*D : p*2*D+D]
		pb := part[p*2*D+D : (p+1)*2*D]
		for r := lo; r < hi; r++ {
			normBackRow(dx[r*D:(r+1)*D], pw, pb, dout[r*D:(r+1)*D], x[r*D:(r+1)*D], w[:D], mean[r], rstd[r], rms)
		}
	})
	for p := 0; p < parts; p++ {
		for i := 0; i < D; i++ {
			dw[i] += part[p*2*D+i]
		}
		if !rms {
			for i := 0; i < D; i++ {
				db[i] += part[p*2*D+D+i]
			}
		}
	}
}

// normBackRowPlain: with xhat = (x-mean)·rstd and dxhat = dout·w,
// dx = rstd·(dxhat - mean(dxhat) - xhat·mean(dxhat·xhat)) (no mean(dxhat)
// term for RMSNorm).
func normBackRowPlain(dr, pw, pb, gr, xr, w []float32, m, rs float32, rms bool) {
	D := len(xr)
	var sumG, sumGX float64
	for i, v := range xr {
		xh := (v - m) * rs
		g := gr[i] * w[i]
		sumG += float64(g)
		sumGX += float64(g * xh)
		pw[i] += gr[i] * xh
		pb[i] += gr[i]
	}
	mg := float32(sumG / float64(D))
	mgx := float32(sumGX / float64(D))
	if rms {
		mg = 0
	}
	for i, v := range xr {
		xh := (v - m) * rs
		dr[i] += rs * (gr[i]*w[i] - mg - xh*mgx)
	}
}
