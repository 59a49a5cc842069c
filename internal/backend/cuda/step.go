package cuda

import (
	"fmt"
	"os"

	"github.com/mambabyte/mambabyte/internal/backend"
)

// The Backend implements backend.StepFuser with the library's fused step
// (cuda/step.cuh): four kernels per residual block, and one for the head.
// In bf16 mode the four matrices of every layer and the head are read as
// bf16 copies, which halves the bytes a decode step streams from memory;
// in fp32 mode they are read as they are.
//
// With MAMBABYTE_CUDA_WHOLE=1 a bf16 step of one stream runs as one kernel
// (cuda/whole.cuh) from a further copy of the weights in that kernel's
// layout. It is correct but slower than the block-by-block step (BENCHMARKS.md,
// "GPU: the one-kernel decode step"), so it is not the default.
var (
	_ backend.StepFuser    = (*Backend)(nil)
	_ backend.WholeStepper = (*Backend)(nil)
)

// stepWeights is the Backend's backend.StepWeights.
type stepWeights struct {
	be     *Backend
	layers []backend.StepLayer
	head   backend.StepHead
	shape  backend.StepShape
	wtype  int32
	mats   [][4]uintptr // per layer: in_proj, x_proj, dt_proj, out_proj as read
	headW  uintptr
	buf    backend.Tensor // the bf16 copies (nil in fp32 mode)
	copies []bf16Copy
	// fold holds, per layer, mb_step_fold's 4E values for in_proj (as
	// read) and the layer's norm; the one-stream step reads them.
	fold  backend.Tensor
	folds []uintptr
	whole *wholeWeights // nil: no one-kernel step
}

// wholeWeights is the one-kernel step's copy of the weights: one buffer in
// the layout of mb_whole_plan, and the kernel's scratch.
type wholeWeights struct {
	shape   wholeShape
	lay     wholeLayout
	buf     backend.Tensor
	scratch backend.Tensor
}

// bf16Copy is one matrix copied to bf16: n values of src to dst.
type bf16Copy struct {
	src backend.Tensor
	dst uintptr
	n   int
}

// PrepareStep implements backend.StepFuser.
func (be *Backend) PrepareStep(layers []backend.StepLayer, head backend.StepHead, shape backend.StepShape) (backend.StepWeights, error) {
	if be.noFused {
		return nil, fmt.Errorf("cuda: fused step turned off (MAMBABYTE_CUDA_FUSED=0)")
	}
	sh := shape
	if sh.D < 1 || sh.E < 1 || sh.N < 1 || sh.K < 1 || sh.K > 8 || sh.R < 1 || sh.V < 1 {
		return nil, fmt.Errorf("cuda: fused step for shape %+v", sh)
	}
	sizes := [4]int{2 * sh.E * sh.D, (sh.R + 2*sh.N) * sh.E, sh.E * sh.R, sh.D * sh.E}
	w := &stepWeights{be: be, layers: layers, head: head, shape: sh, mats: make([][4]uintptr, len(layers))}
	for l, ly := range layers {
		for i, t := range [4]backend.Tensor{ly.InProj, ly.XProj, ly.DtProj, ly.OutProj} {
			if t == nil || t.Len() != sizes[i] {
				return nil, fmt.Errorf("cuda: fused step: layer %d matrix %d has %d values, want %d", l, i, length(t), sizes[i])
			}
		}
	}
	if head.W == nil || head.W.Len() != sh.V*sh.D {
		return nil, fmt.Errorf("cuda: fused step: head has %d values, want %d", length(head.W), sh.V*sh.D)
	}
	w.fold = be.Alloc(len(layers) * 4 * sh.E)
	for l := range layers {
		w.folds = append(w.folds, ptr(w.fold)+uintptr(4*l*4*sh.E))
	}
	if be.mode == 0 {
		for l, ly := range layers {
			w.mats[l] = [4]uintptr{ptr(ly.InProj), ptr(ly.XProj), ptr(ly.DtProj), ptr(ly.OutProj)}
		}
		w.headW = ptr(head.W)
		w.Refresh()
		return w, nil
	}
	// bf16: one allocation, each matrix starting on a 16-byte boundary.
	w.wtype = 1
	type place struct {
		src backend.Tensor
		off int // in bf16 values
	}
	var places []place
	total := 0
	add := func(t backend.Tensor) {
		places = append(places, place{t, total})
		total += (t.Len() + 7) &^ 7
	}
	for _, ly := range layers {
		add(ly.InProj)
		add(ly.XProj)
		add(ly.DtProj)
		add(ly.OutProj)
	}
	add(head.W)
	w.buf = be.Alloc(total / 2)
	base := ptr(w.buf)
	for i, p := range places {
		dst := base + uintptr(2*p.off)
		w.copies = append(w.copies, bf16Copy{src: p.src, dst: dst, n: p.src.Len()})
		if l := i / 4; l < len(layers) {
			w.mats[l][i%4] = dst
		} else {
			w.headW = dst
		}
	}
	if mode := wholeMode(); mode >= 0 {
		if err := w.planWhole(mode); err != nil {
			return nil, err
		}
	}
	w.Refresh()
	return w, nil
}

// wholeMode is how bf16 steps of one stream run, from MAMBABYTE_CUDA_WHOLE:
// block by block (unset or "0": -1, the default, faster today), or through
// the one-kernel step (whole.cuh) staging the weights in shared memory
// where they fit ("1": 0) or reading them from global memory ("global": 1).
func wholeMode() int32 {
	switch os.Getenv("MAMBABYTE_CUDA_WHOLE") {
	case "1":
		return 0
	case "global":
		return 1
	}
	return -1
}

// planWhole allocates the one-kernel step's weights and scratch.
func (w *stepWeights) planWhole(mode int32) error {
	sh := w.shape
	ws := &wholeWeights{shape: wholeShape{
		L: i64(len(w.layers)), D: i64(sh.D), E: i64(sh.E), N: i64(sh.N), K: i64(sh.K), R: i64(sh.R), V: i64(sh.V),
		eps: sh.Eps, rms: b32(sh.RMS), mode: mode,
	}}
	if rc := w.be.l.wholePlan(&ws.shape, &ws.lay); rc != 0 {
		return fmt.Errorf("cuda: one-kernel step: %s", w.be.l.lastError())
	}
	ws.buf = w.be.Alloc(int(ws.lay.total / 4))
	ws.scratch = w.be.Alloc(int(ws.lay.scratchFloats))
	w.whole = ws
	return nil
}

// fillWhole writes the one-kernel step's copy of the weights.
func (w *stepWeights) fillWhole() {
	ws, be, sh := w.whole, w.be, w.shape
	lay := ws.lay
	D, E, N, K, R, V := sh.D, sh.E, sh.N, sh.K, sh.R, sh.V
	base := ptr(ws.buf)
	// pack writes src (rows,cols), element (r,c) at r·rs + c·cs, as rows of
	// ld values (bf16 or float32) at byte offset off; nil stays zeros.
	pack := func(off int64, bf16 bool, ld int64, src backend.Tensor, rs, cs, rows, cols int) {
		if src == nil {
			return
		}
		be.l.check("pack weights", be.l.pack2D(base+uintptr(off), b32(bf16), ld, ptr(src), i64(rs), i64(cs), i64(rows), i64(cols)))
		keep(src)
	}
	for l, ly := range w.layers {
		at := int64(l) * lay.layerBytes
		pack(at+lay.inProj, true, lay.Dp, ly.InProj, D, 1, 2*E, D)
		pack(at+lay.xProjT, true, lay.Jp, ly.XProj, 1, E, E, R+2*N)
		pack(at+lay.dtProj, true, lay.Rp, ly.DtProj, R, 1, E, R)
		pack(at+lay.outProj, true, lay.Ep, ly.OutProj, E, 1, D, E)
		// Per channel: conv weights, conv bias, dt bias, Dskip, A.
		ch := at + lay.chans
		pack(ch, false, lay.Cp, ly.ConvW, K, 1, E, K)
		pack(ch+4*int64(K), false, lay.Cp, ly.ConvB, 1, 0, E, 1)
		pack(ch+4*int64(K+1), false, lay.Cp, ly.DtBias, 1, 0, E, 1)
		pack(ch+4*int64(K+2), false, lay.Cp, ly.DSkip, 1, 0, E, 1)
		pack(ch+4*int64(K+3), false, lay.Cp, ly.NegA, N, 1, E, N)
		pack(at+lay.normW, false, lay.Dp, ly.Norm, 0, 1, 1, D)
		pack(at+lay.normB, false, lay.Dp, ly.NormB, 0, 1, 1, D)
	}
	pack(lay.head, true, lay.Dp, w.head.W, D, 1, V, D)
	pack(lay.normFW, false, lay.Dp, w.head.Norm, 0, 1, 1, D)
	pack(lay.normFB, false, lay.Dp, w.head.NormB, 0, 1, 1, D)
	keep(ws.buf)
}

// Refresh implements backend.StepWeights: it converts the matrices to bf16
// again (in bf16 mode) and folds each in_proj as read with its norm.
func (w *stepWeights) Refresh() {
	for _, c := range w.copies {
		w.be.l.check("to bf16", w.be.l.toBF16(c.dst, ptr(c.src), i64(c.n)))
		keep(c.src)
	}
	keep(w.buf)
	sh := w.shape
	for l, ly := range w.layers {
		w.be.l.check("fold in_proj", w.be.l.stepFold(w.folds[l], w.mats[l][0], w.wtype, ptr(ly.Norm), ptr(ly.NormB), i64(2*sh.E), i64(sh.D)))
		keep(ly.Norm, ly.NormB, ly.InProj)
	}
	keep(w.fold)
	if w.whole != nil {
		w.fillWhole()
	}
}

// Free implements backend.StepWeights.
func (w *stepWeights) Free() {
	w.buf, w.copies, w.mats, w.whole, w.fold, w.folds = nil, nil, nil, nil, nil, nil
}

func (be *Backend) stepWeightsOf(sw backend.StepWeights) *stepWeights {
	w, ok := sw.(*stepWeights)
	if !ok || w.be != be || w.mats == nil {
		panic(fmt.Sprintf("cuda: step weights %T not prepared by this backend", sw))
	}
	return w
}

// StepBlock implements backend.StepFuser.
func (be *Backend) StepBlock(sw backend.StepWeights, l int, h, conv, ssm backend.Tensor, s backend.StepScratch, B int) {
	w := be.stepWeightsOf(sw)
	sh, ly, m := w.shape, w.layers[l], w.mats[l]
	a := &stepArgs{
		inProj: m[0], xProj: m[1], dtProj: m[2], outProj: m[3], dtProj32: ptr(ly.DtProj), inFold: w.folds[l],
		normW: ptr(ly.Norm), normB: ptr(ly.NormB), convW: ptr(ly.ConvW), convB: ptr(ly.ConvB),
		dtBias: ptr(ly.DtBias), negA: ptr(ly.NegA), dskip: ptr(ly.DSkip),
		h: ptr(h), conv: ptr(conv), ssm: ptr(ssm),
		xz: ptr(s.XZ), xdbl: ptr(s.XDbl), u: ptr(s.U), g: ptr(s.G), xw: ptr(s.XW),
		B: i64(B), D: i64(sh.D), E: i64(sh.E), N: i64(sh.N), K: i64(sh.K), R: i64(sh.R),
		eps: sh.Eps, rms: b32(sh.RMS), wtype: w.wtype,
	}
	be.l.check("step block", be.l.stepBlock(a))
	keep(h, conv, ssm, s.XZ, s.XDbl, s.U, s.G, s.XW, w.buf, w.fold)
	keep(ly.Norm, ly.NormB, ly.InProj, ly.ConvW, ly.ConvB, ly.XProj, ly.DtProj, ly.DtBias, ly.NegA, ly.DSkip, ly.OutProj)
}

// StepHead implements backend.StepFuser.
func (be *Backend) StepHead(sw backend.StepWeights, logits, h backend.Tensor, s backend.StepScratch, B int) {
	w := be.stepWeightsOf(sw)
	sh := w.shape
	be.l.check("step head", be.l.stepHead(ptr(logits), ptr(h), ptr(w.head.Norm), ptr(w.head.NormB), w.headW, ptr(s.XW),
		i64(B), i64(sh.D), i64(sh.V), sh.Eps, b32(sh.RMS), w.wtype))
	keep(logits, h, s.XW, w.head.Norm, w.head.NormB, w.head.W, w.buf)
}

// StepWhole implements backend.WholeStepper (bf16 mode only).
func (be *Backend) StepWhole(sw backend.StepWeights, logits, h, state backend.Tensor) bool {
	w := be.stepWeightsOf(sw)
	ws := w.whole
	if ws == nil {
		return false
	}
	sh := w.shape
	if want := len(w.layers) * ((sh.K-1)*sh.E + sh.E*sh.N); state.Len() != want || h.Len() < sh.D || logits.Len() < sh.V {
		panic(fmt.Sprintf("cuda: StepWhole: state of %d values (want %d), h of %d, logits of %d", state.Len(), want, h.Len(), logits.Len()))
	}
	be.l.check("step whole", be.l.stepWhole(&ws.shape, ptr(ws.buf), ptr(h), ptr(state), ptr(logits), ptr(ws.scratch)))
	keep(logits, h, state, ws.buf, ws.scratch)
	be.wholeSteps++
	return true
}

// StepMMACount is how many block steps the library has run on its
// tensor-core path for 2 to 16 streams since it was loaded (a recorded
// step counts once, when it is recorded).
func (be *Backend) StepMMACount() int64 { return be.l.stepMMACount() }

// WholeSteps is how many steps have been issued through the one-kernel
// step (a recorded step counts once, when it is recorded).
func (be *Backend) WholeSteps() int { return be.wholeSteps }
