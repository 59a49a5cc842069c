package cpu

import (
	"github.com/mambabyte/mambabyte/internal/backend"
	"github.com/mambabyte/mambabyte/internal/blas"
)

// Slice is a CPU tensor: plain Go memory.
type Slice []float32

// Len is the number of values.
func (s Slice) Len() int { return len(s) }

// Slice is a view of n values starting at off.
func (s Slice) Slice(off, n int) backend.Tensor { return s[off : off+n : off+n] }

// f returns the values of a CPU tensor, nil for a nil tensor. A tensor from
// another backend is a programmer error and panics.
func f(t backend.Tensor) []float32 {
	if t == nil {
		return nil
	}
	return t.(Slice)
}

// Backend runs operations on the CPU.
type Backend struct{}

var _ backend.Backend = Backend{}

// New returns the CPU backend.
func New() Backend { return Backend{} }

func (Backend) Name() string                               { return "cpu" }
func (Backend) Alloc(n int) backend.Tensor                 { return make(Slice, n) }
func (Backend) Upload(dst backend.Tensor, src []float32)   { copy(f(dst), src) }
func (Backend) Download(dst []float32, src backend.Tensor) { copy(dst, f(src)) }
func (Backend) Zero(t backend.Tensor)                      { clear(f(t)) }
func (Backend) Copy(dst, src backend.Tensor)               { copy(f(dst), f(src)) }

func (Backend) Gemm(transA, transB bool, m, n, k int, alpha float32, a backend.Tensor, lda int, b backend.Tensor, ldb int, beta float32, c backend.Tensor, ldc int) {
	blas.Gemm(transA, transB, m, n, k, alpha, f(a), lda, f(b), ldb, beta, f(c), ldc)
}

func (Backend) Embed(out backend.Tensor, ids []int32, w backend.Tensor, n, D int) {
	EmbedForward(f(out), ids, f(w), n, D)
}

func (Backend) EmbedBackward(dw, dout backend.Tensor, ids []int32, n, D int) {
	EmbedBackward(f(dw), f(dout), ids, n, D)
}

func (Backend) Norm(out, mean, rstd, x, w, b backend.Tensor, rows, D int, eps float32, rms bool) {
	NormForward(f(out), f(mean), f(rstd), f(x), f(w), f(b), rows, D, eps, rms)
}

func (Backend) NormBackward(dx, dw, db, dout, x, w, mean, rstd backend.Tensor, rows, D int, rms bool) {
	NormBackward(f(dx), f(dw), f(db), f(dout), f(x), f(w), f(mean), f(rstd), rows, D, rms)
}

func (Backend) Conv(u, pre, xi backend.Tensor, ldx int, prev, w, bias backend.Tensor, B, T, E, K int) {
	ConvForward(f(u), f(pre), f(xi), ldx, f(prev), f(w), f(bias), B, T, E, K)
}

func (Backend) ConvBackward(dxi backend.Tensor, ldx int, dw, dbias, du, pre, xi, prev, w backend.Tensor, B, T, E, K int) {
	ConvBackward(f(dxi), ldx, f(dw), f(dbias), f(du), f(pre), f(xi), f(prev), f(w), B, T, E, K)
}

func (Backend) ConvState(next, prev, xi backend.Tensor, ldx, B, T, E, K int) {
	ConvState(f(next), f(prev), f(xi), ldx, B, T, E, K)
}

func (Backend) Dt(delta, raw, bias backend.Tensor, rows, E int) {
	DtForward(f(delta), f(raw), f(bias), rows, E)
}

func (Backend) DtBackward(draw, dbias, ddelta, raw backend.Tensor, rows, E int) {
	DtBackward(f(draw), f(dbias), f(ddelta), f(raw), rows, E)
}

func (Backend) ScanCheckpoints(T int) int { return ScanChunks(T) }

func (Backend) NegExp(a, alog backend.Tensor) { NegExp(f(a), f(alog)) }

func (Backend) Scan(y, u, delta, Bt, Ct backend.Tensor, ldbc int, a, dskip, s0, sT, ckpt backend.Tensor, B, T, E, N int) {
	ScanForward(f(y), f(u), f(delta), f(Bt), f(Ct), ldbc, f(a), f(dskip), f(s0), f(sT), f(ckpt), B, T, E, N)
}

func (Backend) ScanBackward(du, ddelta, dBt, dCt, dalog, ddskip, dy, u, delta, Bt, Ct backend.Tensor, ldbc int, a, dskip, ckpt backend.Tensor, B, T, E, N int) {
	ScanBackward(f(du), f(ddelta), f(dBt), f(dCt), f(dalog), f(ddskip), f(dy), f(u), f(delta), f(Bt), f(Ct), ldbc, f(a), f(dskip), f(ckpt), B, T, E, N)
}

func (Backend) Gate(out, y, z backend.Tensor, ldz, rows, E int) {
	GateForward(f(out), f(y), f(z), ldz, rows, E)
}

func (Backend) GateBackward(dy, dz, dout, y, z backend.Tensor, ldz, rows, E int) {
	GateBackward(f(dy), f(dz), f(dout), f(y), f(z), ldz, rows, E)
}

func (Backend) Add(dst, src backend.Tensor) { Add(f(dst), f(src)) }

func (Backend) CrossEntropy(dlogits, nll, logits backend.Tensor, targets []int32, n, V int, scale float32) float64 {
	return CrossEntropy(f(dlogits), f(nll), f(logits), targets, n, V, scale)
}

func (Backend) SumSquares(t backend.Tensor) float64 { return SumSquares(f(t)) }

func (Backend) Scale(t backend.Tensor, s float32) { Scale(f(t), s) }

func (Backend) AdamW(param, grad, m, v backend.Tensor, lr, beta1, beta2, eps, wd, bc1, bc2 float32) {
	AdamW(f(param), f(grad), f(m), f(v), lr, beta1, beta2, eps, wd, bc1, bc2)
}
