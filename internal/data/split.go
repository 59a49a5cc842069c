package data

import (
	"fmt"
	"math"
	"math/bits"
)

// Defaults of SplitConfig.
const (
	DefaultBlockSize   = 1 << 20 // bytes per split block
	DefaultValFraction = 0.01    // share of blocks for validation
	minBlocks          = 32      // blocks are shrunk until a corpus has this many
)

// SplitConfig sets how a corpus is cut into training and validation bytes.
// Zero fields take the defaults.
type SplitConfig struct {
	ValFraction  float64 // share of blocks for validation, in (0, 1); default 0.01
	BlockSize    int64   // bytes per block; default 1 MiB
	MinBlockSize int64   // lower bound when blocks are shrunk for a small corpus; default 1
	Seed         uint64  // picks which blocks, among equally spread choices
}

// Range is a span of the corpus stream: bytes [Off, Off+Len).
type Range struct {
	Off, Len int64
}

// Split assigns every byte of a corpus to training or validation. See the
// package documentation for the rule. A Split is immutable and safe for
// concurrent use.
type Split struct {
	corpus    *Corpus
	cfg       SplitConfig
	blockSize int64
	blocks    int64 // nb
	valBlocks int64 // nv
	phase     uint64
	train     []Range
	val       []Range
}

// Split cuts c into training and validation with the default block size;
// see NewSplit.
func (c *Corpus) Split(valFraction float64, seed uint64) (*Split, error) {
	return NewSplit(c, SplitConfig{ValFraction: valFraction, Seed: seed})
}

// NewSplit cuts c into blocks and assigns them to training or validation.
// It fails if the corpus cannot give both at least one block.
func NewSplit(c *Corpus, cfg SplitConfig) (*Split, error) {
	if cfg.ValFraction == 0 {
		cfg.ValFraction = DefaultValFraction
	}
	if cfg.BlockSize == 0 {
		cfg.BlockSize = DefaultBlockSize
	}
	if cfg.MinBlockSize == 0 {
		cfg.MinBlockSize = 1
	}
	f := cfg.ValFraction
	if !(f > 0 && f < 1) {
		return nil, fmt.Errorf("data: validation fraction %v is not in (0, 1)", f)
	}
	if cfg.BlockSize < 0 || cfg.MinBlockSize < 0 {
		return nil, fmt.Errorf("data: negative block size (%d, min %d)", cfg.BlockSize, cfg.MinBlockSize)
	}
	size := c.Size()
	bs := cfg.BlockSize
	if size < minBlocks*bs {
		bs = max((size+minBlocks-1)/minBlocks, 1)
	}
	bs = max(bs, cfg.MinBlockSize)
	nb := (size + bs - 1) / bs
	if nb < 2 {
		return nil, fmt.Errorf("data: corpus of %d bytes is too small to split into training and validation blocks of %d bytes", size, bs)
	}
	nv := int64(math.Round(f * float64(nb)))
	nv = min(max(nv, 1), nb-1)
	s := &Split{corpus: c, cfg: cfg, blockSize: bs, blocks: nb, valBlocks: nv,
		phase: mix64(cfg.Seed^0x5eed5b117) % uint64(nb)}
	// Merge runs of blocks of one kind into ranges.
	var cur Range
	curVal := s.IsValidation(0)
	for i := range nb {
		lo, hi := i*bs, min((i+1)*bs, size)
		v := s.IsValidation(i)
		if v != curVal {
			s.appendRange(cur, curVal)
			cur, curVal = Range{Off: lo}, v
		}
		cur.Len += hi - lo
	}
	s.appendRange(cur, curVal)
	return s, nil
}

func (s *Split) appendRange(r Range, val bool) {
	if val {
		s.val = append(s.val, r)
	} else {
		s.train = append(s.train, r)
	}
}

// IsValidation reports whether block i (bytes [i·BlockSize, (i+1)·BlockSize))
// is a validation block: exactly when ⌊((i+1)·nv + phase)/nb⌋ exceeds
// ⌊(i·nv + phase)/nb⌋, for nb blocks of which nv are validation.
func (s *Split) IsValidation(i int64) bool {
	if i < 0 || i >= s.blocks {
		panic(fmt.Sprintf("data: block %d out of range [0, %d)", i, s.blocks))
	}
	return s.floorDiv(i+1) != s.floorDiv(i)
}

// floorDiv returns ⌊(i·nv + phase)/nb⌋ without overflow.
func (s *Split) floorDiv(i int64) uint64 {
	hi, lo := bits.Mul64(uint64(i), uint64(s.valBlocks))
	lo, carry := bits.Add64(lo, s.phase, 0)
	q, _ := bits.Div64(hi+carry, lo, uint64(s.blocks))
	return q
}

// Corpus returns the split corpus.
func (s *Split) Corpus() *Corpus { return s.corpus }

// BlockSize returns the bytes per block actually used (the configured size,
// shrunk for a small corpus).
func (s *Split) BlockSize() int64 { return s.blockSize }

// Blocks returns the number of blocks and how many are validation blocks.
func (s *Split) Blocks() (total, validation int64) { return s.blocks, s.valBlocks }

// Train returns the training bytes as maximal ranges, in stream order.
func (s *Split) Train() []Range { return s.train }

// Validation returns the validation bytes as maximal ranges, in stream
// order. Each range can be scored as one continuous document.
func (s *Split) Validation() []Range { return s.val }

// TrainBytes returns the number of training bytes.
func (s *Split) TrainBytes() int64 { return sumLen(s.train) }

// ValidationBytes returns the number of validation bytes.
func (s *Split) ValidationBytes() int64 { return sumLen(s.val) }

func sumLen(rs []Range) int64 {
	var n int64
	for _, r := range rs {
		n += r.Len
	}
	return n
}
