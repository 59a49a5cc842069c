// Package sample turns logits into a next byte: greedy, or sampled with
// temperature, top-k, top-p (nucleus) and min-p filtering.
package sample

import (
	"fmt"
	"math"
	"math/rand/v2"
	"sort"
)

// Options choose how a byte is picked.
type Options struct {
	Greedy      bool    // the most likely byte; the other fields are ignored
	Temperature float64 // divides the logits; 1 if 0
	TopK        int     // keep the K most likely bytes; 0 = all
	TopP        float64 // keep the smallest set whose probability reaches P; 0 or 1 = all
	MinP        float64 // drop bytes less likely than MinP times the most likely; 0 = none
}

// Validate reports settings that make no distribution.
func (o Options) Validate() error {
	switch {
	case o.Temperature < 0 || math.IsNaN(o.Temperature):
		return fmt.Errorf("temperature must be positive, got %g", o.Temperature)
	case o.TopK < 0:
		return fmt.Errorf("top-k must not be negative, got %d", o.TopK)
	case o.TopP < 0 || o.TopP > 1 || math.IsNaN(o.TopP):
		return fmt.Errorf("top-p must be in [0,1], got %g", o.TopP)
	case o.MinP < 0 || o.MinP > 1 || math.IsNaN(o.MinP):
		return fmt.Errorf("min-p must be in [0,1], got %g", o.MinP)
	}
	return nil
}

// Argmax returns the index of the largest logit (the first on ties).
func Argmax(logits []float32) int {
	best := 0
	for i, v := range logits {
		if v > logits[best] {
			best = i
		}
	}
	return best
}

// Probs writes into p (len(logits)) the distribution Options define over
// the logits: softmax(logits/T), filtered by top-k, top-p and min-p, and
// renormalised. Greedy gives all mass to the argmax.
func (o Options) Probs(logits []float32, p []float64) {
	if o.Greedy {
		clear(p)
		p[Argmax(logits)] = 1
		return
	}
	temp := o.Temperature
	if temp == 0 {
		temp = 1
	}
	mx := float64(logits[Argmax(logits)])
	var z float64
	for i, v := range logits {
		p[i] = math.Exp((float64(v) - mx) / temp)
		z += p[i]
	}
	for i := range p {
		p[i] /= z
	}
	filtered := false
	if o.MinP > 0 {
		pmax := 0.0
		for _, v := range p {
			pmax = max(pmax, v)
		}
		for i, v := range p {
			if v < o.MinP*pmax {
				p[i] = 0
				filtered = true
			}
		}
	}
	if (o.TopK > 0 && o.TopK < len(p)) || (o.TopP > 0 && o.TopP < 1) {
		idx := make([]int, len(p))
		for i := range idx {
			idx[i] = i
		}
		sort.SliceStable(idx, func(a, b int) bool { return p[idx[a]] > p[idx[b]] })
		keep := len(p)
		if o.TopK > 0 && o.TopK < keep {
			keep = o.TopK
		}
		if o.TopP > 0 && o.TopP < 1 {
			var total, cum float64
			for _, i := range idx[:keep] {
				total += p[i]
			}
			for n, i := range idx[:keep] {
				cum += p[i]
				if cum >= o.TopP*total {
					keep = n + 1
					break
				}
			}
		}
		for _, i := range idx[keep:] {
			p[i] = 0
		}
		filtered = true
	}
	if filtered {
		z = 0
		for _, v := range p {
			z += v
		}
		for i := range p {
			p[i] /= z
		}
	}
}

// Draw picks an index from the distribution p with the uniform number u in
// [0,1).
func Draw(p []float64, u float64) int {
	last := 0
	for i, v := range p {
		if v <= 0 {
			continue
		}
		last = i
		u -= v
		if u < 0 {
			return i
		}
	}
	return last // rounding left u a hair above 0
}

// Sampler picks bytes with fixed options and its own seeded generator:
// the same seed gives the same choices.
type Sampler struct {
	Opt Options
	rng *rand.Rand
	p   []float64
}

// New returns a Sampler seeded with seed.
func New(opt Options, seed uint64) *Sampler {
	return &Sampler{Opt: opt, rng: rand.New(rand.NewPCG(seed, 0x73616d706c65))}
}

// Next picks the next index from logits.
func (s *Sampler) Next(logits []float32) int {
	if s.Opt.Greedy {
		return Argmax(logits)
	}
	if cap(s.p) < len(logits) {
		s.p = make([]float64, len(logits))
	}
	p := s.p[:len(logits)]
	s.Opt.Probs(logits, p)
	return Draw(p, s.rng.Float64())
}

// Float64 returns the next uniform number of the sampler's generator.
func (s *Sampler) Float64() float64 { return s.rng.Float64() }
