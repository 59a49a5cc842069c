package checkpoint

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"strconv"
)

// This file is a restricted unpickler: enough of Python's pickle virtual
// machine (protocols 0 to 5) to read the data.pkl of a torch.save state
// dict, and nothing that can run code. Globals are looked up in a fixed
// allow-list and interpreted in Go; REDUCE, NEWOBJ and BUILD act only on
// those. Every index is checked and every allocation charged against a
// budget, so hostile input fails with an error.

// Limits against hostile pickles. A real state dict's data.pkl is a few
// hundred kilobytes.
const (
	maxPickleSize   = 64 << 20  // bytes of data.pkl
	maxPickleStack  = 1 << 20   // values on the stack
	maxPickleMarks  = 1 << 16   // nested MARKs
	maxPickleMemo   = 1 << 20   // memo entries
	maxPickleString = 16 << 20  // bytes of one string
	maxPickleBudget = 512 << 20 // approximate bytes allocated in all
	maxTensorDims   = 64
)

// Python values as the unpickler represents them:
//
//	None -> nil, bool, int64, float64, string (str), []byte (bytes),
//	pyTuple, *pyList, *pyDict, *pySet, pyGlobal, *storageRef, *tensorRef.
type (
	pyTuple []any
	pyList  struct{ items []any }
	pySet   struct{ n int } // contents are never needed
	pyDict  struct {
		keys  []any
		vals  []any
		index map[any]int
	}
	// pyGlobal is an allow-listed global named by GLOBAL or STACK_GLOBAL.
	pyGlobal struct{ module, name string }
	// pyMark is the MARK sentinel on the stack.
	pyMark struct{}
)

// storageRef is a storage named by a persistent id:
// ('storage', storage_type, key, location, numel).
type storageRef struct {
	key   string
	dt    dtype
	numel int64
}

// tensorRef is a tensor view on a storage, as _rebuild_tensor_v2 builds it.
type tensorRef struct {
	storage *storageRef
	offset  int64   // in elements
	size    []int64 // shape
	stride  []int64 // in elements
}

func (d *pyDict) set(k, v any) error {
	switch k.(type) {
	case nil, bool, int64, float64, string, pyGlobal:
	default:
		return fmt.Errorf("dict key of type %s is not supported", pyTypeName(k))
	}
	if d.index == nil {
		d.index = make(map[any]int)
	}
	if i, ok := d.index[k]; ok {
		d.vals[i] = v
		return nil
	}
	d.index[k] = len(d.keys)
	d.keys = append(d.keys, k)
	d.vals = append(d.vals, v)
	return nil
}

func (d *pyDict) get(k string) (any, bool) {
	i, ok := d.index[k]
	if !ok {
		return nil, false
	}
	return d.vals[i], true
}

// pyTypeName names a value's Python type for error messages. It never
// prints the value itself: containers may be cyclic.
func pyTypeName(v any) string {
	switch v := v.(type) {
	case nil:
		return "None"
	case bool:
		return "bool"
	case int64:
		return "int"
	case float64:
		return "float"
	case string:
		return "str"
	case []byte:
		return "bytes"
	case pyTuple:
		return "tuple"
	case *pyList:
		return "list"
	case *pyDict:
		return "dict"
	case *pySet:
		return "set"
	case pyGlobal:
		return v.module + "." + v.name
	case *storageRef:
		return "storage"
	case *tensorRef:
		return "tensor"
	case pyMark:
		return "mark"
	}
	return "unknown"
}

// globalKind says what an allow-listed global is.
type globalKind int

const (
	gOrderedDict globalKind = iota + 1
	gRebuildTensorV2
	gRebuildTensor
	gRebuildParameter
	gRebuildParameterWithState
	gRebuildFromTypeV2
	gTensorClass // torch.Tensor, torch.nn.parameter.Parameter
	gStorage
	gUntypedStorage
)

// allowedGlobals is everything a torch.save state dict may name.
var allowedGlobals = map[pyGlobal]globalKind{
	{"collections", "OrderedDict"}:                    gOrderedDict,
	{"torch._utils", "_rebuild_tensor_v2"}:            gRebuildTensorV2,
	{"torch._utils", "_rebuild_tensor"}:               gRebuildTensor,
	{"torch._utils", "_rebuild_parameter"}:            gRebuildParameter,
	{"torch._utils", "_rebuild_parameter_with_state"}: gRebuildParameterWithState,
	{"torch._tensor", "_rebuild_from_type_v2"}:        gRebuildFromTypeV2,
	{"torch", "Tensor"}:                               gTensorClass,
	{"torch._tensor", "Tensor"}:                       gTensorClass,
	{"torch.nn.parameter", "Parameter"}:               gTensorClass,
	{"torch", "FloatStorage"}:                         gStorage,
	{"torch", "HalfStorage"}:                          gStorage,
	{"torch", "BFloat16Storage"}:                      gStorage,
	{"torch", "DoubleStorage"}:                        gStorage,
	{"torch", "LongStorage"}:                          gStorage,
	{"torch", "IntStorage"}:                           gStorage,
	{"torch", "ShortStorage"}:                         gStorage,
	{"torch", "CharStorage"}:                          gStorage,
	{"torch", "ByteStorage"}:                          gStorage,
	{"torch", "BoolStorage"}:                          gStorage,
	{"torch", "UntypedStorage"}:                       gUntypedStorage,
	{"torch.storage", "UntypedStorage"}:               gUntypedStorage,
}

var storageDtypes = map[string]dtype{
	"FloatStorage":    dtF32,
	"HalfStorage":     dtF16,
	"BFloat16Storage": dtBF16,
	"DoubleStorage":   dtF64,
	"LongStorage":     dtI64,
	"IntStorage":      dtI32,
	"ShortStorage":    dtI16,
	"CharStorage":     dtI8,
	"ByteStorage":     dtU8,
	"BoolStorage":     dtBool,
}

// errGlobal reports a global outside the allow-list.
type errGlobal struct{ name string }

func (e *errGlobal) Error() string {
	return fmt.Sprintf("pickle names global %q, which a state dict never needs; refusing to load", e.name)
}

// unpickler holds the machine's state.
type unpickler struct {
	data     []byte
	pos      int
	stack    []any
	marks    []int
	memo     map[int64]any
	budget   int64
	storages map[string]*storageRef
}

// unpickle runs the restricted pickle machine over data and returns the
// value STOP leaves. Persistent ids must be torch storage ids.
func unpickle(data []byte) (any, error) {
	if len(data) > maxPickleSize {
		return nil, fmt.Errorf("pickle of %d bytes exceeds the %d-byte limit", len(data), maxPickleSize)
	}
	u := &unpickler{
		data:     data,
		memo:     make(map[int64]any),
		budget:   maxPickleBudget,
		storages: make(map[string]*storageRef),
	}
	v, err := u.run()
	if err != nil {
		var g *errGlobal
		if errors.As(err, &g) {
			return nil, g
		}
		return nil, fmt.Errorf("pickle: %w (at byte %d)", err, u.pos)
	}
	return v, nil
}

var errTruncated = errors.New("truncated")

func (u *unpickler) charge(n int64) error {
	u.budget -= n
	if u.budget < 0 {
		return errors.New("allocates too much memory")
	}
	return nil
}

func (u *unpickler) read(n int) ([]byte, error) {
	if n < 0 || n > len(u.data)-u.pos {
		return nil, errTruncated
	}
	b := u.data[u.pos : u.pos+n]
	u.pos += n
	return b, nil
}

func (u *unpickler) readByte() (byte, error) {
	if u.pos >= len(u.data) {
		return 0, errTruncated
	}
	b := u.data[u.pos]
	u.pos++
	return b, nil
}

// readLine reads up to and excluding the next '\n'.
func (u *unpickler) readLine() (string, error) {
	i := bytes.IndexByte(u.data[u.pos:], '\n')
	if i < 0 {
		return "", errTruncated
	}
	if i > maxPickleString {
		return "", errors.New("line too long")
	}
	s := string(u.data[u.pos : u.pos+i])
	u.pos += i + 1
	return s, u.charge(int64(i))
}

// readString reads a length-prefixed string of n bytes.
func (u *unpickler) readString(n uint64) (string, error) {
	if n > maxPickleString {
		return "", fmt.Errorf("string of %d bytes exceeds the %d-byte limit", n, maxPickleString)
	}
	b, err := u.read(int(n))
	if err != nil {
		return "", err
	}
	return string(b), u.charge(int64(n))
}

func (u *unpickler) push(v any) error {
	if len(u.stack) >= maxPickleStack {
		return errors.New("stack too deep")
	}
	u.stack = append(u.stack, v)
	return u.charge(16)
}

func (u *unpickler) pop() (any, error) {
	if len(u.stack) == 0 || (len(u.marks) > 0 && len(u.stack) <= u.marks[len(u.marks)-1]) {
		return nil, errors.New("stack underflow")
	}
	v := u.stack[len(u.stack)-1]
	u.stack = u.stack[:len(u.stack)-1]
	return v, nil
}

func (u *unpickler) top() (any, error) {
	if len(u.stack) == 0 || (len(u.marks) > 0 && len(u.stack) <= u.marks[len(u.marks)-1]) {
		return nil, errors.New("stack underflow")
	}
	return u.stack[len(u.stack)-1], nil
}

// popMark pops everything above the innermost MARK, and the mark.
func (u *unpickler) popMark() ([]any, error) {
	if len(u.marks) == 0 {
		return nil, errors.New("no MARK on the stack")
	}
	m := u.marks[len(u.marks)-1]
	u.marks = u.marks[:len(u.marks)-1]
	items := make([]any, len(u.stack)-m)
	copy(items, u.stack[m:])
	u.stack = u.stack[:m]
	return items, u.charge(int64(16 * len(items)))
}

func (u *unpickler) memoPut(idx int64) error {
	v, err := u.top()
	if err != nil {
		return err
	}
	if idx < 0 {
		return errors.New("negative memo index")
	}
	if _, ok := u.memo[idx]; !ok && len(u.memo) >= maxPickleMemo {
		return errors.New("memo too large")
	}
	u.memo[idx] = v
	return u.charge(48)
}

func (u *unpickler) memoGet(idx int64) error {
	v, ok := u.memo[idx]
	if !ok {
		return fmt.Errorf("memo index %d was never stored", idx)
	}
	return u.push(v)
}

// global resolves module.name against the allow-list.
func (u *unpickler) global(module, name string) error {
	g := pyGlobal{module, name}
	if _, ok := allowedGlobals[g]; !ok {
		full := module + "." + name
		if len(full) > 200 {
			full = full[:200] + "..."
		}
		return &errGlobal{full}
	}
	return u.push(g)
}

func (u *unpickler) run() (any, error) {
	for {
		op, err := u.readByte()
		if err != nil {
			return nil, errors.New("truncated: no STOP opcode")
		}
		if err := u.step(op); err != nil {
			if err == errStop {
				v, err := u.pop()
				if err != nil {
					return nil, err
				}
				return v, nil
			}
			return nil, fmt.Errorf("opcode 0x%02x: %w", op, err)
		}
	}
}

var errStop = errors.New("stop")

func (u *unpickler) step(op byte) error {
	le := binary.LittleEndian
	switch op {
	case 0x80: // PROTO
		p, err := u.readByte()
		if err != nil {
			return err
		}
		if p > 5 {
			return fmt.Errorf("pickle protocol %d is not supported", p)
		}
	case 0x95: // FRAME: an 8-byte length; frames need no special handling
		_, err := u.read(8)
		return err
	case '.': // STOP
		return errStop
	case '(': // MARK
		if len(u.marks) >= maxPickleMarks {
			return errors.New("too many nested MARKs")
		}
		u.marks = append(u.marks, len(u.stack))
	case '0': // POP
		if len(u.marks) > 0 && len(u.stack) == u.marks[len(u.marks)-1] {
			// Python's POP discards a mark when one is on top.
			u.marks = u.marks[:len(u.marks)-1]
			return nil
		}
		_, err := u.pop()
		return err
	case '1': // POP_MARK
		_, err := u.popMark()
		return err
	case '2': // DUP
		v, err := u.top()
		if err != nil {
			return err
		}
		return u.push(v)

	// Constants.
	case 'N':
		return u.push(nil)
	case 0x88: // NEWTRUE
		return u.push(true)
	case 0x89: // NEWFALSE
		return u.push(false)
	case 'J': // BININT
		b, err := u.read(4)
		if err != nil {
			return err
		}
		return u.push(int64(int32(le.Uint32(b))))
	case 'K': // BININT1
		b, err := u.readByte()
		if err != nil {
			return err
		}
		return u.push(int64(b))
	case 'M': // BININT2
		b, err := u.read(2)
		if err != nil {
			return err
		}
		return u.push(int64(le.Uint16(b)))
	case 0x8a, 0x8b: // LONG1, LONG4
		var n uint64
		if op == 0x8a {
			b, err := u.readByte()
			if err != nil {
				return err
			}
			n = uint64(b)
		} else {
			b, err := u.read(4)
			if err != nil {
				return err
			}
			n = uint64(le.Uint32(b))
		}
		if n > 8 {
			return fmt.Errorf("integer of %d bytes does not fit in 64 bits", n)
		}
		b, err := u.read(int(n))
		if err != nil {
			return err
		}
		var v int64
		if n > 0 {
			var buf [8]byte
			copy(buf[:], b)
			if b[n-1]&0x80 != 0 { // sign-extend
				for i := n; i < 8; i++ {
					buf[i] = 0xff
				}
			}
			v = int64(le.Uint64(buf[:]))
		}
		return u.push(v)
	case 'I': // INT (protocol 0): decimal line; "00"/"01" are False/True
		s, err := u.readLine()
		if err != nil {
			return err
		}
		switch s {
		case "00":
			return u.push(false)
		case "01":
			return u.push(true)
		}
		v, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return fmt.Errorf("bad INT %q", s)
		}
		return u.push(v)
	case 'G': // BINFLOAT: big-endian float64
		b, err := u.read(8)
		if err != nil {
			return err
		}
		return u.push(math.Float64frombits(binary.BigEndian.Uint64(b)))

	// Strings and bytes.
	case 'X', 'T', 'B': // BINUNICODE, BINSTRING, BINBYTES: 4-byte length
		b, err := u.read(4)
		if err != nil {
			return err
		}
		n := uint64(le.Uint32(b))
		if op == 'T' && int32(n) < 0 {
			return errors.New("negative BINSTRING length")
		}
		s, err := u.readString(n)
		if err != nil {
			return err
		}
		if op == 'B' {
			return u.push([]byte(s))
		}
		return u.push(s)
	case 0x8c, 'U', 'C': // SHORT_BINUNICODE, SHORT_BINSTRING, SHORT_BINBYTES
		n, err := u.readByte()
		if err != nil {
			return err
		}
		s, err := u.readString(uint64(n))
		if err != nil {
			return err
		}
		if op == 'C' {
			return u.push([]byte(s))
		}
		return u.push(s)
	case 0x8d, 0x8e, 0x96: // BINUNICODE8, BINBYTES8, BYTEARRAY8
		b, err := u.read(8)
		if err != nil {
			return err
		}
		s, err := u.readString(le.Uint64(b))
		if err != nil {
			return err
		}
		if op == 0x8d {
			return u.push(s)
		}
		return u.push([]byte(s))
	case 0x98: // READONLY_BUFFER: a no-op on bytes
		_, err := u.top()
		return err

	// Containers.
	case ')': // EMPTY_TUPLE
		return u.push(pyTuple{})
	case 0x85, 0x86, 0x87: // TUPLE1, TUPLE2, TUPLE3
		n := int(op - 0x84)
		t := make(pyTuple, n)
		for i := n - 1; i >= 0; i-- {
			v, err := u.pop()
			if err != nil {
				return err
			}
			t[i] = v
		}
		return u.push(t)
	case 't': // TUPLE
		items, err := u.popMark()
		if err != nil {
			return err
		}
		return u.push(pyTuple(items))
	case ']': // EMPTY_LIST
		if err := u.charge(32); err != nil {
			return err
		}
		return u.push(&pyList{})
	case 'l': // LIST
		items, err := u.popMark()
		if err != nil {
			return err
		}
		return u.push(&pyList{items: items})
	case 'a': // APPEND
		v, err := u.pop()
		if err != nil {
			return err
		}
		return u.appendTo([]any{v})
	case 'e': // APPENDS
		items, err := u.popMark()
		if err != nil {
			return err
		}
		return u.appendTo(items)
	case '}': // EMPTY_DICT
		if err := u.charge(64); err != nil {
			return err
		}
		return u.push(&pyDict{})
	case 'd': // DICT
		items, err := u.popMark()
		if err != nil {
			return err
		}
		d := &pyDict{}
		if err := u.setItems(d, items); err != nil {
			return err
		}
		return u.push(d)
	case 's': // SETITEM
		v, err := u.pop()
		if err != nil {
			return err
		}
		k, err := u.pop()
		if err != nil {
			return err
		}
		return u.setTopItems("SETITEM", []any{k, v})
	case 'u': // SETITEMS
		items, err := u.popMark()
		if err != nil {
			return err
		}
		return u.setTopItems("SETITEMS", items)
	case 0x8f: // EMPTY_SET
		return u.push(&pySet{})
	case 0x90: // ADDITEMS
		items, err := u.popMark()
		if err != nil {
			return err
		}
		t, err := u.top()
		if err != nil {
			return err
		}
		s, ok := t.(*pySet)
		if !ok {
			return fmt.Errorf("ADDITEMS on a %s", pyTypeName(t))
		}
		s.n += len(items)
	case 0x91: // FROZENSET
		items, err := u.popMark()
		if err != nil {
			return err
		}
		return u.push(&pySet{n: len(items)})

	// Memo.
	case 'q': // BINPUT
		b, err := u.readByte()
		if err != nil {
			return err
		}
		return u.memoPut(int64(b))
	case 'r': // LONG_BINPUT
		b, err := u.read(4)
		if err != nil {
			return err
		}
		return u.memoPut(int64(le.Uint32(b)))
	case 0x94: // MEMOIZE
		return u.memoPut(int64(len(u.memo)))
	case 'p': // PUT (protocol 0)
		s, err := u.readLine()
		if err != nil {
			return err
		}
		i, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return fmt.Errorf("bad PUT index %q", s)
		}
		return u.memoPut(i)
	case 'h': // BINGET
		b, err := u.readByte()
		if err != nil {
			return err
		}
		return u.memoGet(int64(b))
	case 'j': // LONG_BINGET
		b, err := u.read(4)
		if err != nil {
			return err
		}
		return u.memoGet(int64(le.Uint32(b)))
	case 'g': // GET (protocol 0)
		s, err := u.readLine()
		if err != nil {
			return err
		}
		i, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return fmt.Errorf("bad GET index %q", s)
		}
		return u.memoGet(i)

	// Globals and calls: interpreted, never executed.
	case 'c': // GLOBAL: "module\nname\n"
		mod, err := u.readLine()
		if err != nil {
			return err
		}
		name, err := u.readLine()
		if err != nil {
			return err
		}
		return u.global(mod, name)
	case 0x93: // STACK_GLOBAL
		nv, err := u.pop()
		if err != nil {
			return err
		}
		mv, err := u.pop()
		if err != nil {
			return err
		}
		mod, ok1 := mv.(string)
		name, ok2 := nv.(string)
		if !ok1 || !ok2 {
			return errors.New("STACK_GLOBAL needs two strings")
		}
		return u.global(mod, name)
	case 'R': // REDUCE
		args, err := u.pop()
		if err != nil {
			return err
		}
		fn, err := u.pop()
		if err != nil {
			return err
		}
		t, ok := args.(pyTuple)
		if !ok {
			return fmt.Errorf("REDUCE arguments are a %s, not a tuple", pyTypeName(args))
		}
		v, err := u.call(fn, t)
		if err != nil {
			return err
		}
		return u.push(v)
	case 0x81: // NEWOBJ: cls.__new__(cls, *args)
		args, err := u.pop()
		if err != nil {
			return err
		}
		cls, err := u.pop()
		if err != nil {
			return err
		}
		if g, ok := cls.(pyGlobal); ok && allowedGlobals[g] == gOrderedDict {
			if err := u.charge(64); err != nil {
				return err
			}
			return u.push(&pyDict{})
		}
		_ = args
		return fmt.Errorf("NEWOBJ of %s is not supported", pyTypeName(cls))
	case 'b': // BUILD: set state on the object below
		state, err := u.pop()
		if err != nil {
			return err
		}
		t, err := u.top()
		if err != nil {
			return err
		}
		switch t.(type) {
		case *pyDict, *tensorRef:
			// An OrderedDict's state is its instance __dict__ (a state
			// dict's _metadata); a tensor's is Python attributes. Neither
			// matters for the weights.
			_ = state
			return nil
		}
		return fmt.Errorf("BUILD on a %s is not supported", pyTypeName(t))
	case 'Q': // BINPERSID
		pid, err := u.pop()
		if err != nil {
			return err
		}
		s, err := u.persistentLoad(pid)
		if err != nil {
			return err
		}
		return u.push(s)
	default:
		return fmt.Errorf("unsupported opcode 0x%02x", op)
	}
	return nil
}

func (u *unpickler) appendTo(items []any) error {
	t, err := u.top()
	if err != nil {
		return err
	}
	l, ok := t.(*pyList)
	if !ok {
		return fmt.Errorf("APPEND to a %s", pyTypeName(t))
	}
	if err := u.charge(int64(16 * len(items))); err != nil {
		return err
	}
	l.items = append(l.items, items...)
	return nil
}

// setTopItems adds the key, value pairs of items to the dict on top of the
// stack (op names the opcode in errors).
func (u *unpickler) setTopItems(op string, items []any) error {
	t, err := u.top()
	if err != nil {
		return err
	}
	d, ok := t.(*pyDict)
	if !ok {
		return fmt.Errorf("%s on a %s", op, pyTypeName(t))
	}
	return u.setItems(d, items)
}

func (u *unpickler) setItems(d *pyDict, items []any) error {
	if len(items)%2 != 0 {
		return errors.New("odd number of items for a dict")
	}
	if err := u.charge(int64(48 * len(items))); err != nil {
		return err
	}
	for i := 0; i < len(items); i += 2 {
		if err := d.set(items[i], items[i+1]); err != nil {
			return err
		}
	}
	return nil
}

// persistentLoad resolves ('storage', storage_type, key, location, numel).
func (u *unpickler) persistentLoad(pid any) (*storageRef, error) {
	t, ok := pid.(pyTuple)
	if !ok || len(t) != 5 {
		return nil, errors.New("persistent id is not a 5-tuple ('storage', type, key, location, numel)")
	}
	if s, _ := t[0].(string); s != "storage" {
		return nil, errors.New("persistent id does not name a storage")
	}
	g, ok := t[1].(pyGlobal)
	if !ok {
		return nil, errors.New("persistent id's storage type is not a class")
	}
	dt, ok := storageDtypes[g.name]
	if !ok || g.module != "torch" {
		if allowedGlobals[g] == gUntypedStorage {
			return nil, errors.New("untyped storages carry no dtype; only typed storages (torch.FloatStorage, ...) are supported")
		}
		return nil, fmt.Errorf("persistent id's storage type %s.%s is not a storage class", g.module, g.name)
	}
	key, ok := t[2].(string)
	if !ok || key == "" {
		return nil, errors.New("persistent id's storage key is not a string")
	}
	n, ok := t[4].(int64)
	if !ok || n < 0 || n > 1<<40 {
		return nil, errors.New("persistent id's element count is not an integer in [0, 2^40]")
	}
	if s, ok := u.storages[key]; ok {
		if s.dt != dt || s.numel != n {
			return nil, fmt.Errorf("storage %q is named with two different types or sizes", key)
		}
		return s, nil
	}
	s := &storageRef{key: key, dt: dt, numel: n}
	u.storages[key] = s
	return s, u.charge(64)
}

// call interprets REDUCE of an allow-listed callable.
func (u *unpickler) call(fn any, args pyTuple) (any, error) {
	g, ok := fn.(pyGlobal)
	if !ok {
		return nil, fmt.Errorf("REDUCE calls a %s", pyTypeName(fn))
	}
	switch allowedGlobals[g] {
	case gOrderedDict:
		d := &pyDict{}
		if err := u.charge(64); err != nil {
			return nil, err
		}
		if len(args) == 0 {
			return d, nil
		}
		// OrderedDict([(k, v), ...])
		if len(args) != 1 {
			return nil, errors.New("OrderedDict takes at most one argument")
		}
		var pairs []any
		switch a := args[0].(type) {
		case *pyList:
			pairs = a.items
		case pyTuple:
			pairs = a
		default:
			return nil, fmt.Errorf("OrderedDict of a %s is not supported", pyTypeName(args[0]))
		}
		for _, p := range pairs {
			kv, ok := p.(pyTuple)
			if !ok || len(kv) != 2 {
				return nil, errors.New("OrderedDict item is not a pair")
			}
			if err := u.setItems(d, []any{kv[0], kv[1]}); err != nil {
				return nil, err
			}
		}
		return d, nil
	case gRebuildTensorV2:
		// (storage, storage_offset, size, stride, requires_grad,
		// backward_hooks[, metadata])
		if len(args) < 4 || len(args) > 7 {
			return nil, fmt.Errorf("_rebuild_tensor_v2 takes 6 or 7 arguments, got %d", len(args))
		}
		return u.rebuildTensor(args[:4])
	case gRebuildTensor:
		// (storage, storage_offset, size, stride)
		if len(args) != 4 {
			return nil, fmt.Errorf("_rebuild_tensor takes 4 arguments, got %d", len(args))
		}
		return u.rebuildTensor(args)
	case gRebuildParameter, gRebuildParameterWithState:
		// (data, requires_grad, backward_hooks[, state])
		if len(args) < 1 {
			return nil, errors.New("_rebuild_parameter without arguments")
		}
		t, ok := args[0].(*tensorRef)
		if !ok {
			return nil, fmt.Errorf("_rebuild_parameter of a %s", pyTypeName(args[0]))
		}
		return t, nil
	case gRebuildFromTypeV2:
		// (func, new_type, args, state): func(*args), then a cast to
		// new_type, which for Tensor and Parameter changes nothing here.
		if len(args) != 4 {
			return nil, fmt.Errorf("_rebuild_from_type_v2 takes 4 arguments, got %d", len(args))
		}
		cls, ok := args[1].(pyGlobal)
		if !ok || allowedGlobals[cls] != gTensorClass {
			return nil, fmt.Errorf("_rebuild_from_type_v2 to a %s is not supported", pyTypeName(args[1]))
		}
		inner, ok := args[2].(pyTuple)
		if !ok {
			return nil, errors.New("_rebuild_from_type_v2 arguments are not a tuple")
		}
		f, ok := args[0].(pyGlobal)
		if !ok {
			return nil, errors.New("_rebuild_from_type_v2 function is not a global")
		}
		switch allowedGlobals[f] {
		case gRebuildTensorV2, gRebuildTensor, gRebuildParameter, gRebuildParameterWithState:
			return u.call(f, inner)
		}
		return nil, fmt.Errorf("_rebuild_from_type_v2 of %s is not supported", pyTypeName(f))
	}
	return nil, fmt.Errorf("%s.%s is not callable here", g.module, g.name)
}

func (u *unpickler) rebuildTensor(args pyTuple) (*tensorRef, error) {
	s, ok := args[0].(*storageRef)
	if !ok {
		return nil, fmt.Errorf("tensor storage is a %s", pyTypeName(args[0]))
	}
	off, ok := args[1].(int64)
	if !ok || off < 0 {
		return nil, errors.New("tensor storage offset is not a non-negative integer")
	}
	size, err := intTuple(args[2], "size")
	if err != nil {
		return nil, err
	}
	stride, err := intTuple(args[3], "stride")
	if err != nil {
		return nil, err
	}
	if len(size) != len(stride) {
		return nil, fmt.Errorf("tensor has %d sizes but %d strides", len(size), len(stride))
	}
	if err := u.charge(int64(64 + 16*len(size))); err != nil {
		return nil, err
	}
	return &tensorRef{storage: s, offset: off, size: size, stride: stride}, nil
}

func intTuple(v any, what string) ([]int64, error) {
	t, ok := v.(pyTuple)
	if !ok {
		return nil, fmt.Errorf("tensor %s is a %s, not a tuple", what, pyTypeName(v))
	}
	if len(t) > maxTensorDims {
		return nil, fmt.Errorf("tensor has %d dimensions", len(t))
	}
	out := make([]int64, len(t))
	for i, x := range t {
		n, ok := x.(int64)
		if !ok || n < 0 {
			return nil, fmt.Errorf("tensor %s entry is not a non-negative integer", what)
		}
		out[i] = n
	}
	return out, nil
}
