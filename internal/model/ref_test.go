package model_test

// refModel is a plain float64 implementation of the network, written as
// DESIGN.md states it: one loop per formula, no buffers shared, no speed.
// The fast model is compared against it, and finite differences taken on
// it are exact enough to check the fast model's gradients.

import (
	"math"

	"github.com/mambabyte/mambabyte/internal/model"
)

type refModel struct {
	cfg model.Config
	p   map[string][]float64
}

func newRef(cfg model.Config, p map[string][]float32) *refModel {
	r := &refModel{cfg: cfg, p: map[string][]float64{}}
	for k, v := range p {
		d := make([]float64, len(v))
		for i, x := range v {
			d[i] = float64(x)
		}
		r.p[k] = d
	}
	return r
}

func (r *refModel) norm(x []float64, w, b []float64) []float64 {
	D := len(x)
	mu := 0.0
	if r.cfg.Norm == model.LayerNorm {
		for _, v := range x {
			mu += v
		}
		mu /= float64(D)
	}
	ss := 0.0
	for _, v := range x {
		ss += (v - mu) * (v - mu)
	}
	rs := 1 / math.Sqrt(ss/float64(D)+r.cfg.NormEps)
	out := make([]float64, D)
	for i, v := range x {
		out[i] = (v - mu) * rs * w[i]
		if b != nil {
			out[i] += b[i]
		}
	}
	return out
}

// matvec returns W·x for W (rows, len(x)).
func matvec(W []float64, x []float64) []float64 {
	n := len(x)
	out := make([]float64, len(W)/n)
	for i := range out {
		for j, v := range x {
			out[i] += W[i*n+j] * v
		}
	}
	return out
}

func silu(x float64) float64 { return x / (1 + math.Exp(-x)) }

// logits returns the (T,V) logits of one sequence.
func (r *refModel) logits(ids []int32) [][]float64 {
	c := r.cfg
	D, E, N, K, R := c.DModel, c.DInner(), c.DState, c.DConv, c.Rank()
	T := len(ids)
	h := make([][]float64, T)
	for t, id := range ids {
		h[t] = append([]float64(nil), r.p[model.NameEmbed][int(id)*D:(int(id)+1)*D]...)
	}
	for l := 0; l < c.NLayer; l++ {
		P := func(s string) []float64 { return r.p[model.LayerPrefix(l)+s] }
		xi := make([][]float64, T)
		z := make([][]float64, T)
		for t := range h {
			xz := matvec(P(model.SufInProj), r.norm(h[t], P(model.SufNorm), P(model.SufNormB)))
			xi[t], z[t] = xz[:E], xz[E:]
		}
		s := make([]float64, E*N)
		for t := 0; t < T; t++ {
			u := make([]float64, E)
			for e := 0; e < E; e++ {
				acc := 0.0
				if c.ConvBias {
					acc = P(model.SufConvB)[e]
				}
				for k := 0; k < K; k++ {
					if tau := t - K + 1 + k; tau >= 0 {
						acc += P(model.SufConvW)[e*K+k] * xi[tau][e]
					}
				}
				u[e] = silu(acc)
			}
			xd := matvec(P(model.SufXProj), u)
			rr, Bt, Ct := xd[:R], xd[R:R+N], xd[R+N:]
			dt := matvec(P(model.SufDtProj), rr)
			g := make([]float64, E)
			for e := 0; e < E; e++ {
				x := dt[e] + P(model.SufDtBias)[e]
				delta := x
				if x <= 20 {
					delta = math.Log1p(math.Exp(x))
				}
				y := 0.0
				for n := 0; n < N; n++ {
					A := -math.Exp(P(model.SufALog)[e*N+n])
					s[e*N+n] = math.Exp(delta*A)*s[e*N+n] + delta*Bt[n]*u[e]
					y += s[e*N+n] * Ct[n]
				}
				y += P(model.SufD)[e] * u[e]
				g[e] = y * silu(z[t][e])
			}
			out := matvec(P(model.SufOutProj), g)
			for i := range out {
				h[t][i] += out[i]
			}
		}
	}
	head := r.p[model.NameHead]
	if head == nil {
		head = r.p[model.NameEmbed]
	}
	out := make([][]float64, T)
	for t := range h {
		out[t] = matvec(head, r.norm(h[t], r.p[model.NameNormF], r.p[model.NameNormFB]))
	}
	return out
}

// loss is the summed cross-entropy of predicting each next byte of each
// row of a (B,T) batch.
func (r *refModel) loss(ids []int32, B, T int) float64 {
	total := 0.0
	for b := 0; b < B; b++ {
		row := ids[b*T : (b+1)*T]
		lg := r.logits(row)
		for t := 0; t+1 < T; t++ {
			mx := math.Inf(-1)
			for _, v := range lg[t] {
				mx = math.Max(mx, v)
			}
			z := 0.0
			for _, v := range lg[t] {
				z += math.Exp(v - mx)
			}
			total += math.Log(z) + mx - lg[t][row[t+1]]
		}
	}
	return total
}
