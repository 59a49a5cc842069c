package cpu

import (
	"math"
	"math/rand/v2"
	"testing"
)

func TestAdamWMatchesReference(t *testing.T) {
	r := rand.New(rand.NewPCG(21, 22))
	n := 10007
	p := randSlice(r, n, 1)
	m := make([]float32, n)
	v := make([]float32, n)
	pr := make([]float64, n)
	mr := make([]float64, n)
	vr := make([]float64, n)
	for i := range p {
		pr[i] = float64(p[i])
	}
	const lr, b1, b2, eps, wd = 1e-2, 0.9, 0.95, 1e-8, 0.1
	for step := 1; step <= 5; step++ {
		g := randSlice(r, n, 1)
		bc1 := 1 - math.Pow(b1, float64(step))
		bc2 := 1 - math.Pow(b2, float64(step))
		AdamW(p, g, m, v, lr, b1, b2, eps, wd, float32(bc1), float32(bc2))
		for i := range pr {
			gi := float64(g[i])
			mr[i] = b1*mr[i] + (1-b1)*gi
			vr[i] = b2*vr[i] + (1-b2)*gi*gi
			pr[i] -= lr * (mr[i]/bc1/(math.Sqrt(vr[i]/bc2)+eps) + wd*pr[i])
		}
	}
	if d := maxRelDiff(p, pr); d > 1e-6 {
		t.Fatalf("parameters differ from the reference by %.3g relative", d)
	}
}

func TestSumSquaresAndScale(t *testing.T) {
	r := rand.New(rand.NewPCG(23, 24))
	x := randSlice(r, 50001, 2)
	var want float64
	for _, v := range x {
		want += float64(v) * float64(v)
	}
	if got := SumSquares(x); math.Abs(got-want) > 1e-9*want {
		t.Fatalf("SumSquares %g, want %g", got, want)
	}
	Scale(x, 0.5)
	if got := SumSquares(x); math.Abs(got-want/4) > 1e-9*want {
		t.Fatalf("after Scale(0.5): %g, want %g", got, want/4)
	}
}
