//go:build amd64 && goexperiment.simd

package cpu

import (
	"simd/archsimd"

	"github.com/mambabyte/mambabyte/internal/parallel"
)

// The vector scan kernels run 16 channels at a time in the lanes of an
// AVX-512 register, looping over the N states inside; they compute what
// scanForwardPlain and scanBackwardPlain compute, in a different order of
// float32 operations. State buffers inside the kernels are laid out
// n-major ([n][channel]) so that 16 channels of one state are contiguous.

func init() {
	scanVector = archsimd.X86.AVX512()
}

type vec = archsimd.Float32x16

func load(s []float32) vec { return archsimd.LoadFloat32x16Slice(s) }
func bcast(x float32) vec  { return archsimd.BroadcastFloat32x16(x) }
func zero() vec            { return archsimd.BroadcastFloat32x16(0) }
func hsum(v vec) (s float32) {
	var a [16]float32
	v.Store(&a)
	for _, x := range a {
		s += x
	}
	return s
}

// exp16 is expf on 16 lanes: k = round(x/ln2), r = x - k·ln2, exp(r) by
// its degree-7 Taylor polynomial, scaled by 2^k through the exponent bits.
// Arguments are clamped to [-87.3, 88].
func exp16(x vec) vec {
	x = x.Max(bcast(-87.3)).Min(bcast(88))
	k := x.Mul(bcast(1.44269504088896341)).RoundToEvenScaled(0)
	r := k.MulAdd(bcast(-0.693359375), x)
	r = k.MulAdd(bcast(2.12194440e-4), r)
	p := bcast(1.0 / 5040)
	p = p.MulAdd(r, bcast(1.0/720))
	p = p.MulAdd(r, bcast(1.0/120))
	p = p.MulAdd(r, bcast(1.0/24))
	p = p.MulAdd(r, bcast(1.0/6))
	p = p.MulAdd(r, bcast(0.5))
	p = p.MulAdd(r, bcast(1))
	p = p.MulAdd(r, bcast(1))
	e := k.ConvertToInt32().Add(archsimd.BroadcastInt32x16(127)).ShiftAllLeft(23).AsFloat32x16()
	return p.Mul(e)
}

// gather16 loads src[(c+i)*N+n] for i < 16 (one state of 16 channels of an
// e-major (E,N) array).
func gather16(src []float32, c, N, n int) vec {
	var a [16]float32
	for i := range a {
		a[i] = src[(c+i)*N+n]
	}
	return archsimd.LoadFloat32x16(&a)
}

func scatter16(dst []float32, c, N, n int, v vec) {
	var a [16]float32
	v.Store(&a)
	for i := range a {
		dst[(c+i)*N+n] = a[i]
	}
}

func scanForwardVec(y, u, delta, Bt, Ct []float32, ldbc int, A, Dskip, s0, sT, ckpt []float32, B, T, E, N, elo, ehi int) {
	nc := ScanChunks(T)
	sv := make([]vec, N)
	av := make([]vec, N)
	for c := elo; c < ehi; c += 16 {
		for n := range av {
			av[n] = gather16(A, c, N, n)
		}
		dsk := load(Dskip[c:])
		for b := 0; b < B; b++ {
			for n := range sv {
				if s0 != nil {
					sv[n] = gather16(s0[b*E*N:], c, N, n)
				} else {
					sv[n] = zero()
				}
			}
			for t := 0; t < T; t++ {
				if ckpt != nil && t%ScanChunk == 0 {
					base := (b*nc + t/ScanChunk) * E * N
					for n := range sv {
						scatter16(ckpt[base:], c, N, n, sv[n])
					}
				}
				row := (b*T+t)*E + c
				d := load(delta[row:])
				uu := load(u[row:])
				du := d.Mul(uu)
				acc := dsk.Mul(uu)
				bt := Bt[(b*T+t)*ldbc : (b*T+t)*ldbc+N]
				ct := Ct[(b*T+t)*ldbc : (b*T+t)*ldbc+N]
				for n := range sv {
					a := exp16(d.Mul(av[n]))
					s := du.MulAdd(bcast(bt[n]), a.Mul(sv[n]))
					sv[n] = s
					acc = s.MulAdd(bcast(ct[n]), acc)
				}
				acc.StoreSlice(y[row:])
			}
			if sT != nil {
				for n := range sv {
					scatter16(sT[b*E*N:], c, N, n, sv[n])
				}
			}
		}
	}
}

func scanBackwardVec(du, ddelta, pB, pC, dAlog, dDskip, dy, u, delta, Bt, Ct []float32, ldbc int, A, Dskip, ckpt []float32, B, T, E, N, elo, ehi int) {
	nc := ScanChunks(T)
	w := ehi - elo
	at := make([]float32, N*w) // A, n-major
	for i := 0; i < w; i++ {
		for n := 0; n < N; n++ {
			at[n*w+i] = A[(elo+i)*N+n]
		}
	}
	states := make([]float32, (ScanChunk+1)*N*w) // [j][n][channel]: s before step t0+j
	decay := make([]float32, ScanChunk*N*w)      // [j][n][channel]: exp(Δ·A) at step t0+j
	g := make([]float32, N*w)                    // a_{t+1}·dL/ds_{t+1}, carried backwards
	dA := make([]float32, N*w)
	dD := make([]float32, w)
	pBv := make([]vec, N)
	pCv := make([]vec, N)
	for b := 0; b < B; b++ {
		clear(g)
		for c := nc - 1; c >= 0; c-- {
			t0, t1 := c*ScanChunk, min(T, (c+1)*ScanChunk)
			base := (b*nc + c) * E * N
			for i := 0; i < w; i++ {
				for n := 0; n < N; n++ {
					states[n*w+i] = ckpt[base+(elo+i)*N+n]
				}
			}
			for t := t0; t < t1; t++ {
				j := t - t0
				row := (b*T+t)*E + elo
				bt := Bt[(b*T+t)*ldbc : (b*T+t)*ldbc+N]
				for ci := 0; ci < w; ci += 16 {
					d := load(delta[row+ci:])
					dun := d.Mul(load(u[row+ci:]))
					for n := 0; n < N; n++ {
						o := n*w + ci
						a := exp16(d.Mul(load(at[o:])))
						a.StoreSlice(decay[j*N*w+o:])
						next := dun.MulAdd(bcast(bt[n]), a.Mul(load(states[j*N*w+o:])))
						next.StoreSlice(states[(j+1)*N*w+o:])
					}
				}
			}
			for t := t1 - 1; t >= t0; t-- {
				j := t - t0
				row := (b*T+t)*E + elo
				bt := Bt[(b*T+t)*ldbc : (b*T+t)*ldbc+N]
				ct := Ct[(b*T+t)*ldbc : (b*T+t)*ldbc+N]
				for n := range pBv {
					pBv[n], pCv[n] = zero(), zero()
				}
				for ci := 0; ci < w; ci += 16 {
					gy := load(dy[row+ci:])
					d := load(delta[row+ci:])
					uu := load(u[row+ci:])
					dd, dus := zero(), zero()
					for n := 0; n < N; n++ {
						o := n*w + ci
						G := gy.MulAdd(bcast(ct[n]), load(g[o:])) // dL/ds_t
						pCv[n] = gy.MulAdd(load(states[(j+1)*N*w+o:]), pCv[n])
						a := load(decay[j*N*w+o:])
						da := G.Mul(load(states[j*N*w+o:])).Mul(a) // dL/d(Δ·A)
						bb := bcast(bt[n])
						dd = da.MulAdd(load(at[o:]), dd)
						dd = G.Mul(bb).MulAdd(uu, dd)
						da.MulAdd(d, load(dA[o:])).StoreSlice(dA[o:])
						Gd := G.Mul(d)
						pBv[n] = Gd.MulAdd(uu, pBv[n])
						dus = Gd.MulAdd(bb, dus)
						a.Mul(G).StoreSlice(g[o:])
					}
					gy.MulAdd(load(Dskip[elo+ci:]), dus).StoreSlice(du[row+ci:])
					dd.StoreSlice(ddelta[row+ci:])
					gy.MulAdd(uu, load(dD[ci:])).StoreSlice(dD[ci:])
				}
				pb := pB[(b*T+t)*N : (b*T+t+1)*N]
				pc := pC[(b*T+t)*N : (b*T+t+1)*N]
				for n := range pb {
					pb[n] += hsum(pBv[n])
					pc[n] += hsum(pCv[n])
				}
			}
		}
	}
	for i := 0; i < w; i++ {
		for n := 0; n < N; n++ {
			dAlog[(elo+i)*N+n] += dA[n*w+i] * A[(elo+i)*N+n]
		}
		dDskip[elo+i] += dD[i]
	}
}

func init() {
	if archsimd.X86.AVX512() {
		scanStep = scanStepVec
	}
}

// scanStepVec is one time step with the N states of a channel in vector
// lanes (N a multiple of 16): no transposes, the (B,E,N) state is read and
// written where it lies.
func scanStepVec(y, u, delta, Bt, Ct []float32, ldbc int, A, Dskip, s0, sT []float32, B, E, N int) {
	parallel.For(B*E, 64, func(lo, hi int) {
		for r := lo; r < hi; r++ {
			b, e := r/E, r%E
			d, uu := delta[r], u[r]
			dv, duv := bcast(d), bcast(d*uu)
			bt := Bt[b*ldbc : b*ldbc+N]
			ct := Ct[b*ldbc : b*ldbc+N]
			acc := zero()
			for n := 0; n < N; n += 16 {
				o := (b*E+e)*N + n
				s := zero()
				if s0 != nil {
					s = load(s0[o:])
				}
				a := exp16(dv.Mul(load(A[e*N+n:])))
				s = duv.MulAdd(load(bt[n:]), a.Mul(s))
				if sT != nil {
					s.StoreSlice(sT[o:])
				}
				acc = s.MulAdd(load(ct[n:]), acc)
			}
			y[r] = hsum(acc) + Dskip[e]*uu
		}
	})
}
