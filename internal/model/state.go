package model

import (
	"fmt"
	"weak"

	"github.com/mambabyte/mambabyte/internal/backend"
)

// State is the recurrent state of Streams independent byte streams: per
// layer the last K-1 conv inputs (Streams,K-1,E) and the SSM state
// (Streams,E,N). Its size does not depend on how many bytes were read. All
// of it lives in one allocation, so Clone and CopyFrom are single copies.
type State struct {
	Streams int
	buf     backend.Tensor
	conv    []backend.Tensor
	ssm     []backend.Tensor
	be      backend.Backend
	cfg     Config
}

// NewState returns a zero state (the state before any byte) for streams
// streams.
func (m *Model) NewState(streams int) *State {
	c := m.Cfg
	E := c.DInner()
	convN := streams * (c.DConv - 1) * E
	ssmN := streams * E * c.DState
	s := &State{Streams: streams, be: m.BE, cfg: c, buf: m.BE.Alloc(c.NLayer * (convN + ssmN))}
	s.views()
	return s
}

func (s *State) views() {
	c := s.cfg
	E := c.DInner()
	convN := s.Streams * (c.DConv - 1) * E
	ssmN := s.Streams * E * c.DState
	s.conv = make([]backend.Tensor, c.NLayer)
	s.ssm = make([]backend.Tensor, c.NLayer)
	for l := 0; l < c.NLayer; l++ {
		off := l * (convN + ssmN)
		s.conv[l] = s.buf.Slice(off, convN)
		s.ssm[l] = s.buf.Slice(off+convN, ssmN)
	}
}

// Reset sets the state back to the state before any byte.
func (s *State) Reset() { s.be.Zero(s.buf) }

// Clone returns an independent copy (a snapshot).
func (s *State) Clone() *State {
	c := &State{Streams: s.Streams, be: s.be, cfg: s.cfg, buf: s.be.Alloc(s.buf.Len())}
	s.be.Copy(c.buf, s.buf)
	c.views()
	return c
}

// CopyFrom overwrites s with src (a restore); both must have the same shape.
func (s *State) CopyFrom(src *State) error {
	if src.buf.Len() != s.buf.Len() || src.Streams != s.Streams {
		return fmt.Errorf("state: copy from a state of another shape")
	}
	s.be.Copy(s.buf, src.buf)
	return nil
}

// Bytes is the state's size in bytes (float32 values).
func (s *State) Bytes() int { return 4 * s.buf.Len() }

// Stepper advances states one byte per stream at a time, reusing its
// buffers between steps.
//
// On a backend that can capture (backend.Capturer, CUDA graphs), the
// Stepper records the step once per State and replays the recording for
// later steps: the first Step with a State runs normally (it also brings
// values derived from the parameters up to date), the second records the
// step and replays it, and later ones only upload the bytes, replay and
// download the logits. A recording refers to the State's own memory, which
// keeps its place, so Reset, CopyFrom (restoring a snapshot) and steps of
// other States between two steps are all seen. Recordings are kept for the
// last few States used and dropped when the parameters change (SetParams
// or Touch).
type Stepper struct {
	m      *Model
	pass   *Pass
	ids    []int32
	logits []float32

	capt    backend.Capturer // nil: run every operation directly
	graphs  []stepGraph      // most recently used last
	version uint64           // m.version the graphs were recorded under

	fused   bool                // the backend has a fused step (backend.StepFuser)
	scratch backend.StepScratch // its working memory
}

// stepGraph is the recorded step for one State. It holds the State weakly:
// a State no longer used is collected, and its entry never matches again.
type stepGraph struct {
	st weak.Pointer[State]
	g  backend.Graph // nil: stepped once, to be recorded at the next step
}

// maxStepGraphs is how many States a Stepper keeps recordings for.
const maxStepGraphs = 4

// NewStepper returns a Stepper for states of streams streams.
func (m *Model) NewStepper(streams int) *Stepper {
	sp := &Stepper{m: m, pass: m.NewPass(streams, 1, false), logits: make([]float32, streams*m.Cfg.VocabSize)}
	if _, ok := m.BE.(backend.StepFuser); ok {
		c := m.Cfg
		a := &sp.pass.acts[0]
		sp.fused = true
		sp.scratch = backend.StepScratch{XZ: a.xz, XDbl: a.xdbl, U: a.u, G: a.g, XW: m.BE.Alloc(streams * max(c.DModel, c.DInner()))}
	}
	if c, ok := m.BE.(backend.Capturer); ok && c.CaptureEnabled() {
		sp.capt = c
		sp.version = m.version
	}
	return sp
}

// Step feeds bytes[i] to stream i of st and returns the logits for each
// stream's next byte, (Streams,V). The returned slice is reused by the next
// Step.
func (sp *Stepper) Step(st *State, bytes []int32) ([]float32, error) {
	if sp.capt == nil {
		return sp.direct(st, bytes)
	}
	if sp.version != sp.m.version {
		sp.Free()
		sp.version = sp.m.version
	}
	e := sp.entry(st)
	if e == nil {
		// First step with st: run it directly.
		if _, err := sp.direct(st, bytes); err != nil {
			return nil, err
		}
		sp.add(stepGraph{st: weak.Make(st)})
		return sp.logits, nil
	}
	if err := sp.check(st, bytes); err != nil {
		return nil, err
	}
	if e.g == nil {
		g, err := sp.record(st, bytes)
		if err != nil {
			// The backend could not record this step (nothing ran):
			// step directly from now on.
			sp.Free()
			sp.capt = nil
			return sp.direct(st, bytes)
		}
		e.g = g
	}
	sp.capt.StageIDs(bytes)
	e.g.Launch()
	sp.pass.Logits(sp.logits)
	return sp.logits, nil
}

// Fused reports whether steps run through the backend's fused step.
func (sp *Stepper) Fused() bool {
	if !sp.fused {
		return false
	}
	f, _ := sp.m.stepWeights()
	return f != nil
}

// direct runs a step without recording it.
func (sp *Stepper) direct(st *State, bytes []int32) ([]float32, error) {
	if err := sp.run(st, bytes); err != nil {
		return nil, err
	}
	sp.pass.Logits(sp.logits)
	return sp.logits, nil
}

// run issues a step: through the fused step when there is one, else as a
// Forward of one byte per stream.
func (sp *Stepper) run(st *State, bytes []int32) error {
	if sp.fused {
		if f, w := sp.m.stepWeights(); f != nil {
			if err := sp.check(st, bytes); err != nil {
				return err
			}
			sp.pass.stepFused(f, w, sp.scratch, bytes, st)
			return nil
		}
	}
	_, _, err := sp.pass.Forward(bytes, nil, st, nil, 0)
	return err
}

// check does Forward's checks of a step's inputs for a replay.
func (sp *Stepper) check(st *State, bytes []int32) error {
	if st.Streams != sp.pass.B {
		return fmt.Errorf("forward: state has %d streams, batch has %d", st.Streams, sp.pass.B)
	}
	if len(bytes) != sp.pass.B {
		return fmt.Errorf("forward: %d ids for a (%d,%d) batch", len(bytes), sp.pass.B, 1)
	}
	V := sp.m.Cfg.VocabSize
	for i, id := range bytes {
		if id < 0 || int(id) >= V {
			return fmt.Errorf("forward: id %d at position %d outside the vocabulary of %d", id, i, V)
		}
	}
	return nil
}

// record captures one step of st.
func (sp *Stepper) record(st *State, bytes []int32) (backend.Graph, error) {
	if sp.fused {
		sp.m.stepWeights() // any refresh runs now, not in the recording
	}
	if err := sp.capt.BeginCapture(); err != nil {
		return nil, err
	}
	ferr := sp.run(st, bytes)
	g, err := sp.capt.EndCapture()
	if ferr != nil {
		if g != nil {
			g.Free()
		}
		return nil, ferr
	}
	return g, err
}

// entry returns st's entry, moved to the most recent place, or nil. It
// frees the recordings of States that have been collected.
func (sp *Stepper) entry(st *State) *stepGraph {
	key := weak.Make(st)
	var hit *stepGraph
	live := sp.graphs[:0]
	for _, e := range sp.graphs {
		switch {
		case e.st == key:
			hit = &stepGraph{st: e.st, g: e.g}
		case e.st.Value() == nil:
			if e.g != nil {
				e.g.Free()
			}
		default:
			live = append(live, e)
		}
	}
	clear(sp.graphs[len(live):])
	sp.graphs = live
	if hit == nil {
		return nil
	}
	sp.graphs = append(sp.graphs, *hit)
	return &sp.graphs[len(sp.graphs)-1]
}

// add appends an entry, freeing the least recently used beyond
// maxStepGraphs.
func (sp *Stepper) add(e stepGraph) {
	if n := len(sp.graphs); n == maxStepGraphs {
		if g := sp.graphs[0].g; g != nil {
			g.Free()
		}
		copy(sp.graphs, sp.graphs[1:])
		sp.graphs[n-1] = stepGraph{}
		sp.graphs = sp.graphs[:n-1]
	}
	sp.graphs = append(sp.graphs, e)
}

// Graphs is how many recorded steps the Stepper holds.
func (sp *Stepper) Graphs() int {
	n := 0
	for _, e := range sp.graphs {
		if e.g != nil {
			n++
		}
	}
	return n
}

// Free releases the Stepper's recorded steps; later steps record anew.
func (sp *Stepper) Free() {
	for _, e := range sp.graphs {
		if e.g != nil {
			e.g.Free()
		}
	}
	clear(sp.graphs)
	sp.graphs = sp.graphs[:0]
}
