//go:build !(amd64 && goexperiment.simd)

package blas

// simdKernels reports that this build has no SIMD kernels: without
// GOEXPERIMENT=simd on amd64, Gemm, Dot and Axpy run plainKernels.
func simdKernels() *kernels { return nil }
