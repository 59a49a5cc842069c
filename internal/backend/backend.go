// Package backend is the interface between the model and the hardware that
// runs it. The model allocates Tensors through a Backend and calls its
// operations; it never touches memory itself, so the same model code runs
// wherever a Backend exists.
//
// Operations come in Forward/Backward pairs and take outputs first, then
// inputs, then sizes, as the CPU kernels they wrap document (package
// internal/backend/cpu). A nil Tensor is allowed wherever the kernel
// documents nil. Backward operations add into parameter gradients.
package backend

// Tensor is a run of float32 values in a backend's memory.
type Tensor interface {
	// Len is the number of values.
	Len() int
	// Slice is a view of n values starting at off.
	Slice(off, n int) Tensor
}

// Backend allocates tensors and runs the model's operations on them.
type Backend interface {
	Name() string

	// Alloc returns a zeroed tensor of n values.
	Alloc(n int) Tensor
	Upload(dst Tensor, src []float32)
	Download(dst []float32, src Tensor)
	Zero(t Tensor)
	Copy(dst, src Tensor)

	// Gemm computes C = alpha·op(A)·op(B) + beta·C, row-major, op(X) being X
	// or its transpose; op(A) is (m,k), op(B) (k,n), C (m,n).
	Gemm(transA, transB bool, m, n, k int, alpha float32, a Tensor, lda int, b Tensor, ldb int, beta float32, c Tensor, ldc int)

	Embed(out Tensor, ids []int32, w Tensor, n, D int)
	EmbedBackward(dw, dout Tensor, ids []int32, n, D int)
	Norm(out, mean, rstd, x, w, b Tensor, rows, D int, eps float32, rms bool)
	NormBackward(dx, dw, db, dout, x, w, mean, rstd Tensor, rows, D int, rms bool)
	Conv(u, pre, xi Tensor, ldx int, prev, w, bias Tensor, B, T, E, K int)
	ConvBackward(dxi Tensor, ldx int, dw, dbias, du, pre, xi, prev, w Tensor, B, T, E, K int)
	ConvState(next, prev, xi Tensor, ldx, B, T, E, K int)
	Dt(delta, raw, bias Tensor, rows, E int)
	DtBackward(draw, dbias, ddelta, raw Tensor, rows, E int)
	// ScanCheckpoints is how many states per sequence Scan saves for
	// ScanBackward at length T.
	ScanCheckpoints(T int) int
	// NegExp writes A = -exp(alog), the SSM's decay rates, which Scan and
	// ScanBackward take precomputed.
	NegExp(a, alog Tensor)
	Scan(y, u, delta, Bt, Ct Tensor, ldbc int, a, dskip, s0, sT, ckpt Tensor, B, T, E, N int)
	ScanBackward(du, ddelta, dBt, dCt, dalog, ddskip, dy, u, delta, Bt, Ct Tensor, ldbc int, a, dskip, ckpt Tensor, B, T, E, N int)
	Gate(out, y, z Tensor, ldz, rows, E int)
	GateBackward(dy, dz, dout, y, z Tensor, ldz, rows, E int)
	Add(dst, src Tensor)
	// CrossEntropy returns Σ -ln p(target) over rows with a non-negative
	// target; dlogits (may alias logits) and nll are optional outputs.
	CrossEntropy(dlogits, nll, logits Tensor, targets []int32, n, V int, scale float32) float64

	// SumSquares is Σ t[i]², accumulated in float64 (gradient norms).
	SumSquares(t Tensor) float64
	// Scale multiplies t by s in place.
	Scale(t Tensor, s float32)
	// AdamW updates param and its moments m and v in place from grad, with
	// decoupled weight decay wd and bias corrections bc1 = 1-β1^step,
	// bc2 = 1-β2^step.
	AdamW(param, grad, m, v Tensor, lr, beta1, beta2, eps, wd, bc1, bc2 float32)
}

// DtScanner is implemented by backends that apply the dt activation inside
// the selective scan, so that Δ (B·T, E) is never stored: ScanDt computes
// what Dt(delta, raw', dtBias) followed by Scan(..., delta, ...) computes,
// where raw' is raw + dtBias; raw (r·W_dtᵀ, without the bias) and dtBias
// are left unchanged. ScanDtBackward computes what ScanBackward followed by
// DtBackward computes: draw receives the gradient of raw, and dbias
// accumulates its column sums. The model uses it when present; dtBias and
// dbias may be nil.
type DtScanner interface {
	ScanDt(y, u, raw, dtBias, Bt, Ct Tensor, ldbc int, a, dskip, s0, sT, ckpt Tensor, B, T, E, N int)
	ScanDtBackward(du, draw, dBt, dCt, dalog, ddskip, dbias, dy, u, raw, dtBias, Bt, Ct Tensor, ldbc int, a, dskip, ckpt Tensor, B, T, E, N int)
}

// GatedScanner is implemented by DtScanners whose scan can apply the gate
// as it writes its output: ScanDtGate computes what ScanDt(y, ...) followed
// by Gate(g, y, z, ldz, B·T, E) computes, y included (the backward reads
// it). g may be an operand tensor, as Gate's out may. ScanDtGateBackward
// computes what GateBackward(dy, dz, dg, y, z, ldz, B·T, E) followed by
// ScanDtBackward(..., dy, ...) computes, where dg is the gradient of g,
// without a dy tensor; dz may be an operand tensor, as GateBackward's may,
// and draw a ThinRounder's thin operand tensor.
type GatedScanner interface {
	ScanDtGate(g, z Tensor, ldz int, y, u, raw, dtBias, Bt, Ct Tensor, ldbc int, a, dskip, s0, sT, ckpt Tensor, B, T, E, N int)
	ScanDtGateBackward(dz, dg, y, z Tensor, ldz int, du, draw, dBt, dCt, dalog, ddskip, dbias, u, raw, dtBias, Bt, Ct Tensor, ldbc int, a, dskip, ckpt Tensor, B, T, E, N int)
}

// ConvRecomputer is implemented by backends for which recomputing the
// conv's pre-activation in the backward costs less than keeping it (B·T·E
// values per layer, written once and read once): ConvBackwardRecompute
// computes what ConvBackward computes given the pre that Conv(u, pre, xi,
// ldx, prev, w, bias, ...) wrote. The model then passes Conv a nil pre.
type ConvRecomputer interface {
	ConvBackwardRecompute(dxi Tensor, ldx int, dw, dbias, du, xi, prev, w, bias Tensor, B, T, E, K int)
}

// OperandAllocator is implemented by backends whose matrix products may
// read their operands at a lower precision than float32 (bf16):
// AllocOperand returns a zeroed tensor of n values for an operand of GEMMs
// whose sides are all at least minSide, stored at the precision such GEMMs
// read, so the operation that produces it writes it so and Gemm needs no
// conversion pass of its own. Norm and Gate may write such a tensor as
// out, GateBackward as dz, ConvBackward (and a ConvRecomputer's
// ConvBackwardRecompute) as dxi; Gemm takes it as A or B; Zero, Copy
// between two of them, Upload and Download (converting) work on it; no
// other operation takes one. The model allocates a training pass's norm
// outputs, gated outputs and the gradients of in_proj's output so.
type OperandAllocator interface {
	AllocOperand(n, minSide int) Tensor
}

// WeightRounder is implemented by backends whose matrix products round a
// float32 operand to a lower precision (bf16) on every product that reads
// it. The model keeps such rounded copies of the weights its training
// passes multiply by, made again after each parameter change, so that no
// product rounds a weight of its own; the products give the same results.
//
// RoundsWeights says whether GEMMs whose sides are all at least minSide
// round float32 operands. RoundWeight returns src rounded so, as a tensor
// that Gemm takes as A or B (and no other operation): in dst when dst is
// such a copy of src's length (made again in place), else in a new one.
type WeightRounder interface {
	RoundsWeights(minSide int) bool
	RoundWeight(dst, src Tensor) Tensor
}

// ThinRounder is implemented by WeightRounders whose bf16 mode can also
// run the thin products on bf16 operands: x_proj's and dt_proj's, one of
// whose sides is R or R+2N. Their large operands (the conv's output u and
// the gradient of dt_proj's output) are then bf16 tensors that the
// operations producing them write, their weights the rounded copies, and
// x_proj's dX product writes its large output in bf16 too.
//
// RoundsThin says whether it does so for thin products whose other two
// sides are at least minSide. AllocThin returns a zeroed bf16 GEMM operand
// tensor of n values, as OperandAllocator's are: Gemm takes it as A or B,
// and as C with beta 0; ConvCopy writes it as u16, a GatedScanner's
// ScanDtGateBackward as draw, ConvBackwardRecomputeSum reads it as du2;
// and Zero, Upload and Download (converting) work on it. ConvCopy computes
// what Conv computes and also writes u's values, rounded, to u16.
// ConvBackwardRecomputeSum computes what ConvBackwardRecompute
// (ConvRecomputer) computes for u's gradient du + du2.
type ThinRounder interface {
	WeightRounder
	RoundsThin(minSide int) bool
	AllocThin(n int) Tensor
	ConvCopy(u, u16, pre, xi Tensor, ldx int, prev, w, bias Tensor, B, T, E, K int)
	ConvBackwardRecomputeSum(dxi Tensor, ldx int, dw, dbias, du, du2, xi, prev, w, bias Tensor, B, T, E, K int)
}

// Capturer is implemented by backends that can record a sequence of
// operations once and replay it with one call (CUDA graphs), which removes
// the cost of issuing each operation. Users check for it with a type
// assertion; every Backend works without it.
//
// Between BeginCapture and EndCapture operations are recorded, not run. A
// recorded operation keeps the tensors it was given, so they must stay
// allocated, and at the same place, while the Graph is used; the values
// in them are read when the graph runs. Embed records a read of the ids
// staged by StageIDs at replay time: its ids argument is ignored. Alloc,
// Upload, Download, EmbedBackward, CrossEntropy and SumSquares must not be
// called while capturing.
type Capturer interface {
	// CaptureEnabled reports whether capture should be used (a backend may
	// let the user turn it off).
	CaptureEnabled() bool
	BeginCapture() error
	// EndCapture stops recording and returns what was recorded. After an
	// error nothing was recorded or run, and the backend works as before.
	EndCapture() (Graph, error)
	// StageIDs sets the ids that the next replays' Embed reads.
	StageIDs(ids []int32)
}

// Graph is a recorded sequence of operations.
type Graph interface {
	// Launch runs the operations, in order after the work issued before.
	Launch()
	// Free releases the graph; it must not be launched afterwards.
	Free()
}

// StepFuser is implemented by backends that run the one-byte recurrent
// step of a residual block as a few fused operations, where Forward with
// T = 1 issues a dozen. The model uses it for decoding when present; it
// computes what Forward computes for one byte per stream (in a bf16 mode
// the matrices are read as bf16 copies).
type StepFuser interface {
	// PrepareStep returns the weights StepBlock and StepHead read, in the
	// backend's own form. It reads the tensors now; call Refresh on the
	// result after they change.
	PrepareStep(layers []StepLayer, head StepHead, shape StepShape) (StepWeights, error)
	// StepBlock advances layer l by one byte for B streams: h (B,D) +=
	// block(h), the layer's conv (B,K-1,E) and ssm (B,E,N) states updated
	// in place, using the scratch s.
	StepBlock(w StepWeights, l int, h, conv, ssm Tensor, s StepScratch, B int)
	// StepHead writes logits (B,V) = Norm_f(h)·W_headᵀ.
	StepHead(w StepWeights, logits, h Tensor, s StepScratch, B int)
}

// WholeStepper is a StepFuser that can also run the whole step of a single
// stream, every block and the head, as one operation.
type WholeStepper interface {
	// StepWhole writes logits (V) for the one stream whose embedded byte
	// is h (D), advancing h and state: a State's buffer, per layer the
	// conv state (K-1,E) then the SSM state (E,N). It reports false,
	// doing nothing, when it cannot run these weights; the caller then
	// runs StepBlock and StepHead.
	StepWhole(w StepWeights, logits, h, state Tensor) bool
}

// StepLayer is one residual block's parameters for StepFuser, as the
// model's tensors; NegA is A = -exp(A_log) (E,N). NormB and ConvB may be
// nil.
type StepLayer struct {
	Norm, NormB, InProj, ConvW, ConvB, XProj, DtProj, DtBias, NegA, DSkip, OutProj Tensor
}

// StepHead is the final norm and the output head (V,D) for StepFuser.
type StepHead struct {
	Norm, NormB, W Tensor
}

// StepShape is the model's dimensions for StepFuser.
type StepShape struct {
	D, E, N, K, R, V int
	Eps              float32
	RMS              bool
}

// StepScratch is a fused step's working memory for B streams: XZ (B,2E),
// XDbl (B,R+2N), U and G (B,E), and XW, B·max(D,E) values.
type StepScratch struct {
	XZ, XDbl, U, G, XW Tensor
}

// StepWeights are a StepFuser's copy of the weights.
type StepWeights interface {
	// Refresh re-reads the model's tensors.
	Refresh()
	// Free releases the copy; it must not be used afterwards.
	Free()
}

// Run is a contiguous range of the parameter buffer whose tensors share
// their weight-decay treatment (model.DecayRuns).
type Run struct {
	Off, Len int
	Decay    bool
}

// AdamWRunner is a backend that updates many runs of the parameter buffer
// in one call, where one call per run would cost more than the update (a
// GPU launch per run).
type AdamWRunner interface {
	// AdamWRuns is AdamW on param[r.Off:r.Off+r.Len] (and the same ranges
	// of grad, m and v) for every run r, with weight decay wd where r.Decay
	// and none elsewhere: the updates of one AdamW call per run.
	AdamWRuns(param, grad, m, v Tensor, runs []Run, lr, beta1, beta2, eps, wd, bc1, bc2 float32)
}
