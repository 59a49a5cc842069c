package train

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/mambabyte/mambabyte/internal/backend"
	"github.com/mambabyte/mambabyte/internal/checkpoint"
	"github.com/mambabyte/mambabyte/internal/dist"
	"github.com/mambabyte/mambabyte/internal/model"
)

// A run directory holds one sub-directory per checkpoint, step-NNNNNNNN,
// each a complete model checkpoint (config.json, model.safetensors) plus
// optimizer.safetensors (the AdamW moments) and trainer.json (step and
// options). The file "latest" names the newest complete checkpoint. A
// checkpoint is written under a temporary name and renamed into place
// before "latest" is replaced, so a crash at any moment leaves "latest"
// naming a complete checkpoint.

// LatestFile names the newest complete checkpoint in a run directory.
const LatestFile = "latest"

const trainerFile = "trainer.json"
const optimizerFile = "optimizer.safetensors"

type trainerState struct {
	FormatVersion int     `json:"format_version"`
	Step          int     `json:"step"`
	Options       Options `json:"options"` // Options.Batch is the job's whole micro-batch
	// World is the number of processes of the job that wrote the
	// checkpoint (information only: a run resumes on any number that
	// divides the batch).
	World int `json:"world,omitempty"`
}

// StepDir is the name of the checkpoint of a step.
func StepDir(step int) string { return fmt.Sprintf("step-%08d", step) }

// Save writes a checkpoint of the current step and prunes old ones. In a
// data-parallel job it is collective: rank 0 writes, every rank waits
// until it has, and all of them fail if it could not.
func (t *Trainer) Save() error {
	if t.Comm == nil {
		return t.save()
	}
	var err error
	if t.rank() == 0 {
		err = t.save()
	}
	failed := []float64{0}
	if err != nil {
		failed[0] = 1
	}
	if e := t.Comm.AllReduceHost(failed, dist.Sum); e != nil && err == nil {
		err = fmt.Errorf("checkpoint of step %d: waiting for rank 0 to write it: %w", t.Step, e)
	}
	if err == nil && failed[0] != 0 {
		err = fmt.Errorf("rank 0 could not write the checkpoint of step %d (its own message says why)", t.Step)
	}
	return err
}

func (t *Trainer) save() error {
	if err := os.MkdirAll(t.Out, 0o755); err != nil {
		return fmt.Errorf("checkpoint: %w", err)
	}
	name := StepDir(t.Step)
	final := filepath.Join(t.Out, name)
	if _, err := os.Stat(filepath.Join(final, trainerFile)); err == nil {
		// This step was saved before (a resumed run); by determinism it is
		// the same state, and replacing it would open a window in which
		// "latest" names nothing.
		return t.markLatest(name)
	}
	tmp := filepath.Join(t.Out, "."+name+".partial")
	if err := os.RemoveAll(tmp); err != nil {
		return fmt.Errorf("checkpoint: %w", err)
	}
	if err := os.MkdirAll(tmp, 0o755); err != nil {
		return fmt.Errorf("checkpoint: %w", err)
	}
	fail := func(err error) error {
		os.RemoveAll(tmp)
		return fmt.Errorf("checkpoint %s: %w", final, err)
	}
	m := t.Model
	if err := checkpoint.Save(tmp, m.Cfg, m.ParamsHost()); err != nil {
		return fail(err)
	}
	n := m.Params.Len()
	mv := make([]float32, 2*n)
	m.BE.Download(mv[:n], t.optim.M)
	m.BE.Download(mv[n:], t.optim.V)
	if err := checkpoint.WriteSafetensors(filepath.Join(tmp, optimizerFile), []*checkpoint.Tensor{
		{Name: "adamw.m", Shape: []int{n}, Data: mv[:n]},
		{Name: "adamw.v", Shape: []int{n}, Data: mv[n:]},
	}, map[string]string{"format": "mambabyte-adamw"}); err != nil {
		return fail(err)
	}
	st, err := json.MarshalIndent(trainerState{FormatVersion: 1, Step: t.Step, Options: t.Opt, World: t.world()}, "", "  ")
	if err != nil {
		return fail(err)
	}
	if err := checkpoint.WriteFileAtomic(filepath.Join(tmp, trainerFile), append(st, '\n')); err != nil {
		return fail(err)
	}
	checkpoint.SyncDir(tmp)
	if err := os.Rename(tmp, final); err != nil {
		return fail(err)
	}
	checkpoint.SyncDir(t.Out)
	if err := t.markLatest(name); err != nil {
		return err
	}
	t.prune(name)
	if t.Saved != nil {
		t.Saved(final)
	}
	return nil
}

func (t *Trainer) markLatest(name string) error {
	if err := checkpoint.WriteFileAtomic(filepath.Join(t.Out, LatestFile), []byte(name+"\n")); err != nil {
		return fmt.Errorf("checkpoint: %w", err)
	}
	return nil
}

// prune removes the oldest checkpoints beyond Keep, never the latest.
func (t *Trainer) prune(latest string) {
	if t.Opt.Keep <= 0 {
		return
	}
	entries, err := os.ReadDir(t.Out)
	if err != nil {
		return
	}
	var steps []string
	for _, e := range entries {
		if e.IsDir() && strings.HasPrefix(e.Name(), "step-") {
			steps = append(steps, e.Name())
		}
	}
	sort.Strings(steps)
	for len(steps) > t.Opt.Keep {
		if steps[0] != latest {
			os.RemoveAll(filepath.Join(t.Out, steps[0]))
		}
		steps = steps[1:]
	}
}

// LatestCheckpoint returns the directory of the newest complete checkpoint
// in run directory out, or "" if it has none.
func LatestCheckpoint(out string) (string, error) {
	b, err := os.ReadFile(filepath.Join(out, LatestFile))
	if os.IsNotExist(err) {
		return "", nil
	}
	if err != nil {
		return "", err
	}
	name := strings.TrimSpace(string(b))
	if !strings.HasPrefix(name, "step-") || strings.ContainsAny(name, `/\`) {
		return "", fmt.Errorf("%s: %q does not name a checkpoint", filepath.Join(out, LatestFile), name)
	}
	return filepath.Join(out, name), nil
}

// SavedOptions reads the options of the newest checkpoint in out.
func SavedOptions(out string) (Options, int, error) {
	dir, err := LatestCheckpoint(out)
	if err != nil {
		return Options{}, 0, err
	}
	if dir == "" {
		return Options{}, 0, fmt.Errorf("%s: not a training run: no %s file naming a checkpoint", out, LatestFile)
	}
	b, err := os.ReadFile(filepath.Join(dir, trainerFile))
	if err != nil {
		return Options{}, 0, err
	}
	var st trainerState
	if err := json.Unmarshal(b, &st); err != nil {
		return Options{}, 0, fmt.Errorf("%s: %w", filepath.Join(dir, trainerFile), err)
	}
	if st.FormatVersion != 1 {
		return Options{}, 0, fmt.Errorf("%s: format_version %d, want 1", filepath.Join(dir, trainerFile), st.FormatVersion)
	}
	return st.Options, st.Step, nil
}

// Resume continues the run in out from its newest checkpoint. opt must
// describe the same model as the saved run; other settings (steps, say)
// may differ, though only unchanged settings resume bit for bit.
func Resume(opt Options, be backend.Backend, data Data, out string) (*Trainer, error) {
	if err := opt.Validate(); err != nil {
		return nil, err
	}
	saved, step, err := SavedOptions(out)
	if err != nil {
		return nil, err
	}
	if saved.Model.TensorSpecsKey() != opt.Model.TensorSpecsKey() || saved.Model.Norm != opt.Model.Norm {
		return nil, fmt.Errorf("%s: the saved run is a different model; resume it with its own settings", out)
	}
	dir, _ := LatestCheckpoint(out)
	_, tensors, _, err := checkpoint.Load(dir)
	if err != nil {
		return nil, err
	}
	m, err := model.New(opt.Model, be)
	if err != nil {
		return nil, err
	}
	if err := m.SetParams(tensors); err != nil {
		return nil, fmt.Errorf("%s: %w", dir, err)
	}
	t := newTrainer(opt, m, data, out)
	opath := filepath.Join(dir, optimizerFile)
	ot, err := checkpoint.ReadSafetensors(opath)
	if err != nil {
		return nil, err
	}
	n := m.Params.Len()
	for name, dst := range map[string]backend.Tensor{"adamw.m": t.optim.M, "adamw.v": t.optim.V} {
		v, ok := ot[name]
		if !ok || len(v.Data) != n {
			return nil, fmt.Errorf("%s: tensor %q missing or not %d values", opath, name, n)
		}
		be.Upload(dst, v.Data)
	}
	t.Step = step
	return t, nil
}
