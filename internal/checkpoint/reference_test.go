package checkpoint

import (
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/mambabyte/mambabyte/internal/model"
)

// testdata/torch2_state_dict.pkl is the data.pkl of a real torch.save of a
// mamba_ssm MambaLMHeadModel state dict (d_model 64, 2 layers, LayerNorm,
// untied), from ../../testdata/reference/ssm_layernorm.
func TestRealTorchPickle(t *testing.T) {
	pkl, err := os.ReadFile("testdata/torch2_state_dict.pkl")
	if err != nil {
		t.Fatal(err)
	}
	v, err := unpickle(pkl)
	if err != nil {
		t.Fatal(err)
	}
	got, err := stateDictTensors(v, fakeStorage)
	if err != nil {
		t.Fatal(err)
	}
	cfg := model.DefaultConfig()
	cfg.DModel, cfg.NLayer, cfg.TieEmbeddings = 64, 2, false
	specs := cfg.TensorSpecs()
	if len(got) != len(specs) {
		t.Errorf("got %d tensors, want %d", len(got), len(specs))
	}
	for _, s := range specs {
		name := s.Name
		if name == model.NameEmbed {
			name = mambaSSMEmbed
		}
		if x := got[name]; x == nil || !slices.Equal(x.Shape, s.Shape) {
			t.Errorf("tensor %q = %+v, want shape %v", name, x, s.Shape)
		}
	}
}

// TestReferenceCheckpoints loads the checkpoints written by PyTorch and HF
// transformers under the repository's testdata/reference, when present.
func TestReferenceCheckpoints(t *testing.T) {
	dirs, _ := filepath.Glob("../../testdata/reference/*/model")
	if len(dirs) == 0 {
		t.Skip("no reference checkpoints")
	}
	for _, dir := range dirs {
		cfg, tensors, format, err := Load(dir)
		if err != nil {
			t.Errorf("%s: %v", dir, err)
			continue
		}
		if len(tensors) != len(cfg.TensorSpecs()) {
			t.Errorf("%s: %d tensors for %d specs", dir, len(tensors), len(cfg.TensorSpecs()))
		}
		t.Logf("%s: %s, %d parameters, %s", dir, format, cfg.NumParams(), cfg.Norm)
	}
}
