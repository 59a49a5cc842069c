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
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/mambabyte/mambabyte"
)

const usage = `mambabyte: token-free byte-level Mamba language models

Commands:
  train      train a model on files, directories or globs (.gz/.dz too)
  eval       score a file in bits per byte
  generate   continue a prompt

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
	fs := newFlags("eval", "--model DIR --data FILE [--json]")
	dir := fs.String("model", "", "checkpoint `directory` (native, HF or mamba_ssm)")
	data := fs.String("data", "", "`file` to score")
	asJSON := fs.Bool("json", false, "print one JSON object")
	chunk := fs.Int("chunk", mambabyte.DefaultChunk, "bytes per forward pass; the state is carried between chunks")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *dir == "" || *data == "" {
		return fmt.Errorf("--model and --data are required")
	}
	if *chunk < 1 {
		return fmt.Errorf("--chunk must be at least 1, got %d", *chunk)
	}
	f, err := os.Open(*data)
	if err != nil {
		return err
	}
	defer f.Close()
	m, err := mambabyte.Load(*dir)
	if err != nil {
		return err
	}
	start := time.Now()
	res, err := m.Eval(f, *chunk)
	if err != nil {
		return fmt.Errorf("%s: %w", *data, err)
	}
	secs := time.Since(start).Seconds()
	if *asJSON {
		out := struct {
			mambabyte.EvalResult
			File    string  `json:"file"`
			Seconds float64 `json:"seconds"`
		}{res, *data, secs}
		return json.NewEncoder(os.Stdout).Encode(out)
	}
	fmt.Printf("%s: %d bytes scored, %.6f nats/byte, %.6f bits/byte (%.0f bytes/s)\n",
		*data, res.Bytes, res.NLL, res.BPB, float64(res.Bytes)/secs)
	return nil
}

func cmdGenerate(args []string) error {
	fs := newFlags("generate", "--model DIR (--prompt TEXT | --prompt-file FILE) --max-bytes N [--greedy]")
	dir := fs.String("model", "", "checkpoint `directory` (native, HF or mamba_ssm)")
	prompt := fs.String("prompt", "", "prompt `text`")
	promptFile := fs.String("prompt-file", "", "read the prompt from `file`")
	maxBytes := fs.Int("max-bytes", 256, "bytes to generate")
	greedy := fs.Bool("greedy", false, "always take the most likely byte")
	temp := fs.Float64("temperature", 1, "sampling temperature")
	seed := fs.Uint64("seed", 0, "sampling seed")
	if err := parse(fs, args); err != nil {
		return err
	}
	if *dir == "" {
		return fmt.Errorf("--model is required")
	}
	var p []byte
	switch {
	case *prompt != "" && *promptFile != "":
		return fmt.Errorf("give --prompt or --prompt-file, not both")
	case *promptFile != "":
		var err error
		if p, err = os.ReadFile(*promptFile); err != nil {
			return err
		}
	case *prompt != "":
		p = []byte(*prompt)
	default:
		return fmt.Errorf("give --prompt or --prompt-file")
	}
	if *maxBytes < 0 {
		return fmt.Errorf("--max-bytes must not be negative, got %d", *maxBytes)
	}
	if !(*temp > 0) {
		return fmt.Errorf("--temperature must be positive, got %g", *temp)
	}
	m, err := mambabyte.Load(*dir)
	if err != nil {
		return err
	}
	out := bufio.NewWriter(os.Stdout)
	start := time.Now()
	n := 0
	err = m.Generate(p, mambabyte.GenerateOptions{MaxBytes: *maxBytes, Greedy: *greedy, Temperature: *temp, Seed: *seed}, func(b byte) error {
		n++
		if err := out.WriteByte(b); err != nil {
			return err
		}
		return out.Flush()
	})
	if err != nil && !errors.Is(err, io.ErrShortWrite) {
		return err
	}
	secs := time.Since(start).Seconds()
	fmt.Fprintf(os.Stderr, "\n[%d bytes in %.2fs, %.1f bytes/s]\n", n, secs, float64(n)/secs)
	return nil
}
