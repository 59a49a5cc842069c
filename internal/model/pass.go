package model

import (
	"fmt"

	"github.com/mambabyte/mambabyte/internal/backend"
)

// Pass holds the activations of one forward over a (B,T) batch. A training
// pass keeps every layer's activations for Backward; an inference pass
// reuses one layer's buffers for all layers. A Pass is reused across calls
// with the same B and T; it is not safe for concurrent use.
type Pass struct {
	m         *Model
	B, T      int
	train     bool
	recompute bool

	// hin holds each layer's input in a recomputing training pass (its
	// one layerActs is refilled per layer in Backward).
	hin []backend.Tensor

	// dts is the backend's dt activation inside the scan, or nil (then
	// Dt writes Δ for Scan).
	dts backend.DtScanner
	// gs, when the DtScanner is one, applies the gate inside the scan.
	gs backend.GatedScanner
	// crc, when the backend is one, recomputes the conv's pre-activation
	// in Backward (layerActs.pre stays nil).
	crc backend.ConvRecomputer
	// wr, when the backend is one and rounds this pass's products'
	// operands, rounds the weights they read (Model.roundedWeights).
	wr backend.WeightRounder
	// thin, when the backend is one, is a GatedScanner and a
	// ConvRecomputer, and runs this training pass's thin products (x_proj's
	// and dt_proj's) on bf16 operands: the conv then also writes u's copy
	// u16, the scan's backward writes ddelta so, the products read x_proj
	// and dt_proj rounded, and x_proj's dX product writes dux in bf16 for
	// the conv's backward, which adds it to du.
	thin backend.ThinRounder

	ids     []int32
	targets []int32
	prev    []backend.Tensor // per layer: conv inputs before t=0 (nil: zeros)

	acts   []layerActs // len L (training) or 1
	h      backend.Tensor
	hL     backend.Tensor // residual stream after the last layer (BT,D)
	nf     backend.Tensor // final norm output (BT,D)
	meanF  backend.Tensor
	rstdF  backend.Tensor
	logits backend.Tensor // (BT,V); holds dlogits after a training Forward
	grad   bool           // logits holds dlogits

	// Backward scratch.
	dh, dn, dg, dy, dxz, du, ddelta, dxdbl backend.Tensor
	dux                                    backend.Tensor // x_proj's part of du (thin, bf16), or nil

	// gradReady is called as Backward finishes each GradRange
	// (gradready.go); ranges caches the model's GradRanges.
	gradReady func(GradRange)
	ranges    []GradRange
}

// layerActs is what one layer's forward keeps for its backward.
type layerActs struct {
	hIn        backend.Tensor // residual stream entering the layer (BT,D)
	nrm        backend.Tensor // norm output (BT,D)
	mean, rstd backend.Tensor // (BT)
	xz         backend.Tensor // in_proj output (BT,2E): xi then z
	pre, u     backend.Tensor // conv pre-activation (nil with a ConvRecomputer) and silu output (BT,E)
	u16        backend.Tensor // u as x_proj's products read it: a thin operand copy, or u
	xdbl       backend.Tensor // x_proj output (BT,R+2N): r, Bt, Ct
	raw, delta backend.Tensor // dt pre-activation (biased by Dt; with a DtScanner unbiased, and delta nil) and softplus (BT,E)
	ckpt       backend.Tensor // scan states at chunk starts (B,chunks,E,N)
	y          backend.Tensor // scan output (BT,E)
	g          backend.Tensor // gated output (BT,E), out_proj's input
}

// NewPass allocates activations for batches of B sequences of T bytes.
// A training pass can run Backward.
func (m *Model) NewPass(B, T int, train bool) *Pass { return m.newPass(B, T, train, false) }

// NewRecomputePass allocates a training pass that keeps only each layer's
// input from Forward to Backward and runs each layer's forward again, up
// to its output projection, just before that layer's backward: each
// layer's forward runs twice, for a small fraction of the activation memory
// (every layer's activations otherwise stay allocated together). The gradients
// are those of NewPass.
func (m *Model) NewRecomputePass(B, T int) *Pass { return m.newPass(B, T, true, true) }

func (m *Model) newPass(B, T int, train, recompute bool) *Pass {
	c := m.Cfg
	be := m.BE
	BT, D, E, N, R, V := B*T, c.DModel, c.DInner(), c.DState, c.Rank(), c.VocabSize
	p := &Pass{m: m, B: B, T: T, train: train, recompute: recompute}
	p.dts, _ = m.BE.(backend.DtScanner)
	if p.dts != nil {
		p.gs, _ = m.BE.(backend.GatedScanner)
	}
	p.crc, _ = m.BE.(backend.ConvRecomputer)
	if wr, ok := m.BE.(backend.WeightRounder); ok && train && wr.RoundsWeights(min(BT, D, E)) {
		p.wr = wr
	}
	if tr, ok := m.BE.(backend.ThinRounder); ok && train && p.gs != nil && p.crc != nil && tr.RoundsThin(min(BT, E)) {
		p.thin = tr
	}
	nl := 1
	if train && !recompute {
		nl = c.NLayer
	}
	if recompute {
		p.hin = make([]backend.Tensor, c.NLayer)
		for l := range p.hin {
			p.hin[l] = be.Alloc(BT * D)
		}
	}
	p.acts = make([]layerActs, nl)
	// A training pass keeps GEMM operands that only GEMMs read (the norm
	// outputs, the gated outputs, the gradient of in_proj's output) at the
	// precision the backend's GEMMs read, where it has one of its own.
	// Every GEMM that reads them has sides BT, D and E (or 2E).
	operand := be.Alloc
	if oa, ok := be.(backend.OperandAllocator); ok && train {
		operand = func(n int) backend.Tensor { return oa.AllocOperand(n, min(BT, D, E)) }
	}
	for i := range p.acts {
		a := &p.acts[i]
		if recompute {
			a.hIn = p.hin[0]
		} else {
			a.hIn = be.Alloc(BT * D)
		}
		a.nrm = operand(BT * D)
		a.mean, a.rstd = be.Alloc(BT), be.Alloc(BT)
		a.xz = be.Alloc(BT * 2 * E)
		a.u = be.Alloc(BT * E)
		a.u16 = a.u
		if p.thin != nil {
			a.u16 = p.thin.AllocThin(BT * E)
		}
		a.xdbl = be.Alloc(BT * (R + 2*N))
		a.raw = be.Alloc(BT * E)
		if p.dts == nil {
			a.delta = be.Alloc(BT * E)
		}
		a.y = be.Alloc(BT * E)
		a.g = operand(BT * E)
		if train {
			if p.crc == nil {
				a.pre = be.Alloc(BT * E)
			}
			a.ckpt = be.Alloc(B * be.ScanCheckpoints(T) * E * N)
		}
	}
	if train {
		p.hL = be.Alloc(BT * D)
	}
	p.nf = be.Alloc(BT * D)
	p.meanF, p.rstdF = be.Alloc(BT), be.Alloc(BT)
	p.logits = be.Alloc(BT * V)
	if train {
		p.dh, p.dn = be.Alloc(BT*D), be.Alloc(BT*D)
		p.dg = be.Alloc(BT * E)
		if p.gs == nil {
			p.dy = be.Alloc(BT * E) // (a GatedScanner needs none)
		}
		p.dxz = operand(BT * 2 * E)
		p.du = be.Alloc(BT * E)
		if p.thin != nil {
			p.ddelta = p.thin.AllocThin(BT * E) // the scan's backward writes it
			p.dux = p.thin.AllocThin(BT * E)
		} else {
			p.ddelta = be.Alloc(BT * E)
		}
		p.dxdbl = be.Alloc(BT * (R + 2*N))
	}
	return p
}

// Forward runs the network over ids (B·T bytes, row-major (B,T)).
//
// If st is not nil it must have B streams: the pass starts from its conv
// and SSM states and leaves the states after the last byte in it, so a long
// sequence can be processed in consecutive chunks (a training pass does
// not take a state).
//
// If targets (B·T, negative = not scored) is not nil, Forward returns the
// sum of -ln p(target) and the number of scored positions; nll, if not nil,
// receives each position's -ln p. In a training pass, gradScale scales the
// gradient that Backward will propagate (1/count gives the mean loss's
// gradient; accumulation over micro-batches divides by the total count).
func (p *Pass) Forward(ids, targets []int32, st *State, nll []float32, gradScale float32) (sum float64, count int, err error) {
	m, be, c := p.m, p.m.BE, p.m.Cfg
	B, T := p.B, p.T
	BT, D, E, V := B*T, c.DModel, c.DInner(), c.VocabSize
	if len(ids) != BT {
		return 0, 0, fmt.Errorf("forward: %d ids for a (%d,%d) batch", len(ids), B, T)
	}
	for i, id := range ids {
		if id < 0 || int(id) >= V {
			return 0, 0, fmt.Errorf("forward: id %d at position %d outside the vocabulary of %d", id, i, V)
		}
	}
	if targets != nil {
		if len(targets) != BT {
			return 0, 0, fmt.Errorf("forward: %d targets for a (%d,%d) batch", len(targets), B, T)
		}
		for i, tg := range targets {
			if int(tg) >= V {
				return 0, 0, fmt.Errorf("forward: target %d at position %d outside the vocabulary of %d", tg, i, V)
			}
			if tg >= 0 {
				count++
			}
		}
	}
	if st != nil {
		if p.train {
			return 0, 0, fmt.Errorf("forward: a training pass starts from a zero state")
		}
		if st.Streams != B {
			return 0, 0, fmt.Errorf("forward: state has %d streams, batch has %d", st.Streams, B)
		}
	}
	if nll != nil && len(nll) != BT {
		return 0, 0, fmt.Errorf("forward: nll has %d slots for %d positions", len(nll), BT)
	}
	p.ids = append(p.ids[:0], ids...)
	p.targets = append(p.targets[:0], targets...)
	p.grad = false
	rms := c.Norm == RMSNorm
	eps := float32(c.NormEps)

	h := p.layerIn(0)
	be.Embed(h, ids, m.p.embed, BT, D)
	for l := 0; l < c.NLayer; l++ {
		a := p.actsFor(l)
		_, wOut := p.projections(l)
		p.layerForward(l, a, st)
		// 8. h = h + g · W_outᵀ                                        (BT,D)
		// A training pass keeps each layer's input, so the sum goes to the
		// next layer's buffer; inference adds in place.
		out := h
		if p.train {
			out = p.hL
			if l+1 < c.NLayer {
				out = p.layerIn(l + 1)
			}
			be.Copy(out, h)
		}
		be.Gemm(false, true, BT, D, E, 1, a.g, E, wOut, E, 1, out, D)
		h = out
	}
	// Final norm and head: logits = Norm_f(h) · W_headᵀ                 (BT,V)
	// (In a training pass h is p.hL, which Backward reads.)
	be.Norm(p.nf, p.meanF, p.rstdF, h, m.p.normF, m.p.normFB, BT, D, eps, rms)
	be.Gemm(false, true, BT, V, D, 1, p.nf, D, m.p.head, D, 0, p.logits, V)
	if targets == nil {
		return 0, 0, nil
	}
	var nllT backend.Tensor
	if nll != nil {
		nllT = be.Alloc(BT)
	}
	var dlogits backend.Tensor
	if p.train && gradScale != 0 {
		// The logits are not needed after this; keep only their gradient.
		dlogits = p.logits
		p.grad = true
	}
	sum = be.CrossEntropy(dlogits, nllT, p.logits, targets, BT, V, gradScale)
	if nll != nil {
		be.Download(nll, nllT)
	}
	return sum, count, nil
}

// projections returns layer l's in_proj and out_proj weights as the
// pass's products read them: the model's rounded copies where the backend
// rounds its operands (backend.WeightRounder), else the weights.
func (p *Pass) projections(l int) (in, out backend.Tensor) {
	if p.wr != nil {
		r := p.m.roundedWeights(p.wr, l, p.thin != nil)
		return r.inProj, r.outProj
	}
	w := &p.m.p.layers[l]
	return w.inProj, w.outProj
}

// thinWeights returns layer l's x_proj and dt_proj weights as the pass's
// products that read u16 and ddelta take them: rounded where those are
// bf16 (Pass.thin), else the weights.
func (p *Pass) thinWeights(l int) (x, dt backend.Tensor) {
	if p.thin != nil {
		r := p.m.roundedWeights(p.thin, l, true)
		return r.xProj, r.dtProj
	}
	w := &p.m.p.layers[l]
	return w.xProj, w.dtProj
}

// layerIn is the residual stream entering layer l (an inference pass has
// one buffer for all layers).
func (p *Pass) layerIn(l int) backend.Tensor {
	if p.recompute {
		return p.hin[l]
	}
	return p.acts[l%len(p.acts)].hIn
}

// actsFor is where layer l's activations go, its input in place.
func (p *Pass) actsFor(l int) *layerActs {
	a := &p.acts[l%len(p.acts)]
	if p.recompute {
		a.hIn = p.hin[l]
	}
	return a
}

// layerForward runs layer l up to its output projection from a.hIn,
// filling a; with st it starts from and updates the layer's state.
func (p *Pass) layerForward(l int, a *layerActs, st *State) {
	m, be, c := p.m, p.m.BE, p.m.Cfg
	B, T := p.B, p.T
	BT, D, E, N, K, R := B*T, c.DModel, c.DInner(), c.DState, c.DConv, c.Rank()
	ldbc := R + 2*N
	w := &m.p.layers[l]
	// 1. Pre-norm: nrm = Norm(h)                                       (BT,D)
	be.Norm(a.nrm, a.mean, a.rstd, a.hIn, w.norm, w.normB, BT, D, float32(c.NormEps), c.Norm == RMSNorm)
	// 2. [xi, z] = nrm · W_inᵀ                                         (BT,2E)
	wIn, _ := p.projections(l)
	be.Gemm(false, true, BT, 2*E, D, 1, a.nrm, D, wIn, D, 0, a.xz, 2*E)
	// 3. u = silu(causal depthwise conv(xi))                           (BT,E)
	var prev backend.Tensor
	if st != nil {
		prev = st.conv[l]
	}
	if p.thin != nil {
		p.thin.ConvCopy(a.u, a.u16, a.pre, a.xz, 2*E, prev, w.convW, w.convB, B, T, E, K)
	} else {
		be.Conv(a.u, a.pre, a.xz, 2*E, prev, w.convW, w.convB, B, T, E, K)
	}
	if st != nil {
		be.ConvState(st.conv[l], st.conv[l], a.xz, 2*E, B, T, E, K)
	}
	// 4. [r, Bt, Ct] = u · W_xᵀ                                        (BT,R+2N)
	wX, _ := p.thinWeights(l)
	be.Gemm(false, true, BT, ldbc, E, 1, a.u16, E, wX, E, 0, a.xdbl, ldbc)
	// 5. Δ = softplus(r · W_dtᵀ + b_dt)                                (BT,E)
	//    (inside the scan with a DtScanner: raw stays r · W_dtᵀ)
	be.Gemm(false, true, BT, E, R, 1, a.xdbl, ldbc, w.dtProj, R, 0, a.raw, E)
	if p.dts == nil {
		be.Dt(a.delta, a.raw, w.dtBias, BT, E)
	}
	// 6. y = selective scan + D·u                                      (BT,E)
	var s backend.Tensor
	if st != nil {
		s = st.ssm[l]
	}
	bt := a.xdbl.Slice(R, a.xdbl.Len()-R)
	ct := a.xdbl.Slice(R+N, a.xdbl.Len()-R-N)
	// 7. g = y ⊙ silu(z)                                               (BT,E)
	//    (inside the scan with a GatedScanner)
	z := a.xz.Slice(E, a.xz.Len()-E)
	switch {
	case p.gs != nil:
		p.gs.ScanDtGate(a.g, z, 2*E, a.y, a.u, a.raw, w.dtBias, bt, ct, ldbc, m.decay(l), w.dskip, s, s, a.ckpt, B, T, E, N)
		return
	case p.dts != nil:
		p.dts.ScanDt(a.y, a.u, a.raw, w.dtBias, bt, ct, ldbc, m.decay(l), w.dskip, s, s, a.ckpt, B, T, E, N)
	default:
		be.Scan(a.y, a.u, a.delta, bt, ct, ldbc, m.decay(l), w.dskip, s, s, a.ckpt, B, T, E, N)
	}
	be.Gate(a.g, a.y, z, 2*E, BT, E)
}

// stepFused runs one byte per stream (T = 1, checked inputs) from st
// through the backend's fused step (for one stream its whole step when it
// has one), leaving the logits where Forward does.
func (p *Pass) stepFused(f backend.StepFuser, w backend.StepWeights, s backend.StepScratch, ids []int32, st *State) {
	m, c := p.m, p.m.Cfg
	h := p.acts[0].hIn
	m.BE.Embed(h, ids, m.p.embed, p.B, c.DModel)
	p.grad = false
	if ws, ok := f.(backend.WholeStepper); ok && p.B == 1 && ws.StepWhole(w, p.logits, h, st.buf) {
		return
	}
	for l := 0; l < c.NLayer; l++ {
		f.StepBlock(w, l, h, st.conv[l], st.ssm[l], s, p.B)
	}
	f.StepHead(w, p.logits, h, s, p.B)
}

// Logits copies the logits of the last Forward (B·T·V) into dst. After a
// training Forward with targets they have been replaced by their gradient.
func (p *Pass) Logits(dst []float32) {
	p.m.BE.Download(dst, p.logits)
}

// Backward adds the gradient of the scaled loss of the last Forward to the
// model's gradients (AllocGrads first).
func (p *Pass) Backward() error {
	if !p.train || !p.grad {
		return fmt.Errorf("backward: needs a training pass whose Forward had targets and a gradient scale")
	}
	m, be, c := p.m, p.m.BE, p.m.Cfg
	if m.Grads == nil {
		return fmt.Errorf("backward: gradients not allocated")
	}
	B, T := p.B, p.T
	BT, D, E, N, K, R, V := B*T, c.DModel, c.DInner(), c.DState, c.DConv, c.Rank(), c.VocabSize
	rms := c.Norm == RMSNorm
	ldbc := R + 2*N
	dlogits := p.logits

	// Head: dW_head += dlogitsᵀ·nf; dnf = dlogits·W_head.
	be.Gemm(true, false, V, D, BT, 1, dlogits, V, p.nf, D, 1, m.g.head, D)
	be.Gemm(false, false, BT, D, V, 1, dlogits, V, m.p.head, D, 0, p.dn, D)
	be.Zero(p.dh)
	be.NormBackward(p.dh, m.g.normF, m.g.normFB, p.dn, p.hL, m.p.normF, p.meanF, p.rstdF, BT, D, rms)
	p.gradDone(0)

	for l := c.NLayer - 1; l >= 0; l-- {
		a := p.actsFor(l)
		if p.recompute && l < c.NLayer-1 {
			// (The last layer's activations are still there from Forward.)
			p.layerForward(l, a, nil)
		}
		w := &m.p.layers[l]
		wIn, wOut := p.projections(l)
		gw := &m.g.layers[l]
		z := a.xz.Slice(E, a.xz.Len()-E)
		// 8. out = g·W_outᵀ: dW_out += dhᵀ·g; dg = dh·W_out.
		be.Gemm(true, false, D, E, BT, 1, p.dh, D, a.g, E, 1, gw.outProj, E)
		be.Gemm(false, false, BT, E, D, 1, p.dh, D, wOut, E, 0, p.dg, E)
		// 7. gate (inside the scan's backward with a GatedScanner).
		dz := p.dxz.Slice(E, p.dxz.Len()-E)
		if p.gs == nil {
			be.GateBackward(p.dy, dz, p.dg, a.y, z, 2*E, BT, E)
		}
		// 6. scan.
		bt := a.xdbl.Slice(R, a.xdbl.Len()-R)
		ct := a.xdbl.Slice(R+N, a.xdbl.Len()-R-N)
		dbt := p.dxdbl.Slice(R, p.dxdbl.Len()-R)
		dct := p.dxdbl.Slice(R+N, p.dxdbl.Len()-R-N)
		// 6 and 5. scan, then dt: draw overwrites ddelta (a DtScanner
		// writes it there directly); dW_dt += drawᵀ·r; dr = draw·W_dt.
		switch {
		case p.gs != nil:
			p.gs.ScanDtGateBackward(dz, p.dg, a.y, z, 2*E, p.du, p.ddelta, dbt, dct, gw.alog, gw.dskip, gw.dtBias, a.u, a.raw, w.dtBias, bt, ct, ldbc, m.decay(l), w.dskip, a.ckpt, B, T, E, N)
		case p.dts != nil:
			p.dts.ScanDtBackward(p.du, p.ddelta, dbt, dct, gw.alog, gw.dskip, gw.dtBias, p.dy, a.u, a.raw, w.dtBias, bt, ct, ldbc, m.decay(l), w.dskip, a.ckpt, B, T, E, N)
		default:
			be.ScanBackward(p.du, p.ddelta, dbt, dct, gw.alog, gw.dskip, p.dy, a.u, a.delta, bt, ct, ldbc, m.decay(l), w.dskip, a.ckpt, B, T, E, N)
			be.DtBackward(p.ddelta, gw.dtBias, p.ddelta, a.raw, BT, E)
		}
		_, wDt := p.thinWeights(l)
		be.Gemm(true, false, E, R, BT, 1, p.ddelta, E, a.xdbl, ldbc, 1, gw.dtProj, R)
		be.Gemm(false, false, BT, R, E, 1, p.ddelta, E, wDt, R, 0, p.dxdbl, ldbc)
		// 4. x_proj: dW_x += dxdblᵀ·u; du += dxdbl·W_x (with thin the
		// conv's backward adds dux = dxdbl·W_x to du).
		be.Gemm(true, false, ldbc, E, BT, 1, p.dxdbl, ldbc, a.u16, E, 1, gw.xProj, E)
		// 3. conv: writes dxi (first E columns of dxz).
		switch {
		case p.thin != nil:
			wX, _ := p.thinWeights(l)
			be.Gemm(false, false, BT, E, ldbc, 1, p.dxdbl, ldbc, wX, E, 0, p.dux, E)
			p.thin.ConvBackwardRecomputeSum(p.dxz, 2*E, gw.convW, gw.convB, p.du, p.dux, a.xz, nil, w.convW, w.convB, B, T, E, K)
		case p.crc != nil:
			be.Gemm(false, false, BT, E, ldbc, 1, p.dxdbl, ldbc, w.xProj, E, 1, p.du, E)
			p.crc.ConvBackwardRecompute(p.dxz, 2*E, gw.convW, gw.convB, p.du, a.xz, nil, w.convW, w.convB, B, T, E, K)
		default:
			be.Gemm(false, false, BT, E, ldbc, 1, p.dxdbl, ldbc, w.xProj, E, 1, p.du, E)
			be.ConvBackward(p.dxz, 2*E, gw.convW, gw.convB, p.du, a.pre, a.xz, nil, w.convW, B, T, E, K)
		}
		// 2. in_proj: dW_in += dxzᵀ·nrm; dn = dxz·W_in.
		be.Gemm(true, false, 2*E, D, BT, 1, p.dxz, 2*E, a.nrm, D, 1, gw.inProj, D)
		be.Gemm(false, false, BT, D, 2*E, 1, p.dxz, 2*E, wIn, D, 0, p.dn, D)
		// 1. norm: the residual passes dh through; the norm adds its part.
		be.NormBackward(p.dh, gw.norm, gw.normB, p.dn, a.hIn, w.norm, a.mean, a.rstd, BT, D, rms)
		p.gradDone(c.NLayer - l)
	}
	be.EmbedBackward(m.g.embed, p.dh, p.ids, BT, D)
	p.gradDone(c.NLayer + 1)
	p.grad = false
	return nil
}
