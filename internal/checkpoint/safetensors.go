package checkpoint

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"strconv"
)

// Tensor is one named array of float32 values in row-major order.
type Tensor struct {
	Name  string
	Shape []int
	Data  []float32
}

// numel is the product of the shape, or -1 if it overflows or a dimension is
// negative.
func numel(shape []int) int {
	n := 1
	for _, d := range shape {
		if d < 0 {
			return -1
		}
		if d != 0 && n > math.MaxInt/d {
			return -1
		}
		n *= d
	}
	return n
}

// Limits of the safetensors reader.
const (
	// maxSafetensorsHeader is the largest JSON header accepted (the
	// reference implementation's limit).
	maxSafetensorsHeader = 100 << 20
)

// dtype is an element type of a stored tensor.
type dtype int

const (
	dtInvalid dtype = iota
	dtF64
	dtF32
	dtF16
	dtBF16
	dtI64
	dtI32
	dtI16
	dtI8
	dtU64
	dtU32
	dtU16
	dtU8
	dtBool
)

var dtypeInfo = [...]struct {
	name string // safetensors name
	size int    // bytes per element
}{
	dtInvalid: {"?", 0},
	dtF64:     {"F64", 8},
	dtF32:     {"F32", 4},
	dtF16:     {"F16", 2},
	dtBF16:    {"BF16", 2},
	dtI64:     {"I64", 8},
	dtI32:     {"I32", 4},
	dtI16:     {"I16", 2},
	dtI8:      {"I8", 1},
	dtU64:     {"U64", 8},
	dtU32:     {"U32", 4},
	dtU16:     {"U16", 2},
	dtU8:      {"U8", 1},
	dtBool:    {"BOOL", 1},
}

func (d dtype) size() int      { return dtypeInfo[d].size }
func (d dtype) String() string { return dtypeInfo[d].name }

func parseSafetensorsDtype(s string) dtype {
	for i, info := range dtypeInfo {
		if dtype(i) != dtInvalid && info.name == s {
			return dtype(i)
		}
	}
	return dtInvalid
}

// BF16ToFloat32 widens a bfloat16 bit pattern to float32. The conversion is
// exact: bfloat16 is the top half of a float32.
func BF16ToFloat32(h uint16) float32 {
	return math.Float32frombits(uint32(h) << 16)
}

// F16ToFloat32 widens an IEEE 754 half-precision bit pattern to float32.
// Every half value, subnormals, infinities and NaNs included, is exactly
// representable; NaN payloads are kept.
func F16ToFloat32(h uint16) float32 {
	sign := uint32(h>>15) << 31
	exp := uint32(h>>10) & 0x1f
	man := uint32(h) & 0x3ff
	switch {
	case exp == 0x1f: // inf or NaN
		return math.Float32frombits(sign | 0x7f800000 | man<<13)
	case exp != 0: // normal: rebias 15 -> 127
		return math.Float32frombits(sign | (exp+127-15)<<23 | man<<13)
	case man == 0: // signed zero
		return math.Float32frombits(sign)
	}
	// Subnormal half: man·2^-24. Normalise it for float32.
	e := uint32(127 - 15 + 1)
	for man&0x400 == 0 {
		man <<= 1
		e--
	}
	return math.Float32frombits(sign | e<<23 | (man&0x3ff)<<13)
}

// decodeInto converts n little-endian elements of type dt from src into dst.
// len(src) must be n·dt.size() and len(dst) at least n.
func decodeInto(dst []float32, src []byte, dt dtype) {
	le := binary.LittleEndian
	switch dt {
	case dtF32:
		for i := range len(src) / 4 {
			dst[i] = math.Float32frombits(le.Uint32(src[4*i:]))
		}
	case dtF64:
		for i := range len(src) / 8 {
			dst[i] = float32(math.Float64frombits(le.Uint64(src[8*i:])))
		}
	case dtF16:
		for i := range len(src) / 2 {
			dst[i] = F16ToFloat32(le.Uint16(src[2*i:]))
		}
	case dtBF16:
		for i := range len(src) / 2 {
			dst[i] = BF16ToFloat32(le.Uint16(src[2*i:]))
		}
	case dtI64:
		for i := range len(src) / 8 {
			dst[i] = float32(int64(le.Uint64(src[8*i:])))
		}
	case dtI32:
		for i := range len(src) / 4 {
			dst[i] = float32(int32(le.Uint32(src[4*i:])))
		}
	case dtI16:
		for i := range len(src) / 2 {
			dst[i] = float32(int16(le.Uint16(src[2*i:])))
		}
	case dtI8:
		for i, b := range src {
			dst[i] = float32(int8(b))
		}
	case dtU64:
		for i := range len(src) / 8 {
			dst[i] = float32(le.Uint64(src[8*i:]))
		}
	case dtU32:
		for i := range len(src) / 4 {
			dst[i] = float32(le.Uint32(src[4*i:]))
		}
	case dtU16:
		for i := range len(src) / 2 {
			dst[i] = float32(le.Uint16(src[2*i:]))
		}
	case dtU8:
		for i, b := range src {
			dst[i] = float32(b)
		}
	case dtBool:
		for i, b := range src {
			if b != 0 {
				dst[i] = 1
			} else {
				dst[i] = 0
			}
		}
	}
}

// ReadSafetensors reads every tensor of a safetensors file and converts it to
// float32. F64, F32, F16, BF16 and the integer and bool types are accepted.
func ReadSafetensors(path string) (map[string]*Tensor, error) {
	f, size, err := openRegular(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return readSafetensors(path, f, size)
}

// openRegular opens a regular file for reading; errors start with the path.
func openRegular(path string) (*os.File, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		var pe *fs.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		return nil, 0, fmt.Errorf("%s: %w", path, err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, 0, fmt.Errorf("%s: %w", path, err)
	}
	if !st.Mode().IsRegular() {
		f.Close()
		return nil, 0, fmt.Errorf("%s: not a regular file", path)
	}
	return f, st.Size(), nil
}

// stEntry is one tensor's header entry, validated.
type stEntry struct {
	name       string
	dt         dtype
	shape      []int
	begin, end int64 // absolute file offsets
}

// parseSafetensorsHeader reads and validates the header of a safetensors file
// of the given size. It returns the entries in header order.
func parseSafetensorsHeader(name string, r io.ReaderAt, size int64) ([]stEntry, map[string]string, error) {
	var lenBuf [8]byte
	if size < 8 {
		return nil, nil, fmt.Errorf("%s: %d bytes is too short for a safetensors file (8-byte header length missing)", name, size)
	}
	if _, err := r.ReadAt(lenBuf[:], 0); err != nil {
		return nil, nil, fmt.Errorf("%s: reading header length: %w", name, err)
	}
	hlen := binary.LittleEndian.Uint64(lenBuf[:])
	if hlen > maxSafetensorsHeader {
		return nil, nil, fmt.Errorf("%s: header length %d exceeds the %d-byte limit; not a safetensors file?", name, hlen, maxSafetensorsHeader)
	}
	if int64(hlen) > size-8 {
		return nil, nil, fmt.Errorf("%s: header length %d runs past the end of the file (size %d)", name, hlen, size)
	}
	if hlen < 2 {
		return nil, nil, fmt.Errorf("%s: header length %d is too short for a JSON object", name, hlen)
	}
	hdr := make([]byte, hlen)
	if _, err := r.ReadAt(hdr, 8); err != nil {
		return nil, nil, fmt.Errorf("%s: reading header: %w", name, err)
	}
	dataStart := 8 + int64(hlen)
	dataLen := size - dataStart

	dec := json.NewDecoder(bytes.NewReader(hdr))
	dec.UseNumber()
	tok, err := dec.Token()
	if err != nil {
		return nil, nil, fmt.Errorf("%s: header is not JSON: %v", name, err)
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return nil, nil, fmt.Errorf("%s: header is not a JSON object", name)
	}
	var (
		entries []stEntry
		meta    map[string]string
		seen    = map[string]bool{}
		total   int64 // bytes claimed by all tensors so far
	)
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, nil, fmt.Errorf("%s: header is not valid JSON: %v", name, err)
		}
		key, ok := tok.(string)
		if !ok {
			return nil, nil, fmt.Errorf("%s: header is not valid JSON", name)
		}
		if seen[key] {
			return nil, nil, fmt.Errorf("%s: header names %q twice", name, key)
		}
		seen[key] = true
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return nil, nil, fmt.Errorf("%s: header entry %q is not valid JSON: %v", name, key, err)
		}
		if key == "__metadata__" {
			if err := json.Unmarshal(raw, &meta); err != nil {
				return nil, nil, fmt.Errorf("%s: __metadata__ must map strings to strings: %v", name, err)
			}
			continue
		}
		e, err := parseSTEntry(name, key, raw, dataStart, dataLen, size)
		if err != nil {
			return nil, nil, err
		}
		total += e.end - e.begin
		if total > dataLen {
			return nil, nil, fmt.Errorf("%s: tensor %q: tensors claim %d bytes in all, more than the %d-byte data section holds (overlapping ranges?)", name, key, total, dataLen)
		}
		entries = append(entries, e)
	}
	if _, err := dec.Token(); err != nil { // the closing brace
		return nil, nil, fmt.Errorf("%s: header is not valid JSON: %v", name, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, nil, fmt.Errorf("%s: header has trailing data after its JSON object", name)
	}
	return entries, meta, nil
}

func parseSTEntry(file, key string, raw json.RawMessage, dataStart, dataLen, size int64) (stEntry, error) {
	var je struct {
		Dtype       *string        `json:"dtype"`
		Shape       *[]json.Number `json:"shape"`
		DataOffsets *[]json.Number `json:"data_offsets"`
	}
	d := json.NewDecoder(bytes.NewReader(raw))
	d.UseNumber()
	if err := d.Decode(&je); err != nil {
		return stEntry{}, fmt.Errorf("%s: tensor %q: malformed header entry: %v", file, key, err)
	}
	if key == "" {
		return stEntry{}, fmt.Errorf("%s: header has a tensor with an empty name", file)
	}
	if je.Dtype == nil || je.Shape == nil || je.DataOffsets == nil {
		return stEntry{}, fmt.Errorf("%s: tensor %q: header entry needs dtype, shape and data_offsets", file, key)
	}
	e := stEntry{name: key, dt: parseSafetensorsDtype(*je.Dtype)}
	if e.dt == dtInvalid {
		return stEntry{}, fmt.Errorf("%s: tensor %q: dtype %q is not supported (want F64, F32, F16, BF16 or an integer type)", file, key, *je.Dtype)
	}
	if len(*je.Shape) > 64 {
		return stEntry{}, fmt.Errorf("%s: tensor %q: %d dimensions is too many", file, key, len(*je.Shape))
	}
	e.shape = make([]int, len(*je.Shape))
	for i, n := range *je.Shape {
		v, err := strconv.ParseInt(string(n), 10, 64)
		if err != nil || v < 0 {
			return stEntry{}, fmt.Errorf("%s: tensor %q: shape entry %s is not a non-negative integer", file, key, n)
		}
		e.shape[i] = int(v)
	}
	if len(*je.DataOffsets) != 2 {
		return stEntry{}, fmt.Errorf("%s: tensor %q: data_offsets must have 2 entries, has %d", file, key, len(*je.DataOffsets))
	}
	var off [2]int64
	for i, n := range *je.DataOffsets {
		v, err := strconv.ParseInt(string(n), 10, 64)
		if err != nil || v < 0 {
			return stEntry{}, fmt.Errorf("%s: tensor %q: data offset %s is not a non-negative integer", file, key, n)
		}
		off[i] = v
	}
	if off[0] > off[1] {
		return stEntry{}, fmt.Errorf("%s: tensor %q: data range [%d,%d) ends before it begins", file, key, off[0], off[1])
	}
	if off[1] > dataLen {
		return stEntry{}, fmt.Errorf("%s: tensor %q: data range [%d,%d) beyond file size %d",
			file, key, dataStart+off[0], dataStart+off[1], size)
	}
	n := numel(e.shape)
	if n < 0 || int64(n) > (off[1]-off[0])/int64(e.dt.size()) || int64(n)*int64(e.dt.size()) != off[1]-off[0] {
		return stEntry{}, fmt.Errorf("%s: tensor %q: shape %v of %s needs a different byte count than its data range [%d,%d) holds (%d bytes)",
			file, key, e.shape, e.dt, off[0], off[1], off[1]-off[0])
	}
	e.begin, e.end = dataStart+off[0], dataStart+off[1]
	return e, nil
}

// readSafetensors reads the safetensors file held by r, named name in errors.
func readSafetensors(name string, r io.ReaderAt, size int64) (map[string]*Tensor, error) {
	entries, _, err := parseSafetensorsHeader(name, r, size)
	if err != nil {
		return nil, err
	}
	out := make(map[string]*Tensor, len(entries))
	const chunk = 1 << 20 // bytes read per ReadAt
	var buf []byte
	for _, e := range entries {
		es := int64(e.dt.size())
		t := &Tensor{Name: e.name, Shape: e.shape, Data: make([]float32, (e.end-e.begin)/es)}
		done := 0
		for pos := e.begin; pos < e.end; {
			n := min(e.end-pos, chunk/es*es)
			if int64(cap(buf)) < n {
				buf = make([]byte, n)
			}
			b := buf[:n]
			if _, err := r.ReadAt(b, pos); err != nil {
				return nil, fmt.Errorf("%s: tensor %q: reading data: %w", name, e.name, err)
			}
			decodeInto(t.Data[done:], b, e.dt)
			done += int(n / es)
			pos += n
		}
		out[e.name] = t
	}
	return out, nil
}

// WriteSafetensors writes tensors as F32 in the given order, with optional
// string metadata, to path. The write is atomic: a temporary file in the
// same directory is written, synced and renamed over path; on error path is
// untouched and the temporary file removed.
func WriteSafetensors(path string, tensors []*Tensor, metadata map[string]string) error {
	hdr, err := safetensorsHeader(tensors, metadata)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return writeAtomic(path, func(w io.Writer) error {
		bw := bufio.NewWriterSize(w, 1<<20)
		var lenBuf [8]byte
		binary.LittleEndian.PutUint64(lenBuf[:], uint64(len(hdr)))
		bw.Write(lenBuf[:])
		bw.Write(hdr)
		var b [4]byte
		for _, t := range tensors {
			for _, v := range t.Data {
				binary.LittleEndian.PutUint32(b[:], math.Float32bits(v))
				bw.Write(b[:])
			}
		}
		return bw.Flush()
	})
}

// safetensorsHeader builds the JSON header for F32 tensors laid out back to
// back in order, padded with spaces so the data section starts 8-aligned.
func safetensorsHeader(tensors []*Tensor, metadata map[string]string) ([]byte, error) {
	var hb bytes.Buffer
	hb.WriteByte('{')
	first := true
	if len(metadata) > 0 {
		m, err := json.Marshal(metadata) // keys sorted: deterministic
		if err != nil {
			return nil, err
		}
		hb.WriteString(`"__metadata__":`)
		hb.Write(m)
		first = false
	}
	seen := make(map[string]bool, len(tensors))
	var off int64
	for _, t := range tensors {
		if t == nil {
			return nil, errors.New("nil tensor")
		}
		if t.Name == "" || t.Name == "__metadata__" {
			return nil, fmt.Errorf("invalid tensor name %q", t.Name)
		}
		if seen[t.Name] {
			return nil, fmt.Errorf("tensor %q given twice", t.Name)
		}
		seen[t.Name] = true
		if n := numel(t.Shape); n < 0 || n != len(t.Data) {
			return nil, fmt.Errorf("tensor %q: shape %v does not match its %d values", t.Name, t.Shape, len(t.Data))
		}
		if !first {
			hb.WriteByte(',')
		}
		first = false
		name, _ := json.Marshal(t.Name)
		hb.Write(name)
		hb.WriteString(`:{"dtype":"F32","shape":[`)
		for i, d := range t.Shape {
			if i > 0 {
				hb.WriteByte(',')
			}
			hb.WriteString(strconv.Itoa(d))
		}
		end := off + 4*int64(len(t.Data))
		fmt.Fprintf(&hb, `],"data_offsets":[%d,%d]}`, off, end)
		off = end
	}
	hb.WriteByte('}')
	for (8+hb.Len())%8 != 0 {
		hb.WriteByte(' ')
	}
	return hb.Bytes(), nil
}

// writeAtomic writes path through fill: into a temporary file in the same
// directory, then fsync, rename and fsync of the directory. On any error the
// temporary file is removed and path left as it was.
func writeAtomic(path string, fill func(io.Writer) error) (err error) {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(tmp)
			err = fmt.Errorf("%s: %w", path, err)
		}
	}()
	if err = fill(f); err != nil {
		return err
	}
	if err = f.Chmod(0o644); err != nil {
		return err
	}
	if err = f.Sync(); err != nil {
		return err
	}
	if err = f.Close(); err != nil {
		return err
	}
	if err = os.Rename(tmp, path); err != nil {
		return err
	}
	// Make the rename durable.
	SyncDir(dir)
	return nil
}
