package blas

import "unsafe"

// kernels is one implementation of the inner loops. Gemm, Dot and Axpy use
// the best implementation the build and the CPU allow (impl); the tests run
// every entry of impls.
type kernels struct {
	name string

	// tile computes one mr×w tile of C (mr rows, w = 16 or 32 columns):
	//
	//	C(i,j) = alpha·Σ_{p<kc} A(i,p)·B[p*w+j] + beta·C(i,j)
	//
	// where A(i,p) is the float32 at a + i*rs + p*cs bytes, B is a packed
	// panel of kc rows of w floats, and C(i,j) is at c + i*ldc + 4*j bytes.
	// beta == 0 means C is only written.
	tile func(kc int, a unsafe.Pointer, rs, cs uintptr, b unsafe.Pointer, w int, c unsafe.Pointer, ldc uintptr, alpha, beta float32)

	// dot returns Σ x[i]·y[i] over len(x).
	dot func(x, y []float32) float32

	// dot4 returns the dot products of x with w0..w3, each over len(x).
	dot4 func(x, w0, w1, w2, w3 []float32) (s0, s1, s2, s3 float32)

	// axpy computes y[i] += alpha·x[i] over len(x).
	axpy func(alpha float32, x, y []float32)
}

// mr is the number of rows of C a micro-kernel tile covers; nr the widest
// tile (two 16-float vectors). Both implementations use the same tile shape,
// so packing is shared.
const (
	mr = 4
	nr = 32
)

var (
	// impls lists the implementations this build and CPU can run, plain
	// first.
	impls = []*kernels{&plainKernels}
	// impl is the implementation in use: the last (fastest) of impls.
	impl = &plainKernels
)

func init() {
	if k := simdKernels(); k != nil {
		impls = append(impls, k)
		impl = k
	}
}

// Implementation names the kernels in use: "plain" or "avx512".
func Implementation() string { return impl.name }
