package cpu

import "github.com/mambabyte/mambabyte/internal/parallel"

// channelGrain is the smallest block of channels one worker takes.
const channelGrain = 32

// transposeKE returns w (E,K) as (K,E), so that tap k of a block of
// channels is contiguous.
func transposeKE(w []float32, E, K int) []float32 {
	t := make([]float32, K*E)
	for e := 0; e < E; e++ {
		for k := 0; k < K; k++ {
			t[k*E+e] = w[e*K+k]
		}
	}
	return t
}

// convInput returns the run of channels [elo,ehi) of the conv input at
// time tau of row b: xi for tau >= 0, prev before (nil when prev is nil).
func convInput(xi []float32, ldx int, prev []float32, b, T, E, K, tau, elo, ehi int) []float32 {
	if tau >= 0 {
		o := (b*T + tau) * ldx
		return xi[o+elo : o+ehi]
	}
	if prev == nil {
		return nil
	}
	o := (b*(K-1) + K - 1 + tau) * E
	return prev[o+elo : o+ehi]
}

// ConvForward is the causal depthwise convolution followed by SiLU:
//
//	pre[b,t,e] = bias[e] + Σ_k w[e,k]·xi[b,t-K+1+k,e],   u = silu(pre)
//
// xi is (B,T,E) with row stride ldx; inputs before t=0 come from prev
// (B,K-1,E), the last K-1 inputs of the previous chunk, or are zero when
// prev is nil. w is (E,K); bias (E) may be nil. pre and u are (B,T,E);
// pre may be nil when no backward follows.
func ConvForward(u, pre, xi []float32, ldx int, prev, w, bias []float32, B, T, E, K int) {
	if B*T <= 4 {
		// A few rows (a decode step): one channel at a time, no transpose.
		for b := 0; b < B; b++ {
			for t := 0; t < T; t++ {
				row := (b*T + t) * E
				for e := 0; e < E; e++ {
					var acc float32
					if bias != nil {
						acc = bias[e]
					}
					for k := 0; k < K; k++ {
						if tau := t - K + 1 + k; tau >= 0 {
							acc += w[e*K+k] * xi[(b*T+tau)*ldx+e]
						} else if prev != nil {
							acc += w[e*K+k] * prev[(b*(K-1)+K-1+tau)*E+e]
						}
					}
					if pre != nil {
						pre[row+e] = acc
					}
					u[row+e] = acc
				}
				siluRows(u[row:row+E], u[row:row+E])
			}
		}
		return
	}
	wt := transposeKE(w, E, K)
	parallel.For(E, channelGrain, func(elo, ehi int) {
		n := ehi - elo
		acc := make([]float32, n)
		for b := 0; b < B; b++ {
			for t := 0; t < T; t++ {
				if bias != nil {
					copy(acc, bias[elo:ehi])
				} else {
					clear(acc)
				}
				for k := 0; k < K; k++ {
					if x := convInput(xi, ldx, prev, b, T, E, K, t-K+1+k, elo, ehi); x != nil {
						mulAddRows(acc, wt[k*E+elo:k*E+ehi], x)
					}
				}
				row := (b*T + t) * E
				if pre != nil {
					copy(pre[row+elo:row+ehi], acc)
				}
				siluRows(u[row+elo:row+ehi], acc)
			}
		}
	})
}

// ConvBackward writes dxi (B,T,E, row stride ldx) and adds into dw (E,K)
// and dbias (E, may be nil), given du (B,T,E), the weights w and the
// forward's pre and xi. Gradients with respect to prev are not produced
// (training starts every window from a zero state); prev is read for the
// weight gradient.
func ConvBackward(dxi []float32, ldx int, dw, dbias, du, pre, xi, prev, w []float32, B, T, E, K int) {
	wt := transposeKE(w, E, K)
	dwt := make([]float32, K*E) // (K,E); each worker owns its channels
	parallel.For(E, channelGrain, func(elo, ehi int) {
		n := ehi - elo
		dpre := make([]float32, T*n) // one batch row at a time
		for b := 0; b < B; b++ {
			for t := 0; t < T; t++ {
				row := (b*T + t) * E
				d := dpre[t*n : (t+1)*n]
				siluGradRows(d, du[row+elo:row+ehi], pre[row+elo:row+ehi])
				if dbias != nil {
					mulAddRows(dbias[elo:ehi], d, ones(n))
				}
			}
			for t := 0; t < T; t++ {
				// xi[t] feeds pre[t+K-1-k] through w[e,k].
				dx := dxi[(b*T+t)*ldx+elo : (b*T+t)*ldx+ehi]
				clear(dx)
				for k := 0; k < K; k++ {
					if s := t + K - 1 - k; s < T {
						mulAddRows(dx, dpre[s*n:(s+1)*n], wt[k*E+elo:k*E+ehi])
					}
				}
			}
			for t := 0; t < T; t++ {
				d := dpre[t*n : (t+1)*n]
				for k := 0; k < K; k++ {
					if x := convInput(xi, ldx, prev, b, T, E, K, t-K+1+k, elo, ehi); x != nil {
						mulAddRows(dwt[k*E+elo:k*E+ehi], d, x)
					}
				}
			}
		}
	})
	for e := 0; e < E; e++ {
		for k := 0; k < K; k++ {
			dw[e*K+k] += dwt[k*E+e]
		}
	}
}

// onesBuf is a run of ones for adding a row with mulAddRows.
var onesBuf = func() []float32 {
	s := make([]float32, 4096)
	for i := range s {
		s[i] = 1
	}
	return s
}()

func ones(n int) []float32 {
	if n <= len(onesBuf) {
		return onesBuf[:n]
	}
	s := make([]float32, n)
	for i := range s {
		s[i] = 1
	}
	return s
}

// ConvState writes into next (B,K-1,E) the last K-1 inputs seen after xi
// (B,T,E, row stride ldx), taking older ones from prev (nil means zeros).
// next may alias prev.
func ConvState(next, prev, xi []float32, ldx, B, T, E, K int) {
	w := K - 1
	for b := 0; b < B; b++ {
		// Slot j holds the input at time T-w+j, possibly from prev.
		if T < w {
			// Shift the old values down first (in place is safe in order).
			for j := 0; j < w-T; j++ {
				dst := next[(b*w+j)*E : (b*w+j+1)*E]
				if prev == nil {
					clear(dst)
				} else {
					copy(dst, prev[(b*w+j+T)*E:(b*w+j+T+1)*E])
				}
			}
		}
		for j := max(0, w-T); j < w; j++ {
			tau := T - w + j
			dst := next[(b*w+j)*E : (b*w+j+1)*E]
			src := xi[(b*T+tau)*ldx : (b*T+tau)*ldx+E]
			copy(dst, src)
		}
	}
}
