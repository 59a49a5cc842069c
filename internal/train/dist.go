package train

import (
	"bytes"
	"encoding/json"
	"fmt"

	"github.com/mambabyte/mambabyte/internal/backend"
	"github.com/mambabyte/mambabyte/internal/dist"
)

// syncRanks checks that every rank of a job starts the same run at the
// same step and gives every rank rank 0's parameters and optimizer
// moments (broadcast as a sum in which the other ranks contribute zeros,
// which leaves the values exact).
func (t *Trainer) syncRanks() error {
	if t.Comm == nil {
		return nil
	}
	type start struct {
		Step    int     `json:"step"`
		Options Options `json:"options"`
	}
	mine, err := json.Marshal(start{t.Step, t.Opt})
	if err != nil {
		return err
	}
	root, err := t.Comm.Broadcast(mine)
	if err != nil {
		return fmt.Errorf("rank %d: comparing the run with rank 0's: %w", t.rank(), err)
	}
	var r0 start
	if err := json.Unmarshal(root, &r0); err != nil {
		return fmt.Errorf("rank %d: rank 0's run description: %w", t.rank(), err)
	}
	// Every rank learns whether any rank differs, so all of them stop.
	var why string
	switch {
	case r0.Step != t.Step:
		why = fmt.Sprintf("rank %d starts after step %d but rank 0 after step %d (do all ranks see the same --out directory?)", t.rank(), t.Step, r0.Step)
	case !bytes.Equal(root, mine):
		why = fmt.Sprintf("rank %d was started with other settings than rank 0 (every rank must get the same flags)", t.rank())
	}
	v := []float64{0}
	if why != "" {
		v[0] = 1
	}
	if err := t.Comm.AllReduceHost(v, dist.Sum); err != nil {
		return err
	}
	if why != "" {
		return fmt.Errorf("%s", why)
	}
	if v[0] != 0 {
		return fmt.Errorf("rank %d: another rank does not start the same run as rank 0 (its message says why)", t.rank())
	}
	m := t.Model
	for _, x := range []backend.Tensor{m.Params, t.optim.M, t.optim.V} {
		if t.rank() != 0 {
			m.BE.Zero(x)
		}
		if err := t.Comm.AllReduce(x, dist.Sum); err != nil {
			return fmt.Errorf("rank %d: receiving rank 0's weights: %w", t.rank(), err)
		}
	}
	if err := t.Comm.Wait(); err != nil {
		return fmt.Errorf("rank %d: receiving rank 0's weights: %w", t.rank(), err)
	}
	m.Touch()
	return nil
}
