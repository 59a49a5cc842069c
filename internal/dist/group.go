package dist

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"sync"
	"time"
)

// Wire format. Every rank but 0 opens one TCP connection to rank 0 and
// sends a hello:
//
//	"MBRZ" | version u16 | 0 u16 | rank u32 | world u32          (16 bytes)
//
// Once every rank has joined, rank 0 answers each with
//
//	"MBRZ" | status u8 (0 ok, 1 refused) | frame
//
// where the frame holds the blob (ok) or rank 0's reason (refused). After
// that the connections carry frames, u32 length (little endian) then
// payload, in the order the collective operations are called.
const (
	magic        = "MBRZ"
	wireVersion  = 1
	helloLen     = 16
	maxBlob      = 64 << 10
	maxFrame     = 1 << 30
	dialInterval = 100 * time.Millisecond
)

// Group is the job's control plane: one TCP connection between rank 0 and
// every other rank, left open after Rendezvous. Its operations are
// collective (every rank calls them in the same order) and not safe for
// concurrent use.
type Group struct {
	rank, world int
	conns       []net.Conn // rank 0: conns[r] for r ≥ 1; others: conns[0] is rank 0
	ln          net.Listener
	closeOnce   sync.Once
}

// Rank is this process's rank.
func (g *Group) Rank() int { return g.rank }

// Size is the number of ranks.
func (g *Group) Size() int { return g.world }

// Close closes the connections.
func (g *Group) Close() error {
	g.closeOnce.Do(func() {
		for _, c := range g.conns {
			if c != nil {
				c.Close()
			}
		}
	})
	return nil
}

// Rendezvous connects the ranks of e's job and returns the Group and the
// blob of rank 0 (rank 0 passes its blob; the others' is ignored). Rank 0
// listens at e.Addr and waits for every other rank, which connects (and
// retries until rank 0 listens). It fails after e.Timeout (or when ctx
// ends), and when a peer disagrees on the world size, claims a rank that is
// out of range or taken, or is not a mambabyte rendezvous.
func Rendezvous(ctx context.Context, e Env, blob []byte) (*Group, []byte, error) {
	if e.World < 1 || e.Rank < 0 || e.Rank >= e.World {
		return nil, nil, fmt.Errorf("rendezvous: rank %d of world %d", e.Rank, e.World)
	}
	if len(blob) > maxBlob {
		return nil, nil, fmt.Errorf("rendezvous: blob of %d bytes (at most %d)", len(blob), maxBlob)
	}
	g := &Group{rank: e.Rank, world: e.World}
	if e.World == 1 {
		return g, append([]byte(nil), blob...), nil
	}
	timeout := e.Timeout
	if timeout <= 0 {
		timeout = DefaultRendezvousTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if e.Rank == 0 {
		if err := g.serve(ctx, e, blob); err != nil {
			g.Close()
			return nil, nil, err
		}
		return g, append([]byte(nil), blob...), nil
	}
	got, err := g.join(ctx, e)
	if err != nil {
		g.Close()
		return nil, nil, err
	}
	return g, got, nil
}

// serve is rank 0's side of Rendezvous. When it fails, the ranks that had
// joined are told why (refused, with rank 0's error) rather than finding
// their connection closed.
func (g *Group) serve(ctx context.Context, e Env, blob []byte) error {
	if err := g.accept(ctx, e); err != nil {
		for _, c := range g.conns {
			if c != nil {
				refuse(c, err.Error())
			}
		}
		return err
	}
	for r := 1; r < e.World; r++ {
		c := g.conns[r]
		c.SetWriteDeadline(deadline(ctx))
		var b bytes.Buffer
		b.WriteString(magic)
		b.WriteByte(0)
		writeFrameTo(&b, blob)
		if _, err := c.Write(b.Bytes()); err != nil {
			return fmt.Errorf("rendezvous: sending the blob to rank %d: %w", r, err)
		}
		c.SetWriteDeadline(time.Time{})
	}
	return nil
}

// accept waits until every rank has joined (g.conns filled).
func (g *Group) accept(ctx context.Context, e Env) error {
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", e.Addr)
	if err != nil {
		return fmt.Errorf("rendezvous: rank 0 cannot listen at %s: %w", e.Addr, err)
	}
	defer ln.Close()
	g.conns = make([]net.Conn, e.World)
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	joined := 1
	for joined < e.World {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return fmt.Errorf("rendezvous at %s: %d of %d ranks joined in time (missing: %s): %w", e.Addr, joined, e.World, g.missing(), ctxErr(ctx))
			}
			return fmt.Errorf("rendezvous at %s: accept: %w", e.Addr, err)
		}
		rank, err := readHello(ctx, c, e.World)
		if err != nil {
			refuse(c, err.Error())
			c.Close()
			return fmt.Errorf("rendezvous at %s: connection from %s: %w", e.Addr, c.RemoteAddr(), err)
		}
		if g.conns[rank] != nil {
			err := fmt.Errorf("rank %d joined twice (from %s and %s)", rank, g.conns[rank].RemoteAddr(), c.RemoteAddr())
			refuse(c, err.Error())
			c.Close()
			return fmt.Errorf("rendezvous at %s: %w", e.Addr, err)
		}
		g.conns[rank] = c
		joined++
	}
	return nil
}

// missing lists the ranks that have not joined (rank 0's view).
func (g *Group) missing() string {
	var s []byte
	for r := 1; r < len(g.conns); r++ {
		if g.conns[r] == nil {
			if len(s) > 0 {
				s = append(s, ", "...)
			}
			s = fmt.Appendf(s, "%d", r)
		}
	}
	return string(s)
}

func readHello(ctx context.Context, c net.Conn, world int) (int, error) {
	c.SetReadDeadline(deadline(ctx))
	defer c.SetReadDeadline(time.Time{})
	var h [helloLen]byte
	if _, err := io.ReadFull(c, h[:]); err != nil {
		return 0, fmt.Errorf("reading its hello: %w", err)
	}
	if string(h[:4]) != magic {
		return 0, fmt.Errorf("not a mambabyte rendezvous peer (bad magic %q)", h[:4])
	}
	if v := binary.LittleEndian.Uint16(h[4:]); v != wireVersion {
		return 0, fmt.Errorf("peer speaks rendezvous version %d, this program %d (mixed mambabyte versions?)", v, wireVersion)
	}
	rank := int(binary.LittleEndian.Uint32(h[8:]))
	w := int(binary.LittleEndian.Uint32(h[12:]))
	if w != world {
		return 0, fmt.Errorf("rank %d says the world size is %d, rank 0 has %d", rank, w, world)
	}
	if rank < 1 || rank >= world {
		return 0, fmt.Errorf("rank %d is out of range for a world of %d (rank 0 listens; the others are 1 … %d)", rank, world, world-1)
	}
	return rank, nil
}

func refuse(c net.Conn, reason string) {
	var b bytes.Buffer
	b.WriteString(magic)
	b.WriteByte(1)
	writeFrameTo(&b, []byte(reason))
	c.SetWriteDeadline(time.Now().Add(time.Second))
	c.Write(b.Bytes())
}

func (g *Group) join(ctx context.Context, e Env) ([]byte, error) {
	var c net.Conn
	var last error
	for {
		var d net.Dialer
		dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		conn, err := d.DialContext(dctx, "tcp", e.Addr)
		cancel()
		if err == nil {
			c = conn
			break
		}
		last = err
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("rendezvous: rank %d could not reach rank 0 at %s: %w (last error: %v)", e.Rank, e.Addr, ctxErr(ctx), last)
		case <-time.After(dialInterval):
		}
	}
	g.conns = []net.Conn{c}
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Now()) })
	defer stop()
	var h [helloLen]byte
	copy(h[:], magic)
	binary.LittleEndian.PutUint16(h[4:], wireVersion)
	binary.LittleEndian.PutUint32(h[8:], uint32(e.Rank))
	binary.LittleEndian.PutUint32(h[12:], uint32(e.World))
	if _, err := c.Write(h[:]); err != nil {
		return nil, fmt.Errorf("rendezvous: rank %d: sending its hello to %s: %w", e.Rank, e.Addr, err)
	}
	var r [5]byte
	if _, err := io.ReadFull(c, r[:]); err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("rendezvous: rank %d joined %s but not every rank did in time: %w", e.Rank, e.Addr, ctxErr(ctx))
		}
		return nil, fmt.Errorf("rendezvous: rank %d: reading rank 0's answer from %s: %w", e.Rank, e.Addr, err)
	}
	if string(r[:4]) != magic {
		return nil, fmt.Errorf("rendezvous: rank %d: %s is not a mambabyte rendezvous (bad magic %q)", e.Rank, e.Addr, r[:4])
	}
	payload, err := readFrame(c, maxBlob)
	if err != nil {
		return nil, fmt.Errorf("rendezvous: rank %d: reading the blob from %s: %w", e.Rank, e.Addr, err)
	}
	switch r[4] {
	case 0:
	case 1:
		return nil, fmt.Errorf("rendezvous: rank 0 at %s refused rank %d: %s", e.Addr, e.Rank, payload)
	default:
		return nil, fmt.Errorf("rendezvous: rank %d: bad status %d from %s", e.Rank, r[4], e.Addr)
	}
	c.SetDeadline(time.Time{})
	return payload, nil
}

func deadline(ctx context.Context) time.Time {
	d, _ := ctx.Deadline()
	return d
}

func ctxErr(ctx context.Context) error {
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return fmt.Errorf("timed out (%s)", EnvRendezvousTimeout)
	}
	return ctx.Err()
}

func writeFrameTo(b *bytes.Buffer, p []byte) {
	var n [4]byte
	binary.LittleEndian.PutUint32(n[:], uint32(len(p)))
	b.Write(n[:])
	b.Write(p)
}

func writeFrame(w io.Writer, p []byte) error {
	var b bytes.Buffer
	writeFrameTo(&b, p)
	_, err := w.Write(b.Bytes())
	return err
}

func readFrame(r io.Reader, limit int) ([]byte, error) {
	var n [4]byte
	if _, err := io.ReadFull(r, n[:]); err != nil {
		return nil, err
	}
	size := int(binary.LittleEndian.Uint32(n[:]))
	if size > limit {
		return nil, fmt.Errorf("frame of %d bytes exceeds the limit of %d", size, limit)
	}
	p := make([]byte, size)
	if _, err := io.ReadFull(r, p); err != nil {
		return nil, err
	}
	return p, nil
}

// exchange is the one collective of the Group: every rank contributes
// payload; rank 0 combines the contributions in rank order with combine
// (called with rank 0's own first) and every rank receives the result. A
// rank that dies or disagrees on the length is an error naming it, and
// rank 0 passes its error to every other rank so that none waits forever.
// Rank 0's answers start with a status byte: 0 and the result, or 1 and
// rank 0's error.
func (g *Group) exchange(op string, payload []byte, combine func(acc, in []byte)) ([]byte, error) {
	if g.world == 1 {
		return payload, nil
	}
	if g.rank != 0 {
		c := g.conns[0]
		if err := writeFrame(c, payload); err != nil {
			return nil, fmt.Errorf("%s: rank %d: sending to rank 0: %w", op, g.rank, peerErr(err))
		}
		res, err := readFrame(c, maxFrame)
		if err != nil {
			return nil, fmt.Errorf("%s: rank %d: receiving from rank 0: %w", op, g.rank, peerErr(err))
		}
		if len(res) == 0 {
			return nil, fmt.Errorf("%s: rank %d: empty answer from rank 0", op, g.rank)
		}
		if res[0] != 0 {
			return nil, fmt.Errorf("%s: rank %d: rank 0 failed: %s", op, g.rank, res[1:])
		}
		res = res[1:]
		if len(res) != len(payload) && combine != nil {
			return nil, fmt.Errorf("%s: rank %d: rank 0 answered %d bytes for %d", op, g.rank, len(res), len(payload))
		}
		return res, nil
	}
	fail := func(err error) ([]byte, error) {
		msg := append([]byte{1}, err.Error()...)
		for r := 1; r < g.world; r++ {
			g.conns[r].SetWriteDeadline(time.Now().Add(time.Second))
			writeFrame(g.conns[r], msg)
			g.conns[r].SetWriteDeadline(time.Time{})
		}
		return nil, err
	}
	acc := append([]byte{0}, payload...)
	for r := 1; r < g.world; r++ {
		in, err := readFrame(g.conns[r], maxFrame)
		if err != nil {
			return fail(fmt.Errorf("%s: rank 0: receiving from rank %d: %w", op, r, peerErr(err)))
		}
		if combine == nil {
			continue
		}
		if len(in) != len(payload) {
			return fail(fmt.Errorf("%s: rank %d sent %d bytes, rank 0 has %d (the ranks disagree on the size)", op, r, len(in), len(payload)))
		}
		combine(acc[1:], in)
	}
	for r := 1; r < g.world; r++ {
		if err := writeFrame(g.conns[r], acc); err != nil {
			return nil, fmt.Errorf("%s: rank 0: sending to rank %d: %w", op, r, peerErr(err))
		}
	}
	return acc[1:], nil
}

func peerErr(err error) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("connection closed (the peer exited)")
	}
	return err
}

// AllReduceFloat64 replaces v on every rank by the element-wise sum (or
// average) over ranks, computed by rank 0 in rank order.
func (g *Group) AllReduceFloat64(v []float64, op Op) error {
	return allReduce(g, v, op, 8,
		func(b []byte, x float64) { binary.LittleEndian.PutUint64(b, math.Float64bits(x)) },
		func(b []byte) float64 { return math.Float64frombits(binary.LittleEndian.Uint64(b)) })
}

// AllReduceFloat32 is AllReduceFloat64 for float32 values (summed in
// float32, in rank order).
func (g *Group) AllReduceFloat32(v []float32, op Op) error {
	return allReduce(g, v, op, 4,
		func(b []byte, x float32) { binary.LittleEndian.PutUint32(b, math.Float32bits(x)) },
		func(b []byte) float32 { return math.Float32frombits(binary.LittleEndian.Uint32(b)) })
}

// allReduce is the all-reduce of values of size bytes each, written and
// read by put and get.
func allReduce[T float32 | float64](g *Group, v []T, op Op, size int, put func([]byte, T), get func([]byte) T) error {
	b := make([]byte, size*len(v))
	for i, x := range v {
		put(b[size*i:], x)
	}
	res, err := g.exchange("all-reduce", b, func(acc, in []byte) {
		for i := 0; i < len(acc); i += size {
			put(acc[i:], get(acc[i:])+get(in[i:]))
		}
	})
	if err != nil {
		return err
	}
	for i := range v {
		v[i] = get(res[size*i:])
		if op == Avg {
			v[i] /= T(g.world)
		}
	}
	return nil
}

// Barrier returns once every rank has called it.
func (g *Group) Barrier() error {
	_, err := g.exchange("barrier", nil, nil)
	return err
}

// Broadcast returns rank 0's b on every rank (the others' b is ignored
// and may differ in length).
func (g *Group) Broadcast(b []byte) ([]byte, error) {
	if g.rank != 0 {
		b = nil
	}
	return g.exchange("broadcast", b, nil)
}
