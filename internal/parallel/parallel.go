// Package parallel splits index ranges across the machine's cores.
//
// Work is handed to a fixed set of long-lived workers, so a call costs a few
// atomic operations rather than goroutine start-ups; that matters in the
// per-byte decode step, which makes over a hundred calls of a fraction of a
// millisecond each. Workers poll for work for a short while after each job
// before they sleep, and the caller polls for their completion, because
// waking a sleeping thread costs tens of microseconds on a virtual machine.
package parallel

import (
	"os"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

type job struct {
	fn      func(lo, hi int)
	lo, hi  int
	pending *atomic.Int32
}

// spinFor is how long an idle worker polls for the next job before it
// sleeps on the channel.
const spinFor = 200 * time.Microsecond

var (
	once    sync.Once
	workers int
	jobs    chan job
)

func start() {
	workers = runtime.GOMAXPROCS(0)
	if s := os.Getenv("MAMBABYTE_THREADS"); s != "" {
		if n, err := strconv.Atoi(s); err == nil && n > 0 {
			workers = n
		}
	}
	jobs = make(chan job, 4*workers)
	for i := 1; i < workers; i++ { // the caller is the last worker
		go worker()
	}
}

func worker() {
	for {
		var j job
		select {
		case j = <-jobs:
		default:
			j = poll()
		}
		j.fn(j.lo, j.hi)
		j.pending.Add(-1)
	}
}

// poll waits for a job, polling for spinFor before sleeping.
func poll() job {
	deadline := time.Now().Add(spinFor)
	for n := 0; ; n++ {
		select {
		case j := <-jobs:
			return j
		default:
		}
		if n%64 == 63 {
			if time.Now().After(deadline) {
				return <-jobs
			}
			runtime.Gosched()
		}
	}
}

// Workers is the number of ranges For splits work into at most.
func Workers() int {
	once.Do(start)
	return workers
}

// For calls fn on disjoint ranges [lo,hi) that cover [0,n), at most one
// range per worker, each at least grain long (grain <= 0 means 1), and
// returns when all have finished. The caller runs one range itself. fn must
// be safe to call concurrently on disjoint ranges. For must not be called
// from inside fn.
func For(n, grain int, fn func(lo, hi int)) {
	if n <= 0 {
		return
	}
	w := Workers()
	if grain < 1 {
		grain = 1
	}
	parts := min(w, (n+grain-1)/grain)
	if parts <= 1 {
		fn(0, n)
		return
	}
	step := (n + parts - 1) / parts
	var pending atomic.Int32
	for p := 1; p < parts; p++ {
		lo := p * step
		hi := min(n, lo+step)
		if lo >= hi {
			continue
		}
		pending.Add(1)
		jobs <- job{fn, lo, hi, &pending}
	}
	fn(0, min(n, step))
	for i := 0; pending.Load() != 0; i++ {
		if i%64 == 63 {
			runtime.Gosched()
		}
	}
}

// Parts is the number of parts Chunks splits n items into: one per worker,
// fewer when n/grain is smaller.
func Parts(n, grain int) int {
	if n <= 0 {
		return 0
	}
	if grain < 1 {
		grain = 1
	}
	return max(1, min(Workers(), (n+grain-1)/grain))
}

// Chunks splits [0,n) into Parts(n, grain) contiguous parts and calls
// fn(part, lo, hi) for each concurrently. Callers use part to index
// per-part scratch (partial sums that are reduced afterwards).
func Chunks(n, grain int, fn func(part, lo, hi int)) {
	parts := Parts(n, grain)
	if parts == 0 {
		return
	}
	step := (n + parts - 1) / parts
	For(parts, 1, func(plo, phi int) {
		for p := plo; p < phi; p++ {
			lo := p * step
			hi := min(n, lo+step)
			if lo < hi {
				fn(p, lo, hi)
			}
		}
	})
}
