package blas

import "github.com/mambabyte/mambabyte/internal/parallel"

// The GEMV and AXPY paths serve few rows of op(A) (m <= gemvMaxM), the
// decoding case. They are memory-bound: each reads B once, in order, split
// across the workers by columns of C, and keeps op(A) (at most 8 rows) in
// cache.

const (
	// gemvMinPart is the least number of B elements worth handing to a
	// worker.
	gemvMinPart = 1 << 16
	// gemvKChunk bounds the stretch of four rows of B (4·gemvKChunk floats,
	// 16 KiB) that the m > 1 GEMV path rereads from L1 for each row of A.
	gemvKChunk = 1024
	// axpyCols is the width of the C strip (m rows, 8 KiB each) the
	// AXPY path keeps in cache while it streams rows of B.
	axpyCols = 2048
)

// rowsOfA returns the rows of op(A) as contiguous slices of k floats,
// copying them into buf when A is transposed.
func rowsOfA(transA bool, m, k int, a []float32, lda int, buf []float32) (rows [gemvMaxM][]float32) {
	for i := 0; i < m; i++ {
		if !transA {
			rows[i] = a[i*lda : i*lda+k]
			continue
		}
		r := buf[i*k : i*k+k]
		for p := range r {
			r[p] = a[p*lda+i]
		}
		rows[i] = r
	}
	return rows
}

// gemvT computes C = alpha·op(A)·Bᵀ + beta·C for m <= gemvMaxM: each C(i,j)
// is a dot product of row i of op(A) with row j of B, taken four rows of B
// at a time.
func gemvT(transA bool, m, n, k int, alpha float32, a []float32, lda int, b []float32, ldb int, beta float32, c []float32, ldc int) {
	s := scratchPool.Get().(*scratch)
	defer scratchPool.Put(s)
	if transA {
		s.a = grow(s.a, m*k)
	}
	x := rowsOfA(transA, m, k, a, lda, s.a)
	kch := k
	if m > 1 {
		kch = gemvKChunk
	}
	dot4, dot := impl.dot4, impl.dot
	put := func(i, j int, v float32) {
		if beta == 0 {
			c[i*ldc+j] = alpha * v
		} else {
			c[i*ldc+j] = alpha*v + beta*c[i*ldc+j]
		}
	}
	grain := (gemvMinPart + k - 1) / k
	parallel.For(n, grain, func(lo, hi int) {
		j := lo
		for ; j+4 <= hi; j += 4 {
			w0 := b[j*ldb : j*ldb+k]
			w1 := b[(j+1)*ldb : (j+1)*ldb+k]
			w2 := b[(j+2)*ldb : (j+2)*ldb+k]
			w3 := b[(j+3)*ldb : (j+3)*ldb+k]
			var acc [gemvMaxM][4]float32
			for p0 := 0; p0 < k; p0 += kch {
				p1 := min(k, p0+kch)
				for i := 0; i < m; i++ {
					s0, s1, s2, s3 := dot4(x[i][p0:p1], w0[p0:p1], w1[p0:p1], w2[p0:p1], w3[p0:p1])
					acc[i][0] += s0
					acc[i][1] += s1
					acc[i][2] += s2
					acc[i][3] += s3
				}
			}
			for i := 0; i < m; i++ {
				for q, v := range acc[i] {
					put(i, j+q, v)
				}
			}
		}
		for ; j < hi; j++ {
			w := b[j*ldb : j*ldb+k]
			for i := 0; i < m; i++ {
				put(i, j, dot(x[i], w))
			}
		}
	})
}

// gemvN computes C = alpha·op(A)·B + beta·C for m <= gemvMaxM: row i of C
// gathers alpha·op(A)(i,p) times row p of B for every p, one strip of
// axpyCols columns at a time.
func gemvN(transA bool, m, n, k int, alpha float32, a []float32, lda int, b []float32, ldb int, beta float32, c []float32, ldc int) {
	s := scratchPool.Get().(*scratch)
	defer scratchPool.Put(s)
	// x = alpha·op(A), m rows of k.
	s.a = grow(s.a, m*k)
	x := s.a
	for i := 0; i < m; i++ {
		for p := 0; p < k; p++ {
			if transA {
				x[i*k+p] = alpha * a[p*lda+i]
			} else {
				x[i*k+p] = alpha * a[i*lda+p]
			}
		}
	}
	axpy := impl.axpy
	const q = 64 // columns per unit of work
	units := (n + q - 1) / q
	grain := (gemvMinPart + k*q - 1) / (k * q)
	parallel.For(units, grain, func(lo, hi int) {
		j1 := min(hi*q, n)
		for c0 := lo * q; c0 < j1; c0 += axpyCols {
			c1 := min(c0+axpyCols, j1)
			scaleRows(m, c1-c0, beta, c[c0:], ldc)
			for p := 0; p < k; p++ {
				brow := b[p*ldb+c0 : p*ldb+c1]
				for i := 0; i < m; i++ {
					axpy(x[i*k+p], brow, c[i*ldc+c0:i*ldc+c1])
				}
			}
		}
	})
}
