package cuda

import (
	"fmt"
	"os"
	"runtime"
	"sync"
	"unsafe"

	"github.com/ebitengine/purego"

	"github.com/mambabyte/mambabyte/internal/backend"
)

// Communication stream for data-parallel training (package internal/dist).
//
// The kernel library runs everything on one stream of its own, created
// with cudaStreamCreate, which makes it a blocking stream: it synchronises
// with the device's legacy default stream. The library does not export
// the stream, so the communication stream is ordered after the backend's
// work through the legacy stream: an event recorded on the legacy stream
// completes when everything issued before it on the library's stream has
// completed, and the communication stream (created non-blocking, so it
// runs beside the library's) waits for that event. NCCL then reduces a
// layer's gradients while the library's stream carries on with the
// backward of the layers below. MAMBABYTE_NCCL_OVERLAP=0 replaces the
// event by a host-side wait for the library's stream (no overlap; for
// ruling the ordering out when something is wrong).
//
// These calls use the CUDA driver API (libcuda.so.1, always present with
// the driver) with the primary context of the backend's device made
// current on the calling thread for each call.

const (
	cuStreamLegacy      = 0x1 // CU_STREAM_LEGACY
	cuStreamNonBlocking = 0x1 // CU_STREAM_NON_BLOCKING
	cuEventDisableTime  = 0x2 // CU_EVENT_DISABLE_TIMING
)

type driver struct {
	getErrorString      func(rc int32, s **byte) int32
	deviceGet           func(dev *int32, ordinal int32) int32
	devicePrimaryCtxGet func(ctx *uintptr, dev int32) int32
	ctxSetCurrent       func(ctx uintptr) int32
	streamCreate        func(s *uintptr, flags uint32) int32
	streamSynchronize   func(s uintptr) int32
	eventCreate         func(e *uintptr, flags uint32) int32
	eventRecord         func(e, s uintptr) int32
	streamWaitEvent     func(s, e uintptr, flags uint32) int32
}

var (
	drvOnce sync.Once
	drv     *driver
	drvErr  error
)

func loadDriver() (*driver, error) {
	drvOnce.Do(func() {
		drv, drvErr = func() (d *driver, err error) {
			h, err := purego.Dlopen("libcuda.so.1", purego.RTLD_NOW|purego.RTLD_GLOBAL)
			if err != nil {
				return nil, fmt.Errorf("%w: libcuda.so.1 (the CUDA driver): %v", ErrUnavailable, err)
			}
			defer func() {
				if r := recover(); r != nil {
					d, err = nil, fmt.Errorf("%w: libcuda.so.1: %v", ErrUnavailable, r)
				}
			}()
			d = &driver{}
			reg := func(fptr any, name string) { purego.RegisterLibFunc(fptr, h, name) }
			reg(&d.getErrorString, "cuGetErrorString")
			reg(&d.deviceGet, "cuDeviceGet")
			reg(&d.devicePrimaryCtxGet, "cuDevicePrimaryCtxRetain")
			reg(&d.ctxSetCurrent, "cuCtxSetCurrent")
			reg(&d.streamCreate, "cuStreamCreate")
			reg(&d.streamSynchronize, "cuStreamSynchronize")
			reg(&d.eventCreate, "cuEventCreate")
			reg(&d.eventRecord, "cuEventRecord")
			reg(&d.streamWaitEvent, "cuStreamWaitEvent")
			return d, nil
		}()
	})
	return drv, drvErr
}

func (d *driver) err(op string, rc int32) error {
	var s *byte
	msg := fmt.Sprintf("error %d", rc)
	if d.getErrorString(rc, &s) == 0 && s != nil {
		msg = goString(s)
	}
	return fmt.Errorf("cuda: %s: %s", op, msg)
}

func goString(p *byte) string {
	var b []byte
	for q := p; *q != 0; q = (*byte)(unsafe.Add(unsafe.Pointer(q), 1)) {
		b = append(b, *q)
	}
	return string(b)
}

// commState is a Backend's communication stream.
type commState struct {
	d        *driver
	ctx      uintptr
	stream   uintptr
	ev       uintptr
	hostWait bool // MAMBABYTE_NCCL_OVERLAP=0
}

// comms holds each Backend's communication stream (there is one device,
// and in practice one Backend, per process).
var (
	commMu sync.Mutex
	comms  = map[*Backend]*commState{}
)

func (be *Backend) commState() *commState {
	commMu.Lock()
	defer commMu.Unlock()
	return comms[be]
}

// DevicePtr is the device address of t's first value (0 for nil).
func (be *Backend) DevicePtr(t backend.Tensor) uintptr { return ptr(t) }

// call runs f with the device's primary context current on a locked
// thread.
func (c *commState) call(f func() error) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if rc := c.d.ctxSetCurrent(c.ctx); rc != 0 {
		return c.d.err("cuCtxSetCurrent", rc)
	}
	return f()
}

// CommStream returns the communication stream (a CUstream, usable as a
// cudaStream_t), creating it on the first call.
func (be *Backend) CommStream() (uintptr, error) {
	if c := be.commState(); c != nil {
		return c.stream, nil
	}
	d, err := loadDriver()
	if err != nil {
		return 0, err
	}
	initMu.Lock()
	dev := initDevice
	initMu.Unlock()
	c := &commState{d: d, hostWait: os.Getenv("MAMBABYTE_NCCL_OVERLAP") == "0"}
	var cdev int32
	if rc := d.deviceGet(&cdev, int32(dev)); rc != 0 {
		return 0, d.err(fmt.Sprintf("cuDeviceGet(%d)", dev), rc)
	}
	if rc := d.devicePrimaryCtxGet(&c.ctx, cdev); rc != 0 {
		return 0, d.err("cuDevicePrimaryCtxRetain", rc)
	}
	err = c.call(func() error {
		if rc := d.streamCreate(&c.stream, cuStreamNonBlocking); rc != 0 {
			return d.err("cuStreamCreate", rc)
		}
		if rc := d.eventCreate(&c.ev, cuEventDisableTime); rc != 0 {
			return d.err("cuEventCreate", rc)
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	commMu.Lock()
	comms[be] = c
	commMu.Unlock()
	return c.stream, nil
}

// CommAfterCompute makes the communication stream wait for every
// operation issued to the backend so far, without blocking the host.
func (be *Backend) CommAfterCompute() error {
	c := be.commState()
	if c == nil {
		return fmt.Errorf("cuda: CommAfterCompute before CommStream")
	}
	if c.hostWait {
		be.Sync()
		return nil
	}
	return c.call(func() error {
		if rc := c.d.eventRecord(c.ev, cuStreamLegacy); rc != 0 {
			return c.d.err("cuEventRecord", rc)
		}
		if rc := c.d.streamWaitEvent(c.stream, c.ev, 0); rc != 0 {
			return c.d.err("cuStreamWaitEvent", rc)
		}
		return nil
	})
}

// CommSync blocks until the communication stream's work is done.
func (be *Backend) CommSync() error {
	c := be.commState()
	if c == nil {
		return nil
	}
	return c.call(func() error {
		if rc := c.d.streamSynchronize(c.stream); rc != 0 {
			return c.d.err("cuStreamSynchronize", rc)
		}
		return nil
	})
}
