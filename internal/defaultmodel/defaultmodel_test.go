package defaultmodel

import (
	"errors"
	"testing"
)

func TestLoad(t *testing.T) {
	cfg, tensors, err := Load()
	if errors.Is(err, ErrMissing) {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	if cfg.VocabSize != 256 || len(tensors) != len(cfg.TensorSpecs()) {
		t.Fatalf("built-in model: vocabulary %d, %d tensors for %d specs", cfg.VocabSize, len(tensors), len(cfg.TensorSpecs()))
	}
}
