package sample

import (
	"bytes"
	"math"
	"strings"
	"testing"
)

func TestProbsFilters(t *testing.T) {
	logits := []float32{2, 1, 0, -1, 3}
	soft := func(temp float64) []float64 {
		var z float64
		p := make([]float64, len(logits))
		for i, v := range logits {
			p[i] = math.Exp(float64(v) / temp)
			z += p[i]
		}
		for i := range p {
			p[i] /= z
		}
		return p
	}
	p := make([]float64, len(logits))
	for _, tc := range []struct {
		name string
		opt  Options
		keep []int
	}{
		{"plain", Options{}, []int{0, 1, 2, 3, 4}},
		{"greedy", Options{Greedy: true}, []int{4}},
		{"top-k 2", Options{TopK: 2}, []int{4, 0}},
		{"top-p 0.5", Options{TopP: 0.5}, []int{4}},
		{"top-p 0.9", Options{TopP: 0.9}, []int{4, 0, 1}},
		{"min-p 0.3", Options{MinP: 0.3}, []int{4, 0}},
	} {
		tc.opt.Probs(logits, p)
		var sum float64
		kept := map[int]bool{}
		for _, i := range tc.keep {
			kept[i] = true
		}
		base := soft(1)
		var keptMass float64
		for _, i := range tc.keep {
			keptMass += base[i]
		}
		for i, v := range p {
			sum += v
			if !kept[i] && v != 0 {
				t.Errorf("%s: index %d kept with p %g", tc.name, i, v)
			}
			if kept[i] && !tc.opt.Greedy && math.Abs(v-base[i]/keptMass) > 1e-12 {
				t.Errorf("%s: p[%d] = %g, want %g", tc.name, i, v, base[i]/keptMass)
			}
		}
		if math.Abs(sum-1) > 1e-12 {
			t.Errorf("%s: probabilities sum to %g", tc.name, sum)
		}
	}
	// Temperature sharpens.
	Options{Temperature: 0.5}.Probs(logits, p)
	want := soft(0.5)
	for i := range p {
		if math.Abs(p[i]-want[i]) > 1e-12 {
			t.Fatalf("temperature 0.5: p[%d] = %g, want %g", i, p[i], want[i])
		}
	}
}

func TestSamplerDeterministicAndFaithful(t *testing.T) {
	logits := []float32{0, 1, 2}
	a, b := New(Options{}, 42), New(Options{}, 42)
	counts := make([]int, 3)
	const n = 30000
	for i := 0; i < n; i++ {
		x, y := a.Next(logits), b.Next(logits)
		if x != y {
			t.Fatalf("same seed, different choice at draw %d", i)
		}
		counts[x]++
	}
	p := make([]float64, 3)
	Options{}.Probs(logits, p)
	for i, c := range counts {
		if got := float64(c) / n; math.Abs(got-p[i]) > 0.015 {
			t.Errorf("byte %d drawn %.3f of the time, want %.3f", i, got, p[i])
		}
	}
}

func TestStreamUTF8AndStops(t *testing.T) {
	for _, tc := range []struct {
		in    string
		stops []string
		want  string
	}{
		{"héllo wörld", nil, "héllo wörld"},
		{"abc\nEND\nmore", []string{"END"}, "abc\n"},
		{"aaab", []string{"aab"}, "a"},
		{"ENEND", []string{"END"}, "EN"},
		{"no stop", []string{"xyz"}, "no stop"},
		{"日本語", []string{"本"}, "日"},
	} {
		var buf bytes.Buffer
		s := NewStream(&buf, tc.stops)
		for i := 0; i < len(tc.in) && !s.Stopped(); i++ {
			if err := s.WriteByte(tc.in[i]); err != nil {
				t.Fatal(err)
			}
			// Nothing written so far ends inside a character.
			if !utf8Complete(buf.Bytes()) {
				t.Fatalf("%q: wrote a split character: %q", tc.in, buf.Bytes())
			}
		}
		s.Close()
		if buf.String() != tc.want {
			t.Errorf("%q stops %q: wrote %q, want %q", tc.in, tc.stops, buf.String(), tc.want)
		}
	}
	// Invalid bytes are passed through.
	var buf bytes.Buffer
	s := NewStream(&buf, nil)
	for _, b := range []byte{0xff, 'a', 0xc3} {
		s.WriteByte(b)
	}
	if buf.String() != "\xffa" {
		t.Errorf("wrote %q before close", buf.String())
	}
	s.Close()
	if buf.String() != "\xffa\xc3" {
		t.Errorf("wrote %q after close", buf.String())
	}
}

func utf8Complete(b []byte) bool {
	s := string(b)
	return !strings.HasSuffix(s, "\xc3") && !strings.HasSuffix(s, "\xe6") && !strings.HasSuffix(s, "\xe6\x97")
}
