package model_test

// Comparison with reference values from HF transformers and a float64
// PyTorch implementation, made by scripts/make_reference.py on the GPU
// machine and committed under testdata/reference.

import (
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"testing"

	"github.com/mambabyte/mambabyte/internal/backend/cpu"
	"github.com/mambabyte/mambabyte/internal/checkpoint"
	"github.com/mambabyte/mambabyte/internal/model"
)

type expectedJSON struct {
	Format string  `json:"format"`
	B      int     `json:"B"`
	T      int     `json:"T"`
	Loss   float64 `json:"loss"`
	Prompt []int32 `json:"prompt"`
	Greedy []int32 `json:"greedy"`
}

func TestMatchesReference(t *testing.T) {
	dirs, _ := filepath.Glob("../../testdata/reference/*")
	if len(dirs) < 3 {
		t.Fatalf("found %d reference directories, want at least 3", len(dirs))
	}
	for _, dir := range dirs {
		t.Run(filepath.Base(dir), func(t *testing.T) {
			var exp expectedJSON
			raw, err := os.ReadFile(filepath.Join(dir, "expected.json"))
			if err != nil {
				t.Fatal(err)
			}
			if err := json.Unmarshal(raw, &exp); err != nil {
				t.Fatal(err)
			}
			ref, err := checkpoint.ReadSafetensors(filepath.Join(dir, "expected.safetensors"))
			if err != nil {
				t.Fatal(err)
			}
			cfg, tensors, format, err := checkpoint.Load(filepath.Join(dir, "model"))
			if err != nil {
				t.Fatal(err)
			}
			if string(format) != exp.Format && !(exp.Format == "hf" && format == "native") {
				t.Errorf("loaded as %q, reference says %q", format, exp.Format)
			}
			m, err := model.New(cfg, cpu.New())
			if err != nil {
				t.Fatal(err)
			}
			if err := m.SetParams(tensors); err != nil {
				t.Fatal(err)
			}
			B, T, V := exp.B, exp.T, cfg.VocabSize
			ids := make([]int32, B*T)
			for i, v := range ref["input_ids"].Data {
				ids[i] = int32(v)
			}
			tg := nextTargets(ids, B, T)

			// Logits of the parallel forward.
			infer := m.NewPass(B, T, false)
			sum, count, err := infer.Forward(ids, tg, nil, nil, 0)
			if err != nil {
				t.Fatal(err)
			}
			logits := make([]float32, B*T*V)
			infer.Logits(logits)
			dLogits := relDiff(logits, ref["logits"].Data)
			if d := dLogits; d > 1e-4 {
				t.Errorf("logits differ by %.3g relative (limit 1e-4)", d)
			}
			loss := sum / float64(count)
			if d := math.Abs(loss-exp.Loss) / exp.Loss; d > 1e-4 {
				t.Errorf("loss %.9g, reference %.9g: %.3g relative (limit 1e-4)", loss, exp.Loss, d)
			}
			if rl := float64(ref["loss"].Data[0]); math.Abs(rl-exp.Loss) > 1e-6*exp.Loss {
				t.Errorf("expected.json loss %g and expected.safetensors loss %g disagree", exp.Loss, rl)
			}

			// Gradients of the mean loss.
			train := m.NewPass(B, T, true)
			m.ZeroGrads()
			if _, _, err := train.Forward(ids, tg, nil, nil, 1/float32(count)); err != nil {
				t.Fatal(err)
			}
			if err := train.Backward(); err != nil {
				t.Fatal(err)
			}
			grads := m.GradsHost()
			worstGrad := 0.0
			for _, spec := range m.Specs() {
				want, ok := ref["grad/"+spec.Name]
				if !ok {
					t.Errorf("reference has no gradient for %s", spec.Name)
					continue
				}
				d := relDiff(grads[spec.Name], want.Data)
				worstGrad = max(worstGrad, d)
				if d > 1e-3 {
					t.Errorf("gradient of %s differs by %.3g relative (limit 1e-3)", spec.Name, d)
				}
			}

			// Recurrent step over row 0.
			st := m.NewState(1)
			sp := m.NewStepper(1)
			stepped := make([]float32, 0, T*V)
			for tt := 0; tt < T; tt++ {
				l, err := sp.Step(st, ids[tt:tt+1])
				if err != nil {
					t.Fatal(err)
				}
				stepped = append(stepped, l...)
			}
			dStep := relDiff(stepped, ref["step_logits"].Data)
			t.Logf("logits %.2g, loss %.2g, worst gradient %.2g, step logits %.2g (relative)", dLogits, math.Abs(loss-exp.Loss)/exp.Loss, worstGrad, dStep)
			if d := dStep; d > 1e-4 {
				t.Errorf("step logits differ by %.3g relative (limit 1e-4)", d)
			}

			// Greedy continuation.
			st.Reset()
			var last []float32
			for _, b := range exp.Prompt {
				if last, err = sp.Step(st, []int32{b}); err != nil {
					t.Fatal(err)
				}
			}
			got := make([]int32, 0, len(exp.Greedy))
			for len(got) < len(exp.Greedy) {
				best := 0
				for i, v := range last {
					if v > last[best] {
						best = i
					}
				}
				got = append(got, int32(best))
				if last, err = sp.Step(st, []int32{int32(best)}); err != nil {
					t.Fatal(err)
				}
			}
			for i := range got {
				if got[i] != exp.Greedy[i] {
					t.Fatalf("greedy byte %d is %d, reference %d (got %v, want %v)", i, got[i], exp.Greedy[i], got, exp.Greedy)
				}
			}
		})
	}
}
