package cuda_test

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"sort"
	"strings"
	"sync"
	"testing"

	"github.com/mambabyte/mambabyte/internal/backend"
	"github.com/mambabyte/mambabyte/internal/backend/cpu"
	"github.com/mambabyte/mambabyte/internal/backend/cuda"
)

// Tolerances: ‖got−ref‖/‖ref‖ against the CPU backend.
const (
	tolFP32 = 1e-4
	tolBF16 = 1e-2
)

var (
	setupOnce  sync.Once
	gpu32      *cuda.Backend
	gpu16      *cuda.Backend
	setupError error
)

// gpus returns the fp32 and bf16 backends, or skips the test when this
// machine cannot run CUDA (the library is not built, or no driver or GPU).
// Tests synchronise after every operation so a fault names its operation.
func gpus(t testing.TB) (fp32, bf16 *cuda.Backend) {
	t.Helper()
	setupOnce.Do(func() {
		gpu32, setupError = cuda.New(cuda.Options{Precision: "fp32", Sync: os.Getenv("MAMBABYTE_CUDA_NOSYNC") == ""})
		if setupError == nil {
			gpu16, setupError = cuda.New(cuda.Options{Precision: "bf16"})
		}
	})
	if setupError != nil {
		t.Skipf("CUDA backend not available: %v", setupError)
	}
	return gpu32, gpu16
}

// errTable records the largest error seen per check name; TestMain prints it.
var (
	errMu    sync.Mutex
	errTable = map[string]float64{}
)

func record(name string, d float64) {
	errMu.Lock()
	defer errMu.Unlock()
	if old, ok := errTable[name]; !ok || d > old || math.IsNaN(d) {
		errTable[name] = d
	}
}

func TestMain(m *testing.M) {
	code := m.Run()
	if len(errTable) > 0 {
		names := make([]string, 0, len(errTable))
		for n := range errTable {
			names = append(names, n)
		}
		sort.Strings(names)
		fmt.Println("largest relative error against the CPU backend, per check:")
		for _, n := range names {
			fmt.Printf("  %-40s %.3g\n", n, errTable[n])
		}
	}
	os.Exit(code)
}

// compare returns ‖got−want‖/‖want‖ over the elements where want is not
// NaN, or a problem: an element NaN in one and not the other (poisoned
// outputs left unwritten, or written where the CPU leaves them).
func compare(got, want []float32) (float64, string) {
	if len(got) != len(want) {
		return 0, fmt.Sprintf("length %d, want %d", len(got), len(want))
	}
	var num, den float64
	for i := range want {
		g, w := float64(got[i]), float64(want[i])
		gn, wn := math.IsNaN(g), math.IsNaN(w)
		if gn && wn {
			continue
		}
		if gn != wn || math.IsInf(g, 0) != math.IsInf(w, 0) {
			return 0, fmt.Sprintf("element %d is %g, want %g", i, g, w)
		}
		if math.IsInf(w, 0) {
			continue
		}
		num += (g - w) * (g - w)
		den += w * w
	}
	if num == 0 {
		return 0, ""
	}
	return math.Sqrt(num / math.Max(den, 1e-300)), ""
}

func relDiff(got, want []float32) float64 {
	d, problem := compare(got, want)
	if problem != "" {
		return math.NaN()
	}
	return d
}

// pair is the same tensor on the CPU (c) and the GPU (g).
type pair struct {
	c cpu.Slice
	g backend.Tensor
}

// side selects one backend's copy.
type side int

const (
	onCPU side = iota
	onGPU
)

func (p *pair) on(s side) backend.Tensor {
	if p == nil {
		return nil
	}
	if s == onCPU {
		return p.c
	}
	return p.g
}

func (p *pair) slice(off, n int) *pair {
	return &pair{c: p.c[off : off+n : off+n], g: p.g.Slice(off, n)}
}

// env makes pairs on one GPU backend and checks them.
type env struct {
	t *testing.T
	g *cuda.Backend
	r *rand.Rand
}

func newEnv(t *testing.T, g *cuda.Backend, seed uint64) *env {
	return &env{t: t, g: g, r: rand.New(rand.NewPCG(seed, 0xc0da))}
}

func (e *env) from(v []float32) *pair {
	c := make(cpu.Slice, len(v))
	copy(c, v)
	g := e.g.Alloc(len(v))
	e.g.Upload(g, v)
	return &pair{c: c, g: g}
}

// randn is N(mean, scale²) values.
func (e *env) randn(n int, mean, scale float64) *pair { return e.from(e.values(n, mean, scale)) }

// values are n N(mean, scale²) values.
func (e *env) values(n int, mean, scale float64) []float32 {
	v := make([]float32, n)
	for i := range v {
		v[i] = float32(mean + e.r.NormFloat64()*scale)
	}
	return v
}

// nan is an output poisoned with NaN on both sides.
func (e *env) nan(n int) *pair { return e.from(nans(n)) }

func nans(n int) []float32 {
	v := make([]float32, n)
	for i := range v {
		v[i] = float32(math.NaN())
	}
	return v
}

// clone is an independent copy of p's CPU values on both sides.
func (e *env) clone(p *pair) *pair { return e.from(p.c) }

// run calls f on the CPU backend and then on the GPU backend.
func (e *env) run(f func(be backend.Backend, s side)) {
	f(cpu.New(), onCPU)
	f(e.g, onGPU)
}

// check compares p's GPU values with its CPU values.
func (e *env) check(name, table string, p *pair, tol float64) {
	e.t.Helper()
	got := make([]float32, len(p.c))
	e.g.Download(got, p.g)
	d, problem := compare(got, p.c)
	if problem != "" {
		record(table, math.NaN())
		e.t.Errorf("%s: %s", name, problem)
		return
	}
	record(table, d)
	if d > tol {
		e.t.Errorf("%s: relative error %.3g > %.3g", name, d, tol)
	}
}

func ids(r *rand.Rand, n, V int) []int32 {
	out := make([]int32, n)
	for i := range out {
		out[i] = int32(r.IntN(V))
	}
	return out
}

// TestUnavailable checks the error New gives where CUDA cannot run (the
// project's CI), and logs the device where it can.
func TestUnavailable(t *testing.T) {
	g, err := cuda.New(cuda.Options{})
	if err == nil {
		t.Logf("device: %s; library: %s", g.Device(), g.LibPath())
		return
	}
	if !errors.Is(err, cuda.ErrUnavailable) {
		t.Fatalf("error %q does not wrap ErrUnavailable", err)
	}
	msg := err.Error()
	if !strings.Contains(msg, "make -C cuda") && !strings.Contains(msg, "no CUDA driver/GPU") {
		t.Errorf("error %q says neither how to build the library nor that the GPU is missing", msg)
	}
	if _, err := cuda.New(cuda.Options{Precision: "fp8"}); err == nil || errors.Is(err, cuda.ErrUnavailable) {
		t.Errorf("bad precision: error %v", err)
	}
}
