package cuda

import (
	"fmt"
	"io"
	"sort"
	"time"
)

// profiler attributes device time to operations: while it is on, every
// operation waits for the device when it has been issued, and the time
// since the previous operation finished is added to its name. The waits
// serialise host and device, so the totals are for finding where the time
// goes, not for throughput figures.
type profiler struct {
	mark  time.Time
	total map[string]*profEntry
}

type profEntry struct {
	calls int
	dur   time.Duration
}

// ProfileStart turns the per-operation profiler on (or restarts it),
// waiting for the work issued so far.
func (be *Backend) ProfileStart() {
	be.Sync()
	be.l.prof = &profiler{mark: time.Now(), total: map[string]*profEntry{}}
}

// ProfileStop turns the profiler off and writes its table, the operations
// by total time, to w.
func (be *Backend) ProfileStop(w io.Writer) {
	p := be.l.prof
	if p == nil {
		return
	}
	be.l.prof = nil
	type row struct {
		name string
		profEntry
	}
	var rows []row
	var sum time.Duration
	for n, e := range p.total {
		rows = append(rows, row{n, *e})
		sum += e.dur
	}
	sort.Slice(rows, func(i, j int) bool { return rows[i].dur > rows[j].dur })
	fmt.Fprintf(w, "%-44s %7s %10s %6s\n", "operation", "calls", "ms", "share")
	for _, r := range rows {
		fmt.Fprintf(w, "%-44s %7d %10.2f %5.1f%%\n", r.name, r.calls, r.dur.Seconds()*1e3, 100*r.dur.Seconds()/sum.Seconds())
	}
	fmt.Fprintf(w, "%-44s %7s %10.2f\n", "total", "", sum.Seconds()*1e3)
}

// record waits for the device and charges the time since the previous
// operation to op.
func (l *lib) record(op string) {
	p := l.prof
	if l.sync() != 0 {
		return
	}
	now := time.Now()
	e := p.total[op]
	if e == nil {
		e = &profEntry{}
		p.total[op] = e
	}
	e.calls++
	e.dur += now.Sub(p.mark)
	p.mark = now
}

// gemmName labels a GEMM for the profiler by its operand layout and shape.
func gemmName(transA, transB bool, m, n, k int) string {
	t := func(b bool) string {
		if b {
			return "T"
		}
		return "N"
	}
	return fmt.Sprintf("gemm %s%s %dx%dx%d", t(transA), t(transB), m, n, k)
}
