package cpu

import (
	"math"
	"math/rand/v2"
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
