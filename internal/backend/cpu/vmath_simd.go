//go:build amd64 && goexperiment.simd

package cpu

import "simd/archsimd"

// Vector constants live in memory, broadcast to 16 lanes, so that they
// enter instructions as memory operands: Go 1.26 gives SIMD values only
// 15 registers, and a broadcast constant would take one for as long as it
// is live (or be rebuilt with two instructions at every use).
const (
	kExpMin = iota
	kLog2e
	kNegLn2Hi
	kNegLn2Lo
	kExp6
	kExp5
	kExp4
	kExp3
	kExp2
	kOne
	numK
)

var vconst = func() (t [numK][16]float32) {
	for i, v := range [numK]float32{
		kExpMin:   -87.3,
		kLog2e:    1.44269504088896341,
		kNegLn2Hi: -0.693359375,
		kNegLn2Lo: 2.12194440e-4,
		kExp6:     0.00138368434,
		kExp5:     0.00837481581,
		kExp4:     0.0416682251,
		kExp3:     0.166664198,
		kExp2:     0.499999911,
		kOne:      1,
	} {
		for j := range t[i] {
			t[i][j] = v
		}
	}
	return t
}()

// kv is vector constant i, loaded where it is used.
func kv(i int) vec { return archsimd.LoadFloat32x16(&vconst[i]) }

// exp16 is expf on 16 lanes for x ≤ 88: k = round(x/ln2), r = x - k·ln2
// (in two parts), exp(r) by a degree-6 polynomial fitted for least
// relative error on |r| ≤ ln2/2 (1.7e-8 with its float32 coefficients;
// the degree-7 Taylor polynomial needs one more multiply-add), scaled by
// 2^k with VSCALEFPS. Arguments below -87.3 are clamped there, so no result
// is subnormal; above 88.7 the result is +Inf.
func exp16(x vec) vec {
	x = x.Max(kv(kExpMin))
	k := x.Mul(kv(kLog2e)).RoundToEvenScaled(0)
	r := k.MulAdd(kv(kNegLn2Hi), x)
	r = k.MulAdd(kv(kNegLn2Lo), r)
	p := kv(kExp6).MulAdd(r, kv(kExp5))
	p = p.MulAdd(r, kv(kExp4))
	p = p.MulAdd(r, kv(kExp3))
	p = p.MulAdd(r, kv(kExp2))
	p = p.MulAdd(r, kv(kOne))
	p = p.MulAdd(r, kv(kOne))
	return p.Scale(k)
}
