package data

import (
	"fmt"
	"math/bits"
	"sort"
)

// mix64 is the SplitMix64 finaliser: a bijection of uint64 whose output
// bits each depend on every input bit.
func mix64(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}

const golden = 0x9e3779b97f4a7c15 // 2^64/φ, SplitMix64's increment

// windowHash is the counter-based generator behind Sampler: a 64-bit value
// that depends on (seed, step, micro, row) only.
func windowHash(seed uint64, step, micro, row int) uint64 {
	h := mix64(seed + golden)
	h = mix64(h ^ (uint64(step) + 0xc2b2ae3d27d4eb4f))
	h = mix64(h ^ (uint64(micro) + 0x165667b19e3779f9))
	return mix64(h ^ (uint64(row) + 0x27d4eb2f165667c5))
}

// Sampler draws training windows of T+1 bytes uniformly from the start
// positions whose whole window lies in training bytes. Window (step,
// micro, row) is a pure function of (seed, step, micro, row), so training
// resumed at any step draws the windows it would have drawn anyway, and a
// larger B keeps the first rows of a smaller one. A Sampler is immutable
// and safe for concurrent use.
type Sampler struct {
	corpus *Corpus
	b, t   int
	row0   int // first row of each batch (a shard's; see Shard)
	seed   uint64
	runs   []Range  // training ranges that hold at least one window
	cum    []uint64 // cum[i]: window starts in runs[:i]; len(runs)+1 entries
}

// Sampler returns a sampler of batches of B windows of T+1 bytes (inputs
// and their next-byte targets) from the training bytes.
func (s *Split) Sampler(B, T int, seed uint64) (*Sampler, error) {
	if B < 1 || T < 1 {
		return nil, fmt.Errorf("data: batch %d × context %d: both must be positive", B, T)
	}
	w := int64(T) + 1
	sp := &Sampler{corpus: s.corpus, b: B, t: T, seed: seed, cum: []uint64{0}}
	for _, r := range s.train {
		if r.Len >= w {
			sp.runs = append(sp.runs, r)
			sp.cum = append(sp.cum, sp.cum[len(sp.cum)-1]+uint64(r.Len-w+1))
		}
	}
	if len(sp.runs) == 0 {
		return nil, fmt.Errorf("data: corpus of %d bytes is too small for a window of T+1 = %d bytes: "+
			"its longest training run is %d bytes (blocks of %d bytes); use a shorter context, more data or a larger MinBlockSize",
			s.corpus.Size(), w, longest(s.train), s.blockSize)
	}
	return sp, nil
}

func longest(rs []Range) int64 {
	var n int64
	for _, r := range rs {
		n = max(n, r.Len)
	}
	return n
}

// B returns the windows per batch; T the context (a window is T+1 bytes).
func (sp *Sampler) B() int { return sp.b }

// T returns the context length; each window holds T+1 bytes.
func (sp *Sampler) T() int { return sp.t }

// Windows returns the number of distinct training windows.
func (sp *Sampler) Windows() uint64 { return sp.cum[len(sp.cum)-1] }

// Offset returns the corpus offset of window (step, micro, row). It panics
// on a negative argument.
func (sp *Sampler) Offset(step, micro, row int) int64 {
	if step < 0 || micro < 0 || row < 0 {
		panic(fmt.Sprintf("data: Sampler.Offset(%d, %d, %d): negative index", step, micro, row))
	}
	// Map the hash onto [0, total) by a 64×64→128 multiply; the bias is
	// below total/2^64.
	u, _ := bits.Mul64(windowHash(sp.seed, step, micro, row), sp.Windows())
	i := sort.Search(len(sp.runs), func(i int) bool { return sp.cum[i+1] > u })
	return sp.runs[i].Off + int64(u-sp.cum[i])
}

// Offsets fills dst (length B) with the offsets of the windows of (step,
// micro).
func (sp *Sampler) Offsets(dst []int64, step, micro int) {
	if len(dst) != sp.b {
		panic(fmt.Sprintf("data: Sampler.Offsets: len(dst) = %d, want B = %d", len(dst), sp.b))
	}
	for row := range dst {
		dst[row] = sp.Offset(step, micro, sp.row0+row)
	}
}

// Batch fills dst, of length B×(T+1), with the windows of (step, micro):
// row b is dst[b*(T+1):(b+1)*(T+1)], its first T bytes the inputs and its
// last T bytes the targets. It panics on a wrong length and returns read
// errors.
func (sp *Sampler) Batch(dst []byte, step, micro int) error {
	w := sp.t + 1
	if len(dst) != sp.b*w {
		panic(fmt.Sprintf("data: Sampler.Batch: len(dst) = %d, want B×(T+1) = %d×%d", len(dst), sp.b, w))
	}
	var offs [64]int64
	for lo := 0; lo < sp.b; lo += len(offs) {
		n := min(sp.b-lo, len(offs))
		for r := range n {
			offs[r] = sp.Offset(step, micro, sp.row0+lo+r)
		}
		if err := sp.corpus.ReadWindows(dst[lo*w:(lo+n)*w], offs[:n], w); err != nil {
			return err
		}
	}
	return nil
}

// ValidationWindows returns the offsets of validation windows of T+1
// bytes, in stream order. Within each validation range, windows start
// every T bytes from the range's start, so consecutive windows share one
// byte (the last target of one is the first input of the next) and no byte
// is a target twice; a range's tail shorter than a window is left out. If
// the windows hold more than maxBytes targets (T per window) and maxBytes
// > 0, ⌊maxBytes/T⌋ (at least 1) of them are kept, spread evenly over the
// list by index. The result depends only on the split and the arguments.
func (s *Split) ValidationWindows(T int, maxBytes int64) ([]int64, error) {
	if T < 1 {
		return nil, fmt.Errorf("data: context %d must be positive", T)
	}
	t := int64(T)
	counts := make([]int64, len(s.val))
	var total int64
	for i, r := range s.val {
		if r.Len > t {
			counts[i] = (r.Len - 1) / t
		}
		total += counts[i]
	}
	if total == 0 {
		return nil, fmt.Errorf("data: corpus of %d bytes is too small for a validation window of T+1 = %d bytes: "+
			"its longest validation run is %d bytes (blocks of %d bytes); use a shorter context, more data or a larger MinBlockSize",
			s.corpus.Size(), t+1, longest(s.val), s.blockSize)
	}
	n := total
	if maxBytes > 0 && total*t > maxBytes {
		n = max(maxBytes/t, 1)
	}
	out := make([]int64, 0, n)
	ri, before := 0, int64(0) // range of window k, windows in ranges before it
	for j := range n {
		hi, lo := bits.Mul64(uint64(j), uint64(total))
		k, _ := bits.Div64(hi, lo, uint64(n)) // ⌊j·total/n⌋
		for int64(k) >= before+counts[ri] {
			before += counts[ri]
			ri++
		}
		out = append(out, s.val[ri].Off+(int64(k)-before)*t)
	}
	return out, nil
}
