package data

import (
	"fmt"
	"path/filepath"
	"testing"
)

// benchSampler measures Batch throughput in window bytes per second.
func benchSampler(b *testing.B, c *Corpus, B, T int) {
	s, err := c.Split(0.01, 0)
	if err != nil {
		b.Fatal(err)
	}
	sm, err := s.Sampler(B, T, 1)
	if err != nil {
		b.Fatal(err)
	}
	buf := make([]byte, B*(T+1))
	b.SetBytes(int64(len(buf)))
	b.ReportAllocs()
	step := 0
	for b.Loop() {
		if err := sm.Batch(buf, step, 0); err != nil {
			b.Fatal(err)
		}
		step++
	}
}

// BenchmarkSamplerGCIDE draws 8 × 8,193-byte windows from Debian's
// dict-gcide dictzip file (40 MB in 686 chunks), with a few chunks cached
// (mostly decompression) and with all of them.
func BenchmarkSamplerGCIDE(b *testing.B) {
	p := gcidePath()
	if p == "" {
		b.Skip("no gcide dictzip file (apt-get install dict-gcide)")
	}
	for _, chunks := range []int{16, 1024} {
		b.Run(fmt.Sprintf("chunks=%d", chunks), func(b *testing.B) {
			c, err := Open([]string{p}, WithChunkCache(chunks))
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			benchSampler(b, c, 8, 8192)
		})
	}
}

// BenchmarkSamplerPlain draws from a 64 MiB plain file (page cache).
func BenchmarkSamplerPlain(b *testing.B) {
	p := writeFile(b, filepath.Join(b.TempDir(), "x.bin"), randomBytes(64<<20, 1))
	benchSampler(b, openT(b, p), 8, 8192)
}
