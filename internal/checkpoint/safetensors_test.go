package checkpoint

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestF16ToFloat32(t *testing.T) {
	tests := []struct {
		h    uint16
		want float32
	}{
		{0x0000, 0},
		{0x3c00, 1},
		{0xc100, -2.5},
		{0x7bff, 65504},
		{0xfbff, -65504},
		{0x3555, 0.333251953125},
		{0x0400, float32(math.Ldexp(1, -14))},                    // smallest normal
		{0x0001, float32(math.Ldexp(1, -24))},                    // smallest subnormal
		{0x03ff, float32(math.Ldexp(1023, -24))},                 // largest subnormal
		{0x8001, -float32(math.Ldexp(1, -24))},                   // negative subnormal
		{0x0200, float32(math.Ldexp(1, -15))},                    // subnormal, one bit
		{0x7c00, float32(math.Inf(1))},                           // +inf
		{0xfc00, float32(math.Inf(-1))},                          // -inf
		{0x3bff, float32(1 - math.Ldexp(1, -11))},                // largest below one
		{0x3c01, float32(1 + math.Ldexp(1, -10))},                // smallest above one
		{0x5640, 100},                                            // integer
		{0xd640, -100},                                           // negative integer
		{0x1400, float32(math.Ldexp(1, -10))},                    // power of two
		{0x0155, float32(math.Ldexp(0x155, -24))},                // subnormal pattern
		{0x7800, 32768},                                          // large power of two
		{0x4248, 3.140625},                                       // pi, rounded
		{0x2e66, float32(0.0999755859375)},                       // 0.1, rounded
		{0x8000, float32(math.Copysign(0, -1))},                  // -0
		{0x0002, float32(math.Ldexp(1, -23))},                    // subnormal 2
		{0x0003, float32(math.Ldexp(3, -24))},                    // subnormal 3
		{0x03fe, float32(math.Ldexp(1022, -24))},                 // subnormal
		{0x0401, float32(math.Ldexp(1025, -24))},                 // just above normal boundary
		{0x7bfe, 65472},                                          // below max
		{0x3800, 0.5},                                            // half
		{0xb800, -0.5},                                           // minus half
		{0x4000, 2},                                              // two
		{0x4400, 4},                                              // four
		{0x4900, 10},                                             // ten
		{0x3c00 | 0x8000, -1},                                    // minus one
		{0x0000 | 0x8000 | 0x0001, -float32(math.Ldexp(1, -24))}, // tiny negative
	}
	for _, tt := range tests {
		got := F16ToFloat32(tt.h)
		if math.Float32bits(got) != math.Float32bits(tt.want) {
			t.Errorf("F16ToFloat32(%#04x) = %g (%#08x), want %g (%#08x)", tt.h, got, math.Float32bits(got), tt.want, math.Float32bits(tt.want))
		}
	}
	for _, h := range []uint16{0x7e00, 0x7c01, 0xfe00, 0x7fff} {
		if got := F16ToFloat32(h); !math.IsNaN(float64(got)) {
			t.Errorf("F16ToFloat32(%#04x) = %g, want NaN", h, got)
		}
	}
	// Every pattern against the definition: (-1)^s · 2^(e-15) · (1 + m/1024),
	// or 2^-14 · m/1024 for subnormals.
	for h := range 1 << 16 {
		s, e, m := h>>15, (h>>10)&0x1f, h&0x3ff
		var want float64
		switch {
		case e == 0x1f && m == 0:
			want = math.Inf(1)
		case e == 0x1f:
			want = math.NaN()
		case e == 0:
			want = math.Ldexp(float64(m), -24)
		default:
			want = math.Ldexp(1+float64(m)/1024, e-15)
		}
		if s == 1 {
			want = -want
		}
		got := float64(F16ToFloat32(uint16(h)))
		if math.IsNaN(want) != math.IsNaN(got) || (!math.IsNaN(want) && (got != want || math.Signbit(got) != math.Signbit(want))) {
			t.Fatalf("F16ToFloat32(%#04x) = %g, want %g", h, got, want)
		}
	}
}

func TestBF16ToFloat32(t *testing.T) {
	tests := []struct {
		h    uint16
		want float32
	}{
		{0x0000, 0},
		{0x3f80, 1},
		{0xc020, -2.5},
		{0x477f, 65280},
		{0x7f7f, math.Float32frombits(0x7f7f0000)}, // largest finite
		{0x0080, float32(math.Ldexp(1, -126))},     // smallest normal
		{0x0001, float32(math.Ldexp(1, -133))},     // smallest subnormal
		{0x8001, -float32(math.Ldexp(1, -133))},    // negative subnormal
		{0x7f80, float32(math.Inf(1))},             // +inf
		{0xff80, float32(math.Inf(-1))},            // -inf
		{0x8000, float32(math.Copysign(0, -1))},    // -0
		{0x3dcd, math.Float32frombits(0x3dcd0000)}, // 0.1, truncated
		{0x4049, math.Float32frombits(0x40490000)}, // pi, truncated
		{0x007f, float32(math.Ldexp(127, -133))},   // largest subnormal
		{0xbf80, -1},                               // minus one
		{0x4120, 10},                               // ten
		{0x3f00, 0.5},                              // half
		{0x4300, 128},                              // 128
		{0xc2c8, -100},                             // -100
		{0x3c23, math.Float32frombits(0x3c230000)}, // ~0.01
		{0x0040, float32(math.Ldexp(1, -127))},     // subnormal
		{0x3f81, float32(1 + math.Ldexp(1, -7))},   // one ulp above one
		{0x7f7e, math.Float32frombits(0x7f7e0000)}, // big
		{0x00ff, math.Float32frombits(0x00ff0000)}, // normal near min
		{0x4780, 65536},                            // 2^16
		{0x5f80, float32(math.Ldexp(1, 64))},       // 2^64
		{0x2f80, float32(math.Ldexp(1, -32))},      // 2^-32
		{0x8080, -float32(math.Ldexp(1, -126))},    // -min normal
		{0x3e80, 0.25},                             // quarter
		{0x4040, 3},                                // three
	}
	for _, tt := range tests {
		got := BF16ToFloat32(tt.h)
		if math.Float32bits(got) != math.Float32bits(tt.want) {
			t.Errorf("BF16ToFloat32(%#04x) = %g, want %g", tt.h, got, tt.want)
		}
	}
	if got := BF16ToFloat32(0x7fc0); !math.IsNaN(float64(got)) {
		t.Errorf("BF16ToFloat32(0x7fc0) = %g, want NaN", got)
	}
}

// stFile builds a safetensors file from a raw header object and data bytes.
func stFile(header string, data []byte) []byte {
	var b bytes.Buffer
	var n [8]byte
	binary.LittleEndian.PutUint64(n[:], uint64(len(header)))
	b.Write(n[:])
	b.WriteString(header)
	b.Write(data)
	return b.Bytes()
}

func TestReadSafetensorsDtypes(t *testing.T) {
	var data bytes.Buffer
	data.Write(u16Bytes([]uint16{0x3f80, 0xc020, 0x477f, 0x0001}))         // bf16 [0,8)
	data.Write(u16Bytes([]uint16{0x3c00, 0xc100, 0x7bff, 0x0001, 0x7c00})) // f16 [8,18)
	data.Write(f32Bytes([]float32{1.5, -3}))                               // f32 [18,26)
	var f64 [16]byte
	binary.LittleEndian.PutUint64(f64[:], math.Float64bits(0.25))
	binary.LittleEndian.PutUint64(f64[8:], math.Float64bits(-1e10))
	data.Write(f64[:]) // f64 [26,42)
	var i64 [8]byte
	binary.LittleEndian.PutUint64(i64[:], uint64(0xffffffffffffff85)) // -123
	data.Write(i64[:])                                                // i64 [42,50)
	data.Write([]byte{0, 7, 255})                                     // u8 [50,53)
	header := `{"__metadata__":{"format":"pt"},
		"bf":{"dtype":"BF16","shape":[2,2],"data_offsets":[0,8]},
		"h":{"dtype":"F16","shape":[5],"data_offsets":[8,18]},
		"f":{"dtype":"F32","shape":[2,1],"data_offsets":[18,26]},
		"d":{"dtype":"F64","shape":[2],"data_offsets":[26,42]},
		"l":{"dtype":"I64","shape":[],"data_offsets":[42,50]},
		"b":{"dtype":"U8","shape":[3],"data_offsets":[50,53]},
		"e":{"dtype":"F32","shape":[0,4],"data_offsets":[53,53]}}`
	p := writeFile(t, t.TempDir(), "x.safetensors", stFile(header, data.Bytes()))
	got, err := ReadSafetensors(p)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]Tensor{
		"bf": {Shape: []int{2, 2}, Data: []float32{1, -2.5, 65280, float32(math.Ldexp(1, -133))}},
		"h":  {Shape: []int{5}, Data: []float32{1, -2.5, 65504, float32(math.Ldexp(1, -24)), float32(math.Inf(1))}},
		"f":  {Shape: []int{2, 1}, Data: []float32{1.5, -3}},
		"d":  {Shape: []int{2}, Data: []float32{0.25, -1e10}},
		"l":  {Shape: []int{}, Data: []float32{-123}},
		"b":  {Shape: []int{3}, Data: []float32{0, 7, 255}},
		"e":  {Shape: []int{0, 4}, Data: []float32{}},
	}
	if len(got) != len(want) {
		t.Fatalf("got %d tensors, want %d", len(got), len(want))
	}
	for name, w := range want {
		g := got[name]
		if g == nil {
			t.Errorf("tensor %q missing", name)
			continue
		}
		if g.Name != name || !slices.Equal(g.Shape, w.Shape) || !slices.Equal(g.Data, w.Data) {
			t.Errorf("tensor %q = %v %v %v, want %v %v", name, g.Name, g.Shape, g.Data, w.Shape, w.Data)
		}
	}
}

func TestWriteSafetensorsRoundTrip(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "m.safetensors")
	ts := []*Tensor{
		{Name: "z.last", Shape: []int{2, 3}, Data: []float32{1, 2, 3, 4, 5, float32(math.Inf(-1))}},
		{Name: "a.first", Shape: []int{1}, Data: []float32{-0.5}},
		{Name: "scalar", Shape: []int{}, Data: []float32{7}},
		{Name: "empty", Shape: []int{0}, Data: nil},
	}
	if err := WriteSafetensors(p, ts, map[string]string{"format": "pt"}); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	hlen := binary.LittleEndian.Uint64(raw)
	if (8+hlen)%8 != 0 {
		t.Errorf("data section starts at %d, not 8-aligned", 8+hlen)
	}
	// Header order follows the input order.
	hdr := string(raw[8 : 8+hlen])
	if i, j := strings.Index(hdr, "z.last"), strings.Index(hdr, "a.first"); i < 0 || j < i {
		t.Errorf("header order not preserved: %s", hdr)
	}
	if !json.Valid(raw[8 : 8+hlen]) {
		t.Errorf("header is not valid JSON: %q", hdr)
	}
	entries, meta, err := parseSafetensorsHeader(p, bytes.NewReader(raw), int64(len(raw)))
	if err != nil {
		t.Fatal(err)
	}
	if meta["format"] != "pt" {
		t.Errorf("metadata = %v", meta)
	}
	for i, e := range entries {
		if e.name != ts[i].Name {
			t.Errorf("entry %d = %q, want %q", i, e.name, ts[i].Name)
		}
	}
	got, err := ReadSafetensors(p)
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range ts {
		g := got[w.Name]
		if g == nil || !slices.Equal(g.Shape, w.Shape) || !slices.Equal(g.Data, w.Data) && len(w.Data) > 0 {
			t.Errorf("tensor %q: got %+v, want %+v", w.Name, g, w)
		}
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Errorf("directory holds %d entries, want just the file", len(ents))
	}
}

func TestWriteSafetensorsErrorLeavesFile(t *testing.T) {
	dir := t.TempDir()
	p := writeFile(t, dir, "m.safetensors", []byte("old contents"))
	tests := []struct {
		name string
		ts   []*Tensor
		want string
	}{
		{"shape", []*Tensor{{Name: "a", Shape: []int{2, 2}, Data: []float32{1, 2, 3}}}, "does not match"},
		{"duplicate", []*Tensor{{Name: "a", Shape: []int{1}, Data: []float32{1}}, {Name: "a", Shape: []int{1}, Data: []float32{1}}}, "twice"},
		{"metadata name", []*Tensor{{Name: "__metadata__", Shape: []int{1}, Data: []float32{1}}}, "invalid tensor name"},
		{"negative dim", []*Tensor{{Name: "a", Shape: []int{-1}, Data: nil}}, "does not match"},
		{"nil", []*Tensor{nil}, "nil tensor"},
	}
	for _, tt := range tests {
		err := WriteSafetensors(p, tt.ts, nil)
		if err == nil || !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), p) {
			t.Errorf("%s: err = %v, want one naming %s and containing %q", tt.name, err, p, tt.want)
		}
	}
	if b, _ := os.ReadFile(p); string(b) != "old contents" {
		t.Errorf("destination changed to %q", b)
	}
	// A directory that cannot be written: no temp file is left behind and
	// the error names the path.
	ro := filepath.Join(dir, "missing", "m.safetensors")
	if err := WriteSafetensors(ro, nil, nil); err == nil || !strings.Contains(err.Error(), ro) {
		t.Errorf("write into a missing directory: err = %v", err)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Errorf("directory holds %d entries, want 1", len(ents))
	}
}

func TestReadSafetensorsErrors(t *testing.T) {
	good := `{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}`
	data8 := make([]byte, 8)
	hugeLen := make([]byte, 16)
	binary.LittleEndian.PutUint64(hugeLen, 200<<20)
	pastEnd := make([]byte, 16)
	binary.LittleEndian.PutUint64(pastEnd, 9)
	tests := []struct {
		name string
		file []byte
		want string
	}{
		{"empty", nil, "too short"},
		{"seven bytes", []byte{1, 2, 3, 4, 5, 6, 7}, "too short"},
		{"header too large", hugeLen, "exceeds the"},
		{"header past end", pastEnd, "runs past the end of the file"},
		{"max uint64", []byte{255, 255, 255, 255, 255, 255, 255, 255, '{', '}'}, "exceeds the"},
		{"not json", stFile("not json", nil), "not JSON"},
		{"array", stFile("[1,2]", nil), "not a JSON object"},
		{"trailing", stFile(`{} {}`, nil), "trailing data"},
		{"truncated json", stFile(`{"a":{"dtype":"F32"`, nil), "not valid JSON"},
		{"bad dtype", stFile(`{"a":{"dtype":"Q7","shape":[2],"data_offsets":[0,8]}}`, data8), `tensor "a": dtype "Q7" is not supported`},
		{"f8 dtype", stFile(`{"a":{"dtype":"F8_E4M3","shape":[8],"data_offsets":[0,8]}}`, data8), "not supported"},
		{"negative dim", stFile(`{"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}}`, data8), "not a non-negative integer"},
		{"fractional dim", stFile(`{"a":{"dtype":"F32","shape":[1.5],"data_offsets":[0,8]}}`, data8), "not a non-negative integer"},
		{"shape vs range", stFile(`{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}`, data8), `tensor "a": shape [3] of F32 needs a different byte count`},
		{"overflowing shape", stFile(`{"a":{"dtype":"F32","shape":[4294967296,4294967296,4],"data_offsets":[0,0]}}`, data8), "different byte count"},
		{"range past end", stFile(good, data8[:4]), `tensor "a": data range [62,70) beyond file size 66`},
		{"huge offset", stFile(`{"a":{"dtype":"F32","shape":[2],"data_offsets":[9223372036854775800,9223372036854775807]}}`, data8), "beyond file size"},
		{"offset overflow", stFile(`{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,18446744073709551615]}}`, data8), "not a non-negative integer"},
		{"reversed range", stFile(`{"a":{"dtype":"F32","shape":[0],"data_offsets":[8,0]}}`, data8), "ends before it begins"},
		{"one offset", stFile(`{"a":{"dtype":"F32","shape":[2],"data_offsets":[8]}}`, data8), "2 entries"},
		{"missing shape", stFile(`{"a":{"dtype":"F32","data_offsets":[0,8]}}`, data8), "needs dtype, shape and data_offsets"},
		{"duplicate", stFile(`{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}`, data8), `names "a" twice`},
		{"overlap", stFile(`{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}`, data8), "overlapping"},
		{"bad metadata", stFile(`{"__metadata__":{"x":1}}`, nil), "__metadata__ must map strings to strings"},
		{"entry not object", stFile(`{"a":5}`, nil), `tensor "a": malformed header entry`},
		{"empty name", stFile(`{"":{"dtype":"F32","shape":[0],"data_offsets":[0,0]}}`, nil), "empty name"},
	}
	dir := t.TempDir()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := writeFile(t, dir, "model.safetensors", tt.file)
			_, err := ReadSafetensors(p)
			if err == nil {
				t.Fatalf("no error, want %q", tt.want)
			}
			if !strings.Contains(err.Error(), tt.want) || !strings.HasPrefix(err.Error(), p+": ") {
				t.Errorf("err = %q, want it to start with %q and contain %q", err, p, tt.want)
			}
		})
	}
	if _, err := ReadSafetensors(filepath.Join(dir, "nope")); err == nil {
		t.Error("missing file: no error")
	}
	if _, err := ReadSafetensors(dir); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("directory: err = %v", err)
	}
}

func FuzzReadSafetensors(f *testing.F) {
	f.Add(stFile(`{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}`, make([]byte, 8)))
	f.Add(stFile(`{"__metadata__":{"format":"pt"},"b":{"dtype":"BF16","shape":[2,2],"data_offsets":[0,8]}}`, make([]byte, 8)))
	f.Add(stFile(`{"h":{"dtype":"F16","shape":[1],"data_offsets":[0,2]},"l":{"dtype":"I64","shape":[],"data_offsets":[2,10]}}`, make([]byte, 10)))
	f.Add(stFile(`{"u":{"dtype":"U8","shape":[3],"data_offsets":[0,3]},"d":{"dtype":"F64","shape":[0],"data_offsets":[3,3]}}`, make([]byte, 3)))
	f.Add(stFile(`{}`, nil))
	f.Add([]byte{})
	hdr, _ := safetensorsHeader([]*Tensor{{Name: "x", Shape: []int{1, 2}, Data: []float32{1, 2}}}, map[string]string{"k": "v"})
	f.Add(stFile(string(hdr), f32Bytes([]float32{1, 2})))
	f.Fuzz(func(t *testing.T, data []byte) {
		ts, err := readSafetensors("fuzz.safetensors", bytes.NewReader(data), int64(len(data)))
		if err != nil {
			if !strings.HasPrefix(err.Error(), "fuzz.safetensors: ") {
				t.Errorf("error does not name the file: %v", err)
			}
			return
		}
		total := 0
		for name, x := range ts {
			if x.Name != name || numel(x.Shape) != len(x.Data) {
				t.Fatalf("tensor %q: shape %v with %d values", name, x.Shape, len(x.Data))
			}
			total += len(x.Data)
		}
		if total > len(data) {
			t.Fatalf("%d values from %d bytes", total, len(data))
		}
	})
}
