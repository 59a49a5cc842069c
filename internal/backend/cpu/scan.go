package cpu

import "github.com/mambabyte/mambabyte/internal/parallel"

// ScanChunk is the number of time steps between the states ScanForward
// saves for ScanBackward, which recomputes the states inside each chunk
// instead of storing all T of them.
const ScanChunk = 64

// ScanChunks is the number of saved states for a sequence of T steps.
func ScanChunks(T int) int { return (T + ScanChunk - 1) / ScanChunk }

// scanGrain is the smallest block of channels one worker takes.
const scanGrain = 8

// scanVector is set when the build and CPU have the 16-lane scan kernels
// (scan_simd.go); they are used when E is a multiple of 16.
var scanVector bool

// scanStep, when the build and CPU have it, is ScanForward for a single
// time step (generation) with N a multiple of 16: it runs the states of one
// channel in vector lanes, reading and writing the (B,E,N) state in place
// (s0 and sT may alias; either may be nil as in ScanForward).
var scanStep func(y, u, delta, Bt, Ct []float32, ldbc int, A, Dskip, s0, sT []float32, B, E, N int)

// NegExp writes A = -exp(alog) (the decay rates, shape (E,N)), which the
// scan kernels take precomputed.
func NegExp(a, alog []float32) {
	for i, v := range alog {
		a[i] = -expf(v)
	}
}

// scanSplit runs fn over blocks of channels [elo,ehi) in parallel, each
// with a part index for per-part scratch. With vector kernels the blocks
// are whole groups of 16 channels.
func scanSplit(E int, fn func(part, elo, ehi int, vec bool)) (parts int) {
	if scanVector && E%16 == 0 {
		parallel.Chunks(E/16, 1, func(p, lo, hi int) { fn(p, lo*16, hi*16, true) })
		return parallel.Parts(E/16, 1)
	}
	parallel.Chunks(E, scanGrain, func(p, lo, hi int) { fn(p, lo, hi, false) })
	return parallel.Parts(E, scanGrain)
}

// scanParts is how many parts scanSplit will use for E channels.
func scanParts(E int) int {
	if scanVector && E%16 == 0 {
		return parallel.Parts(E/16, 1)
	}
	return parallel.Parts(E, scanGrain)
}

// ScanForward runs the selective scan with the skip connection:
//
//	s_t[e,n] = exp(Δ[t,e]·A[e,n])·s_{t-1}[e,n] + Δ[t,e]·Bt[t,n]·u[t,e]
//	y_t[e]   = Σ_n s_t[e,n]·Ct[t,n] + Dskip[e]·u[t,e]
//
// with A = -exp(A_log) given precomputed (NegExp). u, delta and y are
// (B,T,E); Bt and Ct are (B,T,N) with row stride ldbc (views into the
// x_proj output); A is (E,N) and Dskip (E). s0 (B,E,N) is the state before t=0 (nil means zero), sT
// (B,E,N) receives the state after the last step and may alias s0; ckpt
// (B,ScanChunks(T),E,N), if not nil, receives the state before each chunk
// for ScanBackward (the CUDA backend's layout too, which its tests
// compare). A recurrent step is ScanForward with T=1 and s0 = sT.
func ScanForward(y, u, delta, Bt, Ct []float32, ldbc int, A, Dskip, s0, sT, ckpt []float32, B, T, E, N int) {
	if T == 1 && scanStep != nil && N%16 == 0 {
		scanStep(y, u, delta, Bt, Ct, ldbc, A, Dskip, s0, sT, B, E, N)
		return
	}
	scanSplit(E, func(_, elo, ehi int, vec bool) {
		if vec {
			scanForwardVec(y, u, delta, Bt, Ct, ldbc, A, Dskip, s0, sT, ckpt, B, T, E, N, elo, ehi)
		} else {
			scanForwardPlain(y, u, delta, Bt, Ct, ldbc, A, Dskip, s0, sT, ckpt, B, T, E, N, elo, ehi)
		}
	})
}

// scanForwardPlain is ScanForward for channels [elo,ehi), one channel and
// one state at a time.
func scanForwardPlain(y, u, delta, Bt, Ct []float32, ldbc int, A, Dskip, s0, sT, ckpt []float32, B, T, E, N, elo, ehi int) {
	nc := ScanChunks(T)
	n := ehi - elo
	s := make([]float32, n*N)
	for b := 0; b < B; b++ {
		if s0 != nil {
			copy(s, s0[(b*E+elo)*N:(b*E+ehi)*N])
		} else {
			clear(s)
		}
		for t := 0; t < T; t++ {
			if ckpt != nil && t%ScanChunk == 0 {
				copy(ckpt[((b*nc+t/ScanChunk)*E+elo)*N:], s)
			}
			row := (b*T + t) * E
			bt := Bt[(b*T+t)*ldbc : (b*T+t)*ldbc+N]
			ct := Ct[(b*T+t)*ldbc : (b*T+t)*ldbc+N]
			for e := elo; e < ehi; e++ {
				d, uu := delta[row+e], u[row+e]
				du := d * uu
				se := s[(e-elo)*N : (e-elo+1)*N]
				ae := A[e*N : (e+1)*N]
				var acc float32
				for i := range se {
					v := expf(d*ae[i])*se[i] + du*bt[i]
					se[i] = v
					acc += v * ct[i]
				}
				y[row+e] = acc + Dskip[e]*uu
			}
		}
		if sT != nil {
			copy(sT[(b*E+elo)*N:(b*E+ehi)*N], s)
		}
	}
}

// ScanBackward is the backward of ScanForward started from a zero state.
// Given dy (B,T,E) and the forward's inputs and ckpt, it writes du and
// ddelta (B,T,E) and dBt, dCt (B,T,N, row stride ldbc), and adds into
// dAlog (E,N) and dDskip (E). A is -exp(A_log) as ScanForward took it.
// Inside each chunk the states are recomputed from the saved one.
func ScanBackward(du, ddelta, dBt, dCt, dAlog, dDskip, dy, u, delta, Bt, Ct []float32, ldbc int, A, Dskip, ckpt []float32, B, T, E, N int) {
	parts := scanParts(E)
	stride := B * T * N
	partBC := make([]float32, parts*2*stride) // per part: dB then dC, (B,T,N)
	scanSplit(E, func(p, elo, ehi int, vec bool) {
		pB := partBC[p*2*stride : p*2*stride+stride]
		pC := partBC[p*2*stride+stride : (p+1)*2*stride]
		if vec {
			scanBackwardVec(du, ddelta, pB, pC, dAlog, dDskip, dy, u, delta, Bt, Ct, ldbc, A, Dskip, ckpt, B, T, E, N, elo, ehi)
		} else {
			scanBackwardPlain(du, ddelta, pB, pC, dAlog, dDskip, dy, u, delta, Bt, Ct, ldbc, A, Dskip, ckpt, B, T, E, N, elo, ehi)
		}
	})
	parallel.For(B*T, 64, func(lo, hi int) {
		for r := lo; r < hi; r++ {
			db := dBt[r*ldbc : r*ldbc+N]
			dc := dCt[r*ldbc : r*ldbc+N]
			clear(db)
			clear(dc)
			for p := 0; p < parts; p++ {
				pb := partBC[p*2*stride+r*N : p*2*stride+(r+1)*N]
				pc := partBC[p*2*stride+stride+r*N : p*2*stride+stride+(r+1)*N]
				for i := range db {
					db[i] += pb[i]
					dc[i] += pc[i]
				}
			}
		}
	})
}

// scanBackwardPlain is ScanBackward for channels [elo,ehi), adding this
// block's share of dBt and dCt into pB and pC ((B,T,N), contiguous).
func scanBackwardPlain(du, ddelta, pB, pC, dAlog, dDskip, dy, u, delta, Bt, Ct []float32, ldbc int, A, Dskip, ckpt []float32, B, T, E, N, elo, ehi int) {
	nc := ScanChunks(T)
	n := ehi - elo
	states := make([]float32, (ScanChunk+1)*n*N) // states[j] = s before step t0+j
	decay := make([]float32, ScanChunk*n*N)      // decay[j] = exp(Δ·A) at step t0+j
	g := make([]float32, n*N)                    // a_{t+1}·dL/ds_{t+1}, carried backwards
	dA := make([]float32, n*N)
	for b := 0; b < B; b++ {
		clear(g)
		for c := nc - 1; c >= 0; c-- {
			t0, t1 := c*ScanChunk, min(T, (c+1)*ScanChunk)
			copy(states[:n*N], ckpt[((b*nc+c)*E+elo)*N:((b*nc+c)*E+ehi)*N])
			for t := t0; t < t1; t++ {
				j := t - t0
				row := (b*T + t) * E
				bt := Bt[(b*T+t)*ldbc : (b*T+t)*ldbc+N]
				for e := elo; e < ehi; e++ {
					d := delta[row+e]
					du := d * u[row+e]
					o := (e - elo) * N
					prev := states[j*n*N+o : j*n*N+o+N]
					next := states[(j+1)*n*N+o : (j+1)*n*N+o+N]
					a := decay[j*n*N+o : j*n*N+o+N]
					ae := A[e*N : (e+1)*N]
					for i := range a {
						a[i] = expf(d * ae[i])
						next[i] = a[i]*prev[i] + du*bt[i]
					}
				}
			}
			for t := t1 - 1; t >= t0; t-- {
				j := t - t0
				row := (b*T + t) * E
				bt := Bt[(b*T+t)*ldbc : (b*T+t)*ldbc+N]
				ct := Ct[(b*T+t)*ldbc : (b*T+t)*ldbc+N]
				pb := pB[(b*T+t)*N : (b*T+t+1)*N]
				pc := pC[(b*T+t)*N : (b*T+t+1)*N]
				for e := elo; e < ehi; e++ {
					gy, d, uu := dy[row+e], delta[row+e], u[row+e]
					o := (e - elo) * N
					prev := states[j*n*N+o : j*n*N+o+N]
					cur := states[(j+1)*n*N+o : (j+1)*n*N+o+N]
					a := decay[j*n*N+o : j*n*N+o+N]
					ge := g[o : o+N]
					dae := dA[o : o+N]
					ae := A[e*N : (e+1)*N]
					var dd, dus float32
					for i := range ge {
						G := gy*ct[i] + ge[i] // dL/ds_t
						pc[i] += gy * cur[i]
						da := G * prev[i] * a[i] // dL/d(Δ·A)
						dd += da*ae[i] + G*bt[i]*uu
						dae[i] += da * d
						pb[i] += G * d * uu
						dus += G * d * bt[i]
						ge[i] = a[i] * G
					}
					du[row+e] = dus + gy*Dskip[e]
					ddelta[row+e] = dd
					dDskip[e] += gy * uu
				}
			}
		}
	}
	for e := elo; e < ehi; e++ {
		for i := 0; i < N; i++ {
			dAlog[e*N+i] += dA[(e-elo)*N+i] * A[e*N+i]
		}
	}
}
