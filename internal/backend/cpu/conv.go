package cpu

import "github.com/mambabyte/mambabyte/internal/parallel"

// channelGrain is the smallest block of channels one worker takes.
const channelGrain = 32

// ConvForward is the causal depthwise convolution followed by SiLU:
//
//	pre[b,t,e] = bias[e] + Σ_k w[e,k]·xi[b,t-K+1+k,e],   u = silu(pre)
//
// xi is (B,T,E) with row stride ldx; inputs before t=0 come from prev
// (B,K-1,E), the last K-1 inputs of the previous chunk, or are zero when
// prev is nil. w is (E,K); bias (E) may be nil. pre and u are (B,T,E);
// pre may be nil when no backward follows.
func ConvForward(u, pre, xi []float32, ldx int, prev, w, bias []float32, B, T, E, K int) {
	parallel.For(E, channelGrain, func(elo, ehi int) {
		for b := 0; b < B; b++ {
			for t := 0; t < T; t++ {
				row := (b*T + t) * E
				for e := elo; e < ehi; e++ {
					var acc float32
					if bias != nil {
						acc = bias[e]
					}
					wk := w[e*K : e*K+K]
					for k := 0; k < K; k++ {
						tau := t - K + 1 + k
						switch {
						case tau >= 0:
							acc += wk[k] * xi[(b*T+tau)*ldx+e]
						case prev != nil:
							acc += wk[k] * prev[(b*(K-1)+K-1+tau)*E+e]
						}
					}
					if pre != nil {
						pre[row+e] = acc
					}
					u[row+e] = siluf(acc)
				}
			}
		}
	})
}

// ConvBackward writes dxi (B,T,E, row stride ldx) and adds into dw (E,K)
// and dbias (E, may be nil), given du (B,T,E), the weights w and the
// forward's pre and xi.
// Gradients with respect to prev are not produced (training starts every
// window from a zero state); prev is read for the weight gradient.
func ConvBackward(dxi []float32, ldx int, dw, dbias, du, pre, xi, prev, w []float32, B, T, E, K int) {
	parallel.For(E, channelGrain, func(elo, ehi int) {
		n := ehi - elo
		dpre := make([]float32, T*n) // one batch row at a time
		for b := 0; b < B; b++ {
			for t := 0; t < T; t++ {
				row := (b*T + t) * E
				for e := elo; e < ehi; e++ {
					g := du[row+e] * siluGrad(pre[row+e])
					dpre[t*n+e-elo] = g
					if dbias != nil {
						dbias[e] += g
					}
				}
			}
			for t := 0; t < T; t++ {
				for e := elo; e < ehi; e++ {
					var acc float32
					wk := w[e*K : e*K+K]
					for k := 0; k < K; k++ {
						// xi[t] feeds pre[t+K-1-k] through w[e,k].
						if s := t + K - 1 - k; s < T {
							acc += dpre[s*n+e-elo] * wk[k]
						}
					}
					dxi[(b*T+t)*ldx+e] = acc
				}
			}
			for t := 0; t < T; t++ {
				for e := elo; e < ehi; e++ {
					g := dpre[t*n+e-elo]
					dwk := dw[e*K : e*K+K]
					for k := 0; k < K; k++ {
						tau := t - K + 1 + k
						switch {
						case tau >= 0:
							dwk[k] += g * xi[(b*T+tau)*ldx+e]
						case prev != nil:
							dwk[k] += g * prev[(b*(K-1)+K-1+tau)*E+e]
						}
					}
				}
			}
		}
	})
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
