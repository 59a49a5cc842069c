// Package blas provides the float32 dense kernels the rest of MambaByte is
// built on: a general matrix multiply (Gemm), Dot and Axpy.
//
// # Overview
//
// All matrices are row-major. A matrix X with r rows and c columns stored
// with row stride ldx (ldx >= c) has element (i, j) at x[i*ldx+j]; a stride
// larger than the width selects a sub-matrix view, such as the first E
// columns of a (BT, 2E) buffer.
//
// Gemm computes C = alpha·op(A)·op(B) + beta·C with op(X) = X or Xᵀ. Three
// paths implement it:
//
//   - the blocked path (BLIS-style cache blocking, see gemm.go): op(A) and
//     op(B) are copied into contiguous panels so that every combination of
//     transA and transB runs the same register-blocked micro-kernel;
//   - a GEMV path for few rows of op(A) (m <= 8) with transB, the decoding
//     case y = x·Wᵀ: it streams each row of W once, split across workers by
//     output column, with a dot-product kernel over contiguous rows of W;
//   - an AXPY path for few rows of op(A) without transB, which streams rows
//     of B once.
//
// The micro-kernels exist twice: in plain Go (kernels_plain.go, always
// built) and with AVX-512 through simd/archsimd (kernels_avx512.go, built
// with GOEXPERIMENT=simd on amd64 and chosen at run time when the CPU has
// AVX-512). Both pass the same conformance tests against GemmRef.
//
// Work is spread over the cores with internal/parallel; Gemm, Dot and Axpy
// must therefore not be called from inside a parallel.For callback when the
// problem is large enough to be split (Gemm) — Dot and Axpy never split.
//
// # Invariants and aliasing
//
// C must not overlap A or B. beta == 0 means C is overwritten: its previous
// contents, NaNs included, are ignored. When alpha == 0 or k == 0, A and B
// are not read and C is only scaled by beta. Results are accumulated in
// float32; the order of summation differs between implementations and with
// the number of workers, so results agree to rounding, not bit for bit.
//
// Shapes that do not fit the slices (negative sizes, strides smaller than
// widths, slices too short) are programmer errors and panic.
package blas
