package mambabyte

import (
	"bytes"
	"math"
	"strings"
	"testing"
)

func loadRef(t *testing.T) *Model {
	t.Helper()
	m, err := Load("testdata/reference/ssm_layernorm/model")
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestEvalModesScoreEveryByteOnce(t *testing.T) {
	m := loadRef(t)
	text := []byte(strings.Repeat("The quick brown fox jumps over the lazy dog. ", 9)) // 405 bytes
	whole, err := m.Eval(bytes.NewReader(text), EvalOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, opt := range []EvalOptions{
		{Chunk: 1}, {Chunk: 7}, {Chunk: 100},
		{Context: 1}, {Context: 10}, {Context: 404}, {Context: 5000, Chunk: 33},
		{Window: 2}, {Window: 3}, {Window: 64}, {Window: 101, Chunk: 13}, {Window: 405}, {Window: 9999},
	} {
		got, err := m.Eval(bytes.NewReader(text), opt)
		if err != nil {
			t.Fatalf("%+v: %v", opt, err)
		}
		if got.Bytes != int64(len(text)-1) {
			t.Errorf("%+v: scored %d bytes, want %d", opt, got.Bytes, len(text)-1)
		}
		// Enough context (or one window) is the whole-sequence score.
		if opt.Context >= len(text)-1 || opt.Window >= len(text) || (opt.Context == 0 && opt.Window == 0) {
			if math.Abs(got.NLL-whole.NLL) > 1e-5*whole.NLL {
				t.Errorf("%+v: nll %.7g, whole sequence %.7g", opt, got.NLL, whole.NLL)
			}
		}
	}
	// Less context changes the score.
	short, _ := m.Eval(bytes.NewReader(text), EvalOptions{Context: 2})
	if math.Abs(short.NLL-whole.NLL) < 1e-3 {
		t.Errorf("context 2 scores %.6g, the same as the whole sequence", short.NLL)
	}
	for _, opt := range []EvalOptions{{Context: 5, Window: 5}, {Window: 1}, {Chunk: -1}} {
		if _, err := m.Eval(bytes.NewReader(text), opt); err == nil {
			t.Errorf("%+v accepted", opt)
		}
	}
	if _, err := m.Eval(bytes.NewReader([]byte("x")), EvalOptions{}); err == nil {
		t.Error("a one-byte text was scored")
	}
}

func TestEvalProgress(t *testing.T) {
	m := loadRef(t)
	text := []byte(strings.Repeat("progress reports ", 20))
	var calls int
	var lastScored int64
	res, err := m.Eval(bytes.NewReader(text), EvalOptions{Chunk: 50, Progress: func(scored int64, nll float64) {
		calls++
		if scored <= lastScored || nll <= 0 {
			t.Errorf("progress went from %d to %d bytes (nll %g)", lastScored, scored, nll)
		}
		lastScored = scored
	}})
	if err != nil {
		t.Fatal(err)
	}
	if calls != (len(text)-1+49)/50 || lastScored != res.Bytes {
		t.Fatalf("%d progress calls ending at %d bytes; want %d calls ending at %d", calls, lastScored, (len(text)-1+49)/50, res.Bytes)
	}
}
