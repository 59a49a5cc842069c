// Package train trains a model: AdamW with a warm-up and cosine schedule,
// gradient accumulation over micro-batches, global-norm clipping, periodic
// validation, and checkpoints that are written atomically and resume
// exactly.
//
// Exact resume: the training windows of a step depend only on the seed and
// the step (see Data), the learning rate only on the step, and every kernel
// is deterministic for a given machine and thread count, so a run resumed
// from a checkpoint ends with the same bits as one never interrupted.
//
// Data parallel: with a communicator (Trainer.Comm, package
// internal/dist) each of the job's ranks trains on its share of every
// micro-batch, the ranks sum their gradients, layer by layer as the
// backward pass finishes them, and take the same step; rank 0 validates
// and writes the checkpoints. Options.Batch is the whole micro-batch, so
// the checkpoint describes the run whatever the number of ranks, and a run
// resumes on any number that divides it, reading the same windows.
package train

import (
	"context"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/mambabyte/mambabyte/internal/backend"
	"github.com/mambabyte/mambabyte/internal/dist"
	"github.com/mambabyte/mambabyte/internal/model"
)

// Options are a run's settings; they are saved with every checkpoint.
type Options struct {
	Model       model.Config `json:"model"`
	Steps       int          `json:"steps"`   // optimizer steps in all
	Batch       int          `json:"batch"`   // windows per micro-batch, over all ranks of a data-parallel job
	Accum       int          `json:"accum"`   // micro-batches per step
	SeqLen      int          `json:"seq_len"` // T: bytes predicted per window
	LR          float64      `json:"lr"`      // peak learning rate
	MinLR       float64      `json:"min_lr"`  // learning rate at the end of the cosine
	Warmup      int          `json:"warmup"`  // linear warm-up steps
	WeightDecay float64      `json:"weight_decay"`
	Clip        float64      `json:"clip"` // global gradient-norm limit; 0 = none
	Beta1       float64      `json:"beta1"`
	Beta2       float64      `json:"beta2"`
	Eps         float64      `json:"eps"`
	Seed        uint64       `json:"seed"`       // initialisation and data order
	ValEvery    int          `json:"val_every"`  // steps between validations; 0 = only at the end
	LogEvery    int          `json:"log_every"`  // steps between metric lines
	CkptEvery   int          `json:"ckpt_every"` // steps between checkpoints; 0 = only at the end
	Keep        int          `json:"keep"`       // checkpoints kept; 0 = all
	// Recompute keeps only each layer's input between the forward and
	// the backward pass and runs the layer's forward again there (each
	// forward twice, a fraction of the activation memory; same
	// gradients).
	Recompute bool `json:"recompute,omitempty"`
}

// Defaults returns the paper's optimiser settings around cfg.
func Defaults(cfg model.Config) Options {
	return Options{
		Model: cfg, Steps: 1000, Batch: 8, Accum: 1, SeqLen: 1024,
		LR: 4e-4, MinLR: 4e-5, Warmup: 100, WeightDecay: 0.1, Clip: 1,
		Beta1: 0.9, Beta2: 0.95, Eps: 1e-8, Seed: 1,
		ValEvery: 100, LogEvery: 10, CkptEvery: 100, Keep: 3,
	}
}

// Validate reports the first unusable setting.
func (o Options) Validate() error {
	if err := o.Model.Validate(); err != nil {
		return err
	}
	for _, c := range []struct {
		name string
		v    int
	}{{"steps", o.Steps}, {"batch", o.Batch}, {"accum", o.Accum}, {"seq-len", o.SeqLen}} {
		if c.v < 1 {
			return fmt.Errorf("%s must be at least 1, got %d", c.name, c.v)
		}
	}
	for _, c := range []struct {
		name string
		v    int
	}{{"warmup", o.Warmup}, {"val-every", o.ValEvery}, {"log-every", o.LogEvery}, {"ckpt-every", o.CkptEvery}, {"keep", o.Keep}} {
		if c.v < 0 {
			return fmt.Errorf("%s must not be negative, got %d", c.name, c.v)
		}
	}
	if !(o.LR > 0) || o.MinLR < 0 || o.MinLR > o.LR {
		return fmt.Errorf("need 0 <= min-lr <= lr and lr > 0, got lr %g, min-lr %g", o.LR, o.MinLR)
	}
	if o.WeightDecay < 0 || o.Clip < 0 || !(o.Eps > 0) {
		return fmt.Errorf("weight-decay and clip must not be negative and eps must be positive")
	}
	if !(o.Beta1 >= 0 && o.Beta1 < 1 && o.Beta2 >= 0 && o.Beta2 < 1) {
		return fmt.Errorf("betas must be in [0,1), got %g and %g", o.Beta1, o.Beta2)
	}
	return nil
}

// BytesPerStep is how many bytes are predicted in one optimizer step.
func (o Options) BytesPerStep() int64 { return int64(o.Batch) * int64(o.Accum) * int64(o.SeqLen) }

// Data supplies the bytes to learn from.
type Data interface {
	// Batch fills dst, rows windows of T+1 bytes one after another, with the
	// training windows of micro-batch micro of step step. The same
	// arguments must always give the same bytes. In a data-parallel job
	// (Trainer.Comm) each rank's Data serves its own share: rows
	// [rank·Batch/world, (rank+1)·Batch/world) of the micro-batch (see
	// data.Sampler.Shard).
	Batch(step, micro int, dst []byte) error
	// Validation returns the fixed validation windows of T+1 bytes.
	Validation() [][]byte
}

// Metrics is one log line.
type Metrics struct {
	Step        int      `json:"step"`
	Loss        float64  `json:"loss"` // mean training loss of the step, nats per byte
	BPB         float64  `json:"bpb"`  // the same in bits per byte
	ValBPB      *float64 `json:"val_bpb,omitempty"`
	LR          float64  `json:"lr"`
	GradNorm    float64  `json:"grad_norm"`
	BytesPerSec float64  `json:"bytes_per_s"`
	Bytes       int64    `json:"bytes"` // training bytes seen so far
	Elapsed     float64  `json:"elapsed_s"`
}

// ErrStopped reports a run stopped by its context (Ctrl-C); the state at
// the last finished step was saved.
var ErrStopped = errors.New("training stopped; a checkpoint of the last finished step was saved")

// Trainer runs one training run.
//
// In a data-parallel job every rank runs a Trainer with the same Options
// and its own share of each micro-batch (Options.Batch/world windows).
// The ranks sum their gradients, each scaled by the job's whole byte
// count, so the step is the one a single process with the whole batch
// would take; rank 0 alone validates and writes checkpoints.
type Trainer struct {
	Opt   Options
	Model *model.Model
	Out   string // checkpoint directory
	Step  int    // optimizer steps done

	// Comm is the job's communicator in data-parallel training; nil runs
	// alone. With a Comm (even of one rank) every step sums the gradients
	// through it. Set it before Run.
	Comm dist.Comm

	optim   *AdamW
	data    Data
	pass    *model.Pass
	valPass *model.Pass
	buf     []byte
	ids, tg []int32
	// stop is set when the ranks of a job agreed to stop after the step
	// just taken.
	stop bool

	// Log receives a Metrics value at every log step and validation.
	Log func(Metrics)
	// Progress is called after every step.
	Progress func(Metrics)
	// Saved is called after every checkpoint with its directory.
	Saved func(dir string)
}

// New prepares a fresh run: a model initialised from opt.Seed.
func New(opt Options, be backend.Backend, data Data, out string) (*Trainer, error) {
	if err := opt.Validate(); err != nil {
		return nil, err
	}
	m, err := model.New(opt.Model, be)
	if err != nil {
		return nil, err
	}
	m.Init(opt.Seed)
	return newTrainer(opt, m, data, out), nil
}

func newTrainer(opt Options, m *model.Model, data Data, out string) *Trainer {
	m.AllocGrads()
	return &Trainer{
		Opt: opt, Model: m, Out: out, data: data,
		optim: NewAdamW(m, opt.Beta1, opt.Beta2, opt.Eps, opt.WeightDecay),
	}
}

// world is the number of ranks, rank this process's.
func (t *Trainer) world() int {
	if t.Comm == nil {
		return 1
	}
	return t.Comm.Size()
}

func (t *Trainer) rank() int {
	if t.Comm == nil {
		return 0
	}
	return t.Comm.Rank()
}

// Rows is the number of windows this process reads per micro-batch:
// Options.Batch divided by the number of ranks.
func (t *Trainer) Rows() int { return t.Opt.Batch / t.world() }

// prepare allocates the training pass for this rank's rows and, in a
// job, makes every rank start from rank 0's state.
func (t *Trainer) prepare() error {
	if t.pass != nil {
		return nil
	}
	o := t.Opt
	if w := t.world(); o.Batch%w != 0 {
		return fmt.Errorf("rank %d: the batch of %d windows does not split evenly over %d processes; "+
			"the batch is the job's whole micro-batch (it is kept on resume), so choose a number of GPUs that divides it "+
			"(or start the run with a --batch that is a multiple of %d)", t.rank(), o.Batch, w, w)
	}
	if err := t.syncRanks(); err != nil {
		return err
	}
	rows := t.Rows()
	t.buf = make([]byte, rows*(o.SeqLen+1))
	t.ids = make([]int32, rows*o.SeqLen)
	t.tg = make([]int32, rows*o.SeqLen)
	if o.Recompute {
		t.pass = t.Model.NewRecomputePass(rows, o.SeqLen)
	} else {
		t.pass = t.Model.NewPass(rows, o.SeqLen, true)
	}
	return nil
}

// split turns rows windows of T+1 bytes into ids and next-byte targets.
func split(buf []byte, ids, tg []int32, rows, T int) {
	for b := 0; b < rows; b++ {
		w := buf[b*(T+1) : (b+1)*(T+1)]
		for i := 0; i < T; i++ {
			ids[b*T+i] = int32(w[i])
			tg[b*T+i] = int32(w[i+1])
		}
	}
}

// Run trains until opt.Steps steps are done or ctx is cancelled, writing
// checkpoints as it goes. A cancelled run saves the last finished step and
// returns ErrStopped. A non-finite loss or gradient stops the run with an
// error before the bad step touches the weights; checkpoints on disk stay
// as they were.
func (t *Trainer) Run(ctx context.Context) error {
	if err := t.prepare(); err != nil {
		return err
	}
	o := t.Opt
	m := t.Model
	start := time.Now()
	stepBytes := o.BytesPerStep()
	rows := t.Rows()
	lastSaved := -1
	var rate float64 // bytes/s, smoothed
	for t.Step < o.Steps {
		// One process stops when its context ends; the ranks of a job
		// stop together, after the step at which they agreed to.
		if (t.Comm == nil && ctx.Err() != nil) || t.stop {
			if lastSaved != t.Step {
				if err := t.Save(); err != nil {
					return err
				}
			}
			return ErrStopped
		}
		stepStart := time.Now()
		step := t.Step + 1
		m.ZeroGrads()
		scale := float32(1 / float64(stepBytes))
		var sum float64
		var reduceErr error
		for k := 0; k < o.Accum; k++ {
			if err := t.data.Batch(step, k, t.buf); err != nil {
				return fmt.Errorf("step %d: reading training data: %w", step, err)
			}
			split(t.buf, t.ids, t.tg, rows, o.SeqLen)
			s, _, err := t.pass.Forward(t.ids, t.tg, nil, nil, scale)
			if err != nil {
				return err
			}
			if t.Comm != nil && k == o.Accum-1 {
				// Sum each layer's gradients over the ranks as soon as
				// the last micro-batch's backward has finished them.
				t.pass.OnGradReady(func(r model.GradRange) {
					if reduceErr == nil {
						reduceErr = t.Comm.AllReduce(m.Grads.Slice(r.Off, r.Len), dist.Sum)
					}
				})
			}
			err = t.pass.Backward()
			t.pass.OnGradReady(nil)
			if err != nil {
				return err
			}
			sum += s
		}
		var loss, norm float64
		if t.Comm == nil {
			loss = sum / float64(stepBytes)
			norm = ClipGradNorm(m, o.Clip)
		} else {
			if reduceErr == nil {
				reduceErr = t.Comm.Wait()
			}
			if reduceErr != nil {
				return fmt.Errorf("step %d: summing the gradients over the ranks: %w", step, reduceErr)
			}
			// The job's loss, whether any rank was asked to stop, and rank
			// 0's gradient norm (the gradients are the same on every
			// rank; one norm keeps the clipping the same bit for bit).
			v := []float64{sum, 0, 0}
			if ctx.Err() != nil {
				v[1] = 1
			}
			if t.rank() == 0 {
				v[2] = m.BE.SumSquares(m.Grads)
			}
			if err := t.Comm.AllReduceHost(v, dist.Sum); err != nil {
				return fmt.Errorf("step %d: %w", step, err)
			}
			loss = v[0] / float64(stepBytes)
			t.stop = v[1] > 0
			norm = math.Sqrt(v[2])
			clipToNorm(m, norm, o.Clip)
		}
		if math.IsNaN(loss) || math.IsInf(loss, 0) || math.IsNaN(norm) || math.IsInf(norm, 0) {
			return fmt.Errorf("step %d: the loss is %g and the gradient norm %g; stopping before this step changes the weights (checkpoints on disk are untouched; try a lower --lr)", step, loss, norm)
		}
		lr := LR(step, o.Warmup, o.Steps, o.LR, o.MinLR)
		t.optim.Step(m, step, lr)
		t.Step = step

		secs := time.Since(stepStart).Seconds()
		inst := float64(stepBytes) / secs
		if rate == 0 {
			rate = inst
		} else {
			rate = 0.8*rate + 0.2*inst
		}
		met := Metrics{
			Step: step, Loss: loss, BPB: loss / math.Ln2, LR: lr, GradNorm: norm,
			BytesPerSec: rate, Bytes: int64(step) * stepBytes, Elapsed: time.Since(start).Seconds(),
		}
		validate := step == o.Steps || (o.ValEvery > 0 && step%o.ValEvery == 0)
		if validate && t.rank() == 0 {
			v, err := t.ValidationBPB()
			if err != nil {
				return err
			}
			met.ValBPB = &v
		}
		if t.Progress != nil {
			t.Progress(met)
		}
		if t.Log != nil && (validate || step == 1 || (o.LogEvery > 0 && step%o.LogEvery == 0)) {
			t.Log(met)
		}
		if step == o.Steps || (o.CkptEvery > 0 && step%o.CkptEvery == 0) {
			if err := t.Save(); err != nil {
				return err
			}
			lastSaved = step
		}
	}
	return nil
}

// ValidationBPB scores the validation windows (every byte after the first
// of each) and returns bits per byte.
func (t *Trainer) ValidationBPB() (float64, error) {
	val := t.data.Validation()
	if len(val) == 0 {
		return 0, fmt.Errorf("validation: no windows")
	}
	T := len(val[0]) - 1
	B := min(max(t.Rows(), 1), len(val))
	if t.valPass == nil || t.valPass.B != B || t.valPass.T != T {
		t.valPass = t.Model.NewPass(B, T, false)
	}
	buf := make([]byte, 0, B*(T+1))
	ids := make([]int32, B*T)
	tg := make([]int32, B*T)
	var sum float64
	var count int
	for i := 0; i < len(val); i += B {
		buf = buf[:0]
		rows := 0
		for j := i; j < len(val) && j < i+B; j++ {
			buf = append(buf, val[j]...)
			rows++
		}
		split(buf, ids, tg, rows, T)
		for k := rows * T; k < B*T; k++ { // pad a short last batch, unscored
			ids[k], tg[k] = 0, -1
		}
		s, c, err := t.valPass.Forward(ids, tg, nil, nil, 0)
		if err != nil {
			return 0, err
		}
		sum += s
		count += c
	}
	return sum / float64(count) / math.Ln2, nil
}
