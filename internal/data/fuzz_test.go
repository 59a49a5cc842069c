package data

import (
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"io"
	"testing"
)

// FuzzDictzipHeader feeds arbitrary files to the dictzip reader: parsing
// must not panic, a parsed index must lie inside the file, and a file that
// opens must read back consistently.
//
//	go test -run=XXX -fuzz=FuzzDictzipHeader -fuzztime=60s ./internal/data
func FuzzDictzipHeader(f *testing.F) {
	good := makeDictzip(f, text(3000, 1), 500)
	f.Add(good)
	f.Add(makeDictzip(f, []byte("x"), 1))
	f.Add(makeDictzip(f, nil, 100))
	f.Add(good[:40])
	f.Add(good[:len(good)-1])
	f.Add(gzipBytes(f, []byte("plain gzip")))
	noName := bytes.Clone(good)
	noName[3] = gzipFlagExtra | gzipFlagComment | gzipFlagHCRC
	f.Add(noName)
	zeroChunk := bytes.Clone(good)
	binary.LittleEndian.PutUint16(zeroChunk[22:], 0)
	f.Add(zeroChunk)
	f.Add([]byte{0x1f, 0x8b, 8, 4, 0, 0, 0, 0, 0, 0, 10, 0, 'R', 'A', 6, 0, 1, 0, 0, 1, 0, 0})
	f.Add([]byte{0x1f, 0x8b, 8, 4, 0, 0, 0, 0, 0, 0, 3, 0, 'R', 'A', 0})
	f.Fuzz(func(t *testing.T, data []byte) {
		size := int64(len(data))
		x, err := parseDictzipHeader(data[:min(len(data), dictzipHeaderMax)], size)
		if err != nil {
			return
		}
		if x.chunkLen < 1 || x.chunkLen > 0xffff {
			t.Fatalf("chunk length %d", x.chunkLen)
		}
		n := x.chunks()
		if x.offsets[n] != size-8 {
			t.Fatalf("last offset %d, want the trailer at %d", x.offsets[n], size-8)
		}
		for i := range n {
			if x.offsets[i] < 12 || x.offsets[i] >= x.offsets[i+1] {
				t.Fatalf("chunk %d spans [%d, %d)", i, x.offsets[i], x.offsets[i+1])
			}
		}
		d, err := openDictzip("fuzz.dz", bytes.NewReader(data), size, newChunkCache(2), 0)
		if err != nil {
			return
		}
		if d.size < 0 || d.size > int64(n)*int64(x.chunkLen) {
			t.Fatalf("size %d for %d chunks of %d", d.size, n, x.chunkLen)
		}
		if d.size > 1<<20 {
			return // claimed by a table of many chunks; reading it is slow, not interesting
		}
		all := make([]byte, d.size)
		if _, err := d.ReadAt(all, 0); err != nil {
			return // a corrupt middle chunk
		}
		// Piecewise reads agree with the whole.
		for off := int64(0); off < d.size; off += 777 {
			p := make([]byte, min(1000, d.size-off))
			if _, err := d.ReadAt(p, off); err != nil {
				t.Fatalf("ReadAt(%d) after a full read: %v", off, err)
			}
			if !bytes.Equal(p, all[off:off+int64(len(p))]) {
				t.Fatalf("ReadAt(%d) differs from the full read", off)
			}
		}
		// A file that verifies is what gunzip reads.
		if d.verify() == nil {
			zr, err := gzip.NewReader(bytes.NewReader(data))
			if err != nil {
				return
			}
			zr.Multistream(false)
			seq, err := io.ReadAll(zr)
			if err == nil && !bytes.Equal(seq, all) {
				t.Fatalf("random access (%d bytes) differs from gunzip (%d bytes)", len(all), len(seq))
			}
		}
	})
}
