package cpu

// Plain references for the kernels: straight loops in float64, written for
// reading, not speed. The fast kernels are compared against them.

import (
	"math"
	"math/rand/v2"
	"testing"
)

func randSlice(r *rand.Rand, n int, scale float64) []float32 {
	s := make([]float32, n)
	for i := range s {
		s[i] = float32(r.NormFloat64() * scale)
	}
	return s
}

func sig(x float64) float64 { return 1 / (1 + math.Exp(-x)) }

func refNorm(x, w, b []float32, rows, D int, eps float64, rms bool) []float64 {
	out := make([]float64, rows*D)
	for r := 0; r < rows; r++ {
		var mu, ss float64
		if !rms {
			for i := 0; i < D; i++ {
				mu += float64(x[r*D+i])
			}
			mu /= float64(D)
		}
		for i := 0; i < D; i++ {
			d := float64(x[r*D+i]) - mu
			ss += d * d
		}
		rs := 1 / math.Sqrt(ss/float64(D)+eps)
		for i := 0; i < D; i++ {
			v := (float64(x[r*D+i]) - mu) * rs * float64(w[i])
			if !rms {
				v += float64(b[i])
			}
			out[r*D+i] = v
		}
	}
	return out
}

// refConv returns pre-activations of the causal depthwise conv.
func refConv(xi []float32, ldx int, prev, w, bias []float32, B, T, E, K int) []float64 {
	pre := make([]float64, B*T*E)
	for b := 0; b < B; b++ {
		for t := 0; t < T; t++ {
			for e := 0; e < E; e++ {
				acc := 0.0
				if bias != nil {
					acc = float64(bias[e])
				}
				for k := 0; k < K; k++ {
					tau := t - K + 1 + k
					var x float64
					if tau >= 0 {
						x = float64(xi[(b*T+tau)*ldx+e])
					} else if prev != nil {
						x = float64(prev[(b*(K-1)+K-1+tau)*E+e])
					}
					acc += float64(w[e*K+k]) * x
				}
				pre[(b*T+t)*E+e] = acc
			}
		}
	}
	return pre
}

// refScan returns y and the final state.
func refScan(u, delta, Bt, Ct []float32, ldbc int, Alog, Dskip, s0 []float32, B, T, E, N int) ([]float64, []float64) {
	y := make([]float64, B*T*E)
	s := make([]float64, B*E*N)
	if s0 != nil {
		for i := range s {
			s[i] = float64(s0[i])
		}
	}
	for b := 0; b < B; b++ {
		for t := 0; t < T; t++ {
			for e := 0; e < E; e++ {
				d := float64(delta[(b*T+t)*E+e])
				uu := float64(u[(b*T+t)*E+e])
				acc := 0.0
				for n := 0; n < N; n++ {
					A := -math.Exp(float64(Alog[e*N+n]))
					st := &s[(b*E+e)*N+n]
					*st = math.Exp(d*A)**st + d*float64(Bt[(b*T+t)*ldbc+n])*uu
					acc += *st * float64(Ct[(b*T+t)*ldbc+n])
				}
				y[(b*T+t)*E+e] = acc + float64(Dskip[e])*uu
			}
		}
	}
	return y, s
}

func maxRelDiff(got []float32, want []float64) float64 {
	var num, den float64
	for i := range want {
		d := float64(got[i]) - want[i]
		num += d * d
		den += want[i] * want[i]
	}
	if den == 0 {
		return math.Sqrt(num)
	}
	return math.Sqrt(num / den)
}

// weightedLoss is Σ out[i]·r[i], the scalar used by the gradient checks.
func weightedLoss(out []float32, r []float32) float64 {
	var s float64
	for i := range out {
		s += float64(out[i]) * float64(r[i])
	}
	return s
}

// checkGrad compares an analytic gradient of loss with respect to x with
// central differences, over every coordinate of x.
func checkGrad(t *testing.T, name string, x, analytic []float32, loss func() float64) {
	t.Helper()
	const h = 1e-2
	var num, den float64
	for i := range x {
		old := x[i]
		x[i] = old + h
		lp := loss()
		x[i] = old - h
		lm := loss()
		x[i] = old
		fd := (lp - lm) / (2 * h)
		d := fd - float64(analytic[i])
		num += d * d
		den += fd * fd
	}
	rel := math.Sqrt(num / math.Max(den, 1e-30))
	if rel > 2e-3 || math.IsNaN(rel) {
		t.Errorf("%s: gradient differs from finite differences by %.3g relative", name, rel)
	}
}

func mathExp(x float32) float64 { return math.Exp(float64(x)) }
func mathLog(x float64) float64 { return math.Log(x) }
