//go:build amd64 && goexperiment.simd

package blas

import (
	"simd/archsimd"
	"unsafe"
)

// avx512Kernels use 512-bit vectors (16 float32 lanes) through
// simd/archsimd. Their plain counterparts are in kernels_plain.go.
//
// Register budget: Go 1.26 allocates SIMD values only in X0–X14 (15
// registers), and MulAdd is the 213 form whose result replaces a
// multiplicand, so each broadcast needs a copy. The 4×32 tile holds 8
// accumulators, 2 B vectors, 1 broadcast and 1 copy: 12 registers, nothing
// spilled. Larger tiles (6×32, 8×48, 4×48) spill and run 3–4 times slower.
var avx512Kernels = kernels{
	name: "avx512",
	tile: tileAVX512,
	dot:  dotAVX512,
	dot4: dot4AVX512,
	axpy: axpyAVX512,
}

// simdKernels returns the AVX-512 kernels when the CPU supports them.
func simdKernels() *kernels {
	if archsimd.X86.AVX512() {
		return &avx512Kernels
	}
	return nil
}

func load16(p unsafe.Pointer) archsimd.Float32x16 {
	return archsimd.LoadFloat32x16((*[16]float32)(p))
}

func bcast(p unsafe.Pointer) archsimd.Float32x16 {
	return archsimd.BroadcastFloat32x16(*(*float32)(p))
}

// loadPart loads min(len(s), 16) floats, zero-filling the rest of the
// vector. It goes through a local array rather than
// archsimd.LoadFloat32x16SlicePart, whose pointer conversion fails the
// checkptr instrumentation of -race builds for short slices.
func loadPart(s []float32) archsimd.Float32x16 {
	var t [16]float32
	copy(t[:], s)
	return archsimd.LoadFloat32x16(&t)
}

// storePart stores the first min(len(s), 16) lanes of v into s.
func storePart(v archsimd.Float32x16, s []float32) {
	var t [16]float32
	v.Store(&t)
	copy(s, t[:])
}

// storeTile writes alpha·acc + beta·C to the 16 floats at c.
func storeTile(c unsafe.Pointer, acc, va, vb archsimd.Float32x16, beta float32) {
	if beta == 0 {
		acc.Mul(va).Store((*[16]float32)(c))
		return
	}
	acc.MulAdd(va, load16(c).Mul(vb)).Store((*[16]float32)(c))
}

// tileAVX512 replaces tilePlain.
func tileAVX512(kc int, a unsafe.Pointer, rs, cs uintptr, b unsafe.Pointer, w int, c unsafe.Pointer, ldc uintptr, alpha, beta float32) {
	// alpha and beta travel by pointer: as arguments they would hold two
	// of the 15 vector registers through the loop and force spills.
	ab := [2]float32{alpha, beta}
	if w == 32 {
		tile4x32(kc, a, rs, cs, b, c, ldc, &ab)
	} else {
		tile4x16(kc, a, rs, cs, b, c, ldc, &ab)
	}
}

// tile4x32 is the main micro-kernel: 4 rows × 2 vectors of C in registers,
// one rank-1 update per p.
func tile4x32(kc int, a unsafe.Pointer, rs, cs uintptr, b unsafe.Pointer, c unsafe.Pointer, ldc uintptr, ab *[2]float32) {
	var c00, c01, c10, c11, c20, c21, c30, c31 archsimd.Float32x16
	rs2, rs3 := 2*rs, 3*rs
	for ; kc > 0; kc-- {
		b0 := load16(b)
		b1 := load16(unsafe.Add(b, 64))
		x := bcast(a)
		c00 = x.MulAdd(b0, c00)
		c01 = x.MulAdd(b1, c01)
		x = bcast(unsafe.Add(a, rs))
		c10 = x.MulAdd(b0, c10)
		c11 = x.MulAdd(b1, c11)
		x = bcast(unsafe.Add(a, rs2))
		c20 = x.MulAdd(b0, c20)
		c21 = x.MulAdd(b1, c21)
		x = bcast(unsafe.Add(a, rs3))
		c30 = x.MulAdd(b0, c30)
		c31 = x.MulAdd(b1, c31)
		if kc == 1 {
			break // no step past the panels' ends (checkptr)
		}
		a = unsafe.Add(a, cs)
		b = unsafe.Add(b, 128)
	}
	beta := ab[1]
	va := archsimd.BroadcastFloat32x16(ab[0])
	vb := archsimd.BroadcastFloat32x16(beta)
	storeTile(c, c00, va, vb, beta)
	storeTile(unsafe.Add(c, 64), c01, va, vb, beta)
	c = unsafe.Add(c, ldc)
	storeTile(c, c10, va, vb, beta)
	storeTile(unsafe.Add(c, 64), c11, va, vb, beta)
	c = unsafe.Add(c, ldc)
	storeTile(c, c20, va, vb, beta)
	storeTile(unsafe.Add(c, 64), c21, va, vb, beta)
	c = unsafe.Add(c, ldc)
	storeTile(c, c30, va, vb, beta)
	storeTile(unsafe.Add(c, 64), c31, va, vb, beta)
}

// tile4x16 is the edge micro-kernel for a last panel of at most 16 columns.
func tile4x16(kc int, a unsafe.Pointer, rs, cs uintptr, b unsafe.Pointer, c unsafe.Pointer, ldc uintptr, ab *[2]float32) {
	var c0, c1, c2, c3 archsimd.Float32x16
	rs2, rs3 := 2*rs, 3*rs
	for ; kc > 0; kc-- {
		b0 := load16(b)
		c0 = bcast(a).MulAdd(b0, c0)
		c1 = bcast(unsafe.Add(a, rs)).MulAdd(b0, c1)
		c2 = bcast(unsafe.Add(a, rs2)).MulAdd(b0, c2)
		c3 = bcast(unsafe.Add(a, rs3)).MulAdd(b0, c3)
		if kc == 1 {
			break
		}
		a = unsafe.Add(a, cs)
		b = unsafe.Add(b, 64)
	}
	beta := ab[1]
	va := archsimd.BroadcastFloat32x16(ab[0])
	vb := archsimd.BroadcastFloat32x16(beta)
	storeTile(c, c0, va, vb, beta)
	storeTile(unsafe.Add(c, ldc), c1, va, vb, beta)
	storeTile(unsafe.Add(c, 2*ldc), c2, va, vb, beta)
	storeTile(unsafe.Add(c, 3*ldc), c3, va, vb, beta)
}

// hsum returns the sum of the 16 lanes of v.
func hsum(v archsimd.Float32x16) float32 {
	h := v.GetLo().Add(v.GetHi())
	q := h.GetLo().Add(h.GetHi())
	q = q.AddPairs(q)
	q = q.AddPairs(q)
	return q.GetElem(0)
}

// dotAVX512 replaces dotPlain.
func dotAVX512(x, y []float32) float32 {
	n := len(x)
	y = y[:n]
	var s0, s1, s2, s3 archsimd.Float32x16
	i := 0
	for ; i+64 <= n; i += 64 {
		s0 = archsimd.LoadFloat32x16Slice(x[i:]).MulAdd(archsimd.LoadFloat32x16Slice(y[i:]), s0)
		s1 = archsimd.LoadFloat32x16Slice(x[i+16:]).MulAdd(archsimd.LoadFloat32x16Slice(y[i+16:]), s1)
		s2 = archsimd.LoadFloat32x16Slice(x[i+32:]).MulAdd(archsimd.LoadFloat32x16Slice(y[i+32:]), s2)
		s3 = archsimd.LoadFloat32x16Slice(x[i+48:]).MulAdd(archsimd.LoadFloat32x16Slice(y[i+48:]), s3)
	}
	for ; i < n; i += 16 {
		s0 = loadPart(x[i:]).MulAdd(loadPart(y[i:]), s0)
	}
	return hsum(s0.Add(s1).Add(s2.Add(s3)))
}

// dot4AVX512 replaces dot4Plain. It streams four rows of a matrix (the
// decoding GEMV), so its main loop reads through pointers without bounds
// checks; the lengths are checked once on entry.
func dot4AVX512(x, w0, w1, w2, w3 []float32) (float32, float32, float32, float32) {
	n := len(x)
	w0, w1, w2, w3 = w0[:n], w1[:n], w2[:n], w3[:n]
	var s0, s1, s2, s3 archsimd.Float32x16
	i := 0
	if n >= 16 {
		px := unsafe.Pointer(&x[0])
		p0, p1, p2, p3 := unsafe.Pointer(&w0[0]), unsafe.Pointer(&w1[0]), unsafe.Pointer(&w2[0]), unsafe.Pointer(&w3[0])
		for ; i+16 <= n; i += 16 {
			o := uintptr(i) * 4
			v := load16(unsafe.Add(px, o))
			s0 = load16(unsafe.Add(p0, o)).MulAdd(v, s0)
			s1 = load16(unsafe.Add(p1, o)).MulAdd(v, s1)
			s2 = load16(unsafe.Add(p2, o)).MulAdd(v, s2)
			s3 = load16(unsafe.Add(p3, o)).MulAdd(v, s3)
		}
	}
	if i < n {
		v := loadPart(x[i:])
		s0 = loadPart(w0[i:]).MulAdd(v, s0)
		s1 = loadPart(w1[i:]).MulAdd(v, s1)
		s2 = loadPart(w2[i:]).MulAdd(v, s2)
		s3 = loadPart(w3[i:]).MulAdd(v, s3)
	}
	return hsum(s0), hsum(s1), hsum(s2), hsum(s3)
}

// axpyAVX512 replaces axpyPlain.
func axpyAVX512(alpha float32, x, y []float32) {
	n := len(x)
	y = y[:n]
	va := archsimd.BroadcastFloat32x16(alpha)
	i := 0
	for ; i+32 <= n; i += 32 {
		y0 := archsimd.LoadFloat32x16Slice(x[i:]).MulAdd(va, archsimd.LoadFloat32x16Slice(y[i:]))
		y1 := archsimd.LoadFloat32x16Slice(x[i+16:]).MulAdd(va, archsimd.LoadFloat32x16Slice(y[i+16:]))
		y0.StoreSlice(y[i:])
		y1.StoreSlice(y[i+16:])
	}
	for ; i < n; i += 16 {
		storePart(loadPart(x[i:]).MulAdd(va, loadPart(y[i:])), y[i:])
	}
}
