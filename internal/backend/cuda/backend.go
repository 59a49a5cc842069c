// Package cuda runs the model's operations on an NVIDIA GPU.
//
// The kernels live in a shared library of our own, libmambabyte_cuda.so,
// built from the repository's cuda/ directory with `make -C cuda` (nvcc and
// cuBLAS needed there, nothing here). This package loads it at run time
// through purego, without cgo, so the default build and tests need no CUDA:
// New returns an error wrapping ErrUnavailable when the library, the driver
// or the GPU is missing.
//
// The library is looked for at $MAMBABYTE_CUDA_LIB, next to the executable,
// at ./cuda/libmambabyte_cuda.so under the working directory, and in cuda/
// of the enclosing Go module (found through go.mod from the working
// directory).
//
// Every operation has the semantics of the CPU kernel of the same name
// (package internal/backend/cpu): shapes, row strides, nil tensors, and
// which outputs are overwritten or accumulated into. Operations run
// asynchronously on the device in call order; Download, CrossEntropy and
// SumSquares wait for the work before them. A CUDA failure inside an
// operation panics with the library's message (enable Options.Sync to have
// kernel faults reported by the operation that caused them).
//
// The backend implements backend.Capturer with CUDA graphs: BeginCapture
// and EndCapture record the operations in between into a Graph, and
// Graph.Launch replays them with one launch (the per-byte decode step is
// hundreds of small launches otherwise). MAMBABYTE_CUDA_GRAPHS=0 makes
// CaptureEnabled report false, so callers run every operation directly.
//
// The backend implements backend.StepFuser (the decode step in four
// kernels per block; step.go). MAMBABYTE_CUDA_FUSED=0 makes PrepareStep
// decline, so the model steps with the general operations.
//
// Precision "fp32" computes everything in float32. "bf16" runs the GEMMs on
// bf16 tensor cores with float32 accumulation and storage: those with every
// side at least 512 on bf16 operands (copies, or operand tensors that the
// kernels producing them wrote in bf16; AllocOperand), smaller ones on
// float32 operands with CUBLAS_COMPUTE_32F_FAST_16BF. The other kernels
// compute in float32.
package cuda

import (
	"fmt"
	"math"
	"os"
	"runtime"
	"sync"

	"github.com/mambabyte/mambabyte/internal/backend"
)

// ScanChunk is the number of time steps between the states Scan saves for
// ScanBackward (cpu.ScanChunk).
const ScanChunk = 64

// Options configure a Backend.
type Options struct {
	// Precision is "fp32" (default when empty) or "bf16".
	Precision string
	// Device is the CUDA device ordinal; one device per process.
	Device int
	// Sync waits for the device after every operation so a kernel fault
	// is reported by the operation that caused it (slow; for debugging).
	Sync bool
}

// Backend runs operations on one CUDA device.
type Backend struct {
	l          *lib
	mode       int32 // GEMM mode: 0 fp32, 1 bf16
	precision  string
	noFused    bool // MAMBABYTE_CUDA_FUSED=0: no fused step
	wholeSteps int  // steps issued through the one-kernel step

	// Device buffers that Go no longer references. Cleanups run on a
	// goroutine of their own, and the library takes one caller at a time,
	// so they only queue the pointer here; Alloc and Sync free the queue
	// from the caller's goroutine.
	// Graphs likewise.
	mu      sync.Mutex
	garbage []uintptr
	graphs  []uintptr
}

// queueFree records a device buffer to free at the next Alloc or Sync.
func (be *Backend) queueFree(p uintptr) {
	be.mu.Lock()
	be.garbage = append(be.garbage, p)
	be.mu.Unlock()
}

// queueGraphFree records a graph to free at the next Alloc or Sync.
func (be *Backend) queueGraphFree(exec uintptr) {
	be.mu.Lock()
	be.graphs = append(be.graphs, exec)
	be.mu.Unlock()
}

// collect frees the queued buffers and graphs; not while capturing (a
// free waits for the device, which a capture forbids).
func (be *Backend) collect() {
	if be.l.capturing {
		return
	}
	be.mu.Lock()
	g, gr := be.garbage, be.graphs
	be.garbage, be.graphs = nil, nil
	be.mu.Unlock()
	for _, exec := range gr {
		be.l.check("free graph", be.l.graphFree(exec))
	}
	for _, p := range g {
		be.l.check("free", be.l.free(p))
	}
}

var (
	_ backend.Backend  = (*Backend)(nil)
	_ backend.Capturer = (*Backend)(nil)
	_ backend.Graph    = (*Graph)(nil)
)

// New loads the kernel library, sets up the device and returns a backend.
// The error wraps ErrUnavailable when this machine cannot run it.
func New(opts Options) (*Backend, error) {
	be := &Backend{precision: opts.Precision, noFused: os.Getenv("MAMBABYTE_CUDA_FUSED") == "0"}
	switch opts.Precision {
	case "", "fp32":
		be.precision = "fp32"
	case "bf16":
		be.mode = 1
	default:
		return nil, fmt.Errorf("cuda: precision %q (want fp32 or bf16)", opts.Precision)
	}
	l, err := loadLib()
	if err != nil {
		return nil, err
	}
	if err := l.setup(opts.Device, opts.Sync); err != nil {
		return nil, err
	}
	be.l = l
	return be, nil
}

// Name is "cuda".
func (be *Backend) Name() string { return "cuda" }

// Precision is "fp32" or "bf16".
func (be *Backend) Precision() string { return be.precision }

// Device describes the GPU: name, compute capability, multiprocessors and
// memory.
func (be *Backend) Device() string { return be.l.deviceName() }

// LibPath is the file the kernel library was loaded from.
func (be *Backend) LibPath() string { return be.l.path }

// Sync waits until every operation issued so far has finished (for timing).
func (be *Backend) Sync() {
	be.l.check("sync", be.l.sync())
	be.collect()
}

// MemInfo returns the device memory in use (by every process on the
// device) and its total, in bytes.
func (be *Backend) MemInfo() (used, total int64) {
	var free int64
	be.l.check("memory info", be.l.memInfo(&free, &total))
	return total - free, total
}

// buffer is one device allocation; Tensors are views of it and keep it
// alive. It is freed when no view references it.
type buffer struct {
	ptr uintptr
}

// Tensor is a run of float32 values in device memory: a view of n values
// at offset off of an allocation. A GEMM operand tensor (AllocOperand in
// bf16 mode) holds bf16 values instead; only the operations that document
// it take one.
type Tensor struct {
	buf    *buffer
	off, n int
	half   bool // values are bf16
}

// Len is the number of values.
func (t *Tensor) Len() int { return t.n }

// Slice is a view of n values starting at off.
func (t *Tensor) Slice(off, n int) backend.Tensor {
	if off < 0 || n < 0 || off+n > t.n {
		panic(fmt.Sprintf("cuda: Slice(%d, %d) of a tensor of %d values", off, n, t.n))
	}
	return &Tensor{buf: t.buf, off: t.off + off, n: n, half: t.half}
}

// Ptr is the device address of the first value (0 for an empty
// allocation).
func (t *Tensor) Ptr() uintptr {
	if t == nil || t.buf == nil || t.buf.ptr == 0 {
		return 0
	}
	return t.buf.ptr + uintptr(t.off*t.elemSize())
}

// elemSize is the bytes per value.
func (t *Tensor) elemSize() int {
	if t.half {
		return 2
	}
	return 4
}

// cudaTensor returns t as this backend's tensor, nil for nil.
func cudaTensor(t backend.Tensor) *Tensor {
	if t == nil {
		return nil
	}
	ct, ok := t.(*Tensor)
	if !ok {
		panic(fmt.Sprintf("cuda: a %T is not a CUDA tensor", t))
	}
	return ct
}

// ptr returns the device address of a float32 tensor of this backend, 0
// for nil; a bf16 operand tensor is refused (the kernel would misread it).
func ptr(t backend.Tensor) uintptr {
	ct := cudaTensor(t)
	if ct == nil {
		return 0
	}
	if ct.half {
		panic("cuda: a bf16 GEMM operand tensor given to an operation that reads or writes float32")
	}
	return ct.Ptr()
}

// ptrOp returns the device address of a tensor that may be a bf16 GEMM
// operand, and 1 if it is one.
func ptrOp(t backend.Tensor) (uintptr, int32) {
	ct := cudaTensor(t)
	if ct == nil {
		return 0, 0
	}
	return ct.Ptr(), b32(ct.half)
}

func length(t backend.Tensor) int {
	if t == nil {
		return 0
	}
	return t.Len()
}

// keep holds tensors (and so their allocations) reachable until the
// operation using them has been issued.
func keep(ts ...backend.Tensor) { runtime.KeepAlive(ts) }

func i64(x int) int64 { return int64(x) }

func b32(x bool) int32 {
	if x {
		return 1
	}
	return 0
}

// Alloc returns a zeroed tensor of n values.
func (be *Backend) Alloc(n int) backend.Tensor {
	if n < 0 {
		panic(fmt.Sprintf("cuda: Alloc(%d)", n))
	}
	if be.l.capturing {
		panic("cuda: Alloc while a graph is being captured")
	}
	be.collect()
	buf := &buffer{}
	if n > 0 {
		p := be.l.malloc(4 * i64(n))
		if p == 0 {
			panic(fmt.Sprintf("cuda: alloc %d values: %s", n, be.l.lastError()))
		}
		buf.ptr = p
		be.l.check("alloc", be.l.memset(p, 0, 4*i64(n)))
		runtime.AddCleanup(buf, be.queueFree, p)
	}
	return &Tensor{buf: buf, n: n}
}

var _ backend.OperandAllocator = (*Backend)(nil)
var _ backend.WeightRounder = (*Backend)(nil)

// AllocOperand returns a zeroed tensor of n values for an operand of
// GEMMs whose sides are all at least minSide (backend.OperandAllocator):
// where bf16 mode runs such GEMMs on bf16 copies of their operands it
// stores bf16, the values those copies would hold, which Norm and Gate
// (out), GateBackward (dz) and ConvBackward (dxi) write, Gemm reads as A or
// B, and Zero, Copy (between two such tensors), Upload and Download
// (converting) take; any other operation refuses it. Otherwise it is
// Alloc.
func (be *Backend) AllocOperand(n, minSide int) backend.Tensor {
	if !be.roundsOperands(minSide) {
		return be.Alloc(n)
	}
	return be.allocHalf(n)
}

// allocHalf returns a zeroed bf16 GEMM operand tensor of n values.
func (be *Backend) allocHalf(n int) *Tensor {
	t := be.Alloc((n + 1) / 2).(*Tensor)
	t.n, t.half = n, true
	return t
}

// RoundsWeights reports whether bf16 mode runs GEMMs whose sides are all
// at least minSide on bf16 copies of float32 operands
// (backend.WeightRounder). MAMBABYTE_CUDA_WEIGHT_COPIES=0 says no, so that
// every product makes its own copy (for comparisons).
func (be *Backend) RoundsWeights(minSide int) bool {
	return be.roundsOperands(minSide) && os.Getenv("MAMBABYTE_CUDA_WEIGHT_COPIES") != "0"
}

// roundsOperands says whether GEMMs whose sides are all at least minSide
// run on bf16 copies of float32 operands.
func (be *Backend) roundsOperands(minSide int) bool {
	lo := be.l.gemmOperandMin()
	return be.mode != 0 && lo != 0 && int64(minSide) >= lo
}

// RoundWeight returns src rounded to bf16 (to nearest, ties to even: the
// values of the copies Gemm makes) as a bf16 GEMM operand tensor, in dst
// when it is one of src's length.
func (be *Backend) RoundWeight(dst, src backend.Tensor) backend.Tensor {
	n := src.Len()
	d := cudaTensor(dst)
	if d == nil || !d.half || d.n != n {
		d = be.allocHalf(n)
	}
	be.l.check("round weight", be.l.toBF16(d.Ptr(), ptr(src), i64(n)))
	keep(src)
	return d
}

func (be *Backend) Upload(dst backend.Tensor, src []float32) {
	n := min(dst.Len(), len(src))
	if n == 0 {
		return
	}
	if d := cudaTensor(dst); d.half {
		// Rounded to bf16 on the host; exactly 2n bytes move.
		h := make([]float32, (n+1)/2)
		packBF16(h, src[:n])
		be.l.check("upload", be.l.memcpyH2D(d.Ptr(), h, 2*i64(n)))
		keep(dst)
		return
	}
	be.l.check("upload", be.l.memcpyH2D(ptr(dst), src[:n], 4*i64(n)))
	keep(dst)
}

func (be *Backend) Download(dst []float32, src backend.Tensor) {
	n := min(len(dst), src.Len())
	if n == 0 {
		return
	}
	if s := cudaTensor(src); s.half {
		h := make([]float32, (n+1)/2)
		be.l.check("download", be.l.memcpyD2H(h, s.Ptr(), 2*i64(n)))
		unpackBF16(dst[:n], h)
		keep(src)
		return
	}
	be.l.check("download", be.l.memcpyD2H(dst[:n], ptr(src), 4*i64(n)))
	keep(src)
}

func (be *Backend) Zero(t backend.Tensor) {
	ct := cudaTensor(t)
	be.l.check("zero", be.l.memset(ct.Ptr(), 0, i64(ct.n*ct.elemSize())))
	keep(t)
}

func (be *Backend) Copy(dst, src backend.Tensor) {
	d, s := cudaTensor(dst), cudaTensor(src)
	if d.half != s.half {
		panic("cuda: Copy between a bf16 GEMM operand tensor and a float32 one")
	}
	be.l.check("copy", be.l.memcpyD2D(d.Ptr(), s.Ptr(), i64(min(d.n, s.n)*d.elemSize())))
	keep(dst, src)
}

// packBF16 stores src rounded to bf16 (to nearest, ties to even; NaN
// stays NaN), two values per float32 word of dst, the first in the low half.
func packBF16(dst, src []float32) {
	for i := range dst {
		var w uint32
		for j := 0; j < 2 && 2*i+j < len(src); j++ {
			w |= uint32(bf16Bits(src[2*i+j])) << (16 * j)
		}
		dst[i] = math.Float32frombits(w)
	}
}

// unpackBF16 widens the bf16 values packed in src (packBF16's layout) into
// dst.
func unpackBF16(dst, src []float32) {
	for i := range dst {
		w := math.Float32bits(src[i/2]) >> (16 * (i % 2))
		dst[i] = math.Float32frombits(w << 16)
	}
}

// bf16Bits is f rounded to bf16 (to nearest, ties to even), as its bits.
func bf16Bits(f float32) uint16 {
	b := math.Float32bits(f)
	if f != f {
		return uint16(b>>16) | 0x40 // a quiet NaN
	}
	return uint16((b + 0x7fff + (b>>16)&1) >> 16)
}

func (be *Backend) Gemm(transA, transB bool, m, n, k int, alpha float32, a backend.Tensor, lda int, b backend.Tensor, ldb int, beta float32, c backend.Tensor, ldc int) {
	op := "gemm"
	if be.l.prof != nil {
		op = gemmName(transA, transB, m, n, k)
	}
	pa, ha := ptrOp(a)
	pb, hb := ptrOp(b)
	pc, hc := ptrOp(c)
	if hc != 0 && beta != 0 {
		panic("cuda: a bf16 GEMM operand tensor as C takes beta 0")
	}
	mode := be.mode | ha*gemmA16 | hb*gemmB16 | hc*gemmC16
	be.l.check(op, be.l.gemm(b32(transA), b32(transB), i64(m), i64(n), i64(k), alpha, pa, i64(lda), pb, i64(ldb), beta, pc, i64(ldc), mode))
	keep(a, b, c)
}

func (be *Backend) Embed(out backend.Tensor, ids []int32, w backend.Tensor, n, D int) {
	if n == 0 {
		return
	}
	if be.l.capturing {
		// A graph reads the ids staged before each launch.
		be.l.check("embed", be.l.embedFwdStaged(ptr(out), ptr(w), i64(n), i64(D)))
	} else {
		be.l.check("embed", be.l.embedFwd(ptr(out), ids[:n], ptr(w), i64(n), i64(D)))
	}
	keep(out, w)
}

func (be *Backend) EmbedBackward(dw, dout backend.Tensor, ids []int32, n, D int) {
	if n == 0 {
		return
	}
	be.l.check("embed backward", be.l.embedBwd(ptr(dw), ptr(dout), ids[:n], i64(n), i64(D)))
	keep(dw, dout)
}

func (be *Backend) Norm(out, mean, rstd, x, w, b backend.Tensor, rows, D int, eps float32, rms bool) {
	po, ho := ptrOp(out)
	be.l.check("norm", be.l.normFwd(po, ptr(mean), ptr(rstd), ptr(x), ptr(w), ptr(b), i64(rows), i64(D), eps, b32(rms), ho))
	keep(out, mean, rstd, x, w, b)
}

// NormBackward also leaves dx's bf16 copy for the next product that reads
// dx as its A (out_proj's backward, in a training pass) where bf16 mode's
// products of its sides round their operands;
// MAMBABYTE_CUDA_NORM_COPY=0 leaves that to the product (for comparisons).
func (be *Backend) NormBackward(dx, dw, db, dout, x, w, mean, rstd backend.Tensor, rows, D int, rms bool) {
	copy16 := b32(be.roundsOperands(min(rows, D)) && os.Getenv("MAMBABYTE_CUDA_NORM_COPY") != "0")
	be.l.check("norm backward", be.l.normBwd(ptr(dx), ptr(dw), ptr(db), ptr(dout), ptr(x), ptr(w), ptr(mean), ptr(rstd), i64(rows), i64(D), b32(rms), copy16))
	keep(dx, dw, db, dout, x, w, mean, rstd)
}

func (be *Backend) Conv(u, pre, xi backend.Tensor, ldx int, prev, w, bias backend.Tensor, B, T, E, K int) {
	be.l.check("conv", be.l.convFwd(ptr(u), 0, ptr(pre), ptr(xi), i64(ldx), ptr(prev), ptr(w), ptr(bias), i64(B), i64(T), i64(E), i64(K)))
	keep(u, pre, xi, prev, w, bias)
}

var _ backend.ThinRounder = (*Backend)(nil)

// RoundsThin reports whether bf16 mode runs the thin products whose other
// two sides are at least minSide on bf16 operands (backend.ThinRounder):
// where it runs the products of those sides so.
// MAMBABYTE_CUDA_THIN16=0 says no, so that they read float32 (for
// comparisons).
func (be *Backend) RoundsThin(minSide int) bool {
	return be.roundsOperands(minSide) && os.Getenv("MAMBABYTE_CUDA_THIN16") != "0"
}

// AllocThin returns a zeroed bf16 GEMM operand tensor of n values
// (backend.ThinRounder).
func (be *Backend) AllocThin(n int) backend.Tensor { return be.allocHalf(n) }

// ConvCopy is Conv also writing u's values rounded to bf16 to u16, a bf16
// GEMM operand tensor (backend.ThinRounder).
func (be *Backend) ConvCopy(u, u16, pre, xi backend.Tensor, ldx int, prev, w, bias backend.Tensor, B, T, E, K int) {
	h := cudaTensor(u16)
	if !h.half || h.n < length(u) {
		panic(fmt.Sprintf("cuda: conv: u16 must be a bf16 operand tensor of at least %d values", length(u)))
	}
	be.l.check("conv", be.l.convFwd(ptr(u), h.Ptr(), ptr(pre), ptr(xi), i64(ldx), ptr(prev), ptr(w), ptr(bias), i64(B), i64(T), i64(E), i64(K)))
	keep(u, u16, pre, xi, prev, w, bias)
}

func (be *Backend) ConvBackward(dxi backend.Tensor, ldx int, dw, dbias, du, pre, xi, prev, w backend.Tensor, B, T, E, K int) {
	if pre == nil {
		panic("cuda: conv backward: nil pre-activation (ConvBackwardRecompute recomputes it)")
	}
	pd, hd := ptrOp(dxi)
	be.l.check("conv backward", be.l.convBwd(pd, i64(ldx), ptr(dw), ptr(dbias), ptr(du), 0, 0, ptr(pre), ptr(xi), ptr(prev), ptr(w), 0, i64(B), i64(T), i64(E), i64(K), hd))
	keep(dxi, dw, dbias, du, pre, xi, prev, w)
}

var _ backend.ConvRecomputer = (*Backend)(nil)

// ConvBackwardRecompute is ConvBackward recomputing the pre-activation from
// xi, prev, w and bias as it goes (backend.ConvRecomputer).
func (be *Backend) ConvBackwardRecompute(dxi backend.Tensor, ldx int, dw, dbias, du, xi, prev, w, bias backend.Tensor, B, T, E, K int) {
	pd, hd := ptrOp(dxi)
	be.l.check("conv backward", be.l.convBwd(pd, i64(ldx), ptr(dw), ptr(dbias), ptr(du), 0, 0, 0, ptr(xi), ptr(prev), ptr(w), ptr(bias), i64(B), i64(T), i64(E), i64(K), hd))
	keep(dxi, dw, dbias, du, xi, prev, w, bias)
}

// ConvBackwardRecomputeSum is ConvBackwardRecompute for the gradient du +
// du2, du2 a bf16 GEMM operand tensor or float32 (backend.ThinRounder).
func (be *Backend) ConvBackwardRecomputeSum(dxi backend.Tensor, ldx int, dw, dbias, du, du2, xi, prev, w, bias backend.Tensor, B, T, E, K int) {
	pd, hd := ptrOp(dxi)
	p2, h2 := ptrOp(du2)
	be.l.check("conv backward", be.l.convBwd(pd, i64(ldx), ptr(dw), ptr(dbias), ptr(du), p2, h2, 0, ptr(xi), ptr(prev), ptr(w), ptr(bias), i64(B), i64(T), i64(E), i64(K), hd))
	keep(dxi, dw, dbias, du, du2, xi, prev, w, bias)
}

func (be *Backend) ConvState(next, prev, xi backend.Tensor, ldx, B, T, E, K int) {
	be.l.check("conv state", be.l.convState(ptr(next), ptr(prev), ptr(xi), i64(ldx), i64(B), i64(T), i64(E), i64(K)))
	keep(next, prev, xi)
}

func (be *Backend) Dt(delta, raw, bias backend.Tensor, rows, E int) {
	be.l.check("dt", be.l.dtFwd(ptr(delta), ptr(raw), ptr(bias), i64(rows), i64(E)))
	keep(delta, raw, bias)
}

func (be *Backend) DtBackward(draw, dbias, ddelta, raw backend.Tensor, rows, E int) {
	be.l.check("dt backward", be.l.dtBwd(ptr(draw), ptr(dbias), ptr(ddelta), ptr(raw), i64(rows), i64(E)))
	keep(draw, dbias, ddelta, raw)
}

func (be *Backend) ScanCheckpoints(T int) int { return (T + ScanChunk - 1) / ScanChunk }

func (be *Backend) NegExp(a, alog backend.Tensor) {
	be.l.check("negexp", be.l.negExp(ptr(a), ptr(alog), i64(length(alog))))
	keep(a, alog)
}

func (be *Backend) Scan(y, u, delta, Bt, Ct backend.Tensor, ldbc int, a, dskip, s0, sT, ckpt backend.Tensor, B, T, E, N int) {
	dims := &scanDims{B: i64(B), T: i64(T), E: i64(E), N: i64(N), ldbc: i64(ldbc)}
	be.l.check("scan", be.l.scanFwd(ptr(y), ptr(u), ptr(delta), ptr(Bt), ptr(Ct), ptr(a), ptr(dskip), ptr(s0), ptr(sT), ptr(ckpt), dims))
	keep(y, u, delta, Bt, Ct, a, dskip, s0, sT, ckpt)
}

func (be *Backend) ScanBackward(du, ddelta, dBt, dCt, dalog, ddskip, dy, u, delta, Bt, Ct backend.Tensor, ldbc int, a, dskip, ckpt backend.Tensor, B, T, E, N int) {
	dims := &scanDims{B: i64(B), T: i64(T), E: i64(E), N: i64(N), ldbc: i64(ldbc)}
	be.l.check("scan backward", be.l.scanBwd(ptr(du), ptr(ddelta), ptr(dBt), ptr(dCt), ptr(dalog), ptr(ddskip), ptr(dy), ptr(u), ptr(delta), ptr(Bt), ptr(Ct), ptr(a), ptr(dskip), ptr(ckpt), dims))
	keep(du, ddelta, dBt, dCt, dalog, ddskip, dy, u, delta, Bt, Ct, a, dskip, ckpt)
}

var _ backend.DtScanner = (*Backend)(nil)

// ScanDt is Dt followed by Scan with Δ never stored: the scan kernels
// take softplus(raw + dtBias) as they stage a chunk (backend.DtScanner).
func (be *Backend) ScanDt(y, u, raw, dtBias, Bt, Ct backend.Tensor, ldbc int, a, dskip, s0, sT, ckpt backend.Tensor, B, T, E, N int) {
	dims := &scanDims{B: i64(B), T: i64(T), E: i64(E), N: i64(N), ldbc: i64(ldbc), dtRaw: 1, dtBias: ptr(dtBias)}
	be.l.check("scan", be.l.scanFwd(ptr(y), ptr(u), ptr(raw), ptr(Bt), ptr(Ct), ptr(a), ptr(dskip), ptr(s0), ptr(sT), ptr(ckpt), dims))
	keep(y, u, raw, dtBias, Bt, Ct, a, dskip, s0, sT, ckpt)
}

var _ backend.GatedScanner = (*Backend)(nil)

// ScanDtGate is ScanDt followed by Gate: the scan's last kernel applies the
// gate as it writes y (backend.GatedScanner).
func (be *Backend) ScanDtGate(g, z backend.Tensor, ldz int, y, u, raw, dtBias, Bt, Ct backend.Tensor, ldbc int, a, dskip, s0, sT, ckpt backend.Tensor, B, T, E, N int) {
	pg, hg := ptrOp(g)
	dims := &scanDims{B: i64(B), T: i64(T), E: i64(E), N: i64(N), ldbc: i64(ldbc), dtRaw: 1, dtBias: ptr(dtBias),
		gateZ: ptr(z), ldz: i64(ldz), gateOut: pg, gateOut16: int64(hg)}
	be.l.check("scan", be.l.scanFwd(ptr(y), ptr(u), ptr(raw), ptr(Bt), ptr(Ct), ptr(a), ptr(dskip), ptr(s0), ptr(sT), ptr(ckpt), dims))
	keep(g, z, y, u, raw, dtBias, Bt, Ct, a, dskip, s0, sT, ckpt)
}

// ScanDtBackward is ScanBackward followed by DtBackward (backend.DtScanner).
func (be *Backend) ScanDtBackward(du, draw, dBt, dCt, dalog, ddskip, dbias, dy, u, raw, dtBias, Bt, Ct backend.Tensor, ldbc int, a, dskip, ckpt backend.Tensor, B, T, E, N int) {
	dims := &scanDims{B: i64(B), T: i64(T), E: i64(E), N: i64(N), ldbc: i64(ldbc), dtRaw: 1, dtBias: ptr(dtBias), dbias: ptr(dbias)}
	be.l.check("scan backward", be.l.scanBwd(ptr(du), ptr(draw), ptr(dBt), ptr(dCt), ptr(dalog), ptr(ddskip), ptr(dy), ptr(u), ptr(raw), ptr(Bt), ptr(Ct), ptr(a), ptr(dskip), ptr(ckpt), dims))
	keep(du, draw, dBt, dCt, dalog, ddskip, dbias, dy, u, raw, dtBias, Bt, Ct, a, dskip, ckpt)
}

// ScanDtGateBackward is GateBackward followed by ScanDtBackward: the
// scan's backward kernels take dg·silu(z) as they stage a chunk, and the
// last of them writes dz and draw, either of them in bf16 where it is a
// bf16 GEMM operand tensor (backend.GatedScanner).
func (be *Backend) ScanDtGateBackward(dz, dg, y, z backend.Tensor, ldz int, du, draw, dBt, dCt, dalog, ddskip, dbias, u, raw, dtBias, Bt, Ct backend.Tensor, ldbc int, a, dskip, ckpt backend.Tensor, B, T, E, N int) {
	pz, hz := ptrOp(dz)
	pr, hr := ptrOp(draw)
	dims := &scanDims{B: i64(B), T: i64(T), E: i64(E), N: i64(N), ldbc: i64(ldbc), dtRaw: 1, dtBias: ptr(dtBias), dbias: ptr(dbias),
		gateZ: ptr(z), ldz: i64(ldz), gateY: ptr(y), gateDz: pz, gateDz16: int64(hz), ddelta16: int64(hr)}
	be.l.check("scan backward", be.l.scanBwd(ptr(du), pr, ptr(dBt), ptr(dCt), ptr(dalog), ptr(ddskip), ptr(dg), ptr(u), ptr(raw), ptr(Bt), ptr(Ct), ptr(a), ptr(dskip), ptr(ckpt), dims))
	keep(dz, dg, y, z, du, draw, dBt, dCt, dalog, ddskip, dbias, u, raw, dtBias, Bt, Ct, a, dskip, ckpt)
}

func (be *Backend) Gate(out, y, z backend.Tensor, ldz, rows, E int) {
	po, ho := ptrOp(out)
	be.l.check("gate", be.l.gateFwd(po, ptr(y), ptr(z), i64(ldz), i64(rows), i64(E), ho))
	keep(out, y, z)
}

func (be *Backend) GateBackward(dy, dz, dout, y, z backend.Tensor, ldz, rows, E int) {
	pz, hz := ptrOp(dz)
	be.l.check("gate backward", be.l.gateBwd(ptr(dy), pz, ptr(dout), ptr(y), ptr(z), i64(ldz), i64(rows), i64(E), hz))
	keep(dy, dz, dout, y, z)
}

func (be *Backend) Add(dst, src backend.Tensor) {
	if src.Len() < dst.Len() {
		panic(fmt.Sprintf("cuda: Add: src has %d values, dst %d", src.Len(), dst.Len()))
	}
	be.l.check("add", be.l.add(ptr(dst), ptr(src), i64(dst.Len())))
	keep(dst, src)
}

func (be *Backend) CrossEntropy(dlogits, nll, logits backend.Tensor, targets []int32, n, V int, scale float32) float64 {
	if n == 0 {
		return 0
	}
	var sum float64
	be.l.check("cross entropy", be.l.crossEntropy(ptr(dlogits), ptr(nll), ptr(logits), targets[:n], i64(n), i64(V), scale, &sum))
	keep(dlogits, nll, logits)
	return sum
}

func (be *Backend) SumSquares(t backend.Tensor) float64 {
	var s float64
	be.l.check("sum squares", be.l.sumSquares(ptr(t), i64(t.Len()), &s))
	keep(t)
	return s
}

func (be *Backend) Scale(t backend.Tensor, s float32) {
	be.l.check("scale", be.l.scale(ptr(t), s, i64(t.Len())))
	keep(t)
}

func (be *Backend) AdamW(param, grad, m, v backend.Tensor, lr, beta1, beta2, eps, wd, bc1, bc2 float32) {
	be.l.check("adamw", be.l.adamW(ptr(param), ptr(grad), ptr(m), ptr(v), i64(param.Len()), lr, beta1, beta2, eps, wd, bc1, bc2))
	keep(param, grad, m, v)
}

// AdamWRuns runs every run's update in one launch (backend.AdamWRunner).
func (be *Backend) AdamWRuns(param, grad, m, v backend.Tensor, runs []backend.Run, lr, beta1, beta2, eps, wd, bc1, bc2 float32) {
	if len(runs) == 0 {
		return
	}
	n := param.Len()
	if grad.Len() != n || m.Len() != n || v.Len() != n {
		panic(fmt.Sprintf("cuda: AdamWRuns: lengths %d, %d, %d, %d differ", n, grad.Len(), m.Len(), v.Len()))
	}
	rs, dec := make([]int64, 2*len(runs)), make([]uint8, len(runs))
	for i, r := range runs {
		if r.Off < 0 || r.Len < 0 || r.Off+r.Len > n {
			panic(fmt.Sprintf("cuda: AdamWRuns: run %d, %d values from %d, outside %d", i, r.Len, r.Off, n))
		}
		rs[2*i], rs[2*i+1] = int64(r.Off), int64(r.Len)
		if r.Decay {
			dec[i] = 1
		}
	}
	be.l.check("adamw runs", be.l.adamWRuns(ptr(param), ptr(grad), ptr(m), ptr(v), rs, dec, int64(len(runs)), lr, beta1, beta2, eps, wd, bc1, bc2))
	keep(param, grad, m, v)
}

// CaptureEnabled is false when MAMBABYTE_CUDA_GRAPHS is "0".
func (be *Backend) CaptureEnabled() bool { return os.Getenv("MAMBABYTE_CUDA_GRAPHS") != "0" }

// BeginCapture starts recording operations into a graph instead of running
// them (see backend.Capturer for what may be called until EndCapture).
func (be *Backend) BeginCapture() error {
	if be.l.capturing {
		return fmt.Errorf("cuda: begin capture: a capture is already under way")
	}
	be.collect()
	if be.l.graphBegin() != 0 {
		return fmt.Errorf("cuda: begin capture: %s", be.l.lastError())
	}
	be.l.capturing = true
	return nil
}

// EndCapture stops recording and returns the graph of the operations since
// BeginCapture.
func (be *Backend) EndCapture() (backend.Graph, error) {
	if !be.l.capturing {
		return nil, fmt.Errorf("cuda: end capture: no capture under way")
	}
	be.l.capturing = false
	var exec uintptr
	if be.l.graphEnd(&exec) != 0 {
		return nil, fmt.Errorf("cuda: end capture: %s", be.l.lastError())
	}
	g := &Graph{be: be, exec: exec}
	g.cleanup = runtime.AddCleanup(g, be.queueGraphFree, exec)
	return g, nil
}

// StageIDs uploads the ids that Embed reads in the graphs launched after
// it (at most 2^20).
func (be *Backend) StageIDs(ids []int32) {
	if len(ids) == 0 {
		return
	}
	be.l.check("stage ids", be.l.stageIDs(ids, i64(len(ids))))
}

// Graph is a recorded sequence of operations (a CUDA graph). It is freed by
// Free or, failing that, once unreferenced.
type Graph struct {
	be      *Backend
	exec    uintptr
	cleanup runtime.Cleanup
}

// Launch replays the recorded operations on the device, asynchronously.
func (g *Graph) Launch() {
	if g.exec == 0 {
		panic("cuda: launch of a freed graph")
	}
	g.be.l.check("graph launch", g.be.l.graphLaunch(g.exec))
}

// Free releases the graph (after the device has finished with it).
func (g *Graph) Free() {
	if g.exec == 0 {
		return
	}
	g.cleanup.Stop()
	g.be.l.check("free graph", g.be.l.graphFree(g.exec))
	g.exec = 0
}
