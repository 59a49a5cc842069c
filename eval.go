package mambabyte

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"math"

	"github.com/mambabyte/mambabyte/internal/model"
)

// EvalResult is the score of a text.
type EvalResult struct {
	NLL   float64 `json:"nll"`   // mean negative log-likelihood, nats per byte
	BPB   float64 `json:"bpb"`   // NLL / ln 2, bits per byte
	Bytes int64   `json:"bytes"` // bytes scored: every byte after the first
}

// DefaultChunk is how many bytes Eval runs through the model at once.
const DefaultChunk = 2048

// EvalOptions choose how a text is scored. The zero value scores the
// whole text as one sequence.
type EvalOptions struct {
	// Chunk is how many bytes go through the model at once (DefaultChunk if
	// 0). It changes speed and memory, never the score.
	Chunk int
	// Context, if positive, cuts the text into segments of Context
	// predictions, each read from a zero state (so no byte sees more than
	// Context bytes of history). Use it to measure how the score depends on
	// context length, e.g. beyond the length the model was trained at.
	Context int
	// Window, if positive, scores with sliding windows of Window bytes
	// moved by Window/2, each from a zero state: the first window scores
	// all its bytes, every later one only its last half (the MambaByte
	// paper's evaluation). Window and Context exclude each other.
	Window int
	// Progress, if not nil, is called after each forward pass with the
	// bytes scored so far and their mean negative log-likelihood.
	Progress func(scored int64, nll float64)
}

// Eval scores every byte of r after the first exactly once and returns the
// mean negative log-likelihood. By default the text is one sequence: the
// model reads it chunk by chunk and carries its recurrent state across
// chunks, so memory stays constant however long the text is. A text of
// fewer than two bytes is an error.
func (m *Model) Eval(r io.Reader, opt EvalOptions) (EvalResult, error) {
	if opt.Chunk < 0 || opt.Context < 0 || opt.Window < 0 {
		return EvalResult{}, fmt.Errorf("eval: chunk, context and window must not be negative")
	}
	if opt.Context > 0 && opt.Window > 0 {
		return EvalResult{}, fmt.Errorf("eval: choose a context length or a sliding window, not both")
	}
	if opt.Window == 1 {
		return EvalResult{}, fmt.Errorf("eval: a sliding window needs at least 2 bytes")
	}
	if opt.Chunk == 0 {
		opt.Chunk = DefaultChunk
	}
	sc := &scorer{m: m.m, chunk: opt.Chunk, st: m.m.NewState(1), progress: opt.Progress}
	br := bufio.NewReaderSize(r, 1<<16)
	var err error
	switch {
	case opt.Window > 0:
		err = sc.windows(br, opt.Window)
	case opt.Context > 0:
		err = sc.segments(br, opt.Context+1)
	default:
		err = sc.segments(br, 0)
	}
	if err != nil {
		return EvalResult{}, err
	}
	if sc.count == 0 {
		return EvalResult{}, fmt.Errorf("eval: the text has fewer than 2 bytes; nothing to score")
	}
	nll := sc.sum / float64(sc.count)
	return EvalResult{NLL: nll, BPB: nll / math.Ln2, Bytes: sc.count}, nil
}

// scorer runs byte sequences through a model and sums the negative
// log-likelihood of chosen predictions.
type scorer struct {
	m     *model.Model
	chunk int
	st    *model.State
	pass  *model.Pass
	sum   float64
	count int64
	ids   []int32
	tg    []int32
	nll   []float32

	progress func(scored int64, nll float64)
}

// run feeds seq (continuing from the current state) and adds the
// predictions of seq[i+1] for i+1 >= from. The state is left after
// seq[len-2]; the last byte is only a target.
func (s *scorer) run(seq []byte, from int) error {
	for lo := 0; lo+1 < len(seq); lo += s.chunk {
		T := min(s.chunk, len(seq)-1-lo)
		if s.pass == nil || s.pass.T != T {
			s.pass = s.m.NewPass(1, T, false)
			s.ids = make([]int32, T)
			s.tg = make([]int32, T)
			s.nll = make([]float32, T)
		}
		for i := 0; i < T; i++ {
			s.ids[i] = int32(seq[lo+i])
			if lo+i+1 >= from {
				s.tg[i] = int32(seq[lo+i+1])
			} else {
				s.tg[i] = -1
			}
		}
		sum, count, err := s.pass.Forward(s.ids, s.tg, s.st, nil, 0)
		if err != nil {
			return err
		}
		s.sum += sum
		s.count += int64(count)
		if s.progress != nil && s.count > 0 {
			s.progress(s.count, s.sum/float64(s.count))
		}
	}
	return nil
}

// segments scores the text as consecutive segments of seg bytes that
// overlap by one byte (the last byte of one is the first of the next),
// each read from a zero state; seg 0 means one segment, read in chunks
// with the state carried.
func (s *scorer) segments(r io.Reader, seg int) error {
	if seg == 0 {
		// One sequence: read chunk+1 bytes at a time, keeping the last
		// byte as the first of the next chunk and carrying the state.
		buf := make([]byte, 0, s.chunk+1)
		for {
			n, err := io.ReadFull(r, buf[len(buf):s.chunk+1])
			buf = buf[:len(buf)+n]
			if err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
				return err
			}
			if len(buf) >= 2 {
				if rerr := s.run(buf, 1); rerr != nil {
					return rerr
				}
			}
			if err != nil {
				return nil
			}
			buf = append(buf[:0], buf[len(buf)-1])
		}
	}
	buf := make([]byte, 0, seg)
	for {
		n, err := io.ReadFull(r, buf[len(buf):seg])
		buf = buf[:len(buf)+n]
		if err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
			return err
		}
		if len(buf) >= 2 {
			s.st.Reset()
			if rerr := s.run(buf, 1); rerr != nil {
				return rerr
			}
		}
		if err != nil {
			return nil
		}
		buf = append(buf[:0], buf[len(buf)-1])
	}
}

// windows scores with sliding windows of w bytes moved by w/2.
func (s *scorer) windows(r io.Reader, w int) error {
	half := w / 2
	buf := make([]byte, 0, w)
	first := true
	for {
		n, err := io.ReadFull(r, buf[len(buf):w])
		buf = buf[:len(buf)+n]
		if err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
			return err
		}
		// The first half bytes of a later window were scored by the one
		// before it.
		from := half
		if first {
			from = 1
		}
		if len(buf)-1 >= from {
			s.st.Reset()
			if rerr := s.run(buf, from); rerr != nil {
				return rerr
			}
		}
		if err != nil {
			return nil
		}
		first = false
		buf = append(buf[:0], buf[w-half:]...)
	}
}
