package blas

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
)

// forEachImpl runs f once with every implementation this build and CPU can
// run selected (the shared conformance tests).
func forEachImpl(t *testing.T, f func(t *testing.T)) {
	saved := impl
	defer func() { impl = saved }()
	for _, k := range impls {
		impl = k
		t.Run(k.name, f)
	}
}

func randSlice(r *rand.Rand, n int) []float32 {
	x := make([]float32, n)
	for i := range x {
		x[i] = 2*r.Float32() - 1
	}
	return x
}

func absSlice(x []float32) []float32 {
	y := make([]float32, len(x))
	for i, v := range x {
		y[i] = float32(math.Abs(float64(v)))
	}
	return y
}

type gemmCase struct {
	transA, transB bool
	m, n, k        int
	pad            int // added to every leading dimension
	alpha, beta    float32
}

func (tc gemmCase) String() string {
	t := func(b bool) string {
		if b {
			return "T"
		}
		return "N"
	}
	return fmt.Sprintf("%s%s/m=%d,n=%d,k=%d/pad=%d/alpha=%g,beta=%g", t(tc.transA), t(tc.transB), tc.m, tc.n, tc.k, tc.pad, tc.alpha, tc.beta)
}

// checkGemmCase runs Gemm on fresh random inputs and compares with GemmRef.
// Each element may differ by 1e-5·sqrt(k+1) times the sum of magnitudes of
// its terms (|alpha|·Σ|a||b| + |beta·c|). With beta == 0, C starts as NaN;
// the padding columns of C must come back untouched.
func checkGemmCase(t *testing.T, r *rand.Rand, tc gemmCase) {
	t.Helper()
	ar, ac := tc.m, tc.k
	if tc.transA {
		ar, ac = tc.k, tc.m
	}
	br, bc := tc.k, tc.n
	if tc.transB {
		br, bc = tc.n, tc.k
	}
	lda, ldb, ldc := ac+tc.pad, bc+tc.pad, tc.n+tc.pad
	a := randSlice(r, max(0, (ar-1)*lda+ac))
	b := randSlice(r, max(0, (br-1)*ldb+bc))
	c := randSlice(r, max(0, (tc.m-1)*ldc+tc.n))
	const sentinel = 12345
	for i := 0; i < tc.m; i++ {
		for j := tc.n; j < ldc && i*ldc+j < len(c); j++ {
			c[i*ldc+j] = sentinel
		}
		if tc.beta == 0 {
			for j := 0; j < tc.n; j++ {
				c[i*ldc+j] = float32(math.NaN())
			}
		}
	}
	want := append([]float32(nil), c...)
	GemmRef(tc.transA, tc.transB, tc.m, tc.n, tc.k, tc.alpha, a, lda, b, ldb, tc.beta, want, ldc)
	bound := absSlice(c)
	GemmRef(tc.transA, tc.transB, tc.m, tc.n, tc.k, float32(math.Abs(float64(tc.alpha))), absSlice(a), lda, absSlice(b), ldb, float32(math.Abs(float64(tc.beta))), bound, ldc)
	got := append([]float32(nil), c...)
	Gemm(tc.transA, tc.transB, tc.m, tc.n, tc.k, tc.alpha, a, lda, b, ldb, tc.beta, got, ldc)
	tol := 1e-5 * math.Sqrt(float64(tc.k+1))
	bad := 0
	for i := 0; i < tc.m; i++ {
		for j := 0; j < ldc && i*ldc+j < len(c); j++ {
			g, w := got[i*ldc+j], want[i*ldc+j]
			if j >= tc.n {
				if g != sentinel {
					t.Errorf("%v: C[%d][%d] (padding) = %g, want it untouched", tc, i, j, g)
					bad++
				}
				continue
			}
			if d := math.Abs(float64(g - w)); !(d <= tol*float64(bound[i*ldc+j])+1e-30) {
				t.Errorf("%v: C[%d][%d] = %g, want %g (|diff| %g > %g)", tc, i, j, g, w, d, tol*float64(bound[i*ldc+j]))
				bad++
			}
			if bad > 5 {
				t.Fatalf("%v: too many errors", tc)
			}
		}
	}
}

var gemmShapes = [][3]int{
	{1, 1, 1}, {1, 7, 3}, {1, 100, 257}, {2, 257, 17}, {3, 17, 33}, {4, 4, 1},
	{5, 100, 257}, {7, 33, 2100}, {8, 33, 100}, {8, 1100, 9}, // GEMV and AXPY paths
	{9, 1, 1}, {9, 3, 17}, {17, 33, 3}, {33, 17, 100}, {13, 300, 40},
	{100, 257, 33}, {257, 100, 17}, {64, 48, 512}, {100, 33, 257}, {36, 16, 16},
}

var alphaBetas = [][2]float32{{1, 0}, {-0.5, 1}, {1.5, -0.25}}

func TestGemm(t *testing.T) {
	forEachImpl(t, func(t *testing.T) {
		r := rand.New(rand.NewPCG(1, 2))
		for _, s := range gemmShapes {
			for _, ta := range []bool{false, true} {
				for _, tb := range []bool{false, true} {
					for _, pad := range []int{0, 5} {
						for _, ab := range alphaBetas {
							checkGemmCase(t, r, gemmCase{ta, tb, s[0], s[1], s[2], pad, ab[0], ab[1]})
						}
					}
				}
			}
		}
	})
}

// TestGemmBlocks shrinks the cache blocks so that small problems cross
// every block boundary (several jc, pc and ic steps, partial blocks).
func TestGemmBlocks(t *testing.T) {
	kc, mc, nc := blockKc, blockMc, blockNc
	defer func() { blockKc, blockMc, blockNc = kc, mc, nc }()
	blockKc, blockMc, blockNc = 7, 8, 64
	forEachImpl(t, func(t *testing.T) {
		r := rand.New(rand.NewPCG(3, 4))
		for _, s := range [][3]int{{9, 65, 15}, {30, 130, 29}, {70, 200, 64}, {33, 97, 1}} {
			for _, ta := range []bool{false, true} {
				for _, tb := range []bool{false, true} {
					for _, ab := range alphaBetas {
						checkGemmCase(t, r, gemmCase{ta, tb, s[0], s[1], s[2], 3, ab[0], ab[1]})
					}
				}
			}
		}
	})
}

// TestGemmNoProducts covers k == 0 and alpha == 0: C = beta·C, A and B
// unread.
func TestGemmNoProducts(t *testing.T) {
	for _, tc := range []struct {
		k           int
		alpha, beta float32
		want        float32
	}{
		{0, 1, 0, 0}, {0, 1, 2, 6}, {4, 0, 0, 0}, {4, 0, 0.5, 1.5}, {4, 0, 1, 3},
	} {
		c := []float32{3, 3, 3, 3}
		a := []float32{float32(math.NaN()), 1, 1, 1, 1, 1, 1, 1}
		Gemm(false, false, 2, 2, tc.k, tc.alpha, a, max(tc.k, 1), a, 2, tc.beta, c, 2)
		for i, v := range c {
			if v != tc.want {
				t.Errorf("k=%d alpha=%g beta=%g: c[%d] = %g, want %g", tc.k, tc.alpha, tc.beta, i, v, tc.want)
			}
		}
	}
}

func TestGemmPanics(t *testing.T) {
	a := make([]float32, 12)
	for _, tc := range []struct {
		name string
		f    func()
	}{
		{"negative m", func() { Gemm(false, false, -1, 2, 2, 1, a, 2, a, 2, 0, a, 2) }},
		{"lda < k", func() { Gemm(false, false, 2, 2, 3, 1, a, 2, a, 2, 0, a, 2) }},
		{"lda < m (transA)", func() { Gemm(true, false, 3, 2, 2, 1, a, 2, a, 2, 0, a, 2) }},
		{"ldb < k (transB)", func() { Gemm(false, true, 2, 2, 3, 1, a, 3, a, 2, 0, a, 2) }},
		{"short C", func() { Gemm(false, false, 4, 4, 1, 1, a, 1, a, 4, 0, a[:10], 4) }},
		{"short y", func() { Axpy(1, a, a[:3]) }},
		{"short y (Dot)", func() { Dot(a, a[:3]) }},
	} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("%s: no panic", tc.name)
				}
			}()
			tc.f()
		}()
	}
}

var vecLengths = []int{0, 1, 3, 15, 16, 17, 31, 33, 63, 64, 65, 100, 257, 1000, 4099}

func TestDotAxpy(t *testing.T) {
	forEachImpl(t, func(t *testing.T) {
		r := rand.New(rand.NewPCG(5, 6))
		for _, n := range vecLengths {
			x, y := randSlice(r, n), randSlice(r, n+3)
			var want, mag float64
			for i := 0; i < n; i++ {
				want += float64(x[i]) * float64(y[i])
				mag += math.Abs(float64(x[i]) * float64(y[i]))
			}
			tol := 1e-5*math.Sqrt(float64(n+1))*mag + 1e-30
			if got := Dot(x, y); math.Abs(float64(got)-want) > tol {
				t.Errorf("Dot n=%d: got %g, want %g", n, got, want)
			}
			w := [4][]float32{randSlice(r, n), randSlice(r, n), randSlice(r, n), randSlice(r, n)}
			s0, s1, s2, s3 := impl.dot4(x, w[0], w[1], w[2], w[3])
			for q, got := range []float32{s0, s1, s2, s3} {
				if want := float64(dotPlain(x, w[q])); math.Abs(float64(got)-want) > 1e-5*math.Sqrt(float64(n+1))*float64(n) {
					t.Errorf("dot4 n=%d row %d: got %g, want %g", n, q, got, want)
				}
			}
			alpha := float32(-0.75)
			y0 := append([]float32(nil), y...)
			Axpy(alpha, x, y)
			for i := range y {
				want := y0[i]
				if i < n {
					want = y0[i] + alpha*x[i]
				}
				if math.Abs(float64(y[i]-want)) > 1e-6 {
					t.Errorf("Axpy n=%d: y[%d] = %g, want %g", n, i, y[i], want)
				}
			}
		}
	})
}
