package blas

import "unsafe"

// plainKernels are written in plain Go. They are always built; they run
// where the build lacks GOEXPERIMENT=simd or the CPU lacks AVX-512, and
// document what the SIMD kernels compute.
var plainKernels = kernels{
	name: "plain",
	tile: tilePlain,
	dot:  dotPlain,
	dot4: dot4Plain,
	axpy: axpyPlain,
}

// tilePlain computes the mr×w tile in 4×4 blocks held in scalar
// accumulators.
func tilePlain(kc int, a unsafe.Pointer, rs, cs uintptr, b unsafe.Pointer, w int, c unsafe.Pointer, ldc uintptr, alpha, beta float32) {
	at := func(i, p int) float32 { return *(*float32)(unsafe.Add(a, uintptr(i)*rs+uintptr(p)*cs)) }
	bp := unsafe.Slice((*float32)(b), kc*w)
	for j := 0; j < w; j += 4 {
		var c00, c01, c02, c03, c10, c11, c12, c13 float32
		var c20, c21, c22, c23, c30, c31, c32, c33 float32
		for p := 0; p < kc; p++ {
			bv := bp[p*w+j : p*w+j+4 : p*w+j+4]
			b0, b1, b2, b3 := bv[0], bv[1], bv[2], bv[3]
			a0, a1, a2, a3 := at(0, p), at(1, p), at(2, p), at(3, p)
			c00 += a0 * b0
			c01 += a0 * b1
			c02 += a0 * b2
			c03 += a0 * b3
			c10 += a1 * b0
			c11 += a1 * b1
			c12 += a1 * b2
			c13 += a1 * b3
			c20 += a2 * b0
			c21 += a2 * b1
			c22 += a2 * b2
			c23 += a2 * b3
			c30 += a3 * b0
			c31 += a3 * b1
			c32 += a3 * b2
			c33 += a3 * b3
		}
		storePlain(unsafe.Add(c, 4*j), alpha, beta, c00, c01, c02, c03)
		storePlain(unsafe.Add(c, ldc+uintptr(4*j)), alpha, beta, c10, c11, c12, c13)
		storePlain(unsafe.Add(c, 2*ldc+uintptr(4*j)), alpha, beta, c20, c21, c22, c23)
		storePlain(unsafe.Add(c, 3*ldc+uintptr(4*j)), alpha, beta, c30, c31, c32, c33)
	}
}

// storePlain writes alpha·s + beta·C to four consecutive floats at c.
func storePlain(c unsafe.Pointer, alpha, beta float32, s0, s1, s2, s3 float32) {
	cv := (*[4]float32)(c)
	if beta == 0 {
		cv[0], cv[1], cv[2], cv[3] = alpha*s0, alpha*s1, alpha*s2, alpha*s3
		return
	}
	cv[0] = alpha*s0 + beta*cv[0]
	cv[1] = alpha*s1 + beta*cv[1]
	cv[2] = alpha*s2 + beta*cv[2]
	cv[3] = alpha*s3 + beta*cv[3]
}

func dotPlain(x, y []float32) float32 {
	y = y[:len(x)]
	var s0, s1, s2, s3 float32
	i := 0
	for ; i+4 <= len(x); i += 4 {
		s0 += x[i] * y[i]
		s1 += x[i+1] * y[i+1]
		s2 += x[i+2] * y[i+2]
		s3 += x[i+3] * y[i+3]
	}
	for ; i < len(x); i++ {
		s0 += x[i] * y[i]
	}
	return (s0 + s1) + (s2 + s3)
}

func dot4Plain(x, w0, w1, w2, w3 []float32) (s0, s1, s2, s3 float32) {
	n := len(x)
	w0, w1, w2, w3 = w0[:n], w1[:n], w2[:n], w3[:n]
	for i, v := range x {
		s0 += v * w0[i]
		s1 += v * w1[i]
		s2 += v * w2[i]
		s3 += v * w3[i]
	}
	return
}

func axpyPlain(alpha float32, x, y []float32) {
	y = y[:len(x)]
	for i, v := range x {
		y[i] += alpha * v
	}
}
