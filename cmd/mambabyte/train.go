package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/mambabyte/mambabyte"
	"github.com/mambabyte/mambabyte/internal/checkpoint"
	"github.com/mambabyte/mambabyte/internal/data"
	"github.com/mambabyte/mambabyte/internal/dist"
	"github.com/mambabyte/mambabyte/internal/model"
	"github.com/mambabyte/mambabyte/internal/train"
)

// preset is a named model shape with training settings that suit it.
type preset struct {
	about              string
	dModel, nLayer     int
	seqLen, batch, acc int
}

var presets = map[string]preset{
	"tiny":  {"0.1M parameters; seconds on a CPU (tests, smoke runs)", 64, 2, 256, 8, 1},
	"small": {"2.6M parameters; trains on a laptop CPU in tens of minutes", 256, 6, 1024, 8, 1},
	"base":  {"10M parameters; hours on a CPU", 512, 6, 1024, 8, 1},
	"353m":  {"the paper's MambaByte-353M (D 1024, L 53): a GPU model", 1024, 53, 8192, 4, 12},
	"972m":  {"the paper's MambaByte-972M (D 1792, L 48): a GPU model", 1792, 48, 8192, 4, 12},
}

func presetNames() string {
	var names []string
	for n := range presets {
		names = append(names, n)
	}
	sort.Strings(names)
	return strings.Join(names, ", ")
}

type stringList []string

func (s *stringList) String() string     { return strings.Join(*s, ",") }
func (s *stringList) Set(v string) error { *s = append(*s, v); return nil }

func cmdTrain(args []string) error {
	fs := newFlags("train", "--data PATH [--data PATH ...] --out DIR [--preset NAME] [--gpus N] [flags]")
	var specs stringList
	fs.Var(&specs, "data", "training text: a `file`, directory or glob; .gz and .dz are decompressed (repeatable)")
	out := fs.String("out", "", "run `directory`: checkpoints, metrics.jsonl, curve.svg")
	presetName := fs.String("preset", "small", "model preset: "+presetNames())
	resume := fs.Bool("resume", false, "continue the run in --out from its latest checkpoint")
	asJSON := fs.Bool("json", false, "print each metrics line as JSON on stdout")
	valFraction := fs.Float64("val-fraction", 0.01, "share of the corpus held out for validation")
	valBytes := fs.Int64("val-bytes", 1<<20, "most validation bytes scored at each validation")
	cacheDir := fs.String("cache-dir", "", "where plain .gz files are decompressed once (default: the system temp dir)")

	// Model shape (defaults come from the preset).
	dModel := fs.Int("d-model", 0, "model width D")
	nLayer := fs.Int("n-layer", 0, "layers L")
	dState := fs.Int("d-state", 16, "SSM state size N")
	dConv := fs.Int("d-conv", 4, "conv width K")
	expand := fs.Int("expand", 2, "inner width E = expand·D")
	dtRank := fs.Int("dt-rank", 0, "dt rank R (0: ceil(D/16))")
	norm := fs.String("norm", "layernorm", "layernorm or rmsnorm")
	untied := fs.Bool("untied", false, "separate output head instead of the tied embedding")

	// Optimisation.
	d := train.Defaults(model.DefaultConfig())
	steps := fs.Int("steps", d.Steps, "optimizer steps")
	batch := fs.Int("batch", 0, "windows per micro-batch (default: the preset's)")
	accum := fs.Int("accum", 0, "micro-batches per step (default: the preset's)")
	seqLen := fs.Int("seq-len", 0, "bytes per window T (default: the preset's)")
	lr := fs.Float64("lr", d.LR, "peak learning rate")
	minLR := fs.Float64("min-lr", -1, "final learning rate (default lr/10)")
	warmup := fs.Int("warmup", d.Warmup, "linear warm-up steps")
	wd := fs.Float64("weight-decay", d.WeightDecay, "AdamW weight decay (not on A_log, D, norms, biases)")
	clip := fs.Float64("clip", d.Clip, "global gradient-norm limit (0: none)")
	seed := fs.Uint64("seed", d.Seed, "seed for initialisation and data order")
	valEvery := fs.Int("val-every", d.ValEvery, "steps between validations")
	logEvery := fs.Int("log-every", d.LogEvery, "steps between metrics lines")
	ckptEvery := fs.Int("ckpt-every", d.CkptEvery, "steps between checkpoints")
	keep := fs.Int("keep", d.Keep, "checkpoints kept (0: all)")
	recompute := fs.Bool("recompute", false, "keep only each layer's input for the backward pass and recompute the rest (each layer's forward runs twice, for a fraction of the memory; a resumed run may change it)")
	dev := deviceFlags(fs)
	gpus := fs.Int("gpus", 1, "GPUs of this host to train on in data parallel, one worker process each (with --device cuda; --batch is the whole batch, split evenly over all GPUs)")
	nodes := fs.Int("nodes", 1, "hosts of a multi-host job: run the same command on each, with its --node-rank and one --rendezvous")
	nodeRank := fs.Int("node-rank", 0, "this host's index in a multi-host job, 0 … nodes-1")
	rendezvous := fs.String("rendezvous", "", "`host:port` of node 0 where the workers meet (default: a free local port; required with --nodes)")
	fs.Usage = trainUsage(fs)
	if err := parse(fs, args); err != nil {
		return err
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if *out == "" {
		return fmt.Errorf("--out is required")
	}
	if len(specs) == 0 {
		return fmt.Errorf("--data is required (a file, directory or glob)")
	}
	job, worker, err := dist.FromEnv(os.Getenv)
	if err != nil {
		return fmt.Errorf("worker environment: %w", err)
	}
	if !worker && (*gpus != 1 || *nodes != 1 || set["node-rank"] || set["rendezvous"]) {
		return launchWorkers(args, *gpus, *nodes, *nodeRank, *rendezvous)
	}
	lead := job.Rank == 0 // prints, logs and writes checkpoints

	// The options the flags describe (a fresh run's).
	p, ok := presets[*presetName]
	if !ok {
		return fmt.Errorf("unknown preset %q; choose one of %s", *presetName, presetNames())
	}
	cfg := model.DefaultConfig()
	cfg.DModel, cfg.NLayer = p.dModel, p.nLayer
	if set["d-model"] {
		cfg.DModel = *dModel
	}
	if set["n-layer"] {
		cfg.NLayer = *nLayer
	}
	cfg.DState, cfg.DConv, cfg.Expand, cfg.DTRank = *dState, *dConv, *expand, *dtRank
	cfg.Norm = model.NormKind(*norm)
	cfg.TieEmbeddings = !*untied
	opt := train.Defaults(cfg)
	opt.Batch, opt.Accum, opt.SeqLen = p.batch, p.acc, p.seqLen
	if set["batch"] {
		opt.Batch = *batch
	}
	if set["accum"] {
		opt.Accum = *accum
	}
	if set["seq-len"] {
		opt.SeqLen = *seqLen
	}
	opt.Steps, opt.LR, opt.Warmup = *steps, *lr, *warmup
	opt.MinLR = *lr / 10
	if set["min-lr"] {
		opt.MinLR = *minLR
	}
	opt.WeightDecay, opt.Clip, opt.Seed = *wd, *clip, *seed
	opt.ValEvery, opt.LogEvery, opt.CkptEvery, opt.Keep = *valEvery, *logEvery, *ckptEvery, *keep
	opt.Recompute = *recompute
	if opt.Warmup >= opt.Steps && !set["warmup"] {
		opt.Warmup = opt.Steps / 10
	}

	latest, err := train.LatestCheckpoint(*out)
	if err != nil {
		return err
	}
	switch {
	case *resume && latest == "":
		return fmt.Errorf("--resume: %s has no checkpoint to resume from", *out)
	case !*resume && latest != "":
		return fmt.Errorf("%s already holds a run (latest checkpoint %s); pass --resume to continue it or choose another --out", *out, filepath.Base(latest))
	case *resume:
		// The saved run's settings win. Flags may repeat them; a flag that
		// contradicts them is an error. Only the length of the run and the
		// logging cadence may change.
		saved, step, err := train.SavedOptions(*out)
		if err != nil {
			return err
		}
		if err := checkResumeFlags(set, opt, saved); err != nil {
			return err
		}
		if set["steps"] {
			saved.Steps = opt.Steps
		}
		if set["val-every"] {
			saved.ValEvery = opt.ValEvery
		}
		if set["log-every"] {
			saved.LogEvery = opt.LogEvery
		}
		if set["ckpt-every"] {
			saved.CkptEvery = opt.CkptEvery
		}
		if set["keep"] {
			saved.Keep = opt.Keep
		}
		if set["recompute"] {
			saved.Recompute = opt.Recompute
		}
		if step >= saved.Steps {
			return fmt.Errorf("the run in %s already finished %d of %d steps; raise --steps to train further", *out, step, saved.Steps)
		}
		opt = saved
	}
	if err := opt.Validate(); err != nil {
		return err
	}
	if !(*valFraction > 0 && *valFraction < 0.5) {
		return fmt.Errorf("--val-fraction must be in (0, 0.5), got %g", *valFraction)
	}

	// Data: every check happens before any training work.
	var dopts []data.Option
	if *cacheDir != "" {
		dopts = append(dopts, data.WithCacheDir(*cacheDir))
	}
	corpus, err := data.Open(specs, dopts...)
	if err != nil {
		return err
	}
	defer corpus.Close()
	split, err := data.NewSplit(corpus, splitConfig(*valFraction, opt.SeqLen, opt.Seed))
	if err != nil {
		return err
	}
	src, err := newCorpusData(split, opt, *valBytes)
	if err != nil {
		return err
	}
	if worker {
		if opt.Batch%job.World != 0 {
			return fmt.Errorf("the batch of %d windows does not split evenly over %d GPUs: --batch is the whole batch of the job (a resumed run keeps its own), so use a number of GPUs that divides it, or start the run with a --batch that is a multiple of %d", opt.Batch, job.World, job.World)
		}
		if src.s, err = src.s.Shard(job.Rank, job.World); err != nil {
			return err
		}
	}
	bopts := dev.options()
	if worker && *dev.device != mambabyte.DeviceCPU {
		// The worker's GPU is its local rank; CUDA's current device is
		// per thread, so every CUDA call comes from this one.
		runtime.LockOSThread()
		bopts.GPU = job.LocalRank
	}
	be, err := mambabyte.NewBackend(bopts)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(*out, 0o755); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var comm dist.Comm
	if worker {
		hostComm := os.Getenv("MAMBABYTE_DIST_CPU") == "1"
		if be.Name() == mambabyte.DeviceCPU && !hostComm {
			return fmt.Errorf("rank %d: data-parallel training runs on GPUs (--device cuda) through NCCL; MAMBABYTE_DIST_CPU=1 runs CPU workers through a slow TCP communicator meant for tests", job.Rank)
		}
		if comm, err = dist.Connect(ctx, job, be, hostComm, true); err != nil {
			return err
		}
		defer comm.Close()
	}
	var tr *train.Trainer
	if *resume {
		tr, err = train.Resume(opt, be, src, *out)
	} else {
		tr, err = train.New(opt, be, src, *out)
	}
	if err != nil {
		return err
	}
	tr.Comm = comm
	if !lead {
		// The other ranks train and keep quiet; errors still reach stderr.
		err := tr.Run(ctx)
		if errors.Is(err, train.ErrStopped) {
			return nil
		}
		return err
	}
	metrics, err := train.OpenMetrics(filepath.Join(*out, train.MetricsFile), tr.Step)
	if err != nil {
		return err
	}
	defer metrics.Close()

	cfg = opt.Model
	fmt.Fprintf(os.Stderr, "device: %s\n", mambabyte.DescribeBackend(be))
	fmt.Fprintf(os.Stderr, "model: D %d, L %d, N %d, K %d, E %d, R %d, %s, %s head: %.2fM parameters\n",
		cfg.DModel, cfg.NLayer, cfg.DState, cfg.DConv, cfg.DInner(), cfg.Rank(), cfg.Norm, map[bool]string{true: "tied", false: "separate"}[cfg.TieEmbeddings], float64(cfg.NumParams())/1e6)
	fmt.Fprintf(os.Stderr, "data: %d files, %s (train %s, validation %s; %d validation windows of %d bytes)\n",
		len(corpus.Files()), human(corpus.Size()), human(split.TrainBytes()), human(split.ValidationBytes()), len(src.val), opt.SeqLen+1)
	fmt.Fprintf(os.Stderr, "run: %d steps of %d×%d×%d bytes, lr %g→%g, warm-up %d, out %s", opt.Steps, opt.Batch, opt.Accum, opt.SeqLen, opt.LR, opt.MinLR, opt.Warmup, *out)
	if tr.Step > 0 {
		fmt.Fprintf(os.Stderr, ", resuming after step %d", tr.Step)
	}
	fmt.Fprintln(os.Stderr)
	if worker {
		fmt.Fprintf(os.Stderr, "data parallel: %d workers (%s), %d of the %d windows of each micro-batch per worker\n",
			job.World, commName(comm), tr.Rows(), opt.Batch)
	}

	bar := newProgress(os.Stderr, opt.Steps, tr.Step)
	plot := func() { writePlot(*out, opt, filepath.Join(*out, train.PlotFile)) }
	var logErr error
	tr.Log = func(m train.Metrics) {
		if err := metrics.Write(m); err != nil && logErr == nil {
			logErr = err
		}
		if *asJSON {
			b, _ := json.Marshal(m)
			fmt.Println(string(b))
		}
		if m.ValBPB != nil {
			bar.note(fmt.Sprintf("step %d: validation %.4f bits/byte", m.Step, *m.ValBPB))
			plot()
		}
	}
	tr.Progress = bar.update
	tr.Saved = func(dir string) { bar.note("saved " + dir) }

	err = tr.Run(ctx)
	bar.finish()
	plot()
	if errors.Is(err, train.ErrStopped) {
		fmt.Fprintf(os.Stderr, "stopped after step %d; checkpoint saved. Continue with: mambabyte train --data ... --out %s --resume\n", tr.Step, *out)
		return nil
	}
	if err != nil {
		return err
	}
	if logErr != nil {
		return logErr
	}
	final, _ := train.LatestCheckpoint(*out)
	fmt.Fprintf(os.Stderr, "done: %d steps; model in %s (use --model %s)\n", tr.Step, final, *out)
	return nil
}

// corpusData serves a split corpus to the trainer.
type corpusData struct {
	s   *data.Sampler
	val [][]byte
}

func newCorpusData(split *data.Split, opt train.Options, valBytes int64) (*corpusData, error) {
	s, err := split.Sampler(opt.Batch, opt.SeqLen, opt.Seed)
	if err != nil {
		return nil, err
	}
	offs, err := split.ValidationWindows(opt.SeqLen, valBytes)
	if err != nil {
		return nil, err
	}
	w := opt.SeqLen + 1
	buf := make([]byte, len(offs)*w)
	if err := split.Corpus().ReadWindows(buf, offs, w); err != nil {
		return nil, err
	}
	d := &corpusData{s: s}
	for i := range offs {
		d.val = append(d.val, buf[i*w:(i+1)*w:(i+1)*w])
	}
	return d, nil
}

func (d *corpusData) Batch(step, micro int, dst []byte) error { return d.s.Batch(dst, step, micro) }
func (d *corpusData) Validation() [][]byte                    { return d.val }

func human(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.2f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d bytes", n)
}

// progress draws a one-line bar on a terminal, or prints a line now and
// then when stderr is a file or pipe.
type progress struct {
	w         io.Writer
	tty       bool
	total     int
	lastLine  time.Time
	lastVal   string
	start     time.Time
	startStep int
	drawn     bool
}

func newProgress(w io.Writer, total, startStep int) *progress {
	tty := false
	if f, ok := w.(*os.File); ok {
		tty = isTerminal(f)
	}
	// A worker's stderr is a pipe to its launcher, which passes it on to
	// a terminal.
	if os.Getenv(envProgressTTY) == "1" {
		tty = true
	}
	return &progress{w: w, tty: tty, total: total, start: time.Now(), startStep: startStep}
}

func (p *progress) update(m train.Metrics) {
	if m.ValBPB != nil {
		p.lastVal = fmt.Sprintf(" val %.3f", *m.ValBPB)
	}
	done := m.Step - p.startStep
	eta := "?"
	if done > 0 {
		per := time.Since(p.start) / time.Duration(done)
		eta = (per * time.Duration(p.total-m.Step)).Round(time.Second).String()
	}
	const width = 24
	filled := width * m.Step / max(1, p.total)
	line := fmt.Sprintf("%s %d/%d loss %.3f bpb %.3f%s lr %.2e %s/s ETA %s",
		"["+strings.Repeat("#", filled)+strings.Repeat(".", width-filled)+"]",
		m.Step, p.total, m.Loss, m.BPB, p.lastVal, m.LR, humanRate(m.BytesPerSec), eta)
	if p.tty {
		fmt.Fprintf(p.w, "\r\033[K%s", line)
		p.drawn = true
		return
	}
	if time.Since(p.lastLine) >= 10*time.Second || m.Step == p.total || m.ValBPB != nil {
		fmt.Fprintln(p.w, line)
		p.lastLine = time.Now()
	}
}

// note prints a message on its own line without breaking the bar.
func (p *progress) note(s string) {
	if p.tty && p.drawn {
		fmt.Fprintf(p.w, "\r\033[K%s\n", s)
		return
	}
	fmt.Fprintln(p.w, s)
}

func (p *progress) finish() {
	if p.tty && p.drawn {
		fmt.Fprintln(p.w)
	}
}

func humanRate(r float64) string {
	switch {
	case r >= 1e6:
		return fmt.Sprintf("%.2fMB", r/1e6)
	case r >= 1e3:
		return fmt.Sprintf("%.1fKB", r/1e3)
	}
	return fmt.Sprintf("%.0fB", r)
}

// checkResumeFlags reports a flag given on --resume whose value differs
// from the saved run's.
func checkResumeFlags(set map[string]bool, flags, saved train.Options) error {
	type field struct {
		flags, saved any
	}
	fields := map[string]field{
		"d-model": {flags.Model.DModel, saved.Model.DModel}, "n-layer": {flags.Model.NLayer, saved.Model.NLayer},
		"d-state": {flags.Model.DState, saved.Model.DState}, "d-conv": {flags.Model.DConv, saved.Model.DConv},
		"expand": {flags.Model.Expand, saved.Model.Expand}, "dt-rank": {flags.Model.DTRank, saved.Model.DTRank},
		"norm": {flags.Model.Norm, saved.Model.Norm}, "untied": {!flags.Model.TieEmbeddings, !saved.Model.TieEmbeddings},
		"batch": {flags.Batch, saved.Batch}, "accum": {flags.Accum, saved.Accum}, "seq-len": {flags.SeqLen, saved.SeqLen},
		"lr": {flags.LR, saved.LR}, "min-lr": {flags.MinLR, saved.MinLR}, "warmup": {flags.Warmup, saved.Warmup},
		"weight-decay": {flags.WeightDecay, saved.WeightDecay}, "clip": {flags.Clip, saved.Clip}, "seed": {flags.Seed, saved.Seed},
	}
	if set["preset"] {
		fields["preset"] = field{fmt.Sprint(flags.Model.DModel, flags.Model.NLayer), fmt.Sprint(saved.Model.DModel, saved.Model.NLayer)}
	}
	var names []string
	for name := range set {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		if f, ok := fields[name]; ok && f.flags != f.saved {
			return fmt.Errorf("--%s is %v but the saved run has %v; --resume continues the saved run with its own settings", name, f.flags, f.saved)
		}
	}
	return nil
}

// splitConfig is how train (and data, to show the same split) cut a corpus:
// blocks of 64 KiB, or 8 windows if longer, so that validation is spread
// over the whole corpus; a small corpus may use blocks as short as one
// window.
func splitConfig(valFraction float64, seqLen int, seed uint64) data.SplitConfig {
	w := int64(seqLen) + 1
	return data.SplitConfig{ValFraction: valFraction, BlockSize: max(64<<10, 8*w), MinBlockSize: w, Seed: seed}
}

// writePlot draws the curves of the run in dir into file; it returns the
// first error (the training loop ignores it: a plot is not worth stopping
// for).
func writePlot(dir string, opt train.Options, file string) error {
	ms, err := train.ReadMetrics(filepath.Join(dir, train.MetricsFile))
	if err != nil {
		return err
	}
	if len(ms) == 0 {
		return fmt.Errorf("%s: no metrics", filepath.Join(dir, train.MetricsFile))
	}
	cfg := opt.Model
	title := fmt.Sprintf("mambabyte: D %d, L %d, %.1fM parameters, T %d", cfg.DModel, cfg.NLayer, float64(cfg.NumParams())/1e6, opt.SeqLen)
	var sb strings.Builder
	if err := train.PlotSVG(&sb, title, ms); err != nil {
		return err
	}
	return checkpoint.WriteFileAtomic(file, []byte(sb.String()))
}

// cmdPlot redraws a run's curve from its metrics.jsonl.
func cmdPlot(args []string) error {
	fs := newFlags("plot", "--run DIR [--out FILE]")
	run := fs.String("run", "", "training run `directory`")
	file := fs.String("out", "", "SVG `file` to write (default: DIR/curve.svg)")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *run == "" {
		return fmt.Errorf("--run is required")
	}
	opt, _, err := train.SavedOptions(*run)
	if err != nil {
		return err
	}
	if *file == "" {
		*file = filepath.Join(*run, train.PlotFile)
	}
	return writePlot(*run, opt, *file)
}
