package main

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"runtime"
	"sort"
	"time"

	"github.com/mambabyte/mambabyte/internal/backend/cpu"
	"github.com/mambabyte/mambabyte/internal/blas"
	"github.com/mambabyte/mambabyte/internal/model"
	"github.com/mambabyte/mambabyte/internal/parallel"
)

// benchResult is one measured figure.
type benchResult struct {
	Name  string  `json:"name"`
	Value float64 `json:"value"`
	Unit  string  `json:"unit"`
	Note  string  `json:"note,omitempty"`
}

func cmdBench(args []string) error {
	fs := newFlags("bench", "[--only NAME] [--json]")
	only := fs.String("only", "", "run one group: bandwidth, gemm, decode, train")
	asJSON := fs.Bool("json", false, "print the results as a JSON array")
	reps := fs.Int("reps", 7, "repetitions per figure (the median is reported)")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *reps < 1 {
		return fmt.Errorf("--reps must be at least 1")
	}
	fmt.Fprintf(os.Stderr, "bench: %s, %d threads, GEMM kernels %q, GOOS/GOARCH %s/%s\n",
		runtime.Version(), parallel.Workers(), blas.Implementation(), runtime.GOOS, runtime.GOARCH)
	var results []benchResult
	add := func(r benchResult) {
		results = append(results, r)
		if !*asJSON {
			fmt.Printf("%-44s %12.2f %-10s %s\n", r.Name, r.Value, r.Unit, r.Note)
		}
	}
	want := func(g string) bool { return *only == "" || *only == g }
	var bw float64
	if want("bandwidth") || want("decode") {
		bw = benchBandwidth(*reps)
		add(benchResult{"memory read bandwidth (1 GiB, all threads)", bw / 1e9, "GB/s", ""})
	}
	if want("gemm") {
		for _, s := range [][3]int{{1024, 1024, 1024}, {8192, 1024, 256}, {8192, 256, 512}} {
			g := benchGemm(s[0], s[1], s[2], *reps)
			add(benchResult{fmt.Sprintf("gemm %dx%dx%d (x·Wᵀ)", s[0], s[1], s[2]), g / 1e9, "GFLOP/s", ""})
		}
	}
	if want("decode") {
		cfg := model.DefaultConfig()
		cfg.DModel, cfg.NLayer = 768, 24
		secs, err := benchDecode(cfg, 1, *reps)
		if err != nil {
			return err
		}
		wbytes := 4 * float64(cfg.NumParams())
		frac := wbytes / secs / bw
		add(benchResult{"decode step, batch 1, D 768 L 24 (fp32)", secs * 1e3, "ms/byte",
			fmt.Sprintf("%.0f bytes/s; weights %.0f MB read at %.1f GB/s = %.0f%% of bandwidth", 1/secs, wbytes/1e6, wbytes/secs/1e9, 100*frac)})
		add(benchResult{"decode: share of memory bandwidth", 100 * frac, "%", ""})
	}
	if want("train") {
		cfg := model.DefaultConfig()
		cfg.DModel, cfg.NLayer = 512, 6
		bps, err := benchTrain(cfg, 4, 1024, max(1, *reps/2))
		if err != nil {
			return err
		}
		add(benchResult{"train step D 512 L 6 (10M), B 4, T 1024", bps, "bytes/s", "forward + backward + AdamW"})
	}
	if *asJSON {
		return json.NewEncoder(os.Stdout).Encode(results)
	}
	return nil
}

func median(xs []float64) float64 {
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	return s[len(s)/2]
}

// benchBandwidth reads a 1 GiB array with every worker and returns bytes/s.
func benchBandwidth(reps int) float64 {
	x := make([]float32, 1<<28)
	for i := range x {
		x[i] = 1
	}
	var times []float64
	sink := float32(0)
	for r := 0; r < reps; r++ {
		start := time.Now()
		parts := make([]float32, parallel.Workers())
		parallel.Chunks(len(x), 1<<20, func(p, lo, hi int) {
			parts[p] = blas.Dot(x[lo:hi], x[lo:hi])
		})
		times = append(times, time.Since(start).Seconds())
		sink += parts[0]
	}
	if sink == -1 {
		fmt.Fprint(os.Stderr, "")
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

// benchDecode returns the median seconds per recurrent step.
func benchDecode(cfg model.Config, streams, reps int) (float64, error) {
	m, err := model.New(cfg, cpu.New())
	if err != nil {
		return 0, err
	}
	m.Init(1)
	st := m.NewState(streams)
	sp := m.NewStepper(streams)
	ids := make([]int32, streams)
	for i := 0; i < 3; i++ {
		if _, err := sp.Step(st, ids); err != nil {
			return 0, err
		}
	}
	var times []float64
	for r := 0; r < reps; r++ {
		const steps = 8
		start := time.Now()
		for i := 0; i < steps; i++ {
			ids[0] = int32(i)
			if _, err := sp.Step(st, ids); err != nil {
				return 0, err
			}
		}
		times = append(times, time.Since(start).Seconds()/steps)
	}
	return median(times), nil
}

// benchTrain returns the median bytes/s of full training steps.
func benchTrain(cfg model.Config, B, T, reps int) (float64, error) {
	m, err := model.New(cfg, cpu.New())
	if err != nil {
		return 0, err
	}
	m.Init(1)
	m.AllocGrads()
	pass := m.NewPass(B, T, true)
	r := rand.New(rand.NewPCG(3, 4))
	ids := make([]int32, B*T)
	tg := make([]int32, B*T)
	for i := range ids {
		ids[i] = int32(r.IntN(256))
		tg[i] = int32(r.IntN(256))
	}
	var times []float64
	for i := 0; i < reps+1; i++ {
		start := time.Now()
		m.ZeroGrads()
		if _, _, err := pass.Forward(ids, tg, nil, nil, 1/float32(B*T)); err != nil {
			return 0, err
		}
		if err := pass.Backward(); err != nil {
			return 0, err
		}
		if i > 0 {
			times = append(times, time.Since(start).Seconds())
		}
	}
	return float64(B*T) / median(times), nil
}
