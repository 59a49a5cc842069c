package mambabyte

import (
	"errors"
	"fmt"
	"os"

	"github.com/mambabyte/mambabyte/internal/backend"
	"github.com/mambabyte/mambabyte/internal/backend/cpu"
	"github.com/mambabyte/mambabyte/internal/backend/cuda"
)

// Devices a model can run on.
const (
	DeviceCPU  = "cpu"  // every core of this machine
	DeviceCUDA = "cuda" // an NVIDIA GPU, through libmambabyte_cuda.so (make -C cuda)
	DeviceAuto = "auto" // the GPU when it can be used, else the CPU
)

// Options choose where a model runs.
type Options struct {
	// Device is DeviceCPU (the default), DeviceCUDA or DeviceAuto.
	Device string
	// Precision on the GPU: "bf16" (the default: bf16 tensor-core matrix
	// products with fp32 accumulation and fp32 storage) or "fp32".
	Precision string
	// GPU is the CUDA device ordinal (default 0); one per process. CUDA's
	// current device belongs to an OS thread, so a caller that picks a
	// GPU other than 0 must make every call from one locked thread
	// (runtime.LockOSThread).
	GPU int
}

// NewBackend returns the compute backend opts name. DeviceAuto falls back
// to the CPU only when no GPU can be used; any other CUDA failure is an
// error.
func NewBackend(opts Options) (backend.Backend, error) {
	switch opts.Device {
	case "", DeviceCPU:
		return cpu.New(), nil
	case DeviceCUDA, DeviceAuto:
		prec := opts.Precision
		if prec == "" {
			prec = "bf16"
		}
		// MAMBABYTE_CUDA_SYNC=1 waits after every kernel, so that a failure
		// is reported by the operation that caused it (slow; for debugging).
		b, err := cuda.New(cuda.Options{Precision: prec, Device: opts.GPU, Sync: os.Getenv("MAMBABYTE_CUDA_SYNC") != ""})
		if err == nil {
			return b, nil
		}
		if opts.Device == DeviceAuto && errors.Is(err, cuda.ErrUnavailable) {
			return cpu.New(), nil
		}
		return nil, err
	}
	return nil, fmt.Errorf("unknown device %q: use cpu, cuda or auto", opts.Device)
}

// DescribeBackend names a backend for messages: "cpu", or the GPU and its
// precision.
func DescribeBackend(be backend.Backend) string {
	if c, ok := be.(*cuda.Backend); ok {
		return fmt.Sprintf("cuda: %s, %s", c.Device(), c.Precision())
	}
	return be.Name()
}
