package blas

import (
	"fmt"
	"sync"
	"unsafe"

	"github.com/mambabyte/mambabyte/internal/parallel"
)

// Cache blocking in BLIS terms. C is computed in mr×nr tiles by the
// micro-kernel (mr = 4 rows, nr = 32 columns, kernels.go). The loops around
// it, outermost first:
//
//	jc: Nc columns of C and op(B)
//	pc: Kc of the inner dimension; op(B)[pc:pc+kc, jc:jc+nc] is packed
//	    into nr-wide panels (kc×nr each, 32 KiB at Kc = 256: one panel
//	    stays in L1 while the ir loop runs over it)
//	ic: Mc rows; op(A)[ic:ic+mc, pc:pc+kc] is packed into mr-row panels
//	    (mc×kc floats, 256 KiB: L2)
//	jr: one B panel
//	ir: one A panel; the micro-kernel updates C[ir:ir+mr, jr:jr+nr]
//
// The packed B block (kc×nc, up to 1 MiB) lives in L3. Every trans
// combination packs into the same layouts, so one micro-kernel serves all.
var (
	blockKc = 256
	blockMc = 256
	blockNc = 1024
)

// Problem sizes below which Gemm stays on one core (m·n·k multiply-adds),
// and the number of rows of op(A) the GEMV and AXPY paths take.
const (
	parallelMinWork = 1 << 17
	gemvMaxM        = 8
)

// Gemm computes C = alpha·op(A)·op(B) + beta·C where op(X) is X or Xᵀ.
// op(A) is (m,k), op(B) is (k,n), C is (m,n); lda, ldb, ldc are row strides.
// beta == 0 means C is overwritten (NaNs in C are ignored).
func Gemm(transA, transB bool, m, n, k int, alpha float32, a []float32, lda int, b []float32, ldb int, beta float32, c []float32, ldc int) {
	checkGemm(transA, transB, m, n, k, a, lda, b, ldb, c, ldc)
	if m == 0 || n == 0 {
		return
	}
	if k == 0 || alpha == 0 {
		scaleRows(m, n, beta, c, ldc)
		return
	}
	switch {
	case m <= gemvMaxM && transB:
		gemvT(transA, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
	case m <= gemvMaxM:
		gemvN(transA, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
	default:
		gemmBlocked(transA, transB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
	}
}

// Dot returns Σ x[i]·y[i] over len(x) (len(y) >= len(x)).
func Dot(x, y []float32) float32 {
	if len(y) < len(x) {
		panic(fmt.Sprintf("blas: Dot: len(y) = %d < len(x) = %d", len(y), len(x)))
	}
	return impl.dot(x, y)
}

// Axpy computes y[i] += alpha·x[i] over len(x).
func Axpy(alpha float32, x, y []float32) {
	if len(y) < len(x) {
		panic(fmt.Sprintf("blas: Axpy: len(y) = %d < len(x) = %d", len(y), len(x)))
	}
	impl.axpy(alpha, x, y)
}

// checkGemm panics unless the slices hold the matrices the sizes describe.
func checkGemm(transA, transB bool, m, n, k int, a []float32, lda int, b []float32, ldb int, c []float32, ldc int) {
	if m < 0 || n < 0 || k < 0 {
		panic(fmt.Sprintf("blas: Gemm: negative size m=%d n=%d k=%d", m, n, k))
	}
	ar, ac := m, k
	if transA {
		ar, ac = k, m
	}
	br, bc := k, n
	if transB {
		br, bc = n, k
	}
	checkMatrix("A", ar, ac, a, lda)
	checkMatrix("B", br, bc, b, ldb)
	checkMatrix("C", m, n, c, ldc)
}

func checkMatrix(name string, rows, cols int, x []float32, ld int) {
	if ld < max(1, cols) {
		panic(fmt.Sprintf("blas: Gemm: ld%s = %d < max(1, %d columns)", name, ld, cols))
	}
	if rows > 0 && cols > 0 && len(x) < (rows-1)*ld+cols {
		panic(fmt.Sprintf("blas: Gemm: len(%s) = %d < %d for %d×%d with stride %d", name, len(x), (rows-1)*ld+cols, rows, cols, ld))
	}
}

// scaleRows sets C = beta·C (C = 0 when beta == 0).
func scaleRows(m, n int, beta float32, c []float32, ldc int) {
	for i := 0; i < m; i++ {
		row := c[i*ldc : i*ldc+n]
		switch beta {
		case 0:
			clear(row)
		case 1:
		default:
			for j := range row {
				row[j] *= beta
			}
		}
	}
}

// scratch is one worker's packing buffers, reused across calls.
type scratch struct {
	a, b []float32
	t    [mr * nr]float32 // an edge tile
}

var scratchPool = sync.Pool{New: func() any { return new(scratch) }}

func grow(buf []float32, n int) []float32 {
	if cap(buf) < n {
		return make([]float32, n)
	}
	return buf[:n]
}

// gemmBlocked splits C between the workers, by rows when it has at least as
// many mr-row strips as nr-column strips and by columns otherwise, and runs
// gemmSerial on each part.
func gemmBlocked(transA, transB bool, m, n, k int, alpha float32, a []float32, lda int, b []float32, ldb int, beta float32, c []float32, ldc int) {
	ms, ns := (m+mr-1)/mr, (n+nr-1)/nr
	if m*n*k < parallelMinWork || parallel.Workers() == 1 {
		gemmSerial(transA, transB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
		return
	}
	if ms >= ns {
		parallel.For(ms, 1, func(lo, hi int) {
			i0, i1 := lo*mr, min(hi*mr, m)
			ao := i0 * lda // rows of A
			if transA {
				ao = i0 // columns of A
			}
			gemmSerial(transA, transB, i1-i0, n, k, alpha, a[ao:], lda, b, ldb, beta, c[i0*ldc:], ldc)
		})
		return
	}
	parallel.For(ns, 1, func(lo, hi int) {
		j0, j1 := lo*nr, min(hi*nr, n)
		bo := j0 // columns of B
		if transB {
			bo = j0 * ldb // rows of B
		}
		gemmSerial(transA, transB, m, j1-j0, k, alpha, a, lda, b[bo:], ldb, beta, c[j0:], ldc)
	})
}

// split returns the block size that cuts n into the fewest blocks of at
// most max, as even as possible, rounded up to a multiple of q.
func split(n, max, q int) int {
	nb := (n + max - 1) / max
	s := (n + nb - 1) / nb
	return (s + q - 1) / q * q
}

// gemmSerial runs the blocked loops (see blockKc) on the calling goroutine.
func gemmSerial(transA, transB bool, m, n, k int, alpha float32, a []float32, lda int, b []float32, ldb int, beta float32, c []float32, ldc int) {
	s := scratchPool.Get().(*scratch)
	defer scratchPool.Put(s)
	kcMax := split(k, blockKc, 1)
	ncMax := split(n, blockNc, nr)
	mcMax := min(split(m, blockMc, mr), (m+mr-1)/mr*mr)
	s.b = grow(s.b, kcMax*ncMax)
	s.a = grow(s.a, kcMax*mcMax)
	tile := impl.tile
	cp := unsafe.Pointer(unsafe.SliceData(c))
	ldcB := uintptr(ldc) * 4
	for jc := 0; jc < n; jc += ncMax {
		nc := min(ncMax, n-jc)
		for pc := 0; pc < k; pc += kcMax {
			kc := min(kcMax, k-pc)
			packB(s.b, transB, b, ldb, pc, jc, kc, nc)
			bet := beta
			if pc > 0 {
				bet = 1
			}
			for ic := 0; ic < m; ic += mcMax {
				mc := min(mcMax, m-ic)
				rs, cs := packA(s.a, transA, a, lda, ic, pc, mc, kc)
				for jr := 0; jr < nc; jr += nr {
					nw := min(nr, nc-jr) // columns of C in this tile
					w := nr              // width of the packed panel
					if nw <= 16 {
						w = 16
					}
					bp := unsafe.Pointer(&s.b[jr*kc])
					for ir := 0; ir < mc; ir += mr {
						mh := min(mr, mc-ir)              // rows of C in this tile
						ap := unsafe.Pointer(&s.a[ir*kc]) // both layouts
						ci := (ic+ir)*ldc + jc + jr
						if mh == mr && nw == w {
							tile(kc, ap, rs, cs, bp, w, unsafe.Add(cp, uintptr(ci)*4), ldcB, alpha, bet)
							continue
						}
						t := s.t[:mr*w]
						tile(kc, ap, rs, cs, bp, w, unsafe.Pointer(&t[0]), uintptr(w)*4, 1, 0)
						for i := 0; i < mh; i++ {
							row := c[ci+i*ldc : ci+i*ldc+nw]
							tr := t[i*w : i*w+nw]
							if bet == 0 {
								for j := range row {
									row[j] = alpha * tr[j]
								}
							} else {
								for j := range row {
									row[j] = alpha*tr[j] + bet*row[j]
								}
							}
						}
					}
				}
			}
		}
	}
}

// packB copies op(B)[pc:pc+kc, jc:jc+nc] into panels of nr columns (the
// last one 16 wide when at most 16 columns remain): panel q holds element
// (p, j) at dst[q*nr*kc + p*w + j-q*nr], zero-padded to its width w.
func packB(dst []float32, transB bool, b []float32, ldb, pc, jc, kc, nc int) {
	for j0 := 0; j0 < nc; j0 += nr {
		nw := min(nr, nc-j0)
		w := nr
		if nw <= 16 {
			w = 16
		}
		panel := dst[j0*kc : j0*kc+kc*w]
		if !transB {
			// op(B) = B: kc row segments of nw floats.
			for p := 0; p < kc; p++ {
				src := b[(pc+p)*ldb+jc+j0:]
				d := panel[p*w : p*w+w]
				copy(d, src[:nw])
				clear(d[nw:])
			}
			continue
		}
		// op(B) = Bᵀ: column j of the panel is row jc+j0+j of B.
		for j := 0; j < nw; j++ {
			src := b[(jc+j0+j)*ldb+pc:]
			src = src[:kc]
			for p, v := range src {
				panel[p*w+j] = v
			}
		}
		for j := nw; j < w; j++ {
			for p := 0; p < kc; p++ {
				panel[p*w+j] = 0
			}
		}
	}
}

// packA copies op(A)[ic:ic+mc, pc:pc+kc] into dst, rows padded with zeros to
// a multiple of mr, and returns the byte strides (rs between rows, cs
// between columns) of element (i, p) within an mr-row panel; panel ir
// starts at float ir·kc in both layouts:
//
//   - op(A) = A: the block row-major, rows of kc floats (rs = 4kc, cs = 4).
//     (Reading A in place instead was much slower on the 1024³ product:
//     rows 4 KB apart fight over the same cache sets.)
//   - op(A) = Aᵀ: each panel column-major, mr floats per p (rs = 4,
//     cs = 4mr), by packAT.
func packA(dst []float32, transA bool, a []float32, lda, ic, pc, mc, kc int) (rs, cs uintptr) {
	if transA {
		packAT(dst, a, lda, ic, pc, mc, kc)
		return 4, mr * 4
	}
	mp := (mc + mr - 1) / mr * mr
	for i := 0; i < mc; i++ {
		copy(dst[i*kc:i*kc+kc], a[(ic+i)*lda+pc:])
	}
	clear(dst[mc*kc : mp*kc])
	return uintptr(kc) * 4, 4
}

// packAT copies op(A)[ic:ic+mc, pc:pc+kc] with op(A) = Aᵀ into mr-row
// panels, each column-major (mr floats per p), panel ir at float ir·kc, the
// last one zero-padded to mr rows. Row p of A holds column p of op(A); a
// panel takes mr floats from each of kc rows, and the panels that share
// those rows' cache lines follow it while the lines are still in L1.
// (Walking the rows once and dealing to every panel was slower: the panels
// lie 4·kc·mr bytes apart, so every write went to the same cache set.)
func packAT(dst []float32, a []float32, lda, ic, pc, mc, kc int) {
	full := mc / mr * mr
	for i0 := 0; i0 < full; i0 += mr {
		panel := dst[i0*kc : i0*kc+mr*kc]
		src := a[pc*lda+ic+i0:]
		for p := 0; p < kc; p++ {
			*(*[mr]float32)(panel[p*mr:]) = *(*[mr]float32)(src[p*lda:])
		}
	}
	if full < mc {
		panel := dst[full*kc : full*kc+mr*kc]
		for p := 0; p < kc; p++ {
			d := panel[p*mr : p*mr+mr]
			n := copy(d, a[(pc+p)*lda+ic+full:(pc+p)*lda+ic+mc])
			clear(d[n:])
		}
	}
}
