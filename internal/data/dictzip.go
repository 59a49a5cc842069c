package data

import (
	"bytes"
	"compress/flate"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"sync"
)

// A dictzip file (dictzip(1), as shipped by Debian's dict-* packages) is a
// single gzip member whose deflate stream was flushed with a full flush
// every chunkLen uncompressed bytes, so each chunk inflates on its own. The
// gzip header carries FEXTRA with a subfield SI1='R', SI2='A':
//
//	VER    uint16  (1)
//	CHLEN  uint16  uncompressed bytes per chunk (the last may be shorter)
//	CHCNT  uint16  number of chunks
//	sizes  CHCNT × uint16  compressed bytes of each chunk
//
// all little-endian. The compressed chunks follow the header back to back;
// the gzip trailer (CRC32, ISIZE) closes the file.

const (
	gzipFlagText    = 1 << 0
	gzipFlagHCRC    = 1 << 1
	gzipFlagExtra   = 1 << 2
	gzipFlagName    = 1 << 3
	gzipFlagComment = 1 << 4

	// dictzipHeaderMax bounds the bytes read to parse a header: the fixed
	// part, a full 64 KiB extra field and room for a file name and comment.
	dictzipHeaderMax = 10 + 2 + 65535 + 64<<10
)

// errNoRA is returned by parseDictzipHeader for a well-formed gzip header
// without an RA subfield: such a .dz file is plain gzip.
var errNoRA = errors.New("gzip header has no dictzip RA subfield")

// dzIndex is a parsed dictzip header.
type dzIndex struct {
	chunkLen int     // uncompressed bytes per chunk
	offsets  []int64 // file offset of chunk i's compressed bytes; len = chunks+1, the last = trailer
}

func (x *dzIndex) chunks() int { return len(x.offsets) - 1 }

// parseDictzipHeader parses the gzip header at the start of a file of
// fileSize bytes; hdr holds the file's first bytes (at most
// dictzipHeaderMax). It checks that the chunk table fits in the file before
// the 8-byte gzip trailer.
func parseDictzipHeader(hdr []byte, fileSize int64) (dzIndex, error) {
	var x dzIndex
	if len(hdr) < 10 || hdr[0] != 0x1f || hdr[1] != 0x8b {
		return x, errors.New("not a gzip file (bad magic)")
	}
	if hdr[2] != 8 {
		return x, fmt.Errorf("gzip compression method %d is not deflate", hdr[2])
	}
	flg := hdr[3]
	if flg&0xe0 != 0 {
		return x, fmt.Errorf("gzip header has reserved flag bits set (%#x)", flg)
	}
	if flg&gzipFlagExtra == 0 {
		return x, errNoRA
	}
	if len(hdr) < 12 {
		return x, errors.New("gzip header truncated in the extra field length")
	}
	xlen := int(binary.LittleEndian.Uint16(hdr[10:12]))
	pos := 12 + xlen
	if pos > len(hdr) {
		return x, fmt.Errorf("gzip extra field of %d bytes runs past the end of the file", xlen)
	}
	var ra []byte
	found := false
	for extra := hdr[12:pos]; len(extra) > 0; {
		if len(extra) < 4 {
			return x, errors.New("gzip extra field ends inside a subfield header")
		}
		n := int(binary.LittleEndian.Uint16(extra[2:4]))
		if n > len(extra)-4 {
			return x, fmt.Errorf("gzip extra subfield %q of %d bytes overruns the extra field", extra[:2], n)
		}
		if extra[0] == 'R' && extra[1] == 'A' {
			if found {
				return x, errors.New("gzip header has two RA subfields")
			}
			ra, found = extra[4:4+n], true
		}
		extra = extra[4+n:]
	}
	if !found {
		return x, errNoRA
	}
	for _, f := range []byte{gzipFlagName, gzipFlagComment} {
		if flg&f == 0 {
			continue
		}
		i := bytes.IndexByte(hdr[pos:], 0)
		if i < 0 {
			return x, errors.New("gzip header name or comment is not terminated")
		}
		pos += i + 1
	}
	if flg&gzipFlagHCRC != 0 {
		pos += 2
		if pos > len(hdr) {
			return x, errors.New("gzip header truncated in the header CRC")
		}
	}
	if len(ra) < 6 {
		return x, fmt.Errorf("dictzip RA subfield of %d bytes is too short", len(ra))
	}
	if v := binary.LittleEndian.Uint16(ra[0:2]); v != 1 {
		return x, fmt.Errorf("dictzip RA version %d is not supported (want 1)", v)
	}
	x.chunkLen = int(binary.LittleEndian.Uint16(ra[2:4]))
	count := int(binary.LittleEndian.Uint16(ra[4:6]))
	if x.chunkLen == 0 {
		return x, errors.New("dictzip chunk length is 0")
	}
	if len(ra) < 6+2*count {
		return x, fmt.Errorf("dictzip RA subfield of %d bytes is too short for %d chunks", len(ra), count)
	}
	x.offsets = make([]int64, count+1)
	off := int64(pos)
	for i := range count {
		x.offsets[i] = off
		n := binary.LittleEndian.Uint16(ra[6+2*i:])
		if n == 0 {
			return x, fmt.Errorf("dictzip chunk %d has a compressed size of 0", i)
		}
		off += int64(n)
	}
	if off+8 > fileSize {
		return x, fmt.Errorf("dictzip chunks end at byte %d, past the gzip trailer of a %d-byte file", off, fileSize)
	}
	// dictzip(1) ends its last chunk with a flush and writes the final
	// (empty) deflate block after it, outside the table: the last chunk
	// runs to the trailer.
	x.offsets[count] = fileSize - 8
	return x, nil
}

// dictzipFile gives random access to the uncompressed bytes of a dictzip
// file through its chunk index. ReadAt is safe for concurrent use.
type dictzipFile struct {
	name  string      // for error messages
	src   io.ReaderAt // the compressed file
	idx   dzIndex
	size  int64 // uncompressed size
	crc   uint32
	cache *chunkCache
	id    int // key of this file in cache
}

// openDictzip reads the header of the dictzip file src (fileSize bytes)
// and checks its structure: the chunk table, the last chunk and the
// trailer's ISIZE. It returns errNoRA for a gzip file without an index.
func openDictzip(name string, src io.ReaderAt, fileSize int64, cache *chunkCache, id int) (*dictzipFile, error) {
	hdr := make([]byte, min(fileSize, dictzipHeaderMax))
	if _, err := src.ReadAt(hdr, 0); err != nil && err != io.EOF {
		return nil, err
	}
	idx, err := parseDictzipHeader(hdr, fileSize)
	if err == errNoRA {
		return nil, err
	} else if err != nil {
		return nil, fmt.Errorf("corrupt dictzip: %w", err)
	}
	var trailer [8]byte
	if _, err := src.ReadAt(trailer[:], fileSize-8); err != nil {
		return nil, fmt.Errorf("read gzip trailer: %w", err)
	}
	d := &dictzipFile{name: name, src: src, idx: idx, cache: cache, id: id,
		crc: binary.LittleEndian.Uint32(trailer[0:4])}
	isize := binary.LittleEndian.Uint32(trailer[4:8])
	if n := idx.chunks(); n > 0 {
		last, err := d.inflate(n - 1)
		if err != nil {
			return nil, err
		}
		d.size = int64(n-1)*int64(idx.chunkLen) + int64(len(last))
	}
	if uint32(d.size) != isize {
		return nil, fmt.Errorf("corrupt dictzip: index gives %d bytes but the gzip trailer says %d (mod 2^32)", d.size, isize)
	}
	return d, nil
}

// verify inflates every chunk in order and checks the gzip CRC-32.
func (d *dictzipFile) verify() error {
	h := crc32.NewIEEE()
	for i := range d.idx.chunks() {
		b, err := d.inflate(i)
		if err != nil {
			return err
		}
		h.Write(b)
	}
	if got := h.Sum32(); got != d.crc {
		return fmt.Errorf("corrupt dictzip: checksum mismatch: data %08x, trailer %08x", got, d.crc)
	}
	return nil
}

var flatePool sync.Pool // of io.ReadCloser that are also flate.Resetter

// inflate decompresses chunk i without the cache. Every chunk but the last
// holds exactly chunkLen bytes; the last at most that and ends the stream.
func (d *dictzipFile) inflate(i int) ([]byte, error) {
	lo, hi := d.idx.offsets[i], d.idx.offsets[i+1]
	comp := make([]byte, hi-lo)
	if _, err := d.src.ReadAt(comp, lo); err != nil {
		return nil, fmt.Errorf("read dictzip chunk %d: %w", i, err)
	}
	br := bytes.NewReader(comp)
	var fr io.ReadCloser
	if v := flatePool.Get(); v != nil {
		fr = v.(io.ReadCloser)
		fr.(flate.Resetter).Reset(br, nil)
	} else {
		fr = flate.NewReader(br)
	}
	defer flatePool.Put(fr)
	out := make([]byte, d.idx.chunkLen)
	last := i == d.idx.chunks()-1
	if !last {
		if _, err := io.ReadFull(fr, out); err != nil {
			return nil, fmt.Errorf("corrupt dictzip chunk %d: %w", i, err)
		}
		return out, nil
	}
	n := 0
	for {
		if n == len(out) {
			// The stream must end here; one more byte means a bad index.
			var one [1]byte
			if m, err := fr.Read(one[:]); m > 0 {
				return nil, fmt.Errorf("corrupt dictzip: last chunk %d holds more than %d bytes", i, d.idx.chunkLen)
			} else if err == io.EOF {
				return out, nil
			} else if err != nil {
				return nil, fmt.Errorf("corrupt dictzip chunk %d: %w", i, err)
			}
			continue
		}
		m, err := fr.Read(out[n:])
		n += m
		if err == io.EOF {
			if n == 0 {
				return nil, fmt.Errorf("corrupt dictzip: last chunk %d is empty", i)
			}
			return out[:n], nil
		}
		if err != nil {
			return nil, fmt.Errorf("corrupt dictzip chunk %d: %w", i, err)
		}
	}
}

// chunk returns chunk i, from the cache when it is there. The result must
// not be modified.
func (d *dictzipFile) chunk(i int) ([]byte, error) {
	if b := d.cache.get(d.id, i); b != nil {
		return b, nil
	}
	b, err := d.inflate(i)
	if err != nil {
		return nil, err
	}
	d.cache.put(d.id, i, b)
	return b, nil
}

// ReadAt implements io.ReaderAt over the uncompressed bytes.
func (d *dictzipFile) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, errors.New("negative offset")
	}
	n := 0
	for n < len(p) {
		if off >= d.size {
			return n, io.EOF
		}
		ci := int(off / int64(d.idx.chunkLen))
		b, err := d.chunk(ci)
		if err != nil {
			return n, err
		}
		m := copy(p[n:], b[off-int64(ci)*int64(d.idx.chunkLen):])
		n += m
		off += int64(m)
	}
	return n, nil
}

// chunkCache keeps the most recently used decompressed dictzip chunks of
// all files of a corpus. It is safe for concurrent use.
type chunkCache struct {
	mu      sync.Mutex
	tick    uint64
	entries []chunkEntry
}

type chunkEntry struct {
	file, chunk int
	used        uint64
	data        []byte
}

func newChunkCache(n int) *chunkCache {
	return &chunkCache{entries: make([]chunkEntry, 0, n)}
}

func (c *chunkCache) get(file, chunk int) []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i := range c.entries {
		if e := &c.entries[i]; e.file == file && e.chunk == chunk {
			c.tick++
			e.used = c.tick
			return e.data
		}
	}
	return nil
}

func (c *chunkCache) put(file, chunk int, data []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.tick++
	e := chunkEntry{file: file, chunk: chunk, used: c.tick, data: data}
	if len(c.entries) < cap(c.entries) {
		c.entries = append(c.entries, e)
		return
	}
	lru := 0
	for i := range c.entries {
		if c.entries[i].used < c.entries[lru].used {
			lru = i
		}
	}
	c.entries[lru] = e
}
