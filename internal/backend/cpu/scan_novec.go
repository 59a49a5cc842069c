//go:build !(amd64 && goexperiment.simd)

package cpu

// Without simd/archsimd the vector scan kernels do not exist; scanVector
// stays false and these are never called.

func scanForwardVec(y, u, delta, Bt, Ct []float32, ldbc int, A, Dskip, s0, sT, ckpt []float32, B, T, E, N, elo, ehi int) {
	panic("cpu: vector scan kernels are not built")
}

func scanBackwardVec(du, ddelta, pB, pC, dAlog, dDskip, dy, u, delta, Bt, Ct []float32, ldbc int, A, Dskip, ckpt []float32, B, T, E, N, elo, ehi int) {
	panic("cpu: vector scan kernels are not built")
}
