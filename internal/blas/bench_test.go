package blas

import (
	"fmt"
	"math/rand/v2"
	"testing"
)

// benchGemm times Gemm on random inputs and reports GFLOP/s (2mnk per
// call); SetBytes counts the operands read and C written once.
func benchGemm(b *testing.B, transA, transB bool, m, n, k int, beta float32) {
	r := rand.New(rand.NewPCG(7, 8))
	a, bm, c := randSlice(r, m*k), randSlice(r, k*n), randSlice(r, m*n)
	lda, ldb := k, n
	if transA {
		lda = m
	}
	if transB {
		ldb = k
	}
	b.SetBytes(int64(4 * (m*k + k*n + m*n)))
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		Gemm(transA, transB, m, n, k, 1, a, lda, bm, ldb, beta, c, n)
	}
	b.ReportMetric(2*float64(m)*float64(n)*float64(k)*float64(b.N)/b.Elapsed().Seconds()/1e9, "GFLOP/s")
}

func transName(ta, tb bool) string {
	s := [2]string{"N", "T"}
	x := func(t bool) string {
		if t {
			return s[1]
		}
		return s[0]
	}
	return x(ta) + x(tb)
}

func BenchmarkGemm1024(b *testing.B) {
	for _, ta := range []bool{false, true} {
		for _, tb := range []bool{false, true} {
			b.Run(transName(ta, tb), func(b *testing.B) { benchGemm(b, ta, tb, 1024, 1024, 1024, 0) })
		}
	}
}

// modelShapes are the (BT=8192, out, in) projections of the model's layers.
var modelShapes = [][3]int{{8192, 1024, 256}, {8192, 256, 512}, {8192, 48, 512}, {8192, 512, 16}, {8192, 256, 256}}

// BenchmarkGemmModel runs each projection as the forward y = x·Wᵀ (NT),
// the backward dX = dY·W (NN) and dW += dYᵀ·X (TN, beta = 1).
func BenchmarkGemmModel(b *testing.B) {
	for _, s := range modelShapes {
		bt, out, in := s[0], s[1], s[2]
		b.Run(fmt.Sprintf("fwdNT/%dx%dx%d", bt, out, in), func(b *testing.B) { benchGemm(b, false, true, bt, out, in, 0) })
		b.Run(fmt.Sprintf("dX_NN/%dx%dx%d", bt, in, out), func(b *testing.B) { benchGemm(b, false, false, bt, in, out, 0) })
		b.Run(fmt.Sprintf("dW_TN/%dx%dx%d", out, in, bt), func(b *testing.B) { benchGemm(b, true, false, out, in, bt, 1) })
	}
}

// BenchmarkGemv4096 is the decoding case: m streams times a 4096×4096 W
// (64 MiB, larger than L3) with transB. It reports the rate W is read at.
func BenchmarkGemv4096(b *testing.B) {
	const n, k = 4096, 4096
	r := rand.New(rand.NewPCG(9, 10))
	w := randSlice(r, n*k)
	for _, m := range []int{1, 2, 4, 8} {
		for _, tb := range []bool{true, false} {
			b.Run(fmt.Sprintf("m=%d/%s", m, transName(false, tb)), func(b *testing.B) {
				x, y := randSlice(r, m*k), make([]float32, m*n)
				b.SetBytes(4 * n * k)
				b.ReportAllocs()
				b.ResetTimer()
				for range b.N {
					Gemm(false, tb, m, n, k, 1, x, k, w, k, 0, y, n)
				}
				b.ReportMetric(4*n*k*float64(b.N)/b.Elapsed().Seconds()/1e9, "GB/s")
			})
		}
	}
}

func BenchmarkDot(b *testing.B) {
	r := rand.New(rand.NewPCG(11, 12))
	x, y := randSlice(r, 4096), randSlice(r, 4096)
	b.SetBytes(8 * 4096)
	var s float32
	for range b.N {
		s += Dot(x, y)
	}
	_ = s
}

func BenchmarkAxpy(b *testing.B) {
	r := rand.New(rand.NewPCG(13, 14))
	x, y := randSlice(r, 4096), randSlice(r, 4096)
	b.SetBytes(12 * 4096)
	for range b.N {
		Axpy(1e-3, x, y)
	}
}
