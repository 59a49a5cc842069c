//go:build amd64 && goexperiment.simd

package cpu

import (
	"math"
	"testing"

	"simd/archsimd"
)

// exp16 against math.Exp over the range the kernels use, 16 arguments at a
// time, with the same bound as expf; below -87.3 the result is exp(-87.3).
func TestExp16Accuracy(t *testing.T) {
	if !archsimd.X86.AVX512() {
		t.Skip("no AVX-512")
	}
	var in, out [16]float32
	worst := 0.0
	for x0 := -87.0; x0 <= 88.0; x0 += 16 * 0.0137 {
		for i := range in {
			in[i] = float32(x0 + float64(i)*0.0137)
		}
		exp16(archsimd.LoadFloat32x16(&in)).Store(&out)
		for i, x := range in {
			if x > 88 {
				continue
			}
			want := math.Exp(float64(x))
			if rel := math.Abs(float64(out[i])-want) / want; rel > worst {
				worst = rel
			}
		}
	}
	if worst > 4e-7 {
		t.Fatalf("exp16 worst relative error %.3g, want <= 4e-7", worst)
	}
	in = [16]float32{-1000, -100, -87.3, 0, 88.5, 89, 100}
	exp16(archsimd.LoadFloat32x16(&in)).Store(&out)
	floor := float32(math.Exp(float64(float32(-87.3))))
	if math.Abs(float64(out[0]/floor-1)) > 1e-6 || out[1] != out[0] || out[3] != 1 || math.IsInf(float64(out[4]), 0) || !math.IsInf(float64(out[5]), 1) || !math.IsInf(float64(out[6]), 1) {
		t.Fatalf("exp16 range ends wrong: %v", out[:7])
	}
}
