package main

import (
	"bufio"
	"fmt"
	"io"
	"os"

	"github.com/mambabyte/mambabyte/internal/data"
)

// cmdData describes a corpus as train would split it and can write the
// validation bytes out, for comparing the model with other compressors on
// exactly the same bytes.
func cmdData(args []string) error {
	fs := newFlags("data", "--data PATH [--data PATH ...] [--seq-len T] [--val-fraction F] [--seed S] [--write-validation FILE]")
	var specs stringList
	fs.Var(&specs, "data", "a `file`, directory or glob; .gz and .dz are decompressed (repeatable)")
	seqLen := fs.Int("seq-len", 1024, "the run's window length T (the smallest split block is T+1 bytes)")
	valFraction := fs.Float64("val-fraction", 0.01, "share of the corpus held out for validation")
	seed := fs.Uint64("seed", 1, "the run's seed")
	write := fs.String("write-validation", "", "write the validation bytes, in order, to this `file`")
	if err := parse(fs, args); err != nil {
		return err
	}
	if len(specs) == 0 {
		return fmt.Errorf("--data is required")
	}
	corpus, err := data.Open(specs)
	if err != nil {
		return err
	}
	defer corpus.Close()
	split, err := data.NewSplit(corpus, splitConfig(*valFraction, *seqLen, *seed))
	if err != nil {
		return err
	}
	total, val := split.Blocks()
	fmt.Printf("%d files, %d bytes; blocks of %d bytes: %d train, %d validation; train %d bytes, validation %d bytes\n",
		len(corpus.Files()), corpus.Size(), split.BlockSize(), total-val, val, split.TrainBytes(), split.ValidationBytes())
	if *write == "" {
		return nil
	}
	f, err := os.Create(*write)
	if err != nil {
		return err
	}
	w := bufio.NewWriterSize(f, 1<<20)
	for _, r := range split.Validation() {
		if _, err := io.Copy(w, io.NewSectionReader(corpus, r.Off, r.Len)); err != nil {
			f.Close()
			return fmt.Errorf("%s: %w", *write, err)
		}
	}
	if err := w.Flush(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
