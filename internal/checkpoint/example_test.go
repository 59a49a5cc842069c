package checkpoint_test

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/mambabyte/mambabyte/internal/checkpoint"
	"github.com/mambabyte/mambabyte/internal/model"
)

// A checkpoint saved with Save loads back with the same config and weights.
func ExampleSave() {
	dir, _ := os.MkdirTemp("", "ckpt")
	defer os.RemoveAll(dir)

	cfg := model.DefaultConfig()
	cfg.DModel, cfg.NLayer = 32, 2
	tensors := map[string][]float32{}
	for _, s := range cfg.TensorSpecs() {
		tensors[s.Name] = make([]float32, s.Size())
	}
	if err := checkpoint.Save(filepath.Join(dir, "tiny"), cfg, tensors); err != nil {
		fmt.Println(err)
		return
	}
	got, weights, format, err := checkpoint.Load(filepath.Join(dir, "tiny"))
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(format, got == cfg, len(weights), got.NumParams())
	// Output: native true 25 28224
}
