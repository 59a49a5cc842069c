package dist

import (
	"fmt"

	"github.com/mambabyte/mambabyte/internal/backend"
)

// Op is a reduction.
type Op int

const (
	Sum Op = iota // element-wise sum over ranks
	Avg           // element-wise sum divided by the number of ranks
)

func (o Op) String() string {
	switch o {
	case Sum:
		return "sum"
	case Avg:
		return "avg"
	}
	return fmt.Sprintf("Op(%d)", int(o))
}

// Comm is a communicator among the ranks of a job. Its operations are
// collective: every rank calls them in the same order with tensors of the
// same lengths. A Comm is used by one goroutine at a time.
type Comm interface {
	// Rank is this process's rank, Size the number of ranks.
	Rank() int
	Size() int
	// AllReduce replaces t, in place on every rank, by its sum (or
	// average) over the ranks. It may return before the reduction has
	// run: t must not be written, or read for its result, until Wait.
	// The reduction sees every operation issued to the backend on t
	// before the call.
	AllReduce(t backend.Tensor, op Op) error
	// Wait returns when every AllReduce issued so far has finished and
	// its results are visible to the backend's later operations.
	Wait() error
	// AllReduceHost replaces v by its sum (or average) over the ranks;
	// every rank receives the same bits. Synchronous.
	AllReduceHost(v []float64, op Op) error
	// Broadcast returns rank 0's b on every rank. Synchronous.
	Broadcast(b []byte) ([]byte, error)
	// Barrier returns once every rank has called it.
	Barrier() error
	// Close releases the communicator.
	Close() error
}

// Single is the communicator of a job of one rank: every operation leaves
// its arguments as they are.
type Single struct{}

var _ Comm = Single{}

func (Single) Rank() int                               { return 0 }
func (Single) Size() int                               { return 1 }
func (Single) AllReduce(t backend.Tensor, op Op) error { return nil }
func (Single) Wait() error                             { return nil }
func (Single) AllReduceHost(v []float64, op Op) error  { return nil }
func (Single) Broadcast(b []byte) ([]byte, error)      { return b, nil }
func (Single) Barrier() error                          { return nil }
func (Single) Close() error                            { return nil }

// HostComm reduces tensors by copying them to the host and through the
// Group's TCP connections to rank 0 and back, synchronously.
//
// It exists for tests and for checking the launch path on machines
// without GPUs; it is far too slow for real training (the product's
// engine is NCCL, see NewNCCL). Sums are taken in rank order by rank 0,
// so every rank receives the same bits.
type HostComm struct {
	g   *Group
	be  backend.Backend
	buf []float32
}

var _ Comm = (*HostComm)(nil)

// NewHostComm returns a communicator that moves the tensors of be through
// g. It takes ownership of g.
func NewHostComm(g *Group, be backend.Backend) *HostComm { return &HostComm{g: g, be: be} }

func (c *HostComm) Rank() int { return c.g.Rank() }
func (c *HostComm) Size() int { return c.g.Size() }

func (c *HostComm) AllReduce(t backend.Tensor, op Op) error {
	if c.g.Size() == 1 {
		return nil
	}
	n := t.Len()
	if cap(c.buf) < n {
		c.buf = make([]float32, n)
	}
	v := c.buf[:n]
	c.be.Download(v, t)
	if err := c.g.AllReduceFloat32(v, op); err != nil {
		return err
	}
	c.be.Upload(t, v)
	return nil
}

func (c *HostComm) Wait() error                            { return nil }
func (c *HostComm) AllReduceHost(v []float64, op Op) error { return c.g.AllReduceFloat64(v, op) }
func (c *HostComm) Broadcast(b []byte) ([]byte, error)     { return c.g.Broadcast(b) }
func (c *HostComm) Barrier() error                         { return c.g.Barrier() }
func (c *HostComm) Close() error                           { return c.g.Close() }
