// Package mambabyte loads token-free byte-level Mamba language models
// (MambaByte) and uses them: score text in bits per byte and generate text
// with a fixed-size recurrent state.
//
// A model is a checkpoint directory of one of three kinds: this project's
// own (config.json + model.safetensors, HF-compatible names), HF
// transformers' MambaForCausalLM, or mamba_ssm's MambaLMHeadModel (the
// format of the released MambaByte checkpoints, config.json +
// pytorch_model.bin). Weights in bf16 or fp16 are converted to float32.
//
// Nothing is downloaded: Load reads a local directory.
package mambabyte

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/mambabyte/mambabyte/internal/checkpoint"
	"github.com/mambabyte/mambabyte/internal/defaultmodel"
	"github.com/mambabyte/mambabyte/internal/model"
	"github.com/mambabyte/mambabyte/internal/sample"
	"github.com/mambabyte/mambabyte/internal/train"
)

// Config describes a model's shape; see the field comments.
type Config = model.Config

// Model is a loaded language model over bytes (or, for a subword model,
// over token ids below its vocabulary size). A Model is not safe for
// concurrent use: Eval and Generate calls on one Model must not overlap.
type Model struct {
	m      *model.Model
	format string
}

// Load reads a checkpoint directory, or the latest checkpoint of a
// training run directory (one with a "latest" file), onto the CPU.
func Load(dir string) (*Model, error) { return LoadWith(dir, Options{}) }

// LoadWith is Load onto the device opts name.
func LoadWith(dir string, opts Options) (*Model, error) {
	if _, err := os.Stat(filepath.Join(dir, "config.json")); os.IsNotExist(err) {
		if latest, lerr := train.LatestCheckpoint(dir); lerr == nil && latest != "" {
			dir = latest
		}
	}
	cfg, tensors, format, err := checkpoint.Load(dir)
	if err != nil {
		return nil, err
	}
	m, err := build(cfg, tensors, opts)
	if err != nil {
		return nil, fmt.Errorf("load %s: %w", dir, err)
	}
	m.format = string(format)
	return m, nil
}

func build(cfg model.Config, tensors map[string][]float32, opts Options) (*Model, error) {
	be, err := NewBackend(opts)
	if err != nil {
		return nil, err
	}
	m, err := model.New(cfg, be)
	if err != nil {
		return nil, err
	}
	if err := m.SetParams(tensors); err != nil {
		return nil, err
	}
	return &Model{m: m, format: "native"}, nil
}

// LoadDefault returns the small model built into the binary (a byte
// model of English dictionary text; see README.md), on the device opts
// name.
func LoadDefault(opts Options) (*Model, error) {
	cfg, tensors, err := defaultmodel.Load()
	if err != nil {
		return nil, err
	}
	m, err := build(cfg, tensors, opts)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", defaultmodel.Name, err)
	}
	return m, nil
}

// Device describes where the model runs.
func (m *Model) Device() string { return DescribeBackend(m.m.BE) }

// Config returns the model's configuration.
func (m *Model) Config() Config { return m.m.Cfg }

// Format is the kind of checkpoint the model was loaded from: "native",
// "hf" or "mamba_ssm".
func (m *Model) Format() string { return m.format }

// GenerateOptions control Generate. The zero value samples at
// temperature 1 from the full distribution with seed 0.
type GenerateOptions struct {
	MaxBytes    int      // most bytes to produce
	Greedy      bool     // always take the most likely byte
	Temperature float64  // sampling temperature (1 if 0)
	TopK        int      // sample among the K most likely bytes (0: all)
	TopP        float64  // sample within the smallest set of probability P (0: all)
	MinP        float64  // drop bytes less likely than MinP times the best (0: none)
	Seed        uint64   // same seed, same output
	Stop        []string // end when the text produces one of these (not emitted)
}

// Generate continues prompt (at least one byte), calling emit with each
// new piece of text as soon as it is chosen. Pieces never end inside a
// UTF-8 character and never contain a stop string or a part of one. It
// ends after MaxBytes bytes, at a stop string, when ctx is done (returning
// ctx.Err()), or when emit returns an error (returned as is).
func (m *Model) Generate(ctx context.Context, prompt []byte, opt GenerateOptions, emit func(piece []byte) error) error {
	if len(prompt) == 0 {
		return fmt.Errorf("generate: the prompt is empty; give at least one byte")
	}
	sopt := sample.Options{Greedy: opt.Greedy, Temperature: opt.Temperature, TopK: opt.TopK, TopP: opt.TopP, MinP: opt.MinP}
	if err := sopt.Validate(); err != nil {
		return fmt.Errorf("generate: %w", err)
	}
	if opt.MaxBytes < 0 {
		return fmt.Errorf("generate: MaxBytes must not be negative")
	}
	V := m.m.Cfg.VocabSize
	st := m.m.NewState(1)
	ids := make([]int32, len(prompt))
	for i, b := range prompt {
		ids[i] = int32(b)
	}
	// Read the prompt in one parallel pass; its last logits give the first
	// new byte.
	pass := m.m.NewPass(1, len(ids), false)
	if _, _, err := pass.Forward(ids, nil, st, nil, 0); err != nil {
		return err
	}
	all := make([]float32, len(ids)*V)
	pass.Logits(all)
	logits := all[(len(ids)-1)*V:]
	smp := sample.New(sopt, opt.Seed)
	out := sample.NewStream(emitWriter(emit), opt.Stop)
	sp := m.m.NewStepper(1)
	for i := 0; i < opt.MaxBytes; i++ {
		if err := ctx.Err(); err != nil {
			return err
		}
		next := smp.Next(logits)
		if next > 255 {
			return fmt.Errorf("generate: the model's vocabulary has %d entries; only byte models generate text", V)
		}
		if err := out.WriteByte(byte(next)); err != nil {
			return err
		}
		if out.Stopped() || i+1 == opt.MaxBytes {
			break
		}
		var err error
		if logits, err = sp.Step(st, []int32{int32(next)}); err != nil {
			return err
		}
	}
	return out.Close()
}

// emitWriter adapts a callback to an io.Writer.
type emitWriter func([]byte) error

func (f emitWriter) Write(p []byte) (int, error) {
	if err := f(p); err != nil {
		return 0, err
	}
	return len(p), nil
}
