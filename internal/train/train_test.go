package train

import (
	"bytes"
	"context"
	"errors"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/mambabyte/mambabyte/internal/backend/cpu"
	"github.com/mambabyte/mambabyte/internal/model"
)

// memData serves windows of a text held in memory: the last tenth is
// validation, windows of a step come from a hash of (seed, step, micro, row).
type memData struct {
	text      []byte
	T, B      int
	seed      uint64
	trainEnd  int
	valWindow [][]byte
}

func newMemData(text []byte, T, B int, seed uint64) *memData {
	d := &memData{text: text, T: T, B: B, seed: seed, trainEnd: len(text) * 9 / 10}
	for off := d.trainEnd; off+T+1 <= len(text) && len(d.valWindow) < 16; off += T + 1 {
		d.valWindow = append(d.valWindow, text[off:off+T+1])
	}
	return d
}

func mix(x uint64) uint64 {
	x += 0x9e3779b97f4a7c15
	x = (x ^ x>>30) * 0xbf58476d1ce4e5b9
	x = (x ^ x>>27) * 0x94d049bb133111eb
	return x ^ x>>31
}

func (d *memData) Batch(step, micro int, dst []byte) error {
	for b := 0; b < d.B; b++ {
		h := mix(d.seed ^ mix(uint64(step)<<20^uint64(micro)<<10^uint64(b)))
		off := int(h % uint64(d.trainEnd-d.T-1))
		copy(dst[b*(d.T+1):(b+1)*(d.T+1)], d.text[off:off+d.T+1])
	}
	return nil
}

func (d *memData) Validation() [][]byte { return d.valWindow }

// goSource returns about n bytes of Go's own source code.
func goSource(t *testing.T, n int) []byte {
	t.Helper()
	var buf bytes.Buffer
	root := filepath.Join(runtime.GOROOT(), "src", "strings")
	files, _ := filepath.Glob(filepath.Join(root, "*.go"))
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		buf.Write(b)
		if buf.Len() >= n {
			break
		}
	}
	if buf.Len() < n/2 {
		t.Skipf("Go source tree not found under %s", root)
	}
	return buf.Bytes()
}

func unigramBits(text []byte) float64 {
	var counts [256]float64
	for _, b := range text {
		counts[b]++
	}
	h := 0.0
	for _, c := range counts {
		if c > 0 {
			p := c / float64(len(text))
			h -= p * math.Log2(p)
		}
	}
	return h
}

func tinyOptions() Options {
	cfg := model.DefaultConfig()
	cfg.DModel, cfg.NLayer = 32, 2
	o := Defaults(cfg)
	o.Batch, o.SeqLen, o.Steps = 8, 64, 300
	o.LR, o.MinLR, o.Warmup = 3e-3, 3e-4, 20
	o.ValEvery, o.CkptEvery, o.LogEvery = 100, 0, 10
	return o
}

func TestTinyModelLearns(t *testing.T) {
	text := goSource(t, 200_000)
	o := tinyOptions()
	if testing.Short() {
		o.Steps = 150
	}
	data := newMemData(text, o.SeqLen, o.Batch, 7)
	tr, err := New(o, cpu.New(), data, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	first, err := tr.ValidationBPB()
	if err != nil {
		t.Fatal(err)
	}
	var last Metrics
	tr.Log = func(m Metrics) { last = m }
	if err := tr.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	uni := unigramBits(text)
	t.Logf("validation bits/byte: %.3f before, %.3f after %d steps; unigram entropy %.3f", first, *last.ValBPB, o.Steps, uni)
	if first < 7.5 {
		t.Errorf("untrained model scores %.3f bits/byte; expected about 8", first)
	}
	if *last.ValBPB > uni-0.3 {
		t.Errorf("validation %.3f bits/byte is not well below the unigram entropy %.3f", *last.ValBPB, uni)
	}
}

func TestResumeIsBitIdentical(t *testing.T) {
	text := goSource(t, 100_000)
	o := tinyOptions()
	o.Steps, o.CkptEvery, o.ValEvery, o.Accum = 12, 5, 0, 2
	o.Warmup = 4
	data := newMemData(text, o.SeqLen, o.Batch, 3)

	whole, err := New(o, cpu.New(), data, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if err := whole.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	want := whole.Model.ParamsHost()

	out := t.TempDir()
	first, err := New(o, cpu.New(), data, out)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	first.Progress = func(m Metrics) {
		if m.Step == 7 {
			cancel()
		}
	}
	if err := first.Run(ctx); !errors.Is(err, ErrStopped) {
		t.Fatalf("cancelled run returned %v", err)
	}
	if first.Step != 7 {
		t.Fatalf("stopped at step %d, want 7", first.Step)
	}
	resumed, err := Resume(o, cpu.New(), data, out)
	if err != nil {
		t.Fatal(err)
	}
	if resumed.Step != 7 {
		t.Fatalf("resumed at step %d, want 7 (the interrupt saves)", resumed.Step)
	}
	if err := resumed.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	got := resumed.Model.ParamsHost()
	for name, w := range want {
		g := got[name]
		for i := range w {
			if math.Float32bits(g[i]) != math.Float32bits(w[i]) {
				t.Fatalf("%s[%d]: resumed %v, uninterrupted %v", name, i, g[i], w[i])
			}
		}
	}
	// Keep=3: the oldest checkpoints are gone, the latest is step 12.
	latest, err := LatestCheckpoint(out)
	if err != nil || filepath.Base(latest) != StepDir(12) {
		t.Fatalf("latest checkpoint %q (%v), want %s", latest, err, StepDir(12))
	}
}

func TestNonFiniteLossStopsWithoutSaving(t *testing.T) {
	text := goSource(t, 50_000)
	o := tinyOptions()
	o.Steps, o.CkptEvery, o.ValEvery = 6, 2, 0
	o.LR, o.MinLR, o.Clip = 1e30, 0, 0 // diverges at once
	o.Warmup = 0
	out := t.TempDir()
	tr, err := New(o, cpu.New(), newMemData(text, o.SeqLen, o.Batch, 1), out)
	if err != nil {
		t.Fatal(err)
	}
	err = tr.Run(context.Background())
	if err == nil {
		t.Fatal("a diverging run finished without error")
	}
	t.Logf("error: %v", err)
	if latest, _ := LatestCheckpoint(out); latest != "" {
		opt, step, err := SavedOptions(out)
		if err != nil {
			t.Fatal(err)
		}
		_ = opt
		// Whatever was saved was saved before the bad step.
		if step >= tr.Step+1 {
			t.Fatalf("checkpoint of step %d written after the failure at step %d", step, tr.Step+1)
		}
	}
}
