// Package cpu runs the model's operations on the CPU, using every core.
//
// Every kernel here has a plain reference in the tests (ref_test.go) that
// the fast version is compared against on fresh random inputs, and every
// backward has a finite-difference check.
//
// Shapes follow the glossary: B batch, T time, D d_model, E d_inner,
// N d_state, R dt_rank, K d_conv, V vocab. Arrays are row-major; a "row
// stride" ld is the distance between rows when a kernel reads a column
// block of a wider buffer (for example xi, the first E columns of the
// (B·T, 2E) in_proj output, has ld 2E).
package cpu

import "math"

// expf is exp for float32 arguments, accurate to a few ulp. Arguments below
// -87.3 give 0 and above 88 give +Inf.
func expf(x float32) float32 {
	const (
		log2e = 1.44269504088896341
		ln2hi = 0.693359375
		ln2lo = -2.12194440e-4
	)
	if x < -87.3 {
		return 0
	}
	if x > 88 {
		return float32(math.Inf(1))
	}
	t := x * log2e
	var k int32
	if t >= 0 {
		k = int32(t + 0.5)
	} else {
		k = int32(t - 0.5)
	}
	fk := float32(k)
	r := x - fk*ln2hi - fk*ln2lo // |r| <= ln2/2
	// exp(r) by its Taylor polynomial to degree 7 (error < 1e-8 relative).
	p := float32(1.0 / 5040)
	p = p*r + 1.0/720
	p = p*r + 1.0/120
	p = p*r + 1.0/24
	p = p*r + 1.0/6
	p = p*r + 0.5
	p = p*r + 1
	p = p*r + 1
	return p * math.Float32frombits(uint32(k+127)<<23)
}

// sigmoidf is 1/(1+exp(-x)), computed without overflow.
func sigmoidf(x float32) float32 {
	if x >= 0 {
		return 1 / (1 + expf(-x))
	}
	e := expf(x)
	return e / (1 + e)
}

// siluf is x·sigmoid(x).
func siluf(x float32) float32 { return x * sigmoidf(x) }

// siluGrad is d silu(x)/dx = σ(x)·(1 + x·(1-σ(x))).
func siluGrad(x float32) float32 {
	s := sigmoidf(x)
	return s * (1 + x*(1-s))
}

// softplus is ln(1+exp(x)), returning x itself above 20 as PyTorch does.
func softplus(x float32) float32 {
	if x > 20 {
		return x
	}
	return float32(math.Log1p(math.Exp(float64(x))))
}
