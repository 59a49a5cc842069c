package main

import (
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/mambabyte/mambabyte"
	"github.com/mambabyte/mambabyte/internal/backend"
	"github.com/mambabyte/mambabyte/internal/blas"
	"github.com/mambabyte/mambabyte/internal/model"
	"github.com/mambabyte/mambabyte/internal/parallel"
	"github.com/mambabyte/mambabyte/internal/train"
)

// benchResult is one measured figure.
type benchResult struct {
	Name  string  `json:"name"`
	Value float64 `json:"value"`
	Unit  string  `json:"unit"`
	Note  string  `json:"note,omitempty"`
}

func cmdBench(args []string) error {
	fs := newFlags("bench", "[--only NAME] [--device cpu|cuda] [--preset NAME] [--json]")
	only := fs.String("only", "", "run one group: bandwidth, gemm, decode, train")
	asJSON := fs.Bool("json", false, "print the results as a JSON array")
	reps := fs.Int("reps", 7, "repetitions per figure (the median is reported)")
	presetName := fs.String("preset", "", "model for decode and train (default: D 768 L 24 for decode, D 512 L 6 for train)")
	streams := fs.String("streams", "1", "decode batch sizes, comma-separated")
	batch := fs.Int("batch", 4, "train: windows per micro-batch")
	accum := fs.Int("accum", 1, "train: micro-batches per optimizer step, their gradients summed (train --accum)")
	seqLen := fs.Int("seq-len", 1024, "train: bytes per window")
	recompute := fs.Bool("recompute", false, "train: recompute each layer's activations in the backward pass (train --recompute)")
	profile := fs.Bool("profile", false, "train: after the timed steps, time one step operation by operation (GPU) and print the table on stderr")
	dModel := fs.Int("d-model", 0, "decode and train: model width D in place of the preset's")
	nLayer := fs.Int("n-layer", 0, "decode and train: layers L in place of the preset's")
	dev := deviceFlags(fs)
	if err := parse(fs, args); err != nil {
		return err
	}
	if *reps < 1 || *batch < 1 || *accum < 1 || *seqLen < 1 {
		return fmt.Errorf("--reps, --batch, --accum and --seq-len must be at least 1")
	}
	if *dModel < 0 || *nLayer < 0 {
		return fmt.Errorf("--d-model and --n-layer must not be negative (0 keeps the preset's)")
	}
	var streamList []int
	for _, f := range strings.Split(*streams, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			return fmt.Errorf("--streams: %q is not a positive number", f)
		}
		streamList = append(streamList, n)
	}
	decodeCfg, trainCfg := model.DefaultConfig(), model.DefaultConfig()
	decodeCfg.DModel, decodeCfg.NLayer = 768, 24
	trainCfg.DModel, trainCfg.NLayer = 512, 6
	if *presetName != "" {
		p, ok := presets[*presetName]
		if !ok {
			return fmt.Errorf("unknown preset %q; choose one of %s", *presetName, presetNames())
		}
		decodeCfg.DModel, decodeCfg.NLayer = p.dModel, p.nLayer
		trainCfg = decodeCfg
	}
	for _, c := range []*model.Config{&decodeCfg, &trainCfg} {
		if *dModel > 0 {
			c.DModel = *dModel
		}
		if *nLayer > 0 {
			c.NLayer = *nLayer
		}
	}
	be, err := mambabyte.NewBackend(dev.options())
	if err != nil {
		return err
	}
	gpu := be.Name() != "cpu"
	fmt.Fprintf(os.Stderr, "bench: %s, %s, %d CPU threads, CPU GEMM kernels %q\n",
		runtime.Version(), mambabyte.DescribeBackend(be), parallel.Workers(), blas.Implementation())
	var results []benchResult
	add := func(r benchResult) {
		results = append(results, r)
		if !*asJSON {
			fmt.Printf("%-48s %12.2f %-10s %s\n", r.Name, r.Value, r.Unit, r.Note)
		}
	}
	want := func(g string) bool { return *only == "" || *only == g }
	var bw float64
	if !gpu && (want("bandwidth") || want("decode")) {
		bw = benchBandwidth(*reps)
		add(benchResult{"memory read bandwidth (1 GiB, all threads)", bw / 1e9, "GB/s", ""})
	}
	if !gpu && want("gemm") {
		for _, s := range [][3]int{{1024, 1024, 1024}, {8192, 1024, 256}, {8192, 256, 512}} {
			g := benchGemm(s[0], s[1], s[2], *reps)
			add(benchResult{fmt.Sprintf("gemm %dx%dx%d (x·Wᵀ)", s[0], s[1], s[2]), g / 1e9, "GFLOP/s", ""})
		}
	}
	if want("decode") {
		for _, n := range streamList {
			secs, fused, err := benchDecode(be, decodeCfg, n, *reps)
			if err != nil {
				return err
			}
			// The fused GPU step reads bf16 copies of the weights in bf16 mode.
			wtype, wsize := "fp32", 4.0
			if p, ok := be.(interface{ Precision() string }); ok && p.Precision() == "bf16" && fused {
				wtype, wsize = "bf16", 2
			}
			wbytes := wsize * float64(decodeCfg.NumParams())
			name := fmt.Sprintf("decode, %d stream(s), D %d L %d (%.0fM)", n, decodeCfg.DModel, decodeCfg.NLayer, float64(decodeCfg.NumParams())/1e6)
			note := fmt.Sprintf("%.2f ms per step; %s weights %.0f MB read at %.1f GB/s", secs*1e3, wtype, wbytes/1e6, wbytes/secs/1e9)
			if bw > 0 {
				note += fmt.Sprintf(" = %.0f%% of measured bandwidth", 100*wbytes/secs/bw)
			}
			add(benchResult{name, float64(n) / secs, "bytes/s", note})
		}
	}
	if want("train") {
		secs, err := benchTrain(be, trainCfg, *batch, *accum, *seqLen, max(1, *reps/2), *recompute, *profile)
		if err != nil {
			return err
		}
		stepBytes := *accum * *batch * *seqLen
		flops := 6 * float64(trainCfg.NumParams()) * float64(stepBytes)
		name := fmt.Sprintf("train step, D %d L %d (%.0fM), B %d, T %d", trainCfg.DModel, trainCfg.NLayer, float64(trainCfg.NumParams())/1e6, *batch, *seqLen)
		if *accum > 1 {
			name += fmt.Sprintf(", %d micro-batches", *accum)
		}
		if *recompute {
			name += ", recompute"
		}
		note := fmt.Sprintf("forward, backward, AdamW; %.0f ms; %.1f TFLOP/s by 6·params·bytes", secs*1e3, flops/secs/1e12)
		if mi, ok := be.(interface{ MemInfo() (int64, int64) }); ok {
			// Everything stays allocated after a step (the pass, the
			// gradients, the grown workspaces), so this is the peak.
			used, _ := mi.MemInfo()
			note += fmt.Sprintf("; device memory in use %.1f GB", float64(used)/1e9)
		}
		add(benchResult{name, float64(stepBytes) / secs, "bytes/s", note})
	}
	if *asJSON {
		return json.NewEncoder(os.Stdout).Encode(results)
	}
	return nil
}

// syncBackend waits for queued device work, where the backend queues any.
func syncBackend(be backend.Backend) {
	if s, ok := be.(interface{ Sync() }); ok {
		s.Sync()
	}
}

func median(xs []float64) float64 {
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	return s[len(s)/2]
}

// benchSink keeps the bandwidth loop's sums alive.
var benchSink float32

// benchBandwidth reads a 1 GiB array with every worker and returns bytes/s.
func benchBandwidth(reps int) float64 {
	x := make([]float32, 1<<28)
	for i := range x {
		x[i] = 1
	}
	var times []float64
	for r := 0; r < reps; r++ {
		start := time.Now()
		parts := make([]float32, parallel.Workers())
		parallel.Chunks(len(x), 1<<20, func(p, lo, hi int) {
			parts[p] = blas.Dot(x[lo:hi], x[lo:hi])
		})
		times = append(times, time.Since(start).Seconds())
		benchSink += parts[0]
	}
	return float64(4*len(x)) / median(times)
}

func benchGemm(m, n, k, reps int) float64 {
	r := rand.New(rand.NewPCG(1, 2))
	a := make([]float32, m*k)
	b := make([]float32, n*k)
	c := make([]float32, m*n)
	for i := range a {
		a[i] = r.Float32()
	}
	for i := range b {
		b[i] = r.Float32()
	}
	var times []float64
	for i := 0; i < reps+1; i++ {
		start := time.Now()
		blas.Gemm(false, true, m, n, k, 1, a, k, b, k, 0, c, n)
		if i > 0 {
			times = append(times, time.Since(start).Seconds())
		}
	}
	return 2 * float64(m) * float64(n) * float64(k) / median(times)
}

// benchDecode returns the median seconds per recurrent step and whether the
// steps ran through the backend's fused step.
func benchDecode(be backend.Backend, cfg model.Config, streams, reps int) (secs float64, fused bool, err error) {
	m, err := model.New(cfg, be)
	if err != nil {
		return 0, false, err
	}
	m.Init(1)
	st := m.NewState(streams)
	sp := m.NewStepper(streams)
	ids := make([]int32, streams)
	for i := 0; i < 3; i++ {
		if _, err := sp.Step(st, ids); err != nil {
			return 0, false, err
		}
	}
	var times []float64
	for r := 0; r < reps; r++ {
		const steps = 8
		syncBackend(be)
		start := time.Now()
		for i := 0; i < steps; i++ {
			ids[0] = int32(i)
			if _, err := sp.Step(st, ids); err != nil {
				return 0, false, err
			}
		}
		syncBackend(be)
		times = append(times, time.Since(start).Seconds()/steps)
	}
	return median(times), sp.Fused(), nil
}

// benchTrain returns the median seconds of a full training step
// (forward, backward, gradient clipping and the AdamW update).
func benchTrain(be backend.Backend, cfg model.Config, B, accum, T, reps int, recompute, profile bool) (float64, error) {
	m, err := model.New(cfg, be)
	if err != nil {
		return 0, err
	}
	m.Init(1)
	m.AllocGrads()
	var pass *model.Pass
	if recompute {
		pass = m.NewRecomputePass(B, T)
	} else {
		pass = m.NewPass(B, T, true)
	}
	r := rand.New(rand.NewPCG(3, 4))
	ids := make([]int32, B*T)
	tg := make([]int32, B*T)
	for i := range ids {
		ids[i] = int32(r.IntN(256))
		tg[i] = int32(r.IntN(256))
	}
	// A whole optimizer step, as train runs it (a tiny learning rate keeps
	// the repeated steps alike).
	opt := train.NewAdamW(m, 0.9, 0.95, 1e-8, 0.1)
	n := 0
	step := func() error {
		m.ZeroGrads()
		for range accum {
			if _, _, err := pass.Forward(ids, tg, nil, nil, 1/float32(accum*B*T)); err != nil {
				return err
			}
			if err := pass.Backward(); err != nil {
				return err
			}
		}
		train.ClipGradNorm(m, 1)
		n++
		opt.Step(m, n, 1e-7)
		return nil
	}
	var times []float64
	for i := 0; i < reps+1; i++ {
		syncBackend(be)
		start := time.Now()
		if err := step(); err != nil {
			return 0, err
		}
		syncBackend(be)
		if i > 0 {
			times = append(times, time.Since(start).Seconds())
		}
	}
	if prof, ok := be.(interface {
		ProfileStart()
		ProfileStop(io.Writer)
	}); ok && profile {
		prof.ProfileStart()
		if err := step(); err != nil {
			return 0, err
		}
		fmt.Fprintf(os.Stderr, "bench: one training step, B %d, T %d, operation by operation:\n", B, T)
		prof.ProfileStop(os.Stderr)
	}
	return median(times), nil
}
