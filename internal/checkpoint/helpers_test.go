package checkpoint

import (
	"archive/zip"
	"bytes"
	"encoding/binary"
	"math"
	"os"
	"path/filepath"
	"testing"
)

// pickleWriter emits the opcodes CPython's pickler produces for a torch.save
// state dict, so tests can build data.pkl files without Python. Strings and
// globals are memoized and re-used with BINGET as CPython does for repeated
// objects.
type pickleWriter struct {
	b     bytes.Buffer
	memo  map[string]int
	n     int
	proto int
}

func newPickleWriter(proto int) *pickleWriter {
	w := &pickleWriter{memo: map[string]int{}, proto: proto}
	w.b.Write([]byte{0x80, byte(proto)})
	return w
}

func (w *pickleWriter) op(b ...byte) { w.b.Write(b) }

// put memoizes the top of the stack.
func (w *pickleWriter) put() int {
	i := w.n
	w.n++
	switch {
	case w.proto >= 4:
		w.op(0x94) // MEMOIZE
	case i < 256:
		w.op('q', byte(i))
	default:
		var b [4]byte
		binary.LittleEndian.PutUint32(b[:], uint32(i))
		w.op('r')
		w.op(b[:]...)
	}
	return i
}

func (w *pickleWriter) get(i int) {
	if i < 256 {
		w.op('h', byte(i))
		return
	}
	var b [4]byte
	binary.LittleEndian.PutUint32(b[:], uint32(i))
	w.op('j')
	w.op(b[:]...)
}

func (w *pickleWriter) str(s string) {
	if i, ok := w.memo["s:"+s]; ok {
		w.get(i)
		return
	}
	if w.proto >= 4 && len(s) < 256 {
		w.op(0x8c, byte(len(s)))
	} else {
		var b [4]byte
		binary.LittleEndian.PutUint32(b[:], uint32(len(s)))
		w.op('X')
		w.op(b[:]...)
	}
	w.b.WriteString(s)
	w.memo["s:"+s] = w.put()
}

func (w *pickleWriter) global(mod, name string) {
	key := "g:" + mod + "." + name
	if i, ok := w.memo[key]; ok {
		w.get(i)
		return
	}
	if w.proto >= 4 {
		w.str(mod)
		w.str(name)
		w.op(0x93) // STACK_GLOBAL
	} else {
		w.op('c')
		w.b.WriteString(mod + "\n" + name + "\n")
	}
	w.memo[key] = w.put()
}

func (w *pickleWriter) int(v int64) {
	switch {
	case v >= 0 && v < 256:
		w.op('K', byte(v))
	case v >= 0 && v < 65536:
		w.op('M', byte(v), byte(v>>8))
	case v >= math.MinInt32 && v <= math.MaxInt32:
		var b [4]byte
		binary.LittleEndian.PutUint32(b[:], uint32(int32(v)))
		w.op('J')
		w.op(b[:]...)
	default:
		var b [8]byte
		binary.LittleEndian.PutUint64(b[:], uint64(v))
		w.op(0x8a, 8)
		w.op(b[:]...)
	}
}

// intTuple writes a tuple of ints as CPython does (TUPLE1-3 or MARK…TUPLE).
func (w *pickleWriter) ints(vs []int64) {
	if len(vs) == 0 {
		w.op(')')
		return
	}
	if len(vs) > 3 {
		w.op('(')
	}
	for _, v := range vs {
		w.int(v)
	}
	if len(vs) > 3 {
		w.op('t')
	} else {
		w.op(0x84 + byte(len(vs)))
	}
	w.put()
}

// pickleTensor describes one tensor of a hand-built state dict.
type pickleTensor struct {
	name    string
	storage string // torch storage class, e.g. "FloatStorage"
	key     string // storage key
	numel   int64  // storage element count
	offset  int64
	shape   []int64
	stride  []int64 // nil: contiguous
}

func contiguousStride(shape []int64) []int64 {
	st := make([]int64, len(shape))
	s := int64(1)
	for i := len(shape) - 1; i >= 0; i-- {
		st[i] = s
		s *= shape[i]
	}
	return st
}

// tensor writes _rebuild_tensor_v2(storage, offset, size, stride, False,
// OrderedDict()) as torch's Tensor.__reduce_ex__ does.
func (w *pickleWriter) tensor(t pickleTensor) {
	w.global("torch._utils", "_rebuild_tensor_v2")
	w.op('(')
	// Persistent id ('storage', torch.XStorage, key, 'cpu', numel).
	w.op('(')
	w.str("storage")
	w.global("torch", t.storage)
	w.str(t.key)
	w.str("cpu")
	w.int(t.numel)
	w.op('t')
	w.put()
	w.op('Q')
	w.int(t.offset)
	w.ints(t.shape)
	st := t.stride
	if st == nil {
		st = contiguousStride(t.shape)
	}
	w.ints(st)
	w.op(0x89) // requires_grad False
	w.global("collections", "OrderedDict")
	w.op(')', 'R')
	w.put()
	w.op('t')
	w.put()
	w.op('R')
	w.put()
}

// stateDict writes an OrderedDict of tensors with torch's _metadata state,
// as torch.save(model.state_dict()) does.
func (w *pickleWriter) stateDict(ts []pickleTensor) {
	w.global("collections", "OrderedDict")
	w.op(')', 'R')
	w.put()
	if len(ts) > 0 {
		w.op('(')
		for _, t := range ts {
			w.str(t.name)
			w.tensor(t)
		}
		w.op('u')
	}
	// BUILD with {'_metadata': OrderedDict({'': {'version': 1}})}.
	w.op('}')
	w.put()
	w.str("_metadata")
	w.global("collections", "OrderedDict")
	w.op(')', 'R')
	w.put()
	w.str("")
	w.op('}')
	w.put()
	w.str("version")
	w.int(1)
	w.op('s', 's', 's', 'b')
}

func (w *pickleWriter) stop() []byte {
	w.op('.')
	return w.b.Bytes()
}

// torchZip wraps data.pkl and storages in a zip archive laid out as
// torch.save writes it.
func torchZip(t testing.TB, prefix string, pkl []byte, storages map[string][]byte, byteorder string) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	add := func(name string, data []byte) {
		f, err := zw.CreateHeader(&zip.FileHeader{Name: prefix + "/" + name, Method: zip.Store})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.Write(data); err != nil {
			t.Fatal(err)
		}
	}
	add("data.pkl", pkl)
	if byteorder != "" {
		add("byteorder", []byte(byteorder))
	}
	for k, v := range storages {
		add("data/"+k, v)
	}
	add("version", []byte("3\n"))
	add(".data/serialization_id", []byte("1234567890"))
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func f32Bytes(v []float32) []byte {
	b := make([]byte, 4*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(x))
	}
	return b
}

func u16Bytes(v []uint16) []byte {
	b := make([]byte, 2*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint16(b[2*i:], x)
	}
	return b
}

func writeFile(t testing.TB, dir, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}
