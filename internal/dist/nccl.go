package dist

import (
	"errors"
	"fmt"
	"os"
	"sync"

	"github.com/ebitengine/purego"

	"github.com/mambabyte/mambabyte/internal/backend"
)

// Device is what NCCL needs from a GPU backend (package
// internal/backend/cuda implements it): the device address of a tensor
// and a communication stream ordered after the backend's own work.
type Device interface {
	// DevicePtr is the device address of t's first value.
	DevicePtr(t backend.Tensor) uintptr
	// CommStream returns the handle (a cudaStream_t) of the stream that
	// collective operations run on, creating it on the first call.
	CommStream() (uintptr, error)
	// CommAfterCompute makes the communication stream wait for every
	// operation issued to the backend so far (without blocking the host).
	CommAfterCompute() error
	// CommSync blocks until the communication stream's work is done.
	CommSync() error
}

// ErrNCCLUnavailable is wrapped by LoadNCCL's errors when NCCL cannot be
// used here.
var ErrNCCLUnavailable = errors.New("NCCL unavailable")

// NCCLLibName is the library LoadNCCL opens unless MAMBABYTE_NCCL_LIB
// names another file.
const NCCLLibName = "libnccl.so.2"

// UniqueIDLen is the size of ncclUniqueId, the blob rank 0 creates and
// Rendezvous hands to every rank.
const UniqueIDLen = 128

// NCCL result codes and enums (nccl.h).
const (
	ncclSuccess    = 0
	ncclInProgress = 7
	ncclFloat32    = 7
	ncclSum        = 0
	ncclAvg        = 4
)

// NCCLLib is libnccl.so.2 bound through purego. ncclCommInitRank takes the
// 128-byte ncclUniqueId by value, which purego cannot pass (it exceeds the
// stack arguments it supports), so communicators are made with
// ncclCommInitRankScalable (NCCL 2.23 and later), which takes the id by
// pointer; with one id it is ncclCommInitRank.
type NCCLLib struct {
	path    string
	version int32

	getVersion      func(v *int32) int32
	getUniqueID     func(id *[UniqueIDLen]byte) int32
	commInitScaling func(comm *uintptr, nranks, rank, nID int32, ids *[UniqueIDLen]byte, config uintptr) int32
	allReduce       func(send, recv uintptr, count uint64, dtype, op int32, comm, stream uintptr) int32
	groupStart      func() int32
	groupEnd        func() int32
	commDestroy     func(comm uintptr) int32
	getErrorString  func(rc int32) string
	getLastError    func(comm uintptr) string
}

var (
	ncclOnce sync.Once
	ncclLib  *NCCLLib
	ncclErr  error
)

// LoadNCCL opens NCCL ($MAMBABYTE_NCCL_LIB, else libnccl.so.2 on the
// dynamic loader's path) once per process. Its errors wrap
// ErrNCCLUnavailable and say what is missing.
func LoadNCCL() (*NCCLLib, error) {
	ncclOnce.Do(func() { ncclLib, ncclErr = openNCCL() })
	return ncclLib, ncclErr
}

func openNCCL() (l *NCCLLib, err error) {
	path := os.Getenv("MAMBABYTE_NCCL_LIB")
	if path == "" {
		path = NCCLLibName
	}
	h, err := purego.Dlopen(path, purego.RTLD_NOW|purego.RTLD_GLOBAL)
	if err != nil {
		return nil, fmt.Errorf("%w: cannot load %s: %v (install NCCL 2.23 or later, or set MAMBABYTE_NCCL_LIB to the library's path)", ErrNCCLUnavailable, path, err)
	}
	defer func() {
		if r := recover(); r != nil {
			l, err = nil, fmt.Errorf("%w: %s: %v (mambabyte needs NCCL 2.23 or later)", ErrNCCLUnavailable, path, r)
		}
	}()
	l = &NCCLLib{path: path}
	reg := func(fptr any, name string) { purego.RegisterLibFunc(fptr, h, name) }
	reg(&l.getVersion, "ncclGetVersion")
	reg(&l.getErrorString, "ncclGetErrorString")
	if rc := l.getVersion(&l.version); rc != ncclSuccess {
		return nil, fmt.Errorf("%w: %s: ncclGetVersion: %s", ErrNCCLUnavailable, path, l.getErrorString(rc))
	}
	if l.version < 22300 {
		return nil, fmt.Errorf("%w: %s is NCCL %s; mambabyte needs 2.23 or later (ncclCommInitRankScalable)", ErrNCCLUnavailable, path, l.Version())
	}
	reg(&l.getUniqueID, "ncclGetUniqueId")
	reg(&l.commInitScaling, "ncclCommInitRankScalable")
	reg(&l.allReduce, "ncclAllReduce")
	reg(&l.groupStart, "ncclGroupStart")
	reg(&l.groupEnd, "ncclGroupEnd")
	reg(&l.commDestroy, "ncclCommDestroy")
	reg(&l.getLastError, "ncclGetLastError")
	return l, nil
}

// Path is the file NCCL was loaded from.
func (l *NCCLLib) Path() string { return l.path }

// Version is NCCL's version as "major.minor.patch".
func (l *NCCLLib) Version() string {
	v := l.version
	return fmt.Sprintf("%d.%d.%d", v/10000, v/100%100, v%100)
}

// UniqueID returns a new ncclUniqueId (rank 0 creates it; Rendezvous
// hands it to the others).
func (l *NCCLLib) UniqueID() ([]byte, error) {
	var id [UniqueIDLen]byte
	if rc := l.getUniqueID(&id); rc != ncclSuccess {
		return nil, l.err("ncclGetUniqueId", rc, 0)
	}
	return id[:], nil
}

func (l *NCCLLib) err(op string, rc int32, comm uintptr) error {
	msg := l.getErrorString(rc)
	if comm != 0 {
		if last := l.getLastError(comm); last != "" {
			msg += ": " + last
		}
	}
	return fmt.Errorf("nccl: %s: %s (NCCL_DEBUG=WARN says more)", op, msg)
}

// NCCL is the product's communicator: tensors are reduced by NCCL on the
// device, on a stream of their own that waits for the backend's work up to
// each call, so a layer's gradients are reduced while the backward of the
// layers below it runs. Host operations (the loss, barriers) go through
// the Group.
type NCCL struct {
	lib     *NCCLLib
	g       *Group
	dev     Device
	comm    uintptr
	stream  uintptr
	pending bool
}

var _ Comm = (*NCCL)(nil)

// NewNCCL makes the NCCL communicator of g's job on dev from the unique
// id rank 0 created (every rank passes the blob Rendezvous returned). It
// takes ownership of g. The backend's device must be current for the
// calling thread.
func NewNCCL(lib *NCCLLib, g *Group, id []byte, dev Device) (*NCCL, error) {
	if len(id) != UniqueIDLen {
		return nil, fmt.Errorf("nccl: rank %d received a unique id of %d bytes, want %d", g.Rank(), len(id), UniqueIDLen)
	}
	stream, err := dev.CommStream()
	if err != nil {
		return nil, err
	}
	var uid [UniqueIDLen]byte
	copy(uid[:], id)
	c := &NCCL{lib: lib, g: g, dev: dev, stream: stream}
	if rc := lib.commInitScaling(&c.comm, int32(g.Size()), int32(g.Rank()), 1, &uid, 0); rc != ncclSuccess {
		return nil, lib.err(fmt.Sprintf("ncclCommInitRank (rank %d of %d)", g.Rank(), g.Size()), rc, 0)
	}
	return c, nil
}

func (c *NCCL) Rank() int { return c.g.Rank() }
func (c *NCCL) Size() int { return c.g.Size() }

// AllReduce reduces t in place on the communication stream, after the
// backend's work issued so far.
func (c *NCCL) AllReduce(t backend.Tensor, op Op) error {
	if t.Len() == 0 {
		return nil
	}
	if err := c.dev.CommAfterCompute(); err != nil {
		return err
	}
	p := c.dev.DevicePtr(t)
	nop := int32(ncclSum)
	if op == Avg {
		nop = ncclAvg
	}
	rc := c.lib.allReduce(p, p, uint64(t.Len()), ncclFloat32, nop, c.comm, c.stream)
	if rc != ncclSuccess && rc != ncclInProgress {
		return c.lib.err(fmt.Sprintf("ncclAllReduce of %d values (rank %d)", t.Len(), c.Rank()), rc, c.comm)
	}
	c.pending = true
	return nil
}

// AllReduceMany reduces several tensors as one NCCL group (one launch).
func (c *NCCL) AllReduceMany(ts []backend.Tensor, op Op) error {
	if err := c.dev.CommAfterCompute(); err != nil {
		return err
	}
	if rc := c.lib.groupStart(); rc != ncclSuccess {
		return c.lib.err("ncclGroupStart", rc, c.comm)
	}
	nop := int32(ncclSum)
	if op == Avg {
		nop = ncclAvg
	}
	var first error
	for _, t := range ts {
		if t.Len() == 0 {
			continue
		}
		p := c.dev.DevicePtr(t)
		if rc := c.lib.allReduce(p, p, uint64(t.Len()), ncclFloat32, nop, c.comm, c.stream); rc != ncclSuccess && rc != ncclInProgress && first == nil {
			first = c.lib.err("ncclAllReduce", rc, c.comm)
		}
	}
	if rc := c.lib.groupEnd(); rc != ncclSuccess && rc != ncclInProgress && first == nil {
		first = c.lib.err("ncclGroupEnd", rc, c.comm)
	}
	c.pending = true
	return first
}

// Wait blocks until the reductions issued so far are done. The backend's
// operations issued afterwards see their results.
func (c *NCCL) Wait() error {
	if !c.pending {
		return nil
	}
	c.pending = false
	return c.dev.CommSync()
}

func (c *NCCL) AllReduceHost(v []float64, op Op) error { return c.g.AllReduceFloat64(v, op) }
func (c *NCCL) Broadcast(b []byte) ([]byte, error)     { return c.g.Broadcast(b) }
func (c *NCCL) Barrier() error                         { return c.g.Barrier() }

// Close waits for pending work and destroys the communicator.
func (c *NCCL) Close() error {
	err := c.Wait()
	if c.comm != 0 {
		if rc := c.lib.commDestroy(c.comm); rc != ncclSuccess && err == nil {
			err = c.lib.err("ncclCommDestroy", rc, 0)
		}
		c.comm = 0
	}
	c.g.Close()
	return err
}
