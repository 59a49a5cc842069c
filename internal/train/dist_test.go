package train

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mambabyte/mambabyte/internal/backend/cpu"
	"github.com/mambabyte/mambabyte/internal/dist"
)

// shardData serves rank's rows of each micro-batch of a global batch of B
// windows: window (step, micro, row) comes from a hash of those three
// only, as data.Sampler's do, so the ranks together read what one process
// reads.
type shardData struct {
	*memData
	row0, rows int
}

func (d *shardData) Batch(step, micro int, dst []byte) error {
	T := d.T
	if len(dst) != d.rows*(T+1) {
		return fmt.Errorf("shardData: dst of %d bytes for %d rows", len(dst), d.rows)
	}
	for b := 0; b < d.rows; b++ {
		row := d.row0 + b
		h := mix(d.seed ^ mix(uint64(step)<<20^uint64(micro)<<10^uint64(row)))
		off := int(h % uint64(d.trainEnd-d.T-1))
		copy(dst[b*(T+1):(b+1)*(T+1)], d.text[off:off+T+1])
	}
	return nil
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

type jobResult struct {
	metrics []Metrics // rank 0's, one per step
	params  map[string][]float32
	step    int
}

// runJob trains o in world ranks (goroutines, each with its own CPU
// backend, joined by HostComm over loopback), resuming from out when it
// holds a run. stopAfter > 0 cancels rank world-1's context once rank 0
// has finished that step. Ranks other than 0 get an out directory of
// their own, which must stay empty. Every rank must end with the same
// weights.
func runJob(t *testing.T, o Options, text []byte, world int, out string, stopAfter int) (jobResult, error) {
	t.Helper()
	addr := freeAddr(t)
	ctxs := make([]context.Context, world)
	cancels := make([]context.CancelFunc, world)
	for r := range world {
		ctxs[r], cancels[r] = context.WithCancel(context.Background())
		defer cancels[r]()
	}
	trs := make([]*Trainer, world)
	errs := make([]error, world)
	outs := make([]string, world)
	var res jobResult
	var wg sync.WaitGroup
	for r := range world {
		outs[r] = out
		if r > 0 {
			outs[r] = t.TempDir()
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[r] = func() error {
				be := cpu.New()
				e := dist.Env{Rank: r, World: world, Addr: addr, Timeout: 20 * time.Second}
				comm, err := dist.Connect(context.Background(), e, be, true, false)
				if err != nil {
					return err
				}
				defer comm.Close()
				rows := o.Batch / world
				d := &shardData{newMemData(text, o.SeqLen, o.Batch, 11), r * rows, rows}
				var tr *Trainer
				if latest, _ := LatestCheckpoint(out); latest != "" {
					tr, err = Resume(o, be, d, out)
				} else {
					tr, err = New(o, be, d, out)
				}
				if err != nil {
					return err
				}
				tr.Out = outs[r]
				tr.Comm = comm
				trs[r] = tr
				if r == 0 {
					tr.Progress = func(m Metrics) {
						res.metrics = append(res.metrics, m)
						if m.Step == stopAfter {
							cancels[world-1]()
						}
					}
				}
				return tr.Run(ctxs[r])
			}()
			if errs[r] != nil {
				// As the launcher does: a failed rank ends the job.
				for _, c := range cancels {
					c()
				}
			}
		}()
	}
	wg.Wait()
	for r, err := range errs {
		if err != nil && !errors.Is(err, ErrStopped) {
			return res, fmt.Errorf("rank %d: %w", r, err)
		}
	}
	res.params = trs[0].Model.ParamsHost()
	res.step = trs[0].Step
	for r := 1; r < world; r++ {
		p := trs[r].Model.ParamsHost()
		for name, w := range res.params {
			for i := range w {
				if math.Float32bits(p[name][i]) != math.Float32bits(w[i]) {
					t.Fatalf("rank %d's %s[%d] = %v, rank 0's %v: the ranks' weights differ", r, name, i, p[name][i], w[i])
				}
			}
		}
		if entries, _ := os.ReadDir(outs[r]); len(entries) != 0 {
			t.Errorf("rank %d wrote %d files into its out directory; only rank 0 writes", r, len(entries))
		}
		if trs[r].Step != res.step {
			t.Errorf("rank %d stopped after step %d, rank 0 after %d", r, trs[r].Step, res.step)
		}
	}
	return res, errs[0]
}

func distOptions() Options {
	o := tinyOptions()
	o.Model.DModel, o.Model.NLayer = 16, 2
	o.Batch, o.Accum, o.SeqLen, o.Steps = 4, 2, 32, 4
	o.Warmup, o.ValEvery, o.CkptEvery, o.LogEvery = 1, 0, 2, 1
	return o
}

// runSingle trains o in one process (no communicator) and returns its
// metrics and weights.
func runSingle(t *testing.T, o Options, text []byte) jobResult {
	t.Helper()
	tr, err := New(o, cpu.New(), newMemData(text, o.SeqLen, o.Batch, 11), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return runTrainer(t, tr)
}

// runTrainer runs tr to its end in this process and returns its metrics
// and weights.
func runTrainer(t *testing.T, tr *Trainer) jobResult {
	t.Helper()
	var res jobResult
	tr.Progress = func(m Metrics) { res.metrics = append(res.metrics, m) }
	if err := tr.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	res.params, res.step = tr.Model.ParamsHost(), tr.Step
	return res
}

// compare checks a job against a single-process run: the loss and the
// gradient norm of every step (which, unlike Adam's scale-free update,
// would show gradients summed with the wrong weight) and the weights.
func compare(t *testing.T, label string, got, want jobResult, firstStep int) {
	t.Helper()
	if got.step != want.step {
		t.Fatalf("%s: ended after step %d, want %d", label, got.step, want.step)
	}
	for _, m := range got.metrics {
		w := want.metrics[m.Step-1]
		if relDiff(m.Loss, w.Loss) > 1e-5 || relDiff(m.GradNorm, w.GradNorm) > 1e-4 {
			t.Errorf("%s: step %d: loss %.7f, grad norm %.6f; one process: %.7f, %.6f", label, m.Step, m.Loss, m.GradNorm, w.Loss, w.GradNorm)
		}
		if m.Bytes != w.Bytes {
			t.Errorf("%s: step %d: %d bytes seen, one process %d", label, m.Step, m.Bytes, w.Bytes)
		}
	}
	if len(got.metrics) != want.step-firstStep {
		t.Errorf("%s: %d metrics, want %d", label, len(got.metrics), want.step-firstStep)
	}
	var worst float64
	for name, w := range want.params {
		for i := range w {
			d := math.Abs(float64(got.params[name][i] - w[i]))
			worst = max(worst, d)
			if d > 2e-5*max(1, math.Abs(float64(w[i]))) {
				t.Fatalf("%s: %s[%d] = %v, one process %v", label, name, i, got.params[name][i], w[i])
			}
		}
	}
	t.Logf("%s: largest weight difference from one process %.2g", label, worst)
}

func relDiff(a, b float64) float64 { return math.Abs(a-b) / max(math.Abs(b), 1e-12) }

// N ranks with B/N windows each take the steps one process takes with B.
func TestDataParallelMatchesOneProcess(t *testing.T) {
	text := goSource(t, 60_000)
	o := distOptions()
	want := runSingle(t, o, text)
	for _, world := range []int{2, 4} {
		got, err := runJob(t, o, text, world, t.TempDir(), 0)
		if err != nil {
			t.Fatalf("world %d: %v", world, err)
		}
		compare(t, fmt.Sprintf("world %d", world), got, want, 0)
	}
	// Recompute, accumulation of 3 and the clipping bound active.
	o.Recompute, o.Accum, o.Clip = true, 3, 0.05
	want = runSingle(t, o, text)
	got, err := runJob(t, o, text, 2, t.TempDir(), 0)
	if err != nil {
		t.Fatal(err)
	}
	compare(t, "world 2, recompute, accum 3, clipped", got, want, 0)
	if want.metrics[0].GradNorm <= o.Clip {
		t.Errorf("grad norm %g: the clipping bound %g was not exercised", want.metrics[0].GradNorm, o.Clip)
	}
}

// A run stopped in a job of 2, resumed in a job of 4 and then alone
// continues the data order and ends with the weights of one uninterrupted
// process; the checkpoint keeps the whole batch.
func TestResumeOnAnotherWorldSize(t *testing.T) {
	text := goSource(t, 60_000)
	o := distOptions()
	o.Steps = 8
	want := runSingle(t, o, text)

	out := t.TempDir()
	part, err := runJob(t, o, text, 2, out, 2)
	if !errors.Is(err, ErrStopped) {
		t.Fatalf("stopped job: %v", err)
	}
	// Rank 1 was told to stop after step 2; the ranks agree at the end of
	// step 3 and stop together after it.
	if part.step != 3 {
		t.Fatalf("the job stopped after step %d, want 3", part.step)
	}
	compare(t, "world 2, steps 1-3", part, jobResult{metrics: want.metrics, params: part.params, step: 3}, 0)
	saved, step, err := SavedOptions(out)
	if err != nil || step != 3 || saved.Batch != o.Batch {
		t.Fatalf("checkpoint: step %d, batch %d (%v); want step 3, the whole batch %d", step, saved.Batch, err, o.Batch)
	}

	part, err = runJob(t, o, text, 4, out, 5)
	if !errors.Is(err, ErrStopped) || part.step != 6 {
		t.Fatalf("job of 4: stopped after step %d: %v", part.step, err)
	}
	compare(t, "world 4, steps 4-6", part, jobResult{metrics: want.metrics, params: part.params, step: 6}, 3)

	tr, err := Resume(o, cpu.New(), newMemData(text, o.SeqLen, o.Batch, 11), out)
	if err != nil {
		t.Fatal(err)
	}
	compare(t, "alone, steps 7-8", runTrainer(t, tr), want, 6)

	// A world that does not divide the batch is refused, clearly.
	_, err = runJob(t, o, text, 3, out, 0)
	if err == nil || !strings.Contains(err.Error(), "batch of 4 windows does not split evenly over 3") {
		t.Errorf("world 3 with batch 4: %v", err)
	}
}
