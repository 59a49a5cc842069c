package cpu

import (
	"math"
	"testing"
)

func TestExpfAccuracy(t *testing.T) {
	worst := 0.0
	for x := -87.0; x <= 88.0; x += 0.0137 {
		got := float64(expf(float32(x)))
		want := math.Exp(float64(float32(x)))
		rel := math.Abs(got-want) / want
		if rel > worst {
			worst = rel
		}
	}
	if worst > 4e-7 {
		t.Fatalf("expf worst relative error %.3g, want <= 4e-7", worst)
	}
	if expf(-100) != 0 || !math.IsInf(float64(expf(100)), 1) {
		t.Fatalf("expf range ends wrong: %g %g", expf(-100), expf(100))
	}
}

func TestActivations(t *testing.T) {
	for _, x := range []float32{-30, -5, -1, -1e-3, 0, 1e-3, 0.5, 3, 19, 21, 40} {
		s := 1 / (1 + math.Exp(-float64(x)))
		if d := math.Abs(float64(sigmoidf(x)) - s); d > 1e-7 {
			t.Errorf("sigmoid(%g) off by %g", x, d)
		}
		if d := math.Abs(float64(siluf(x)) - float64(x)*s); d > 1e-6*math.Max(1, math.Abs(float64(x))) {
			t.Errorf("silu(%g) off by %g", x, d)
		}
		sp := math.Log1p(math.Exp(float64(x)))
		if d := math.Abs(float64(softplus(x)) - sp); d > 1e-6*math.Max(1, sp) {
			t.Errorf("softplus(%g) off by %g", x, d)
		}
		h := 1e-3
		fd := (float64(x)+h)/(1+math.Exp(-(float64(x)+h))) - (float64(x)-h)/(1+math.Exp(-(float64(x)-h)))
		fd /= 2 * h
		if d := math.Abs(float64(siluGrad(x)) - fd); d > 1e-5 {
			t.Errorf("silu'(%g) = %g, finite difference %g", x, siluGrad(x), fd)
		}
	}
}
