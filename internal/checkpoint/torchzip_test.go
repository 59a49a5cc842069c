package checkpoint

import (
	"bytes"
	"encoding/binary"
	"os"
	"slices"
	"strings"
	"testing"
)

// sampleStateDict is a small state dict exercising the cases torch.save
// produces: f32, bf16 and f16 storages, a view at an offset, a transposed
// (non-contiguous) view, and two names sharing one storage (tied weights).
func sampleStateDict() ([]pickleTensor, map[string][]byte, map[string]Tensor) {
	ts := []pickleTensor{
		{name: "emb.weight", storage: "FloatStorage", key: "0", numel: 6, shape: []int64{2, 3}},
		{name: "head.weight", storage: "FloatStorage", key: "0", numel: 6, shape: []int64{2, 3}}, // tied
		{name: "half", storage: "HalfStorage", key: "1", numel: 3, shape: []int64{3}},
		{name: "bf", storage: "BFloat16Storage", key: "2", numel: 4, shape: []int64{2, 2}},
		{name: "view", storage: "FloatStorage", key: "3", numel: 8, offset: 2, shape: []int64{2, 2}},
		{name: "transposed", storage: "FloatStorage", key: "3", numel: 8, shape: []int64{3, 2}, stride: []int64{1, 3}},
		{name: "scalar", storage: "DoubleStorage", key: "4", numel: 1, shape: nil},
		{name: "steps", storage: "LongStorage", key: "5", numel: 2, shape: []int64{2}},
	}
	var f64, i64 bytes.Buffer
	binary.Write(&f64, binary.LittleEndian, 0.125)
	binary.Write(&i64, binary.LittleEndian, []int64{-3, 1 << 40})
	storages := map[string][]byte{
		"0": f32Bytes([]float32{1, 2, 3, 4, 5, 6}),
		"1": u16Bytes([]uint16{0x3c00, 0xc100, 0x7bff}),
		"2": u16Bytes([]uint16{0x3f80, 0xc020, 0x0001, 0x7f80}),
		"3": f32Bytes([]float32{0, 1, 2, 3, 4, 5, 6, 7}),
		"4": f64.Bytes(),
		"5": i64.Bytes(),
	}
	want := map[string]Tensor{
		"emb.weight":  {Shape: []int{2, 3}, Data: []float32{1, 2, 3, 4, 5, 6}},
		"head.weight": {Shape: []int{2, 3}, Data: []float32{1, 2, 3, 4, 5, 6}},
		"half":        {Shape: []int{3}, Data: []float32{1, -2.5, 65504}},
		"bf":          {Shape: []int{2, 2}, Data: []float32{1, -2.5, BF16ToFloat32(1), BF16ToFloat32(0x7f80)}},
		"view":        {Shape: []int{2, 2}, Data: []float32{2, 3, 4, 5}},
		// storage 0..7 viewed as (3,2) with strides (1,3): [[0,3],[1,4],[2,5]]
		"transposed": {Shape: []int{3, 2}, Data: []float32{0, 3, 1, 4, 2, 5}},
		"scalar":     {Shape: []int{}, Data: []float32{0.125}},
		"steps":      {Shape: []int{2}, Data: []float32{-3, 1 << 40}},
	}
	return ts, storages, want
}

func checkTensors(t *testing.T, got map[string]*Tensor, want map[string]Tensor) {
	t.Helper()
	if len(got) != len(want) {
		names := []string{}
		for k := range got {
			names = append(names, k)
		}
		t.Fatalf("got tensors %v, want %d", names, len(want))
	}
	for name, w := range want {
		g := got[name]
		if g == nil {
			t.Errorf("tensor %q missing", name)
			continue
		}
		if !slices.Equal(g.Shape, w.Shape) || !slices.Equal(g.Data, w.Data) {
			t.Errorf("tensor %q = %v %v, want %v %v", name, g.Shape, g.Data, w.Shape, w.Data)
		}
	}
}

func TestReadTorchZip(t *testing.T) {
	ts, storages, want := sampleStateDict()
	wrap := func(proto int, body func(w *pickleWriter)) []byte {
		w := newPickleWriter(proto)
		body(w)
		return w.stop()
	}
	plainDict := func(w *pickleWriter) { // {'name': tensor, ...} without OrderedDict
		w.op('}')
		w.put()
		w.op('(')
		for _, x := range ts {
			w.str(x.name)
			w.tensor(x)
		}
		w.op('u')
	}
	tests := []struct {
		name   string
		prefix string
		pkl    []byte
	}{
		{"protocol 2 OrderedDict", "archive", wrap(2, func(w *pickleWriter) { w.stateDict(ts) })},
		{"stem prefix", "pytorch_model", wrap(2, func(w *pickleWriter) { w.stateDict(ts) })},
		{"protocol 4", "archive", wrap(4, func(w *pickleWriter) { w.stateDict(ts) })},
		{"plain dict", "archive", wrap(2, plainDict)},
		{"nested model", "archive", wrap(2, func(w *pickleWriter) {
			w.op('}')
			w.put()
			w.op('(')
			w.str("epoch")
			w.int(3)
			w.str("model")
			w.stateDict(ts)
			w.op('u')
		})},
		{"nested state_dict", "archive", wrap(2, func(w *pickleWriter) {
			w.op('}')
			w.put()
			w.str("state_dict")
			w.stateDict(ts)
			w.op('s')
		})},
		{"parameters", "archive", wrap(2, func(w *pickleWriter) {
			w.op('}')
			w.put()
			for _, x := range ts {
				w.str(x.name)
				w.global("torch._utils", "_rebuild_parameter")
				w.tensor(x)
				w.op(0x88)
				w.global("collections", "OrderedDict")
				w.op(')', 'R', 0x87, 'R', 's')
			}
		})},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			z := torchZip(t, tt.prefix, tt.pkl, storages, "little")
			p := writeFile(t, t.TempDir(), "pytorch_model.bin", z)
			got, err := ReadTorchZip(p)
			if err != nil {
				t.Fatal(err)
			}
			checkTensors(t, got, want)
		})
	}
}

func TestReadTorchZipErrors(t *testing.T) {
	ts, storages, _ := sampleStateDict()
	w := newPickleWriter(2)
	w.stateDict(ts)
	good := w.stop()

	without := func(key string) map[string][]byte {
		m := map[string][]byte{}
		for k, v := range storages {
			if k != key {
				m[k] = v
			}
		}
		return m
	}
	short := without("3")
	short["3"] = storages["3"][:20]
	one := func(x pickleTensor) []byte {
		w := newPickleWriter(2)
		w.stateDict([]pickleTensor{x})
		return w.stop()
	}
	tests := []struct {
		name string
		file []byte
		want string
	}{
		{"big endian", torchZip(t, "archive", good, storages, "big\n"), "big-endian"},
		{"odd byte order", torchZip(t, "archive", good, storages, "middle"), "unknown byte order"},
		{"missing storage", torchZip(t, "archive", good, without("2"), "little"), `tensor "bf": storage "2": archive has no archive/data/2`},
		{"short storage", torchZip(t, "archive", good, short, "little"), `storage "3": archive/data/3 holds 20 bytes`},
		{"view beyond storage", torchZip(t, "archive", one(pickleTensor{name: "v", storage: "FloatStorage", key: "3", numel: 8, offset: 6, shape: []int64{3}}), storages, "little"), `tensor "v": view (offset 6, shape [3], stride [1]) reaches element 8`},
		{"more elements than storage", torchZip(t, "archive", one(pickleTensor{name: "v", storage: "FloatStorage", key: "3", numel: 8, shape: []int64{1 << 30, 1 << 30}, stride: []int64{0, 0}}), storages, "little"), `views claim`},
		{"expanded view", torchZip(t, "archive", one(pickleTensor{name: "v", storage: "FloatStorage", key: "3", numel: 8, shape: []int64{3, 3}, stride: []int64{0, 0}}), storages, "little"), `more elements than its storage`},
		{"untyped", torchZip(t, "archive", one(pickleTensor{name: "v", storage: "UntypedStorage", key: "3", numel: 32, shape: []int64{8}}), storages, "little"), "untyped storages"},
		{"no data.pkl", torchZip(t, "archive", nil, nil, "")[:0], "not a torch.save zip"},
		{"bare pickle", []byte{0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc}, "bare pickle"},
		{"truncated zip", torchZip(t, "archive", good, storages, "little")[:300], "not a torch.save zip"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := writeFile(t, t.TempDir(), "pytorch_model.bin", tt.file)
			_, err := ReadTorchZip(p)
			if err == nil {
				t.Fatalf("no error, want %q", tt.want)
			}
			if !strings.Contains(err.Error(), tt.want) || !strings.HasPrefix(err.Error(), p+": ") {
				t.Errorf("err = %q, want it to start with the path and contain %q", err, tt.want)
			}
		})
	}
}

// hostile pickles: each names a global a state dict never needs.
func hostilePickles() []struct {
	name, global string
	pkl          []byte
} {
	viaGlobal := func(mod, name string) []byte {
		w := newPickleWriter(2)
		w.global(mod, name) // the global is refused before any call
		w.op('(')
		w.str("echo pwned")
		w.op('t', 'R')
		return w.stop()
	}
	viaStack := func(mod, name string) []byte {
		w := newPickleWriter(4)
		w.global(mod, name) // STACK_GLOBAL at protocol 4
		w.str("__import__('os').system('echo pwned')")
		w.op(0x85, 'R')
		return w.stop()
	}
	// Inside an otherwise valid state dict, after some tensors.
	inside := func() []byte {
		ts, _, _ := sampleStateDict()
		w := newPickleWriter(2)
		w.global("collections", "OrderedDict")
		w.op(')', 'R')
		w.put()
		w.op('(')
		w.str(ts[0].name)
		w.tensor(ts[0])
		w.str("evil")
		w.global("posix", "system")
		w.str("true")
		w.op(0x85, 'R', 'u')
		return w.stop()
	}
	return []struct {
		name, global string
		pkl          []byte
	}{
		{"GLOBAL os.system", "os.system", viaGlobal("os", "system")},
		{"STACK_GLOBAL os.system", "os.system", viaStack("os", "system")},
		{"builtins.eval", "builtins.eval", viaStack("builtins", "eval")},
		{"__builtin__.exec", "__builtin__.exec", viaGlobal("__builtin__", "exec")},
		{"subprocess.Popen", "subprocess.Popen", viaGlobal("subprocess", "Popen")},
		{"load_from_bytes", "torch.storage._load_from_bytes", viaGlobal("torch.storage", "_load_from_bytes")},
		{"inside a state dict", "posix.system", inside()},
		{"torch module only", "torch.load", viaGlobal("torch", "load")},
	}
}

func TestHostilePickle(t *testing.T) {
	_, storages, _ := sampleStateDict()
	for _, tt := range hostilePickles() {
		t.Run(tt.name, func(t *testing.T) {
			p := writeFile(t, t.TempDir(), "pytorch_model.bin", torchZip(t, "archive", tt.pkl, storages, "little"))
			_, err := ReadTorchZip(p)
			want := p + `: pickle names global "` + tt.global + `", which a state dict never needs; refusing to load`
			if err == nil || err.Error() != want {
				t.Errorf("err = %v\nwant %s", err, want)
			}
		})
	}
}

func TestUnpickleTruncated(t *testing.T) {
	ts, _, _ := sampleStateDict()
	for _, proto := range []int{2, 4} {
		w := newPickleWriter(proto)
		w.stateDict(ts)
		full := w.stop()
		if _, err := unpickle(full); err != nil {
			t.Fatalf("protocol %d: full pickle: %v", proto, err)
		}
		for n := range len(full) {
			if _, err := unpickle(full[:n]); err == nil {
				t.Fatalf("protocol %d: pickle cut to %d of %d bytes: no error", proto, n, len(full))
			}
		}
	}
}

func TestUnpickleErrors(t *testing.T) {
	tests := []struct {
		name string
		pkl  []byte
		want string
	}{
		{"empty", nil, "no STOP"},
		{"stop on empty stack", []byte{'.'}, "stack underflow"},
		{"bad memo", []byte{0x80, 2, 'h', 5, '.'}, "memo index 5 was never stored"},
		{"pop below mark", []byte{0x80, 2, 'K', 1, '(', '0', '0', '.'}, "stack underflow"},
		{"setitem on list", []byte{0x80, 2, ']', 'K', 1, 'K', 2, 's', '.'}, "SETITEM on a list"},
		{"unhashable key", []byte{0x80, 2, '}', ']', 'K', 2, 's', '.'}, "dict key of type list"},
		{"huge string", []byte{0x80, 2, 'X', 0xff, 0xff, 0xff, 0x7f, '.'}, "exceeds"},
		{"string past end", []byte{0x80, 2, 'X', 10, 0, 0, 0, 'a', '.'}, "truncated"},
		{"protocol 9", []byte{0x80, 9, '.'}, "protocol 9"},
		{"unknown opcode", []byte{0x80, 2, 0xff, '.'}, "unsupported opcode 0xff"},
		{"INST", []byte{0x80, 2, 'i', 'o', 's', '\n', 's', '\n', '.'}, "unsupported opcode 0x69"},
		{"reduce non-global", []byte{0x80, 2, 'K', 1, ')', 'R', '.'}, "REDUCE calls a int"},
		{"call storage class", []byte("\x80\x02ctorch\nFloatStorage\n)R."), "not callable"},
		{"bad persistent id", []byte{0x80, 2, 'K', 1, 'Q', '.'}, "persistent id is not a 5-tuple"},
		{"long too big", []byte{0x80, 2, 0x8a, 9, 1, 2, 3, 4, 5, 6, 7, 8, 9, '.'}, "does not fit"},
		{"build on int", []byte{0x80, 2, 'K', 1, '}', 'b', '.'}, "BUILD on a int"},
		{"stack global non-string", []byte{0x80, 4, 'K', 1, 'K', 2, 0x93, '.'}, "two strings"},
		{"newobj", []byte("\x80\x02ctorch\nTensor\n)\x81."), "NEWOBJ of torch.Tensor"},
	}
	for _, tt := range tests {
		_, err := unpickle(tt.pkl)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: err = %v, want %q", tt.name, err, tt.want)
		}
	}
	// Values the machine handles without a state dict around them.
	v, err := unpickle([]byte("\x80\x02(K\x01M\x02\x01J\xff\xff\xff\xff\x8a\x02\x00\x80G?\xf0\x00\x00\x00\x00\x00\x00N\x88\x89U\x02hiC\x01xl."))
	if err != nil {
		t.Fatal(err)
	}
	l, ok := v.(*pyList)
	if !ok || len(l.items) != 10 {
		t.Fatalf("got %T %v", v, v)
	}
	want := []any{int64(1), int64(258), int64(-1), int64(-32768), 1.0, nil, true, false, "hi", []byte("x")}
	for i, w := range want {
		if b, ok := w.([]byte); ok {
			if !bytes.Equal(l.items[i].([]byte), b) {
				t.Errorf("item %d = %v, want %v", i, l.items[i], w)
			}
			continue
		}
		if l.items[i] != w {
			t.Errorf("item %d = %v (%T), want %v", i, l.items[i], l.items[i], w)
		}
	}
}

// fakeStorage stands in for the archive's storage files in fuzzing.
func fakeStorage(s *storageRef) ([]byte, error) {
	n := s.numel * int64(s.dt.size())
	if n > 1<<20 {
		return nil, errTruncated
	}
	return make([]byte, n), nil
}

func FuzzUnpickle(f *testing.F) {
	ts, _, _ := sampleStateDict()
	for _, proto := range []int{2, 4} {
		w := newPickleWriter(proto)
		w.stateDict(ts)
		f.Add(w.stop())
	}
	w := newPickleWriter(2)
	w.op('}')
	w.put()
	w.str("model")
	w.stateDict(ts[:2])
	w.op('s')
	f.Add(w.stop())
	for _, h := range hostilePickles() {
		f.Add(h.pkl)
	}
	f.Add([]byte("\x80\x02(K\x01M\x02\x01J\xff\xff\xff\xff\x8a\x02\x00\x80G?\xf0\x00\x00\x00\x00\x00\x00N\x88\x89U\x02hiC\x01xl."))
	f.Add([]byte("(I01\np0\ng0\n0ld."))
	if real, err := os.ReadFile("testdata/torch2_state_dict.pkl"); err == nil {
		f.Add(real)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		v, err := unpickle(data)
		if err != nil {
			return
		}
		got, err := stateDictTensors(v, fakeStorage)
		if err != nil {
			return
		}
		for name, x := range got {
			if numel(x.Shape) != len(x.Data) {
				t.Fatalf("tensor %q: shape %v with %d values", name, x.Shape, len(x.Data))
			}
		}
	})
}

func FuzzReadTorchZip(f *testing.F) {
	ts, storages, _ := sampleStateDict()
	w := newPickleWriter(2)
	w.stateDict(ts)
	f.Add(torchZip(f, "archive", w.stop(), storages, "little"))
	w = newPickleWriter(4)
	w.stateDict(ts[:3])
	f.Add(torchZip(f, "pytorch_model", w.stop(), storages, ""))
	f.Add(torchZip(f, "archive", hostilePickles()[0].pkl, nil, "little"))
	f.Add([]byte{0x80, 0x02, 0x8a, 0x0a})
	f.Fuzz(func(t *testing.T, data []byte) {
		got, err := readTorchZip("fuzz.bin", bytes.NewReader(data), int64(len(data)))
		if err != nil {
			if !strings.HasPrefix(err.Error(), "fuzz.bin: ") {
				t.Errorf("error does not name the file: %v", err)
			}
			return
		}
		for name, x := range got {
			if numel(x.Shape) != len(x.Data) {
				t.Fatalf("tensor %q: shape %v with %d values", name, x.Shape, len(x.Data))
			}
		}
	})
}
