package dist

import (
	"context"
	"fmt"

	"github.com/mambabyte/mambabyte/internal/backend"
)

// Connect joins e's job and returns its communicator: NCCL when be is a
// GPU backend (implements Device), else, when hostFallback is set, a
// HostComm (for tests; see HostComm). A job of one rank gets Single
// without any network or NCCL unless forceNCCL is set (a way to exercise
// NCCL on one GPU).
func Connect(ctx context.Context, e Env, be backend.Backend, hostFallback, forceNCCL bool) (Comm, error) {
	dev, gpu := be.(Device)
	if e.World == 1 && !(forceNCCL && gpu) {
		return Single{}, nil
	}
	if !gpu {
		if !hostFallback {
			return nil, fmt.Errorf("rank %d: data-parallel training runs on GPUs through NCCL; the %s backend has no communicator", e.Rank, be.Name())
		}
		g, _, err := Rendezvous(ctx, e, nil)
		if err != nil {
			return nil, err
		}
		return NewHostComm(g, be), nil
	}
	lib, err := LoadNCCL()
	if err != nil {
		return nil, fmt.Errorf("rank %d: %w", e.Rank, err)
	}
	var id []byte
	if e.Rank == 0 {
		if id, err = lib.UniqueID(); err != nil {
			return nil, err
		}
	}
	g, id, err := Rendezvous(ctx, e, id)
	if err != nil {
		return nil, err
	}
	c, err := NewNCCL(lib, g, id, dev)
	if err != nil {
		g.Close()
		return nil, err
	}
	return c, nil
}
