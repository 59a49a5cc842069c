package data

import "fmt"

// Shard returns the sampler of one rank of a data-parallel job of world
// ranks: its batches hold B/world windows, rows [rank·B/world,
// (rank+1)·B/world) of sp's batches for the same (step, micro). The ranks'
// batches together are sp's batch, in order, so a job reads exactly what
// one process with sp reads. B must be a multiple of world.
func (sp *Sampler) Shard(rank, world int) (*Sampler, error) {
	if world < 1 || rank < 0 || rank >= world {
		return nil, fmt.Errorf("data: shard %d of %d", rank, world)
	}
	if sp.b%world != 0 {
		return nil, fmt.Errorf("data: a batch of %d windows does not split evenly over %d ranks", sp.b, world)
	}
	s := *sp
	s.b = sp.b / world
	s.row0 = sp.row0 + rank*s.b
	return &s, nil
}
