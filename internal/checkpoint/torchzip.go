package checkpoint

import (
	"archive/zip"
	"errors"
	"fmt"
	"io"
	"math"
	"path"
	"strings"
)

// A torch.save file (torch >= 1.6) is a zip archive with one top folder,
// whose name varies ("archive", or the file's stem in older versions):
//
//	<prefix>/data.pkl        the pickled object; tensors refer to storages
//	                         through persistent ids
//	<prefix>/data/<key>      one raw little-endian storage per key
//	<prefix>/byteorder       "little" (absent in older files: little)
//	<prefix>/version         the archive format version
//
// Entries are normally stored uncompressed, 64-byte aligned.

// ReadTorchZip reads a state dict saved with torch.save and converts every
// tensor to float32. The pickle is interpreted by a restricted reader that
// accepts only the globals a state dict needs. A dict holding the state dict
// under "model" or "state_dict" (a training checkpoint) is unwrapped.
func ReadTorchZip(path string) (map[string]*Tensor, error) {
	f, size, err := openRegular(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return readTorchZip(path, f, size)
}

func readTorchZip(name string, r io.ReaderAt, size int64) (map[string]*Tensor, error) {
	zr, err := zip.NewReader(r, size)
	if err != nil && !errors.Is(err, zip.ErrInsecurePath) {
		var head [2]byte
		if n, _ := r.ReadAt(head[:], 0); n == 2 && head[0] == 0x80 && head[1] <= 5 {
			return nil, fmt.Errorf("%s: a bare pickle (torch.save before torch 1.6, or _use_new_zipfile_serialization=False) is not supported; re-save it with a current torch", name)
		}
		return nil, fmt.Errorf("%s: not a torch.save zip archive: %w", name, err)
	}
	files := make(map[string]*zip.File, len(zr.File))
	var pkl *zip.File
	for _, f := range zr.File {
		files[f.Name] = f
		if path.Base(f.Name) == "data.pkl" && !strings.Contains(path.Dir(f.Name), "/") && path.Dir(f.Name) != "." {
			if pkl != nil {
				return nil, fmt.Errorf("%s: archive holds two data.pkl (%s and %s)", name, pkl.Name, f.Name)
			}
			pkl = f
		}
	}
	if pkl == nil {
		return nil, fmt.Errorf("%s: archive has no <folder>/data.pkl; not a torch.save file", name)
	}
	prefix := strings.TrimSuffix(pkl.Name, "data.pkl")
	if bo, ok := files[prefix+"byteorder"]; ok {
		b, err := readZipEntry(bo, 16, size)
		if err != nil {
			return nil, fmt.Errorf("%s: %s: %w", name, bo.Name, err)
		}
		switch s := strings.TrimSpace(string(b)); s {
		case "little":
		case "big":
			return nil, fmt.Errorf("%s: storages are big-endian; only little-endian checkpoints are supported", name)
		default:
			return nil, fmt.Errorf("%s: unknown byte order %q", name, s)
		}
	}
	if pkl.UncompressedSize64 > maxPickleSize {
		return nil, fmt.Errorf("%s: %s is %d bytes, beyond the %d-byte limit", name, pkl.Name, pkl.UncompressedSize64, maxPickleSize)
	}
	data, err := readZipEntry(pkl, int64(pkl.UncompressedSize64), size)
	if err != nil {
		return nil, fmt.Errorf("%s: %s: %w", name, pkl.Name, err)
	}
	root, err := unpickle(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	load := func(s *storageRef) ([]byte, error) {
		f, ok := files[prefix+"data/"+s.key]
		if !ok {
			return nil, fmt.Errorf("storage %q: archive has no %sdata/%s", s.key, prefix, s.key)
		}
		need := s.numel * int64(s.dt.size())
		if f.UncompressedSize64 < uint64(need) {
			return nil, fmt.Errorf("storage %q: %s holds %d bytes, but %d elements of %s need %d",
				s.key, f.Name, f.UncompressedSize64, s.numel, s.dt, need)
		}
		b, err := readZipEntry(f, need, size)
		if err != nil {
			return nil, fmt.Errorf("storage %q: %s: %w", s.key, f.Name, err)
		}
		return b, nil
	}
	out, err := stateDictTensors(root, load)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return out, nil
}

// readZipEntry reads the first n bytes of f, an entry of an archive of
// archiveSize bytes, after checking that its declared sizes are plausible
// (so that a lying header cannot make us allocate more than the archive
// can expand to).
func readZipEntry(f *zip.File, n, archiveSize int64) ([]byte, error) {
	if n < 0 || uint64(n) > f.UncompressedSize64 {
		n = int64(min(f.UncompressedSize64, math.MaxInt64))
	}
	switch f.Method {
	case zip.Store:
		if f.CompressedSize64 != f.UncompressedSize64 || f.CompressedSize64 > uint64(archiveSize) {
			return nil, errors.New("stored entry's sizes are inconsistent with the archive")
		}
	case zip.Deflate:
		// Deflate expands at most about 1032:1.
		if f.CompressedSize64 > uint64(archiveSize) || f.UncompressedSize64/1100 > f.CompressedSize64+1 {
			return nil, errors.New("compressed entry's sizes are implausible")
		}
	default:
		return nil, fmt.Errorf("compression method %d is not supported", f.Method)
	}
	rc, err := f.Open()
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	b := make([]byte, n)
	if _, err := io.ReadFull(rc, b); err != nil {
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			return nil, errors.New("entry is truncated")
		}
		return nil, err
	}
	return b, nil
}

// stateDictTensors finds the state dict in an unpickled object and
// materialises its tensors, reading storages through load.
func stateDictTensors(root any, load func(*storageRef) ([]byte, error)) (map[string]*Tensor, error) {
	sd, err := findStateDict(root, 0)
	if err != nil {
		return nil, err
	}
	// Count the users of each storage so its bytes can be dropped after
	// the last one, and bound the total size of the output: views may
	// share storage (tied weights), but not without limit.
	users := make(map[*storageRef]int)
	var stored, wanted int64
	for i, k := range sd.keys {
		t := sd.vals[i].(*tensorRef)
		if users[t.storage] == 0 {
			stored += t.storage.numel
		}
		users[t.storage]++
		n, ok := tensorNumel(t.size)
		if !ok {
			return nil, fmt.Errorf("tensor %q: shape %v overflows", k, t.size)
		}
		wanted += n
		if wanted > 4*stored+1<<20 {
			return nil, fmt.Errorf("tensor %q: views claim %d elements from storages of %d; refusing", k, wanted, stored)
		}
	}
	raw := make(map[*storageRef][]byte)
	out := make(map[string]*Tensor, len(sd.keys))
	for i, k := range sd.keys {
		name := k.(string)
		t := sd.vals[i].(*tensorRef)
		b, ok := raw[t.storage]
		if !ok {
			b, err = load(t.storage)
			if err != nil {
				return nil, fmt.Errorf("tensor %q: %w", name, err)
			}
			raw[t.storage] = b
		}
		ten, err := materialise(name, t, b)
		if err != nil {
			return nil, err
		}
		out[name] = ten
		if users[t.storage]--; users[t.storage] == 0 {
			delete(raw, t.storage)
		}
	}
	return out, nil
}

// findStateDict returns the dict of name -> tensor in root: root itself, or
// a dict under "state_dict" or "model" (training checkpoints wrap it).
func findStateDict(root any, depth int) (*pyDict, error) {
	d, ok := root.(*pyDict)
	if !ok {
		return nil, fmt.Errorf("pickle holds a %s, not a state dict", pyTypeName(root))
	}
	hasTensor := false
	for _, v := range d.vals {
		if _, ok := v.(*tensorRef); ok {
			hasTensor = true
			break
		}
	}
	if !hasTensor && depth < 3 {
		for _, key := range []string{"state_dict", "model", "model_state_dict"} {
			if v, ok := d.get(key); ok {
				if _, ok := v.(*pyDict); ok {
					return findStateDict(v, depth+1)
				}
			}
		}
	}
	for i, k := range d.keys {
		ks, ok := k.(string)
		if !ok {
			return nil, fmt.Errorf("state dict key is a %s, not a string", pyTypeName(k))
		}
		if _, ok := d.vals[i].(*tensorRef); !ok {
			return nil, fmt.Errorf("state dict entry %q is a %s, not a tensor", ks, pyTypeName(d.vals[i]))
		}
	}
	return d, nil
}

func tensorNumel(size []int64) (int64, bool) {
	n := int64(1)
	for _, d := range size {
		if d < 0 {
			return 0, false
		}
		if d != 0 && n > math.MaxInt64/d {
			return 0, false
		}
		n *= d
	}
	return n, true
}

// materialise copies the view t of the storage bytes b into a new
// row-major float32 tensor.
func materialise(name string, t *tensorRef, b []byte) (*Tensor, error) {
	s := t.storage
	n, ok := tensorNumel(t.size)
	if !ok || n > s.numel || n > math.MaxInt32*16 {
		return nil, fmt.Errorf("tensor %q: shape %v has more elements than its storage %q (%d)", name, t.size, s.key, s.numel)
	}
	shape := make([]int, len(t.size))
	for i, d := range t.size {
		shape[i] = int(d)
	}
	out := &Tensor{Name: name, Shape: shape, Data: make([]float32, n)}
	if n == 0 {
		return out, nil
	}
	// Largest element index the view touches.
	last := t.offset
	for i, d := range t.size {
		st := t.stride[i]
		if st != 0 && d-1 > (math.MaxInt64-last)/st {
			return nil, fmt.Errorf("tensor %q: strides %v overflow", name, t.stride)
		}
		last += (d - 1) * st
	}
	if last >= s.numel {
		return nil, fmt.Errorf("tensor %q: view (offset %d, shape %v, stride %v) reaches element %d of storage %q, which has %d",
			name, t.offset, t.size, t.stride, last, s.key, s.numel)
	}
	es := int64(s.dt.size())
	if int64(len(b)) < s.numel*es {
		return nil, fmt.Errorf("tensor %q: storage %q is truncated", name, s.key)
	}
	// Contiguous (row-major) views are one slice of the storage.
	contiguous, want := true, int64(1)
	for i := len(t.size) - 1; i >= 0; i-- {
		if t.size[i] != 1 && t.stride[i] != want {
			contiguous = false
			break
		}
		want *= t.size[i]
	}
	if contiguous {
		decodeInto(out.Data, b[t.offset*es:(t.offset+n)*es], s.dt)
		return out, nil
	}
	// General strided view: walk the index odometer.
	idx := make([]int64, len(t.size))
	pos := t.offset
	for i := range out.Data {
		o := pos * es
		decodeInto(out.Data[i:i+1], b[o:o+es], s.dt)
		for d := len(idx) - 1; d >= 0; d-- {
			idx[d]++
			pos += t.stride[d]
			if idx[d] < t.size[d] {
				break
			}
			pos -= idx[d] * t.stride[d]
			idx[d] = 0
		}
	}
	return out, nil
}
