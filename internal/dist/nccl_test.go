package dist

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/mambabyte/mambabyte/internal/backend"
	"github.com/mambabyte/mambabyte/internal/backend/cpu"
	"github.com/mambabyte/mambabyte/internal/backend/cuda"
)

var _ Device = (*cuda.Backend)(nil)

func TestLoadNCCLReportsAMissingLibrary(t *testing.T) {
	t.Setenv("MAMBABYTE_NCCL_LIB", "/nonexistent/libnccl.so.2")
	_, err := openNCCL()
	if !errors.Is(err, ErrNCCLUnavailable) {
		t.Fatalf("got %v, want an error wrapping ErrNCCLUnavailable", err)
	}
	for _, want := range []string{"/nonexistent/libnccl.so.2", "MAMBABYTE_NCCL_LIB", "2.23"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("%q does not mention %q", err, want)
		}
	}
}

// Connect refuses a CPU job without the test fallback and gives one rank
// Single.
func TestConnectChoosesTheCommunicator(t *testing.T) {
	be := cpu.New()
	if c, err := Connect(context.Background(), Env{World: 1}, be, false, false); err != nil || c.Size() != 1 {
		t.Fatalf("one rank: %v, %v", c, err)
	}
	_, err := Connect(context.Background(), Env{Rank: 1, World: 2, Addr: "127.0.0.1:1"}, be, false, false)
	if err == nil || !strings.Contains(err.Error(), "NCCL") {
		t.Fatalf("two CPU ranks without the fallback: %v", err)
	}
}

// gpu returns a CUDA backend and NCCL, or skips.
func gpu(t *testing.T) (*cuda.Backend, *NCCLLib) {
	t.Helper()
	be, err := cuda.New(cuda.Options{Precision: "fp32"})
	if err != nil {
		t.Skipf("no GPU: %v", err)
	}
	lib, err := LoadNCCL()
	if err != nil {
		t.Skipf("no NCCL: %v", err)
	}
	t.Logf("%s; NCCL %s from %s", be.Device(), lib.Version(), lib.Path())
	return be, lib
}

func ncclOne(t *testing.T, be *cuda.Backend, lib *NCCLLib) *NCCL {
	t.Helper()
	id, err := lib.UniqueID()
	if err != nil {
		t.Fatal(err)
	}
	g, id, err := Rendezvous(context.Background(), Env{World: 1}, id)
	if err != nil {
		t.Fatal(err)
	}
	c, err := NewNCCL(lib, g, id, be)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func filled(n int, f func(i int) float32) []float32 {
	v := make([]float32, n)
	for i := range v {
		v[i] = f(i)
	}
	return v
}

// NCCL with one rank on one GPU: sums and averages leave the values as
// they are, a group of reductions runs, and Connect picks NCCL when asked.
func TestNCCLOneRank(t *testing.T) {
	be, lib := gpu(t)
	c := ncclOne(t, be, lib)
	const n = 1000
	want := filled(n, func(i int) float32 { return float32(i)*0.5 - 17 })
	x := be.Alloc(n)
	be.Upload(x, want)
	if err := c.AllReduce(x, Sum); err != nil {
		t.Fatal(err)
	}
	if err := c.AllReduce(x.Slice(10, 500), Avg); err != nil {
		t.Fatal(err)
	}
	if err := c.AllReduceMany([]backend.Tensor{x.Slice(0, 10), x.Slice(600, 400)}, Sum); err != nil {
		t.Fatal(err)
	}
	if err := c.Wait(); err != nil {
		t.Fatal(err)
	}
	got := make([]float32, n)
	be.Download(got, x)
	for i := range got {
		if got[i] != want[i] {
			t.Fatalf("value %d: %v after reductions over one rank, want %v", i, got[i], want[i])
		}
	}
	v := []float64{1.5, -2}
	if err := c.AllReduceHost(v, Sum); err != nil || v[0] != 1.5 || v[1] != -2 {
		t.Fatalf("host sum: %v, %v", v, err)
	}
	if err := c.Barrier(); err != nil {
		t.Fatal(err)
	}

	cc, err := Connect(context.Background(), Env{World: 1}, be, false, true)
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	if _, ok := cc.(*NCCL); !ok {
		t.Fatalf("Connect with forceNCCL on a GPU gave a %T", cc)
	}
}

// A reduction issued right after a long run of the backend's operations
// sees all of them: the communication stream waits for the backend's
// stream (through the legacy stream's event, or with
// MAMBABYTE_NCCL_OVERLAP=0 a host wait). The reduction is out of place,
// so a reduction that ran too early would copy partial sums.
func TestNCCLOrderedAfterTheBackend(t *testing.T) {
	_, lib := gpu(t)
	for _, overlap := range []string{"1", "0"} {
		t.Run("overlap="+overlap, func(t *testing.T) {
			t.Setenv("MAMBABYTE_NCCL_OVERLAP", overlap)
			be, err := cuda.New(cuda.Options{Precision: "fp32"}) // a fresh Backend: a fresh stream
			if err != nil {
				t.Fatal(err)
			}
			c := ncclOne(t, be, lib)
			const n = 1 << 24
			const adds = 40
			src, dst, one := be.Alloc(n), be.Alloc(n), be.Alloc(n)
			be.Upload(one, filled(n, func(int) float32 { return 1 }))
			be.Sync()
			start := time.Now()
			for range adds {
				be.Add(src, one)
			}
			issued := time.Since(start)
			if err := be.CommAfterCompute(); err != nil {
				t.Fatal(err)
			}
			p, q := be.DevicePtr(src), be.DevicePtr(dst)
			if rc := lib.allReduce(p, q, n, ncclFloat32, ncclSum, c.comm, c.stream); rc != ncclSuccess {
				t.Fatal(lib.err("ncclAllReduce", rc, c.comm))
			}
			if err := be.CommSync(); err != nil {
				t.Fatal(err)
			}
			done := time.Since(start)
			got := make([]float32, n)
			be.Download(got, dst)
			for i := 0; i < n; i += 4099 {
				if got[i] != adds {
					t.Fatalf("value %d is %v, want %d: the reduction ran before the backend's work finished", i, got[i], adds)
				}
			}
			t.Logf("%d additions of %d values issued in %v, reduced by %v", adds, n, issued, done)
		})
	}
}
