// Package parallel splits index ranges across the machine's cores.
//
// Work is handed to a fixed set of long-lived workers, so a call costs a few
// channel operations rather than goroutine start-ups; that matters in the
// per-byte decode step, which makes hundreds of small calls.
package parallel

import (
	"os"
	"runtime"
	"strconv"
	"sync"
)

type job struct {
	fn     func(lo, hi int)
	lo, hi int
	wg     *sync.WaitGroup
}

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
		go func() {
			for j := range jobs {
				j.fn(j.lo, j.hi)
				j.wg.Done()
			}
		}()
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
// be safe to call concurrently on disjoint ranges.
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
	var wg sync.WaitGroup
	wg.Add(parts - 1)
	step := (n + parts - 1) / parts
	for p := 1; p < parts; p++ {
		lo := p * step
		hi := min(n, lo+step)
		if lo >= hi {
			wg.Done()
			continue
		}
		jobs <- job{fn, lo, hi, &wg}
	}
	fn(0, min(n, step))
	wg.Wait()
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
