package model

import (
	"fmt"

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
type Stepper struct {
	m      *Model
	pass   *Pass
	ids    []int32
	logits []float32
}

// NewStepper returns a Stepper for states of streams streams.
func (m *Model) NewStepper(streams int) *Stepper {
	return &Stepper{m: m, pass: m.NewPass(streams, 1, false), logits: make([]float32, streams*m.Cfg.VocabSize)}
}

// Step feeds bytes[i] to stream i of st and returns the logits for each
// stream's next byte, (Streams,V). The returned slice is reused by the next
// Step.
func (sp *Stepper) Step(st *State, bytes []int32) ([]float32, error) {
	if _, _, err := sp.pass.Forward(bytes, nil, st, nil, 0); err != nil {
		return nil, err
	}
	sp.pass.Logits(sp.logits)
	return sp.logits, nil
}
