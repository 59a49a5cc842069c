//go:build amd64 && goexperiment.simd

package cpu

import (
	"simd/archsimd"
	"unsafe"

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

// vp is the vector at byte offset off from p; fp the float32 there. The
// kernels' inner loops address their buffers through these rather than
// through slice indexing, whose bounds checks and index arithmetic took
// most of the loops' instructions and integer registers.
func vp(p unsafe.Pointer, off int) *vec    { return (*vec)(unsafe.Add(p, off)) }
func fp(p unsafe.Pointer, off int) float32 { return *(*float32)(unsafe.Add(p, off)) }

// rowPtr is a pointer to s[i:i+n], checked to be in range.
func rowPtr(s []float32, i, n int) unsafe.Pointer { return unsafe.Pointer(&s[i : i+n][0]) }

func scanForwardVec(y, u, delta, Bt, Ct []float32, ldbc int, A, Dskip, s0, sT, ckpt []float32, B, T, E, N, elo, ehi int) {
	nc := ScanChunks(T)
	sv := make([]vec, N)
	av := make([]vec, N)
	ps, pa := unsafe.Pointer(&sv[0]), unsafe.Pointer(&av[0])
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
				pb := rowPtr(Bt, (b*T+t)*ldbc, N)
				pc := rowPtr(Ct, (b*T+t)*ldbc, N)
				for n := 0; n < N; n++ {
					sp := vp(ps, 64*n)
					a := exp16(d.Mul(*vp(pa, 64*n)))
					s := du.MulAdd(bcast(fp(pb, 4*n)), a.Mul(*sp))
					*sp = s
					acc = s.MulAdd(bcast(fp(pc, 4*n)), acc)
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

// scanBlock is the channel width of one block of the vector backward: the
// recomputed states and decays of a chunk for 64 channels (2·64·16·64
// floats for N 16, 0.5 MB) stay in the core's L2 cache while the chunk's
// backward reads them.
const scanBlock = 64

// reduceIdx[L] are the two index vectors of level L of reduce16.
var reduceIdx = func() (t [4][2][16]uint32) {
	for L := range t {
		gs := 16 >> L // lanes per row in the inputs of level L
		h, rows := gs/2, 16/gs
		for r := 0; r < rows; r++ {
			for q := 0; q < h; q++ {
				t[L][0][r*h+q] = uint32(r*gs + q)
				t[L][0][(rows+r)*h+q] = uint32(16 + r*gs + q)
				t[L][1][r*h+q] = uint32(r*gs + h + q)
				t[L][1][(rows+r)*h+q] = uint32(16 + r*gs + h + q)
			}
		}
	}
	return t
}()

// reduce16 returns the vector whose lane i is the sum of the lanes of
// v[i], overwriting v. Each of its four levels halves the number of
// vectors and the lanes each row occupies: pairs of vectors are split into
// their rows' low and high halves by two permutes and the halves added.
func reduce16(v *[16]vec) vec {
	for L, n := 0, 16; n > 1; L, n = L+1, n/2 {
		lo := archsimd.LoadUint32x16(&reduceIdx[L][0])
		hi := archsimd.LoadUint32x16(&reduceIdx[L][1])
		for i := 0; i < n/2; i++ {
			a, b := v[2*i], v[2*i+1]
			v[i] = a.ConcatPermute(b, lo).Add(a.ConcatPermute(b, hi))
		}
	}
	return v[0]
}

// addLaneSums adds the lane sum of v[n] to dst[n] for every n.
func addLaneSums(dst []float32, v []vec) {
	n := 0
	for ; n+16 <= len(v); n += 16 {
		s := reduce16((*[16]vec)(v[n : n+16]))
		s.Add(load(dst[n:])).StoreSlice(dst[n:])
	}
	for ; n < len(v); n++ {
		dst[n] += hsum(v[n])
	}
}

// stageCols copies the w columns from c of rows [r0,r1) of the row-major
// src (rows of length ld) into dst, rows of w. The scan kernels read a
// block of channels down a chunk of time steps, one short piece of each
// 4 KB row: read in the kernels' loops, every piece waited on memory,
// while this loop of independent copies keeps many reads in flight.
func stageCols(dst, src []float32, r0, r1, ld, c, w int) {
	for r := r0; r < r1; r++ {
		copy(dst[(r-r0)*w:(r-r0+1)*w], src[r*ld+c:r*ld+c+w])
	}
}

// scanBackwardVec works through its channels in blocks of scanBlock, and
// each block through the batch and the chunks from the last. Its buffers
// interleave what one step of the inner loops reads, so that the loops
// address few arrays (Go keeps few of them in registers):
//
//	blk  [n][group][3]vec   A, g (a_{t+1}·dL/ds_{t+1}, carried backwards), dA
//	st   [j][n][group][2]vec  slot j+1: s after step t0+j, exp(Δ·A) at it;
//	                          slot 0: the chunk's first state
//	acc  [2][n]vec          this step's dBt, then dCt lanes, summed over groups
//
// A group is 16 channels, one vector.
func scanBackwardVec(du, ddelta, pB, pC, dAlog, dDskip, dy, u, delta, Bt, Ct []float32, ldbc int, A, Dskip, ckpt []float32, B, T, E, N, elo, ehi int) {
	nc := ScanChunks(T)
	W := min(scanBlock, ehi-elo)
	blk := make([]vec, 3*N*W/16)
	st := make([]vec, 2*(ScanChunk+1)*N*W/16)
	acc := make([]vec, 2*N)
	dD := make([]float32, W)
	sd := make([]float32, ScanChunk*W) // the chunk's Δ, u and dy: [j][channel]
	su := make([]float32, ScanChunk*W)
	sy := make([]float32, ScanChunk*W)
	var lane [16]float32
	for blo := elo; blo < ehi; blo += W {
		w := min(W, ehi-blo)
		G := w / 16 // groups in this block
		for n := 0; n < N; n++ {
			for gi := 0; gi < G; gi++ {
				blk[(n*G+gi)*3] = gather16(A, blo+gi*16, N, n)
				blk[(n*G+gi)*3+2] = zero()
			}
		}
		clear(dD)
		slot := 2 * N * G * 64 // bytes from one slot of st to the next
		pblk, pst, pacc := unsafe.Pointer(&blk[0]), unsafe.Pointer(&st[0]), unsafe.Pointer(&acc[0])
		for b := 0; b < B; b++ {
			for i := 0; i < N*G; i++ {
				blk[i*3+1] = zero()
			}
			for c := nc - 1; c >= 0; c-- {
				t0, t1 := c*ScanChunk, min(T, (c+1)*ScanChunk)
				base := (b*nc + c) * E * N
				for n := 0; n < N; n++ {
					for gi := 0; gi < G; gi++ {
						st[(n*G+gi)*2] = gather16(ckpt[base:], blo+gi*16, N, n)
					}
				}
				stageCols(sd, delta, b*T+t0, b*T+t1, E, blo, w)
				stageCols(su, u, b*T+t0, b*T+t1, E, blo, w)
				stageCols(sy, dy, b*T+t0, b*T+t1, E, blo, w)
				// Recompute the chunk's states and decays.
				for j := 0; j < t1-t0; j++ {
					pb := rowPtr(Bt, (b*T+t0+j)*ldbc, N)
					for gi := 0; gi < G; gi++ {
						d := load(sd[j*w+gi*16:])
						dun := d.Mul(load(su[j*w+gi*16:]))
						ob, os := gi*3*64, j*slot+gi*2*64
						for n := 0; n < N; n++ {
							a := exp16(d.Mul(*vp(pblk, ob)))
							*vp(pst, os+slot+64) = a
							*vp(pst, os+slot) = bcast(fp(pb, 4*n)).MulAdd(dun, a.Mul(*vp(pst, os)))
							ob += 3 * G * 64
							os += 2 * G * 64
						}
					}
				}
				for j := t1 - t0 - 1; j >= 0; j-- {
					t := t0 + j
					row := (b*T+t)*E + blo
					pb := rowPtr(Bt, (b*T+t)*ldbc, N)
					pc := rowPtr(Ct, (b*T+t)*ldbc, N)
					clear(acc)
					for gi := 0; gi < G; gi++ {
						gy := load(sy[j*w+gi*16:])
						d := load(sd[j*w+gi*16:])
						uu := load(su[j*w+gi*16:])
						dun := d.Mul(uu)
						dd, gb := zero(), zero()
						ob, os := gi*3*64, j*slot+gi*2*64
						for n := 0; n < N; n++ {
							gs := bcast(fp(pc, 4*n)).MulAdd(gy, *vp(pblk, ob+64)) // dL/ds_t
							a := *vp(pst, os+slot+64)
							da := gs.Mul(*vp(pst, os)).Mul(a) // dL/d(Δ·A)
							*vp(pblk, ob+64) = a.Mul(gs)
							gb = bcast(fp(pb, 4*n)).MulAdd(gs, gb)
							dd = vp(pblk, ob).MulAdd(da, dd)
							*vp(pblk, ob+128) = da.MulAdd(d, *vp(pblk, ob+128))
							pa := vp(pacc, 64*n)
							*pa = gs.MulAdd(dun, *pa)
							pa = vp(pacc, 64*(N+n))
							*pa = vp(pst, os+slot).MulAdd(gy, *pa)
							ob += 3 * G * 64
							os += 2 * G * 64
						}
						// Σ_n dL/ds·B_n gives both du (times Δ) and ddelta (times u).
						gy.MulAdd(load(Dskip[blo+gi*16:]), d.Mul(gb)).StoreSlice(du[row+gi*16:])
						uu.MulAdd(gb, dd).StoreSlice(ddelta[row+gi*16:])
						gy.MulAdd(uu, load(dD[gi*16:])).StoreSlice(dD[gi*16:])
					}
					addLaneSums(pB[(b*T+t)*N:(b*T+t+1)*N], acc[:N])
					addLaneSums(pC[(b*T+t)*N:(b*T+t+1)*N], acc[N:])
				}
			}
		}
		for gi := 0; gi < G; gi++ {
			for n := 0; n < N; n++ {
				blk[(n*G+gi)*3+2].Store(&lane)
				for i, v := range lane {
					e := blo + gi*16 + i
					dAlog[e*N+n] += v * A[e*N+n]
				}
			}
		}
		for i := 0; i < w; i++ {
			dDskip[blo+i] += dD[i]
		}
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
