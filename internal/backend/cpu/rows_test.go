package cpu

import (
	"math"
	"math/rand/v2"
	"reflect"
	"testing"
)

// The row primitives in use (16-lane ones where built) against the plain
// loops, over lengths with tails and arguments from -100 to 100.
func TestRowPrimitivesMatchPlain(t *testing.T) {
	r := rand.New(rand.NewPCG(31, 32))
	for _, n := range []int{1, 15, 16, 17, 33, 100, 1000} {
		x := make([]float32, n)
		for i := range x {
			switch i % 4 {
			case 0:
				x[i] = float32(r.NormFloat64() * 3)
			case 1:
				x[i] = float32(r.Float64()*200 - 100)
			default:
				x[i] = float32(r.NormFloat64() * 20)
			}
		}
		g, y, bias := randSlice(r, n, 1), randSlice(r, n, 1), randSlice(r, n, 1)
		check := func(name string, got, want []float32) {
			t.Helper()
			for i := range want {
				d := math.Abs(float64(got[i] - want[i]))
				if d > 2e-6*math.Max(1, math.Abs(float64(want[i]))) || math.IsNaN(float64(got[i])) {
					t.Fatalf("%s n=%d: [%d] x=%g: got %g, want %g", name, n, i, x[i], got[i], want[i])
				}
			}
		}
		a, b := make([]float32, n), make([]float32, n)
		siluRows(a, x)
		siluRowsPlain(b, x)
		check("silu", a, b)
		gateRows(a, y, x)
		gateRowsPlain(b, y, x)
		check("gate", a, b)
		a2, b2 := make([]float32, n), make([]float32, n)
		gateBackRows(a, a2, g, y, x)
		gateBackRowsPlain(b, b2, g, y, x)
		check("gate back dy", a, b)
		check("gate back dz", a2, b2)
		siluGradRows(a, g, x)
		siluGradRowsPlain(b, g, x)
		check("silu grad", a, b)
		ra, rb := append([]float32(nil), x...), append([]float32(nil), x...)
		softplusRows(a, ra, bias)
		softplusRowsPlain(b, rb, bias)
		check("softplus raw", ra, rb)
		check("softplus", a, b)
		acc1, acc2 := append([]float32(nil), y...), append([]float32(nil), y...)
		sigmoidMulRows(a, acc1, g, x)
		sigmoidMulRowsPlain(b, acc2, g, x)
		check("sigmoid mul", a, b)
		check("sigmoid mul acc", acc1, acc2)
		d1, d2 := append([]float32(nil), y...), append([]float32(nil), y...)
		mulAddRows(d1, g, x)
		mulAddRowsPlain(d2, g, x)
		check("mul add", d1, d2)
	}
}

// The per-row norm kernels in use (16-lane ones where built) against the
// plain rows, forward and backward, LayerNorm and RMSNorm, with rows whose
// mean is far from zero. Without the 16-lane kernels (the default build,
// or a CPU without AVX-512) the plain rows are the ones in use and there
// is nothing to compare.
func TestNormRowsMatchPlain(t *testing.T) {
	if reflect.ValueOf(normRow).Pointer() == reflect.ValueOf(normRowPlain).Pointer() {
		t.Skip("the plain norm rows are in use")
	}
	r := rand.New(rand.NewPCG(33, 34))
	for _, D := range []int{16, 48, 512, 100} {
		for _, rms := range []bool{false, true} {
			x := randSlice(r, D, 2)
			for i := range x {
				x[i] += 3
			}
			w, b, g := randSlice(r, D, 1), randSlice(r, D, 1), randSlice(r, D, 1)
			o1, o2 := make([]float32, D), make([]float32, D)
			m1, r1 := normRow(o1, x, w, b, 1e-5, rms)
			m2, r2 := normRowPlain(o2, x, w, b, 1e-5, rms)
			if math.Abs(float64(m1-m2)) > 1e-6*math.Abs(float64(m2)) || math.Abs(float64(r1-r2)) > 1e-6*float64(r2) {
				t.Fatalf("D=%d rms=%v: mean, rstd %g %g, plain %g %g", D, rms, m1, r1, m2, r2)
			}
			d1, d2 := randSlice(r, D, 1), make([]float32, D)
			copy(d2, d1)
			pw1, pb1 := make([]float32, D), make([]float32, D)
			pw2, pb2 := make([]float32, D), make([]float32, D)
			normBackRow(d1, pw1, pb1, g, x, w, m2, r2, rms)
			normBackRowPlain(d2, pw2, pb2, g, x, w, m2, r2, rms)
			for _, c := range []struct {
				name   string
				got, w []float32
			}{{"out", o1, o2}, {"dx", d1, d2}, {"dw", pw1, pw2}, {"db", pb1, pb2}} {
				for i := range c.w {
					if d := math.Abs(float64(c.got[i] - c.w[i])); d > 2e-6*math.Max(1, math.Abs(float64(c.w[i]))) {
						t.Fatalf("D=%d rms=%v: %s[%d] = %g, plain %g", D, rms, c.name, i, c.got[i], c.w[i])
					}
				}
			}
		}
	}
}
