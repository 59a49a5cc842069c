package data

import (
	"bufio"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
)

// Compression of a corpus file, chosen by its name's suffix.
const (
	Plain   = "plain"   // read as is
	Gzip    = "gzip"    // .gz: decompressed once into a cache file
	Dictzip = "dictzip" // .dz with an RA index: random access by chunk
)

// FileInfo describes one file of a corpus.
type FileInfo struct {
	Path        string // as found from the specs
	Size        int64  // uncompressed bytes
	Offset      int64  // where the file starts in the corpus stream
	Compression string // Plain, Gzip or Dictzip
	CachePath   string // for Gzip: the decompressed cache file
}

// Corpus is the concatenation, in order, of the uncompressed bytes of a
// list of files, read on demand. Its methods are safe for concurrent use.
type Corpus struct {
	files   []FileInfo
	readers []io.ReaderAt // uncompressed bytes of files[i]
	size    int64
	pool    *filePool
	closeMu sync.Mutex
	closed  bool
}

type options struct {
	cacheDir  string
	verify    bool
	openFiles int
	chunks    int
}

// An Option changes how Open works.
type Option func(*options)

// WithCacheDir sets the directory for decompressed copies of .gz files
// (default os.TempDir()). It is created if missing.
func WithCacheDir(dir string) Option { return func(o *options) { o.cacheDir = dir } }

// WithVerify makes Open inflate every .dz file completely and check its
// CRC-32, so that a corrupt chunk is reported by Open rather than by a
// later ReadAt. Without it Open checks the header, the chunk table, the
// last chunk and the trailer's length only.
func WithVerify(v bool) Option { return func(o *options) { o.verify = v } }

// WithOpenFiles bounds the number of file descriptors the corpus keeps
// open at once (default 128).
func WithOpenFiles(n int) Option { return func(o *options) { o.openFiles = max(n, 1) } }

// WithChunkCache sets how many decompressed dictzip chunks (each at most
// 64 KiB) the corpus keeps (default 64).
func WithChunkCache(n int) Option { return func(o *options) { o.chunks = max(n, 1) } }

// Open resolves specs into a list of files and opens them as one Corpus.
//
// Each spec is a file, a directory or a glob pattern (filepath.Match
// syntax, no "**"). A directory is walked recursively in lexical order;
// only regular files are taken, symbolic links are not followed, and
// directories whose name starts with "." (.git, .cache) are skipped. A
// glob's matches are taken in sorted order, directories among them walked.
// Specs are taken in the order given; a file reached twice is kept at its
// first place only.
//
// Names ending in ".gz" are gzip: each is decompressed once into a cache
// file (see WithCacheDir) named by a hash of its absolute path, size and
// modification time and written atomically, then read like a plain file;
// the cache file is kept for later runs. Names ending in ".dz" are dictzip
// and are read through their chunk index (a .dz file without one is treated
// as .gz). Anything else is read as it is: bytes are bytes.
//
// Open fails, naming the spec or file, for a spec that matches nothing, a
// file it cannot read, a corrupt gzip or dictzip file, and a corpus of 0
// bytes.
func Open(specs []string, opts ...Option) (*Corpus, error) {
	o := options{cacheDir: os.TempDir(), openFiles: 128, chunks: 64}
	for _, f := range opts {
		f(&o)
	}
	paths, err := resolveSpecs(specs)
	if err != nil {
		return nil, err
	}
	c := &Corpus{pool: newFilePool(o.openFiles)}
	cache := newChunkCache(o.chunks)
	for _, p := range paths {
		fi, r, err := openFile(p, c.pool, cache, len(c.files), &o)
		if err != nil {
			c.pool.closeAll()
			return nil, fmt.Errorf("data: %s: %w", p, err)
		}
		fi.Offset = c.size
		c.size += fi.Size
		c.files = append(c.files, fi)
		c.readers = append(c.readers, r)
	}
	if c.size == 0 {
		c.pool.closeAll()
		return nil, fmt.Errorf("data: corpus %q is empty (0 bytes in %d files)", strings.Join(specs, " "), len(paths))
	}
	return c, nil
}

func hasGlobMeta(s string) bool { return strings.ContainsAny(s, `*?[\`) }

// resolveSpecs turns specs into an ordered list of distinct regular files.
func resolveSpecs(specs []string) ([]string, error) {
	if len(specs) == 0 {
		return nil, errors.New("data: no corpus given")
	}
	var out []string
	seen := make(map[string]bool)
	hits := 0 // files the current spec reached, new or not
	add := func(p string) {
		hits++
		key := p
		if a, err := filepath.Abs(p); err == nil {
			key = a
		}
		if !seen[key] {
			seen[key] = true
			out = append(out, p)
		}
	}
	for _, spec := range specs {
		if spec == "" {
			return nil, errors.New("data: empty corpus spec")
		}
		hits = 0
		var matches []string
		if _, err := os.Lstat(spec); err == nil {
			matches = []string{spec}
		} else if !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("data: %w", err)
		} else if strings.Contains(spec, "**") {
			m, err := globRecursive(spec)
			if err != nil {
				return nil, err
			}
			matches = m
		} else if hasGlobMeta(spec) {
			m, err := filepath.Glob(spec)
			if err != nil {
				return nil, fmt.Errorf("data: bad pattern %q: %w", spec, err)
			}
			matches = m
		} else {
			return nil, fmt.Errorf("data: %s: no such file or directory", spec)
		}
		for _, m := range matches {
			fi, err := os.Stat(m) // follows a link named directly
			if err != nil {
				return nil, fmt.Errorf("data: %w", err)
			}
			switch {
			case fi.IsDir():
				if err := walkDir(m, add); err != nil {
					return nil, err
				}
			case fi.Mode().IsRegular():
				add(m)
			case len(matches) == 1 && m == spec:
				return nil, fmt.Errorf("data: %s is not a regular file", spec)
			}
		}
		if hits == 0 {
			return nil, fmt.Errorf("data: %q matches no files", spec)
		}
	}
	return out, nil
}

func walkDir(root string, add func(string)) error {
	return filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return fmt.Errorf("data: walk %s: %w", root, err)
		}
		if d.IsDir() {
			if p != root && strings.HasPrefix(d.Name(), ".") {
				return filepath.SkipDir
			}
			return nil
		}
		if d.Type().IsRegular() {
			add(p)
		}
		return nil
	})
}

// openFile checks one file and returns its description and a reader of its
// uncompressed bytes.
func openFile(path string, pool *filePool, cache *chunkCache, id int, o *options) (FileInfo, io.ReaderAt, error) {
	fi := FileInfo{Path: path, Compression: Plain}
	f, err := os.Open(path)
	if err != nil {
		return fi, nil, err
	}
	st, err := f.Stat()
	f.Close()
	if err != nil {
		return fi, nil, err
	}
	size := st.Size()
	src := pooledFile{pool: pool, path: path}
	switch {
	case strings.HasSuffix(path, ".dz"):
		d, err := openDictzip(path, src, size, cache, id)
		if err == nil {
			if o.verify {
				if err := d.verify(); err != nil {
					return fi, nil, err
				}
			}
			fi.Compression, fi.Size = Dictzip, d.size
			return fi, d, nil
		}
		if err != errNoRA {
			return fi, nil, err
		}
		fallthrough
	case strings.HasSuffix(path, ".gz"):
		cp, n, err := gunzipCached(path, st, o.cacheDir)
		if err != nil {
			return fi, nil, err
		}
		fi.Compression, fi.Size, fi.CachePath = Gzip, n, cp
		return fi, pooledFile{pool: pool, path: cp}, nil
	}
	fi.Size = size
	return fi, src, nil
}

// gunzipCached returns the path and size of the decompressed copy of the
// gzip file path, making it if it is not in dir yet.
func gunzipCached(path string, st fs.FileInfo, dir string) (string, int64, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return "", 0, err
	}
	key := sha256.Sum256([]byte(abs + "\x00" + strconv.FormatInt(st.Size(), 10) + "\x00" +
		strconv.FormatInt(st.ModTime().UnixNano(), 10)))
	cp := filepath.Join(dir, "mambabyte-gunzip-"+hex.EncodeToString(key[:12])+".bin")
	if cst, err := os.Stat(cp); err == nil && cst.Mode().IsRegular() {
		return cp, cst.Size(), nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", 0, fmt.Errorf("gzip cache: %w", err)
	}
	in, err := os.Open(path)
	if err != nil {
		return "", 0, err
	}
	defer in.Close()
	zr, err := gzip.NewReader(bufio.NewReaderSize(in, 1<<16))
	if err != nil {
		return "", 0, fmt.Errorf("corrupt gzip: %w", err)
	}
	tmp, err := os.CreateTemp(dir, filepath.Base(cp)+".tmp*")
	if err != nil {
		return "", 0, fmt.Errorf("gzip cache: %w", err)
	}
	n, err := io.Copy(tmp, zr)
	if err != nil {
		tmp.Close()
		os.Remove(tmp.Name())
		if errors.Is(err, gzip.ErrChecksum) || errors.Is(err, gzip.ErrHeader) ||
			errors.Is(err, io.ErrUnexpectedEOF) || isFlateError(err) {
			return "", 0, fmt.Errorf("corrupt gzip: %w", err)
		}
		return "", 0, fmt.Errorf("gzip cache: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		os.Remove(tmp.Name())
		return "", 0, fmt.Errorf("gzip cache: %w", err)
	}
	if err := tmp.Close(); err != nil {
		os.Remove(tmp.Name())
		return "", 0, fmt.Errorf("gzip cache: %w", err)
	}
	if err := os.Rename(tmp.Name(), cp); err != nil {
		os.Remove(tmp.Name())
		return "", 0, fmt.Errorf("gzip cache: %w", err)
	}
	return cp, n, nil
}

func isFlateError(err error) bool {
	return strings.Contains(err.Error(), "flate: corrupt input")
}

// Size returns the number of bytes in the corpus.
func (c *Corpus) Size() int64 { return c.size }

// Files lists the corpus files in stream order. The slice must not be
// modified.
func (c *Corpus) Files() []FileInfo { return c.files }

// ReadAt reads len(p) bytes of the corpus stream from off. The stream is
// the files' uncompressed bytes back to back with nothing between them, so
// a read may span several files. It returns io.EOF when fewer than len(p)
// bytes remain, as io.ReaderAt requires.
func (c *Corpus) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, errors.New("data: negative offset")
	}
	// The file holding off: the last one that starts at or before it.
	i := sort.Search(len(c.files), func(i int) bool { return c.files[i].Offset > off }) - 1
	n := 0
	for n < len(p) {
		for i < len(c.files) && off >= c.files[i].Offset+c.files[i].Size {
			i++ // skip files that end before off (empty ones included)
		}
		if i >= len(c.files) {
			return n, io.EOF
		}
		f := &c.files[i]
		want := min(int64(len(p)-n), f.Offset+f.Size-off)
		m, err := c.readers[i].ReadAt(p[n:n+int(want)], off-f.Offset)
		n += m
		off += int64(m)
		if m < int(want) {
			if err == nil || err == io.EOF {
				err = errors.New("file is shorter than when the corpus was opened")
			}
			return n, fmt.Errorf("data: read %s: %w", f.Path, err)
		}
	}
	return n, nil
}

// ReadWindows fills dst with len(offsets) windows of width bytes, window i
// read from offsets[i] into dst[i*width:(i+1)*width]. It panics if
// len(dst) != len(offsets)*width.
func (c *Corpus) ReadWindows(dst []byte, offsets []int64, width int) error {
	if len(dst) != len(offsets)*width {
		panic(fmt.Sprintf("data: ReadWindows: len(dst) = %d, want %d×%d", len(dst), len(offsets), width))
	}
	for i, off := range offsets {
		if _, err := c.ReadAt(dst[i*width:(i+1)*width], off); err != nil {
			if err == io.EOF {
				return fmt.Errorf("data: window [%d, %d) runs past the corpus end %d", off, off+int64(width), c.size)
			}
			return err
		}
	}
	return nil
}

// Close releases the corpus's open files; ReadAt fails after it. Cache
// files are kept.
func (c *Corpus) Close() error {
	c.closeMu.Lock()
	defer c.closeMu.Unlock()
	if c.closed {
		return nil
	}
	c.closed = true
	return c.pool.closeAll()
}
