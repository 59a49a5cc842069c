//go:build amd64 && goexperiment.simd

package cpu

import (
	"math"
	"simd/archsimd"
)

func init() {
	if !archsimd.X86.AVX512() {
		return
	}
	siluRows = siluRowsVec
	gateRows = gateRowsVec
	gateBackRows = gateBackRowsVec
	siluGradRows = siluGradRowsVec
	softplusRows = softplusRowsVec
	sigmoidMulRows = sigmoidMulRowsVec
	mulAddRows = mulAddRowsVec
	normRow = normRowVec
	normBackRow = normBackRowVec
}

// sigmoid16 is 1/(1+exp(-x)); x is clamped to ±80 so that no result is
// subnormal (sigmoid(-80) is 1.8e-35).
func sigmoid16(x vec) vec {
	x = x.Max(bcast(-80)).Min(bcast(80))
	one := bcast(1)
	return one.Div(one.Add(exp16(zero().Sub(x))))
}

// log1p16 is ln(1+y) for y in [0,1], as 2·atanh(s) with s = y/(2+y) in
// [0,1/3] summed to s¹³, which keeps full relative precision for small y.
func log1p16(y vec) vec {
	s := y.Div(bcast(2).Add(y))
	s2 := s.Mul(s)
	p := bcast(1.0 / 13)
	p = p.MulAdd(s2, bcast(1.0/11))
	p = p.MulAdd(s2, bcast(1.0/9))
	p = p.MulAdd(s2, bcast(1.0/7))
	p = p.MulAdd(s2, bcast(1.0/5))
	p = p.MulAdd(s2, bcast(1.0/3))
	p = p.MulAdd(s2, bcast(1))
	return p.Mul(s).Mul(bcast(2))
}

// softplus16 is ln(1+exp(x)) = max(x,0) + ln(1+exp(-|x|)), and x itself
// above 20 as PyTorch returns.
func softplus16(x vec) vec {
	z := zero()
	ax := x.Max(z.Sub(x))
	r := x.Max(z).Add(log1p16(exp16(z.Sub(ax))))
	return x.Merge(r, x.Greater(bcast(20)))
}

func siluRowsVec(out, x []float32) {
	n := len(x) &^ 15
	for i := 0; i < n; i += 16 {
		v := load(x[i:])
		v.Mul(sigmoid16(v)).StoreSlice(out[i:])
	}
	siluRowsPlain(out[n:len(x)], x[n:])
}

func gateRowsVec(out, y, z []float32) {
	n := len(z) &^ 15
	for i := 0; i < n; i += 16 {
		v := load(z[i:])
		load(y[i:]).Mul(v.Mul(sigmoid16(v))).StoreSlice(out[i:])
	}
	gateRowsPlain(out[n:len(z)], y[n:len(z)], z[n:])
}

func gateBackRowsVec(dy, dz, g, y, z []float32) {
	n := len(z) &^ 15
	one := bcast(1)
	for i := 0; i < n; i += 16 {
		v := load(z[i:])
		gv := load(g[i:])
		s := sigmoid16(v)
		gv.Mul(v.Mul(s)).StoreSlice(dy[i:])
		// silu'(z) = s·(1 + z·(1-s))
		d := s.Mul(v.Mul(one.Sub(s)).Add(one))
		gv.Mul(load(y[i:])).Mul(d).StoreSlice(dz[i:])
	}
	gateBackRowsPlain(dy[n:len(z)], dz[n:len(z)], g[n:len(z)], y[n:len(z)], z[n:])
}

func siluGradRowsVec(d, g, x []float32) {
	n := len(x) &^ 15
	one := bcast(1)
	for i := 0; i < n; i += 16 {
		v := load(x[i:])
		s := sigmoid16(v)
		load(g[i:]).Mul(s.Mul(v.Mul(one.Sub(s)).Add(one))).StoreSlice(d[i:])
	}
	siluGradRowsPlain(d[n:len(x)], g[n:len(x)], x[n:])
}

func softplusRowsVec(delta, raw, bias []float32) {
	n := len(raw) &^ 15
	for i := 0; i < n; i += 16 {
		v := load(raw[i:]).Add(load(bias[i:]))
		v.StoreSlice(raw[i:])
		softplus16(v).StoreSlice(delta[i:])
	}
	softplusRowsPlain(delta[n:len(raw)], raw[n:], bias[n:len(raw)])
}

func sigmoidMulRowsVec(d, acc, g, x []float32) {
	n := len(x) &^ 15
	for i := 0; i < n; i += 16 {
		dv := load(g[i:]).Mul(sigmoid16(load(x[i:])))
		dv.StoreSlice(d[i:])
		load(acc[i:]).Add(dv).StoreSlice(acc[i:])
	}
	sigmoidMulRowsPlain(d[n:len(x)], acc[n:len(x)], g[n:len(x)], x[n:])
}

func mulAddRowsVec(dst, a, b []float32) {
	n := len(dst) &^ 15
	for i := 0; i < n; i += 16 {
		load(a[i:]).MulAdd(load(b[i:]), load(dst[i:])).StoreSlice(dst[i:])
	}
	mulAddRowsPlain(dst[n:], a[n:len(dst)], b[n:len(dst)])
}

// normRowVec is normRowPlain with float32 sums in 16 lanes (two passes, so
// the variance does not cancel). Rows whose length is not a multiple of 16
// take the plain loop.
func normRowVec(or, xr, w, b []float32, eps float32, rms bool) (m, rs float32) {
	D := len(xr)
	if D%16 != 0 {
		return normRowPlain(or, xr, w, b, eps, rms)
	}
	if !rms {
		s := zero()
		for i := 0; i < D; i += 16 {
			s = s.Add(load(xr[i:]))
		}
		m = hsum(s) / float32(D)
	}
	mv := bcast(m)
	ss := zero()
	for i := 0; i < D; i += 16 {
		d := load(xr[i:]).Sub(mv)
		ss = d.MulAdd(d, ss)
	}
	rs = float32(1 / math.Sqrt(float64(hsum(ss))/float64(D)+float64(eps)))
	rv := bcast(rs)
	for i := 0; i < D; i += 16 {
		v := load(xr[i:]).Sub(mv).Mul(rv)
		if rms {
			v.Mul(load(w[i:])).StoreSlice(or[i:])
		} else {
			v.MulAdd(load(w[i:]), load(b[i:])).StoreSlice(or[i:])
		}
	}
	return m, rs
}

// normBackRowVec is normBackRowPlain in 16 lanes (plain for rows whose
// length is not a multiple of 16).
func normBackRowVec(dr, pw, pb, gr, xr, w []float32, m, rs float32, rms bool) {
	D := len(xr)
	if D%16 != 0 {
		normBackRowPlain(dr, pw, pb, gr, xr, w, m, rs, rms)
		return
	}
	mv, rv := bcast(m), bcast(rs)
	sg, sgx := zero(), zero()
	for i := 0; i < D; i += 16 {
		xh := load(xr[i:]).Sub(mv).Mul(rv)
		g := load(gr[i:])
		gw := g.Mul(load(w[i:]))
		sg = sg.Add(gw)
		sgx = gw.MulAdd(xh, sgx)
		g.MulAdd(xh, load(pw[i:])).StoreSlice(pw[i:])
		g.Add(load(pb[i:])).StoreSlice(pb[i:])
	}
	mg := bcast(hsum(sg) / float32(D))
	if rms {
		mg = zero()
	}
	mgx := bcast(hsum(sgx) / float32(D))
	for i := 0; i < D; i += 16 {
		xh := load(xr[i:]).Sub(mv).Mul(rv)
		t := load(gr[i:]).Mul(load(w[i:])).Sub(mg).Sub(xh.Mul(mgx))
		t.MulAdd(rv, load(dr[i:])).StoreSlice(dr[i:])
	}
}
