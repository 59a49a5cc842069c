// Package defaultmodel holds the small model built into the mambabyte
// binary, so that generate and eval work with no files at all.
//
// The model directory (model/) holds config.json and model.safetensors as
// scripts/train_default.sh leaves them; model/README.md says what the
// model is and how it scored.
package defaultmodel

import (
	"embed"
	"errors"
	"io/fs"

	"github.com/mambabyte/mambabyte/internal/checkpoint"
	"github.com/mambabyte/mambabyte/internal/model"
)

//go:embed model
var files embed.FS

// Name is how the model appears in messages.
const Name = "(built-in model)"

// ErrMissing reports a build without the model's files.
var ErrMissing = errors.New("this binary has no built-in model; pass --model DIR")

// Load returns the built-in model's configuration and weights.
func Load() (model.Config, map[string][]float32, error) {
	config, err1 := files.ReadFile("model/" + checkpoint.ConfigFile)
	weights, err2 := files.ReadFile("model/" + checkpoint.SafetensorsFile)
	if errors.Is(err1, fs.ErrNotExist) || errors.Is(err2, fs.ErrNotExist) {
		return model.Config{}, nil, ErrMissing
	}
	if err := errors.Join(err1, err2); err != nil {
		return model.Config{}, nil, err
	}
	cfg, t, _, err := checkpoint.LoadBytes(Name, config, weights)
	return cfg, t, err
}
