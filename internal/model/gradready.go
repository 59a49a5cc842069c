package model

// GradRange is a run of the gradient buffer, in values: Grads.Slice(Off,
// Len).
type GradRange struct {
	Off, Len int
}

// OnGradReady sets f, which Backward then calls with each range of the
// gradient buffer as soon as the pass has issued its last contribution to
// it: the final norm (with a separate head) first, then the layers from
// the last to the first, then the embedding (which, tied, is also the
// head). The ranges cover the buffer exactly once per Backward. A caller
// can start reducing a range across processes there while the backward
// of the layers below runs; on an asynchronous backend the contributions
// have been issued, not necessarily finished, so the reduction must be
// ordered after the backend's work (see package internal/dist). nil turns
// the calls off.
func (p *Pass) OnGradReady(f func(GradRange)) { p.gradReady = f }

// GradRanges lists the ranges OnGradReady reports, in the order Backward
// reports them.
func (m *Model) GradRanges() []GradRange {
	c := m.Cfg
	embed := c.VocabSize * c.DModel
	layerStart := func(l int) int {
		if l == c.NLayer {
			return m.offsets[NameNormF]
		}
		return m.offsets[LayerPrefix(l)+SufNorm]
	}
	tail := m.offsets[NameNormF]
	rs := []GradRange{{tail, m.Params.Len() - tail}}
	for l := c.NLayer - 1; l >= 0; l-- {
		rs = append(rs, GradRange{layerStart(l), layerStart(l+1) - layerStart(l)})
	}
	return append(rs, GradRange{0, embed})
}

// gradDone reports range i of GradRanges to the OnGradReady function.
func (p *Pass) gradDone(i int) {
	if p.gradReady == nil {
		return
	}
	if p.ranges == nil {
		p.ranges = p.m.GradRanges()
	}
	p.gradReady(p.ranges[i])
}
