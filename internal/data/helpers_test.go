package data

import (
	"bytes"
	"compress/flate"
	"compress/gzip"
	"encoding/binary"
	"hash/crc32"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
)

// makeDictzip returns data as a dictzip file with chunks of chunkLen
// bytes: each chunk is deflated by a fresh compressor (so it does not refer
// to earlier chunks) and ended with a sync flush, the last one with the
// final block, as dictzip(1) does with Z_FULL_FLUSH.
func makeDictzip(tb testing.TB, data []byte, chunkLen int) []byte {
	tb.Helper()
	var chunks [][]byte
	for lo := 0; lo < len(data) || (lo == 0 && len(data) == 0); lo += chunkLen {
		hi := min(lo+chunkLen, len(data))
		var buf bytes.Buffer
		w, err := flate.NewWriter(&buf, flate.BestCompression)
		if err != nil {
			tb.Fatal(err)
		}
		w.Write(data[lo:hi])
		if hi == len(data) {
			w.Close()
		} else {
			w.Flush()
		}
		if buf.Len() > 0xffff {
			tb.Fatalf("chunk of %d compressed bytes does not fit the RA table", buf.Len())
		}
		chunks = append(chunks, buf.Bytes())
		if hi == len(data) {
			break
		}
	}
	ra := make([]byte, 6+2*len(chunks))
	binary.LittleEndian.PutUint16(ra[0:], 1)
	binary.LittleEndian.PutUint16(ra[2:], uint16(chunkLen))
	binary.LittleEndian.PutUint16(ra[4:], uint16(len(chunks)))
	for i, c := range chunks {
		binary.LittleEndian.PutUint16(ra[6+2*i:], uint16(len(c)))
	}
	var out bytes.Buffer
	out.Write([]byte{0x1f, 0x8b, 8, gzipFlagExtra | gzipFlagName, 0, 0, 0, 0, 2, 3})
	xlen := 4 + len(ra)
	binary.Write(&out, binary.LittleEndian, uint16(xlen))
	out.WriteString("RA")
	binary.Write(&out, binary.LittleEndian, uint16(len(ra)))
	out.Write(ra)
	out.WriteString("test.txt\x00")
	for _, c := range chunks {
		out.Write(c)
	}
	binary.Write(&out, binary.LittleEndian, crc32.ChecksumIEEE(data))
	binary.Write(&out, binary.LittleEndian, uint32(len(data)))
	return out.Bytes()
}

func gzipBytes(tb testing.TB, data []byte) []byte {
	tb.Helper()
	var buf bytes.Buffer
	w := gzip.NewWriter(&buf)
	w.Write(data)
	if err := w.Close(); err != nil {
		tb.Fatal(err)
	}
	return buf.Bytes()
}

func writeFile(tb testing.TB, path string, data []byte) string {
	tb.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		tb.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o644); err != nil {
		tb.Fatal(err)
	}
	return path
}

// text returns n bytes of word-like text, different for each seed.
func text(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, 1))
	words := []string{"the", "byte", "model", "Mamba", "state", "space", "token-free",
		"selective", "scan", "naïve", "Ünïcödé", "日本語", "\n", "of", "a", "is"}
	var b []byte
	for len(b) < n {
		b = append(b, words[r.IntN(len(words))]...)
		b = append(b, ' ')
	}
	return b[:n]
}

// randomBytes returns n bytes of incompressible data.
func randomBytes(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, 2))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// openT opens specs with the cache in a test directory.
func openT(tb testing.TB, specs ...string) *Corpus {
	tb.Helper()
	c, err := Open(specs, WithCacheDir(tb.TempDir()))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { c.Close() })
	return c
}
