package data

import (
	"bytes"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// corpusOf returns a corpus of the given file sizes (random bytes).
func corpusOf(tb testing.TB, sizes ...int) *Corpus {
	tb.Helper()
	dir := tb.TempDir()
	for i, n := range sizes {
		writeFile(tb, filepath.Join(dir, fmt.Sprintf("%03d.bin", i)), randomBytes(n, uint64(i)))
	}
	return openT(tb, dir)
}

// checkSplit checks that train and validation ranges tile the corpus in
// order, alternate, and agree with IsValidation block by block.
func checkSplit(t *testing.T, s *Split) {
	t.Helper()
	type tagged struct {
		Range
		val bool
	}
	var all []tagged
	for _, r := range s.Train() {
		all = append(all, tagged{r, false})
	}
	for _, r := range s.Validation() {
		all = append(all, tagged{r, true})
	}
	slices.SortFunc(all, func(a, b tagged) int { return int(a.Off - b.Off) })
	var end int64
	for i, r := range all {
		if r.Off != end || r.Len <= 0 {
			t.Fatalf("range %d = %+v does not continue at %d", i, r, end)
		}
		if i > 0 && all[i-1].val == r.val {
			t.Fatalf("ranges %d and %d of one kind are not merged", i-1, i)
		}
		end += r.Len
	}
	if end != s.Corpus().Size() {
		t.Fatalf("ranges end at %d, corpus has %d bytes", end, s.Corpus().Size())
	}
	nb, nv := s.Blocks()
	bs := s.BlockSize()
	var count int64
	for i := range nb {
		v := s.IsValidation(i)
		if v {
			count++
		}
		// The range holding the block's first byte has the block's kind.
		j, _ := slices.BinarySearchFunc(all, i*bs+1, func(r tagged, off int64) int {
			if r.Off+r.Len < off {
				return -1
			}
			if r.Off >= off {
				return 1
			}
			return 0
		})
		if all[j].val != v {
			t.Fatalf("block %d: IsValidation %v but its range says %v", i, v, all[j].val)
		}
	}
	if count != nv || s.TrainBytes()+s.ValidationBytes() != s.Corpus().Size() {
		t.Fatalf("%d validation blocks, want %d", count, nv)
	}
}

func TestSplitRule(t *testing.T) {
	big := corpusOf(t, 3<<20, 1<<20+17, 5<<20)
	small := corpusOf(t, 1000, 2000, 30)
	tests := []struct {
		name       string
		c          *Corpus
		cfg        SplitConfig
		wantBS     int64
		wantNB     int64
		wantNV     int64
		wantValLen int64 // 0: not checked
	}{
		{"big default", big, SplitConfig{}, 294_913, 32, 1, 0}, // 9 MiB < 32 MiB: blocks shrink
		{"big 64K blocks 5%", big, SplitConfig{BlockSize: 64 << 10, ValFraction: 0.05}, 64 << 10, 145, 7, 7 * 64 << 10},
		{"big 64K blocks 1%", big, SplitConfig{BlockSize: 64 << 10}, 64 << 10, 145, 1, 64 << 10},
		{"big half", big, SplitConfig{BlockSize: 1 << 20, ValFraction: 0.5, Seed: 3}, 294_913, 32, 16, 0},
		{"small", small, SplitConfig{}, 95, 32, 1, 95},
		{"small min block", small, SplitConfig{MinBlockSize: 1025}, 1025, 3, 1, 0},
		{"small 99%", small, SplitConfig{ValFraction: 0.99}, 95, 32, 31, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := NewSplit(tt.c, tt.cfg)
			if err != nil {
				t.Fatal(err)
			}
			nb, nv := s.Blocks()
			if s.BlockSize() != tt.wantBS || nb != tt.wantNB || nv != tt.wantNV {
				t.Errorf("block size %d, blocks %d, validation %d; want %d, %d, %d",
					s.BlockSize(), nb, nv, tt.wantBS, tt.wantNB, tt.wantNV)
			}
			if tt.wantValLen != 0 && s.ValidationBytes() != tt.wantValLen {
				t.Errorf("validation bytes %d, want %d", s.ValidationBytes(), tt.wantValLen)
			}
			checkSplit(t, s)
			// Validation blocks are spread evenly: gaps differ by at most 1.
			var idx []int64
			for i := range nb {
				if s.IsValidation(i) {
					idx = append(idx, i)
				}
			}
			if len(idx) > 1 {
				lo, hi := nb, int64(0)
				for k := 1; k < len(idx); k++ {
					g := idx[k] - idx[k-1]
					lo, hi = min(lo, g), max(hi, g)
				}
				if hi-lo > 1 {
					t.Errorf("gaps between validation blocks range over [%d, %d]", lo, hi)
				}
			}
		})
	}
}

func TestSplitDeterministic(t *testing.T) {
	c := corpusOf(t, 200_000, 300_000)
	cfg := SplitConfig{BlockSize: 4096, ValFraction: 0.05, Seed: 42}
	a, err := NewSplit(c, cfg)
	if err != nil {
		t.Fatal(err)
	}
	// The same layout with other bytes and other file boundaries splits
	// the same way.
	c2 := corpusOf(t, 100_000, 400_000)
	b, err := NewSplit(c2, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(a.Validation(), b.Validation()) || !slices.Equal(a.Train(), b.Train()) {
		t.Errorf("split depends on more than the corpus size")
	}
	// Another seed moves the validation blocks.
	cfg.Seed = 43
	d, _ := NewSplit(c, cfg)
	if slices.Equal(a.Validation(), d.Validation()) {
		t.Errorf("seeds 42 and 43 give the same validation blocks")
	}
	// Corpus.Split is NewSplit with the default block size.
	e, _ := c.Split(0.01, 7)
	f, _ := NewSplit(c, SplitConfig{ValFraction: 0.01, Seed: 7, BlockSize: DefaultBlockSize})
	if !slices.Equal(e.Validation(), f.Validation()) {
		t.Errorf("Corpus.Split differs from NewSplit")
	}
}

func TestSplitErrors(t *testing.T) {
	one := corpusOf(t, 1)
	c := corpusOf(t, 1000)
	tests := []struct {
		name string
		c    *Corpus
		cfg  SplitConfig
		want string
	}{
		{"one byte", one, SplitConfig{}, "corpus of 1 bytes is too small"},
		{"min block too big", c, SplitConfig{MinBlockSize: 1000}, "too small to split"},
		{"fraction 1", c, SplitConfig{ValFraction: 1}, "not in (0, 1)"},
		{"negative fraction", c, SplitConfig{ValFraction: -0.1}, "not in (0, 1)"},
		{"negative block", c, SplitConfig{BlockSize: -5}, "negative block size"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := NewSplit(tt.c, tt.cfg)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("err = %v, want one containing %q", err, tt.want)
			}
		})
	}
}

func TestSamplerDeterminism(t *testing.T) {
	c := corpusOf(t, 300_000, 123_457)
	s, err := NewSplit(c, SplitConfig{BlockSize: 8192, ValFraction: 0.1})
	if err != nil {
		t.Fatal(err)
	}
	const B, T = 6, 1000
	a, err := s.Sampler(B, T, 11)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := s.Sampler(2*B, T, 11) // a larger batch keeps the first rows
	other, _ := s.Sampler(B, T, 12)
	bufA := make([]byte, B*(T+1))
	bufA2 := make([]byte, B*(T+1))
	bufB := make([]byte, 2*B*(T+1))
	same := 0
	for step := range 20 {
		for micro := range 3 {
			if err := a.Batch(bufA, step, micro); err != nil {
				t.Fatal(err)
			}
			if err := b.Batch(bufB, step, micro); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(bufA, bufB[:len(bufA)]) {
				t.Fatalf("step %d micro %d: B=%d and B=%d differ in the first rows", step, micro, B, 2*B)
			}
			// Resuming: a fresh sampler at the same step gives the same batch.
			fresh, _ := s.Sampler(B, T, 11)
			fresh.Batch(bufA2, step, micro)
			if !bytes.Equal(bufA, bufA2) {
				t.Fatalf("step %d micro %d: fresh sampler differs", step, micro)
			}
			offs := make([]int64, B)
			other.Offsets(offs, step, micro)
			for row, off := range offs {
				if off == a.Offset(step, micro, row) {
					same++
				}
				// Batch rows are the corpus bytes at Offset.
				want := make([]byte, T+1)
				c.ReadAt(want, a.Offset(step, micro, row))
				if !bytes.Equal(bufA[row*(T+1):(row+1)*(T+1)], want) {
					t.Fatalf("row %d is not the window at its offset", row)
				}
			}
		}
	}
	if same > 2 {
		t.Errorf("seeds 11 and 12 share %d of 360 windows", same)
	}
	// Distinct (step, micro, row) give distinct windows almost always.
	seen := map[int64]bool{}
	for step := range 100 {
		for row := range B {
			seen[a.Offset(step, 0, row)] = true
		}
	}
	if len(seen) < 590 {
		t.Errorf("600 draws hit only %d distinct windows of %d", len(seen), a.Windows())
	}
}

// TestSamplerWindows: windows never touch validation bytes, and every
// valid start is drawn about equally often.
func TestSamplerWindows(t *testing.T) {
	c := corpusOf(t, 700, 300)
	s, err := NewSplit(c, SplitConfig{BlockSize: 100, ValFraction: 0.2, Seed: 5})
	if err != nil {
		t.Fatal(err)
	}
	const T = 49
	sm, err := s.Sampler(1, T, 1)
	if err != nil {
		t.Fatal(err)
	}
	// Valid starts by brute force.
	inTrain := make([]bool, c.Size())
	for _, r := range s.Train() {
		for i := r.Off; i < r.Off+r.Len; i++ {
			inTrain[i] = true
		}
	}
	valid := map[int64]bool{}
	for off := int64(0); off+T+1 <= c.Size(); off++ {
		ok := true
		for i := off; i < off+T+1; i++ {
			ok = ok && inTrain[i]
		}
		if ok {
			valid[off] = true
		}
	}
	if uint64(len(valid)) != sm.Windows() {
		t.Fatalf("Windows() = %d, brute force finds %d", sm.Windows(), len(valid))
	}
	counts := map[int64]int{}
	const draws = 200_000
	for step := range draws {
		off := sm.Offset(step, 0, 0)
		if !valid[off] {
			t.Fatalf("step %d: window at %d touches validation bytes or the end", step, off)
		}
		counts[off]++
	}
	// Chi-square against uniform; df = len(valid)-1 ≈ 550, so the statistic
	// is about 550 ± 33. A sampler that favoured some runs would be far off.
	exp := float64(draws) / float64(len(valid))
	var chi2 float64
	for off := range valid {
		d := float64(counts[off]) - exp
		chi2 += d * d / exp
	}
	df := float64(len(valid) - 1)
	if chi2 > df+6*sqrt(2*df) {
		t.Errorf("chi-square %.0f for %v degrees of freedom: not uniform", chi2, df)
	}
}

func sqrt(x float64) float64 {
	r := x
	for range 50 {
		r = (r + x/r) / 2
	}
	return r
}

func TestSamplerErrors(t *testing.T) {
	c := corpusOf(t, 10_000)
	s, err := NewSplit(c, SplitConfig{})
	if err != nil {
		t.Fatal(err)
	}
	// Blocks of 313 bytes, one of them for validation.
	if _, err := s.Sampler(4, 9990, 1); err == nil || !strings.Contains(err.Error(), "corpus of 10000 bytes is too small for a window of T+1 = 9991 bytes") {
		t.Errorf("err = %v", err)
	}
	if _, err := s.ValidationWindows(1024, 0); err == nil || !strings.Contains(err.Error(), "too small for a validation window of T+1 = 1025 bytes") {
		t.Errorf("err = %v", err)
	}
	if _, err := s.Sampler(0, 10, 1); err == nil {
		t.Errorf("B = 0 accepted")
	}
	// MinBlockSize makes the same corpus usable for T = 1024.
	s2, err := NewSplit(c, SplitConfig{MinBlockSize: 1025})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s2.ValidationWindows(1024, 0); err != nil {
		t.Error(err)
	}
	if _, err := s2.Sampler(4, 1024, 1); err != nil {
		t.Error(err)
	}
}

func TestValidationWindows(t *testing.T) {
	c := corpusOf(t, 1<<20, 12345)
	s, err := NewSplit(c, SplitConfig{BlockSize: 10000, ValFraction: 0.1, Seed: 9})
	if err != nil {
		t.Fatal(err)
	}
	const T = 999
	all, err := s.ValidationWindows(T, 0)
	if err != nil {
		t.Fatal(err)
	}
	// Windows lie in validation ranges at stride T from each range start,
	// cover each range up to a tail shorter than a window, and no byte is a
	// target twice.
	var want []int64
	for _, r := range s.Validation() {
		for off := r.Off; off+T+1 <= r.Off+r.Len; off += T {
			want = append(want, off)
		}
	}
	if !slices.Equal(all, want) {
		t.Fatalf("windows %v..., want %v...", all[:min(5, len(all))], want[:min(5, len(want))])
	}
	// A budget keeps an evenly spread, sorted subset, the same every time.
	for _, budget := range []int64{1, T, 10 * T, 10*T + 5, int64(len(all)-1) * T} {
		got, err := s.ValidationWindows(T, budget)
		if err != nil {
			t.Fatal(err)
		}
		n := max(budget/T, 1)
		if int64(len(got)) != n {
			t.Errorf("budget %d: %d windows, want %d", budget, len(got), n)
		}
		if !slices.IsSorted(got) || len(slices.Compact(slices.Clone(got))) != len(got) {
			t.Errorf("budget %d: windows not sorted and distinct", budget)
		}
		for _, off := range got {
			if _, ok := slices.BinarySearch(all, off); !ok {
				t.Errorf("budget %d: window %d is not a validation window", budget, off)
			}
		}
		again, _ := s.ValidationWindows(T, budget)
		if !slices.Equal(got, again) {
			t.Errorf("budget %d: not deterministic", budget)
		}
	}
	got, _ := s.ValidationWindows(T, 10*T)
	// Spread: the first and last kept windows come from the first and last
	// tenth of the list.
	if got[0] != all[0] || got[len(got)-1] < all[len(all)*9/10] {
		t.Errorf("budgeted windows not spread: first %d last %d", got[0], got[len(got)-1])
	}
	buf := make([]byte, len(got)*(T+1))
	if err := c.ReadWindows(buf, got, T+1); err != nil {
		t.Fatal(err)
	}
}
