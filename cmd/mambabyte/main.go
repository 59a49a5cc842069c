// Command mambabyte trains, scores and runs token-free byte-level Mamba
// language models (MambaByte).
//
// Usage:
//
//	mambabyte train --data PATH --out DIR [--preset NAME] [--resume]
//	mambabyte eval --model DIR --data FILE [--json] [--chunk N]
//	mambabyte generate --model DIR (--prompt TEXT | --prompt-file FILE) --max-bytes N [--greedy]
//
// Run "mambabyte COMMAND -h" for a command's flags.
package main

import (
	"bufio"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"os/signal"
	"strings"
	"time"

	"github.com/mambabyte/mambabyte"
	"github.com/mambabyte/mambabyte/internal/data"
)

const usage = `mambabyte: token-free byte-level Mamba language models

Commands:
  train      train a model on files, directories or globs (.gz/.dz too)
  eval       score a file in bits per byte
  generate   continue a prompt
  data       describe a corpus's train/validation split; write the validation bytes
  plot       redraw a training run's curve (curve.svg) from its metrics
  bench      measure this machine: bandwidth, GEMM, decode, training

Run "mambabyte COMMAND -h" for a command's flags.
`

func main() {
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	cmds := map[string]func([]string) error{
		"train":    cmdTrain,
		"eval":     cmdEval,
		"generate": cmdGenerate,
		"bench":    cmdBench,
		"data":     cmdData,
		"plot":     cmdPlot,
	}
	name := os.Args[1]
	if name == "-h" || name == "--help" || name == "help" {
		fmt.Print(usage)
		return
	}
	run, ok := cmds[name]
	if !ok {
		fmt.Fprintf(os.Stderr, "mambabyte: unknown command %q\n\n%s", name, usage)
		os.Exit(2)
	}
	if err := run(os.Args[2:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintf(os.Stderr, "mambabyte %s: %v\n", name, err)
		os.Exit(1)
	}
}

// newFlags returns a flag set whose errors are returned, not fatal.
func newFlags(name, synopsis string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: mambabyte %s %s\n\nFlags:\n", name, synopsis)
		fs.PrintDefaults()
	}
	return fs
}

// parseInterspersed parses flags that may come before, between or after
// plain arguments (`generate "func main() {" --max-bytes 100`) and returns
// the plain arguments; "--" ends the flags.
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var words []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		if len(rest) == 0 {
			return words, nil
		}
		if len(args) > len(rest) && args[len(args)-len(rest)-1] == "--" {
			return append(words, rest...), nil
		}
		words = append(words, rest[0])
		args = rest[1:]
	}
}

func parse(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	return nil
}

func cmdEval(args []string) error {
	fs := newFlags("eval", "[--model DIR] --data FILE [--json] [--window W | --context C] [--noise KIND[:P]]")
	dir := fs.String("model", "", "checkpoint or run `directory` (native, HF or mamba_ssm); default: the built-in model")
	dataPath := fs.String("data", "", "`file` to score (.gz and .dz are decompressed)")
	asJSON := fs.Bool("json", false, "print one JSON object")
	chunk := fs.Int("chunk", mambabyte.DefaultChunk, "bytes per forward pass (speed and memory only)")
	window := fs.Int("window", 0, "score with sliding windows of this many `bytes`, each scoring its last half (the paper's evaluation)")
	context := fs.Int("context", 0, "give each prediction at most this many `bytes` of history (length extrapolation studies)")
	noise := fs.String("noise", "", "corrupt the text first: drop:P, repeat:P, antspeak, uppercase:P, randomcase:P or swap:P")
	noiseSeed := fs.Uint64("noise-seed", 1, "seed of the corruption")
	dev := deviceFlags(fs)
	if err := parse(fs, args); err != nil {
		return err
	}
	if *dataPath == "" {
		return fmt.Errorf("--data is required")
	}
	if *chunk < 1 {
		return fmt.Errorf("--chunk must be at least 1, got %d", *chunk)
	}
	if *window < 0 || *context < 0 {
		return fmt.Errorf("--window and --context must not be negative")
	}
	if *window > 0 && *context > 0 {
		return fmt.Errorf("--window and --context exclude each other")
	}
	if *window == 1 {
		return fmt.Errorf("--window must be at least 2 bytes")
	}
	var nz *data.Noise
	if *noise != "" {
		n, err := data.ParseNoise(*noise)
		if err != nil {
			return err
		}
		nz = &n
	}
	r, closer, err := openText(*dataPath)
	if err != nil {
		return err
	}
	defer closer()
	if nz != nil {
		r = nz.Reader(r, *noiseSeed)
	}
	m, err := loadModel(*dir, dev.options())
	if err != nil {
		return err
	}
	start := time.Now()
	last := start
	progress := func(scored int64, nll float64) {
		// A line every 5 s on stderr, for long files.
		if now := time.Now(); now.Sub(last) >= 5*time.Second {
			last = now
			fmt.Fprintf(os.Stderr, "%d bytes scored, %.4f bits/byte so far, %.0f bytes/s\n",
				scored, nll/math.Ln2, float64(scored)/now.Sub(start).Seconds())
		}
	}
	res, err := m.Eval(r, mambabyte.EvalOptions{Chunk: *chunk, Window: *window, Context: *context, Progress: progress})
	if err != nil {
		return fmt.Errorf("%s: %w", *dataPath, err)
	}
	secs := time.Since(start).Seconds()
	if *asJSON {
		out := struct {
			mambabyte.EvalResult
			File    string  `json:"file"`
			Window  int     `json:"window,omitempty"`
			Context int     `json:"context,omitempty"`
			Noise   string  `json:"noise,omitempty"`
			Seconds float64 `json:"seconds"`
		}{res, *dataPath, *window, *context, *noise, secs}
		return json.NewEncoder(os.Stdout).Encode(out)
	}
	fmt.Printf("%s: %d bytes scored, %.6f nats/byte, %.6f bits/byte (%.0f bytes/s)\n",
		*dataPath, res.Bytes, res.NLL, res.BPB, float64(res.Bytes)/secs)
	return nil
}

// openText opens a file for reading, decompressing .gz and .dz.
func openText(path string) (io.Reader, func(), error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, err
	}
	if strings.HasSuffix(path, ".gz") || strings.HasSuffix(path, ".dz") {
		z, err := gzip.NewReader(bufio.NewReader(f))
		if err != nil {
			f.Close()
			return nil, nil, fmt.Errorf("%s: %w", path, err)
		}
		return z, func() { z.Close(); f.Close() }, nil
	}
	return f, func() { f.Close() }, nil
}

func cmdGenerate(args []string) error {
	fs := newFlags("generate", "[--model DIR] (PROMPT | --prompt TEXT | --prompt-file FILE | --prompt-file -) [flags]")
	dir := fs.String("model", "", "checkpoint or run `directory` (native, HF or mamba_ssm); default: the built-in model")
	prompt := fs.String("prompt", "", "prompt `text`")
	promptFile := fs.String("prompt-file", "", "read the prompt from `file` (- for standard input)")
	maxBytes := fs.Int("max-bytes", 256, "most bytes to generate")
	greedy := fs.Bool("greedy", false, "always take the most likely byte")
	temp := fs.Float64("temperature", 1, "sampling temperature")
	topK := fs.Int("top-k", 0, "sample among the K most likely bytes (0: all)")
	topP := fs.Float64("top-p", 0, "sample within the smallest set of probability P (0: all)")
	minP := fs.Float64("min-p", 0, "drop bytes less likely than P times the most likely (0: none)")
	seed := fs.Uint64("seed", 0, "sampling seed (same seed, same output)")
	var stops stringList
	fs.Var(&stops, "stop", "stop when this `text` is produced; it is not printed (repeatable)")
	dev := deviceFlags(fs)
	words, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	positional := strings.Join(words, " ")
	given := 0
	for _, g := range []bool{positional != "", *prompt != "", *promptFile != ""} {
		if g {
			given++
		}
	}
	if given > 1 {
		return fmt.Errorf("give the prompt one way: an argument, --prompt or --prompt-file")
	}
	var p []byte
	switch {
	case *promptFile == "-":
		var err error
		if p, err = io.ReadAll(os.Stdin); err != nil {
			return fmt.Errorf("reading the prompt from standard input: %w", err)
		}
	case *promptFile != "":
		var err error
		if p, err = os.ReadFile(*promptFile); err != nil {
			return err
		}
	case *prompt != "":
		p = []byte(*prompt)
	case positional != "":
		p = []byte(positional)
	default:
		return fmt.Errorf("give a prompt: an argument, --prompt TEXT or --prompt-file FILE (- for standard input)")
	}
	if len(p) == 0 {
		return fmt.Errorf("the prompt is empty; give at least one byte")
	}
	if *maxBytes < 0 {
		return fmt.Errorf("--max-bytes must not be negative, got %d", *maxBytes)
	}
	if !(*temp > 0) {
		return fmt.Errorf("--temperature must be positive, got %g", *temp)
	}
	m, err := loadModel(*dir, dev.options())
	if err != nil {
		return err
	}
	out := bufio.NewWriter(os.Stdout)
	start := time.Now()
	var n int
	opt := mambabyte.GenerateOptions{
		MaxBytes: *maxBytes, Greedy: *greedy, Temperature: *temp,
		TopK: *topK, TopP: *topP, MinP: *minP, Seed: *seed, Stop: stops,
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	err = m.Generate(ctx, p, opt, func(piece []byte) error {
		n += len(piece)
		if _, err := out.Write(piece); err != nil {
			return err
		}
		return out.Flush()
	})
	if err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	secs := time.Since(start).Seconds()
	fmt.Fprintf(os.Stderr, "\n[%d bytes in %.2fs, %.1f bytes/s]\n", n, secs, float64(n)/secs)
	return nil
}

// loadModel loads dir, or the built-in model when dir is empty.
func loadModel(dir string, opts mambabyte.Options) (*mambabyte.Model, error) {
	var m *mambabyte.Model
	var err error
	if dir == "" {
		m, err = mambabyte.LoadDefault(opts)
	} else {
		m, err = mambabyte.LoadWith(dir, opts)
	}
	if err == nil && opts.Device != "" && opts.Device != mambabyte.DeviceCPU {
		fmt.Fprintf(os.Stderr, "device: %s\n", m.Device())
	}
	return m, err
}

// devFlags are the --device and --precision flags.
type devFlags struct{ device, precision *string }

func deviceFlags(fs *flag.FlagSet) devFlags {
	return devFlags{
		device:    fs.String("device", "cpu", "where to compute: cpu, cuda (needs `make -C cuda`) or auto"),
		precision: fs.String("precision", "bf16", "GPU matrix products: bf16 (tensor cores, fp32 accumulation) or fp32"),
	}
}

func (d devFlags) options() mambabyte.Options {
	return mambabyte.Options{Device: *d.device, Precision: *d.precision}
}
