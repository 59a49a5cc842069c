package cuda

import (
	"fmt"

	"github.com/mambabyte/mambabyte/internal/backend"
)

// The Backend implements backend.StepFuser with the library's fused step
// (cuda/step.cuh): four kernels per residual block, and one for the head.
// In bf16 mode the four matrices of every layer and the head are read as
// bf16 copies, which halves the bytes a decode step streams from memory;
// in fp32 mode they are read as they are.
var _ backend.StepFuser = (*Backend)(nil)

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
	if be.mode == 0 {
		for l, ly := range layers {
			w.mats[l] = [4]uintptr{ptr(ly.InProj), ptr(ly.XProj), ptr(ly.DtProj), ptr(ly.OutProj)}
		}
		w.headW = ptr(head.W)
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
	w.Refresh()
	return w, nil
}

// Refresh implements backend.StepWeights: it converts the matrices to bf16
// again (nothing to do in fp32 mode).
func (w *stepWeights) Refresh() {
	for _, c := range w.copies {
		w.be.l.check("to bf16", w.be.l.toBF16(c.dst, ptr(c.src), i64(c.n)))
		keep(c.src)
	}
	keep(w.buf)
}

// Free implements backend.StepWeights.
func (w *stepWeights) Free() {
	w.buf, w.copies, w.mats = nil, nil, nil
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
		inProj: m[0], xProj: m[1], dtProj: m[2], outProj: m[3], dtProj32: ptr(ly.DtProj),
		normW: ptr(ly.Norm), normB: ptr(ly.NormB), convW: ptr(ly.ConvW), convB: ptr(ly.ConvB),
		dtBias: ptr(ly.DtBias), negA: ptr(ly.NegA), dskip: ptr(ly.DSkip),
		h: ptr(h), conv: ptr(conv), ssm: ptr(ssm),
		xz: ptr(s.XZ), xdbl: ptr(s.XDbl), u: ptr(s.U), g: ptr(s.G), xw: ptr(s.XW),
		B: i64(B), D: i64(sh.D), E: i64(sh.E), N: i64(sh.N), K: i64(sh.K), R: i64(sh.R),
		eps: sh.Eps, rms: b32(sh.RMS), wtype: w.wtype,
	}
	be.l.check("step block", be.l.stepBlock(a))
	keep(h, conv, ssm, s.XZ, s.XDbl, s.U, s.G, s.XW, w.buf)
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
