package data

import (
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

func TestOpenSpecs(t *testing.T) {
	dir := t.TempDir()
	w := func(rel, s string) string { return writeFile(t, filepath.Join(dir, rel), []byte(s)) }
	w("d/b.txt", "B")
	w("d/a.txt", "A")
	w("d/sub/c.txt", "C")
	w("d/.git/objects/x", "GIT")
	w("d/.hidden", "H") // a dot file (not a directory) is taken
	w("g/1.log", "1")
	w("g/2.log", "2")
	w("g/3.txt", "3")
	w("g/gz.log.gz", "") // replaced below
	writeFile(t, filepath.Join(dir, "g/gz.log.gz"), gzipBytes(t, []byte("Z")))
	writeFile(t, filepath.Join(dir, "e/x.dz"), makeDictzip(t, []byte("dictzip!"), 3))
	os.MkdirAll(filepath.Join(dir, "emptydir/.git"), 0o755)
	writeFile(t, filepath.Join(dir, "emptydir/.git/HEAD"), []byte("ref"))
	if err := os.Symlink(filepath.Join(dir, "d/a.txt"), filepath.Join(dir, "d/sub/link.txt")); err != nil {
		t.Fatal(err)
	}
	j := func(p string) string { return filepath.Join(dir, p) }

	tests := []struct {
		name  string
		specs []string
		want  string // concatenation
		files int
	}{
		{"file", []string{j("d/a.txt")}, "A", 1},
		{"dir sorted, dot dirs skipped, links not followed", []string{j("d")}, "HABC", 4},
		{"glob", []string{j("g/*.log")}, "12", 2},
		{"glob with gz", []string{j("g/*.log*")}, "12Z", 3},
		{"specs in order", []string{j("g/3.txt"), j("d/a.txt")}, "3A", 2},
		{"duplicates kept once", []string{j("d/a.txt"), j("d"), j("d/a.txt")}, "AHBC", 4},
		{"dictzip", []string{j("e")}, "dictzip!", 1},
		{"link named directly", []string{j("d/sub/link.txt")}, "A", 1},
		{"glob of dirs", []string{j("[dg]")}, "HABC123Z", 8},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := openT(t, tt.specs...)
			if got := len(c.Files()); got != tt.files {
				t.Errorf("files = %d, want %d: %+v", got, tt.files, c.Files())
			}
			got := make([]byte, c.Size())
			if _, err := c.ReadAt(got, 0); err != nil {
				t.Fatal(err)
			}
			if string(got) != tt.want {
				t.Errorf("stream = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestOpenErrors(t *testing.T) {
	dir := t.TempDir()
	j := func(p string) string { return filepath.Join(dir, p) }
	writeFile(t, j("ok.txt"), []byte("fine"))
	writeFile(t, j("empty.txt"), nil)
	os.MkdirAll(j("emptydir/.git"), 0o755)
	writeFile(t, j("emptydir/.git/HEAD"), []byte("x"))
	good := gzipBytes(t, text(5000, 1))
	writeFile(t, j("notgzip.gz"), []byte("this is not gzip at all"))
	writeFile(t, j("truncated.gz"), good[:len(good)/2])
	badcrc := bytes.Clone(good)
	badcrc[len(badcrc)-6] ^= 0xff
	writeFile(t, j("badcrc.gz"), badcrc)
	badflate := bytes.Clone(good)
	for i := 20; i < 40; i++ {
		badflate[i] = 0xff
	}
	writeFile(t, j("badflate.gz"), badflate)
	dz := makeDictzip(t, text(5000, 2), 512)
	writeFile(t, j("notgzip.dz"), []byte("not a dictzip"))
	writeFile(t, j("truncated.dz"), dz[:len(dz)/2])
	badVer := bytes.Clone(dz)
	badVer[16] = 9 // RA version (after 10 header + 2 xlen + 4 subfield header)
	writeFile(t, j("badver.dz"), badVer)
	badSize := bytes.Clone(dz)
	binary.LittleEndian.PutUint32(badSize[len(badSize)-4:], 4999)
	writeFile(t, j("badisize.dz"), badSize)
	badLast := bytes.Clone(dz)
	badLast[len(badLast)-10] ^= 0x55
	writeFile(t, j("badlast.dz"), badLast)

	tests := []struct {
		name  string
		specs []string
		want  []string // substrings of the error
	}{
		{"no specs", nil, []string{"no corpus"}},
		{"missing file", []string{j("nope.txt")}, []string{"nope.txt", "no such file"}},
		{"glob matches nothing", []string{j("*.none")}, []string{"*.none", "matches no files"}},
		{"bad pattern", []string{j("a[")}, []string{"a[", "bad pattern"}},
		{"dir without files", []string{j("emptydir")}, []string{"emptydir", "matches no files"}},
		{"empty corpus", []string{j("empty.txt")}, []string{"empty", "0 bytes"}},
		{"not gzip", []string{j("ok.txt"), j("notgzip.gz")}, []string{"notgzip.gz", "corrupt gzip"}},
		{"truncated gzip", []string{j("truncated.gz")}, []string{"truncated.gz", "corrupt gzip"}},
		{"gzip checksum", []string{j("badcrc.gz")}, []string{"badcrc.gz", "corrupt gzip"}},
		{"gzip flate data", []string{j("badflate.gz")}, []string{"badflate.gz", "corrupt gzip"}},
		{"not dictzip", []string{j("notgzip.dz")}, []string{"notgzip.dz", "corrupt dictzip", "magic"}},
		{"truncated dictzip", []string{j("truncated.dz")}, []string{"truncated.dz", "corrupt dictzip", "trailer"}},
		{"dictzip version", []string{j("badver.dz")}, []string{"badver.dz", "version 9"}},
		{"dictzip isize", []string{j("badisize.dz")}, []string{"badisize.dz", "trailer says 4999"}},
		{"dictzip last chunk", []string{j("badlast.dz")}, []string{"badlast.dz", "chunk"}},
	}
	if os.Getuid() != 0 { // root reads anything
		writeFile(t, j("secret.txt"), []byte("x"))
		os.Chmod(j("secret.txt"), 0)
		tests = append(tests, struct {
			name  string
			specs []string
			want  []string
		}{"unreadable", []string{j("secret.txt")}, []string{"secret.txt", "permission denied"}})
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Open(tt.specs, WithCacheDir(t.TempDir()))
			if err == nil {
				c.Close()
				t.Fatalf("Open(%q) succeeded, want an error", tt.specs)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
		})
	}
}

// TestDictzipVerify: a corrupt middle chunk passes the cheap checks, is
// caught by WithVerify, and is reported by ReadAt otherwise.
func TestDictzipVerify(t *testing.T) {
	dir := t.TempDir()
	data := randomBytes(4000, 3)
	dz := makeDictzip(t, data, 1000)
	x, err := parseDictzipHeader(dz, int64(len(dz)))
	if err != nil {
		t.Fatal(err)
	}
	off := x.offsets[1] + 100 // inside chunk 1, a stored block of random bytes
	dz[off] ^= 1
	p := writeFile(t, filepath.Join(dir, "mid.dz"), dz)
	if _, err := Open([]string{p}, WithVerify(true)); err == nil || !strings.Contains(err.Error(), "checksum") {
		t.Fatalf("Open with verify: err = %v, want a checksum error", err)
	}
	c, err := Open([]string{p})
	if err != nil {
		t.Fatalf("Open without verify: %v", err)
	}
	defer c.Close()
	// A stored block's flipped bit is not detectable per chunk: it reads
	// back as one changed byte.
	buf := make([]byte, 1000)
	if _, err := c.ReadAt(buf, 1000); err != nil {
		t.Fatal(err)
	}
	diff := 0
	for i := range buf {
		if buf[i] != data[1000+i] {
			diff++
		}
	}
	if diff != 1 {
		t.Errorf("%d bytes of chunk 1 differ, want 1", diff)
	}
}

func TestReadAt(t *testing.T) {
	dir := t.TempDir()
	a := text(10000, 1)
	b := randomBytes(3000, 2)
	cdata := text(70000, 3)
	d := text(123456, 4)
	writeFile(t, filepath.Join(dir, "1.txt"), a)
	writeFile(t, filepath.Join(dir, "2.bin"), b)
	writeFile(t, filepath.Join(dir, "3.txt.gz"), gzipBytes(t, cdata))
	writeFile(t, filepath.Join(dir, "4.dz"), makeDictzip(t, d, 4096))
	writeFile(t, filepath.Join(dir, "5.empty"), nil)
	writeFile(t, filepath.Join(dir, "6.txt"), []byte("tail"))
	want := bytes.Join([][]byte{a, b, cdata, d, []byte("tail")}, nil)
	c, err := Open([]string{dir}, WithCacheDir(t.TempDir()), WithChunkCache(2), WithOpenFiles(2))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if c.Size() != int64(len(want)) {
		t.Fatalf("Size = %d, want %d", c.Size(), len(want))
	}
	comps := []string{Plain, Plain, Gzip, Dictzip, Plain, Plain}
	for i, f := range c.Files() {
		if f.Compression != comps[i] {
			t.Errorf("file %d %s: compression %s, want %s", i, f.Path, f.Compression, comps[i])
		}
	}
	if f := c.Files()[3]; f.Offset != int64(len(a)+len(b)+len(cdata)) || f.Size != int64(len(d)) {
		t.Errorf("file 3 = %+v", f)
	}
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(g), 7))
			for range 300 {
				n := r.IntN(20000)
				off := r.Int64N(int64(len(want) - n + 1))
				got := make([]byte, n)
				if _, err := c.ReadAt(got, off); err != nil {
					t.Error(err)
					return
				}
				if !bytes.Equal(got, want[off:off+int64(n)]) {
					t.Errorf("ReadAt(%d bytes at %d) differs", n, off)
					return
				}
			}
		}()
	}
	wg.Wait()
	// Reads at the end follow io.ReaderAt.
	buf := make([]byte, 10)
	if n, err := c.ReadAt(buf, c.Size()-4); n != 4 || err != io.EOF || string(buf[:4]) != "tail" {
		t.Errorf("read past the end: n=%d err=%v %q", n, err, buf[:n])
	}
	if n, err := c.ReadAt(buf, c.Size()); n != 0 || err != io.EOF {
		t.Errorf("read at the end: n=%d err=%v", n, err)
	}
	if _, err := c.ReadAt(buf, -1); err == nil {
		t.Errorf("negative offset accepted")
	}
	// Whole files as streams.
	f := c.Files()[2]
	all, err := io.ReadAll(io.NewSectionReader(c, f.Offset, f.Size))
	if err != nil || !bytes.Equal(all, cdata) {
		t.Errorf("section of file 2: err=%v equal=%v", err, bytes.Equal(all, cdata))
	}
	c.Close()
	if _, err := c.ReadAt(buf, 0); err == nil {
		t.Errorf("ReadAt after Close succeeded")
	}
}

func TestGzipCache(t *testing.T) {
	dir, cache := t.TempDir(), t.TempDir()
	data := text(50000, 5)
	p := writeFile(t, filepath.Join(dir, "x.gz"), gzipBytes(t, data))
	c1, err := Open([]string{p}, WithCacheDir(cache))
	if err != nil {
		t.Fatal(err)
	}
	c1.Close()
	ents, _ := os.ReadDir(cache)
	if len(ents) != 1 || !strings.HasPrefix(ents[0].Name(), "mambabyte-gunzip-") || strings.Contains(ents[0].Name(), ".tmp") {
		t.Fatalf("cache holds %v, want one finished file", ents)
	}
	cp := filepath.Join(cache, ents[0].Name())
	st1, _ := os.Stat(cp)
	c2, err := Open([]string{p}, WithCacheDir(cache))
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	st2, _ := os.Stat(cp)
	if !st1.ModTime().Equal(st2.ModTime()) {
		t.Errorf("cache file rewritten on second open")
	}
	if c2.Files()[0].CachePath != cp || c2.Size() != int64(len(data)) {
		t.Errorf("file = %+v", c2.Files()[0])
	}
	// A changed source (new size) gets a new cache entry.
	writeFile(t, p, gzipBytes(t, data[:100]))
	c3, err := Open([]string{p}, WithCacheDir(cache))
	if err != nil {
		t.Fatal(err)
	}
	defer c3.Close()
	if c3.Size() != 100 {
		t.Errorf("size after change = %d, want 100", c3.Size())
	}
	// Multi-member gzip (cat a.gz b.gz) reads as the concatenation.
	mm := append(gzipBytes(t, []byte("first ")), gzipBytes(t, []byte("second"))...)
	q := writeFile(t, filepath.Join(dir, "mm.gz"), mm)
	c4 := openT(t, q)
	got, _ := io.ReadAll(io.NewSectionReader(c4, 0, c4.Size()))
	if string(got) != "first second" {
		t.Errorf("multi-member gzip = %q", got)
	}
}

// A .dz file without an RA index is plain gzip.
func TestDictzipWithoutIndex(t *testing.T) {
	var buf bytes.Buffer
	w := gzip.NewWriter(&buf)
	w.Extra = []byte("XY\x02\x00hi") // another subfield only
	w.Write([]byte("no index here"))
	w.Close()
	p := writeFile(t, filepath.Join(t.TempDir(), "plain.dz"), buf.Bytes())
	c := openT(t, p)
	if f := c.Files()[0]; f.Compression != Gzip || f.Size != 13 {
		t.Errorf("file = %+v, want gzip of 13 bytes", f)
	}
}

func TestDictzipRandomAccess(t *testing.T) {
	for _, tt := range []struct {
		name     string
		data     []byte
		chunkLen int
	}{
		{"text", text(100000, 9), 1000},
		{"random", randomBytes(50000, 9), 4096},
		{"one chunk", []byte("short"), 58315},
		{"exact chunks", text(4000, 3), 1000},
		{"one byte chunks", []byte("abcdefg"), 1},
	} {
		t.Run(tt.name, func(t *testing.T) {
			dz := makeDictzip(t, tt.data, tt.chunkLen)
			// The file is also plain gzip to a sequential reader.
			zr, err := gzip.NewReader(bytes.NewReader(dz))
			if err != nil {
				t.Fatal(err)
			}
			seq, err := io.ReadAll(zr)
			if err != nil || !bytes.Equal(seq, tt.data) {
				t.Fatalf("gunzip of the test file: err=%v equal=%v", err, bytes.Equal(seq, tt.data))
			}
			d, err := openDictzip("t.dz", bytes.NewReader(dz), int64(len(dz)), newChunkCache(3), 0)
			if err != nil {
				t.Fatal(err)
			}
			if err := d.verify(); err != nil {
				t.Fatal(err)
			}
			if d.size != int64(len(tt.data)) {
				t.Fatalf("size %d, want %d", d.size, len(tt.data))
			}
			r := rand.New(rand.NewPCG(2, 2))
			for range 200 {
				n := r.IntN(3*tt.chunkLen + 1)
				n = min(n, len(tt.data))
				off := r.Int64N(int64(len(tt.data)-n) + 1)
				got := make([]byte, n)
				if _, err := d.ReadAt(got, off); err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(got, tt.data[off:off+int64(n)]) {
					t.Fatalf("ReadAt(%d, %d) differs", n, off)
				}
			}
		})
	}
}

// TestGCIDE reads Debian's dict-gcide (apt-get install dict-gcide) at
// random and compares with a sequential gunzip of the same file.
func TestGCIDE(t *testing.T) {
	p := gcidePath()
	if p == "" {
		t.Skip("no gcide dictzip file (apt-get install dict-gcide)")
	}
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	want, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	c := openT(t, p)
	if fi := c.Files()[0]; fi.Compression != Dictzip || fi.Size != int64(len(want)) {
		t.Fatalf("file = %+v, want dictzip of %d bytes", fi, len(want))
	}
	r := rand.New(rand.NewPCG(3, 3))
	reads := 300
	if testing.Short() {
		reads = 30
	}
	for range reads {
		n := r.IntN(100000)
		off := r.Int64N(int64(len(want)-n) + 1)
		got := make([]byte, n)
		if _, err := c.ReadAt(got, off); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want[off:off+int64(n)]) {
			t.Fatalf("ReadAt(%d bytes at %d) differs from gunzip", n, off)
		}
	}
}

func gcidePath() string {
	for _, p := range []string{"/usr/share/dictd/gcide.dict.dz", "/usr/share/dictd/gcide.dz"} {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	return ""
}

// TestGoSourceTree opens a directory of Go's own source (DESIGN.md §8)
// with few descriptors and checks the stream against the files.
func TestGoSourceTree(t *testing.T) {
	out, err := exec.Command("go", "env", "GOROOT").Output()
	root := filepath.Join(strings.TrimSpace(string(out)), "src", "unicode")
	if _, serr := os.Stat(root); err != nil || serr != nil {
		t.Skip("no Go source tree")
	}
	c, err := Open([]string{root}, WithOpenFiles(3))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var want []byte
	for _, f := range c.Files() {
		b, err := os.ReadFile(f.Path)
		if err != nil {
			t.Fatal(err)
		}
		want = append(want, b...)
	}
	if len(c.Files()) < 10 || int64(len(want)) != c.Size() {
		t.Fatalf("%d files, %d bytes; read %d", len(c.Files()), c.Size(), len(want))
	}
	got := make([]byte, c.Size())
	if _, err := c.ReadAt(got, 0); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("stream differs from the files: %v", err)
	}
	if n := len(c.pool.open); n > 3 {
		t.Errorf("%d files open, limit 3", n)
	}
}
