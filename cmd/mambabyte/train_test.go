package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"
)

// corpusFile writes about n bytes of Go source into a file.
func corpusFile(t *testing.T, n int) string {
	t.Helper()
	var buf bytes.Buffer
	files, _ := filepath.Glob(filepath.Join(runtime.GOROOT(), "src", "strings", "*.go"))
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err == nil {
			buf.Write(b)
		}
		if buf.Len() >= n {
			break
		}
	}
	if buf.Len() < n/2 {
		t.Skip("Go source tree not found")
	}
	p := filepath.Join(t.TempDir(), "corpus.txt")
	if err := os.WriteFile(p, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func trainArgs(corpus, out string) []string {
	return []string{"train", "--data", corpus, "--out", out, "--preset", "tiny",
		"--steps", "24", "--seq-len", "64", "--batch", "4", "--accum", "2", "--warmup", "4",
		"--ckpt-every", "3", "--val-every", "8", "--keep", "2", "--seed", "5"}
}

func finalWeights(t *testing.T, out string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(out, "step-00000024", "model.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// A run killed with SIGKILL at arbitrary moments and resumed ends with the
// same weights, bit for bit, as a run never interrupted.
func TestTrainSIGKILLResumeIsBitIdentical(t *testing.T) {
	corpus := corpusFile(t, 150_000)
	ref := t.TempDir()
	if _, errs, code := mb(t, trainArgs(corpus, ref)...); code != 0 {
		t.Fatalf("uninterrupted run failed: %s", errs)
	}
	want := finalWeights(t, ref)

	delays := []time.Duration{50 * time.Millisecond, 230 * time.Millisecond, 410 * time.Millisecond, 777 * time.Millisecond}
	if testing.Short() {
		delays = delays[1:3]
	}
	for _, delay := range delays {
		out := t.TempDir()
		kills := 0
		for attempt := 0; ; attempt++ {
			if attempt > 60 {
				t.Fatalf("delay %v: the run never finished", delay)
			}
			args := trainArgs(corpus, out)
			if _, err := os.Stat(filepath.Join(out, "latest")); err == nil {
				args = append(args, "--resume")
			}
			cmd := exec.Command(bin, args...)
			var errb bytes.Buffer
			cmd.Stderr = &errb
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			go func() { done <- cmd.Wait() }()
			var err error
			if kills < 3 {
				select {
				case err = <-done:
				case <-time.After(delay):
					cmd.Process.Signal(syscall.SIGKILL)
					<-done
					kills++
					continue
				}
			} else {
				err = <-done
			}
			if err != nil {
				// A finished run asked to resume says so; anything else fails.
				if bytes.Contains(errb.Bytes(), []byte("already finished")) {
					break
				}
				t.Fatalf("delay %v, attempt %d: %v\n%s", delay, attempt, err, errb.String())
			}
			break
		}
		got := finalWeights(t, out)
		if !bytes.Equal(got, want) {
			t.Fatalf("delay %v (%d kills): final weights differ from the uninterrupted run", delay, kills)
		}
		t.Logf("delay %v: %d kills, final weights identical", delay, kills)
	}
}

// Ctrl-C saves the last finished step and exits cleanly.
func TestTrainInterruptSaves(t *testing.T) {
	corpus := corpusFile(t, 100_000)
	out := t.TempDir()
	args := append(trainArgs(corpus, out), "--steps", "100000", "--ckpt-every", "0")
	cmd := exec.Command(bin, args...)
	var errb bytes.Buffer
	cmd.Stderr = &errb
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(700 * time.Millisecond)
	cmd.Process.Signal(os.Interrupt)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("interrupted run exited with %v:\n%s", err, errb.String())
	}
	if !bytes.Contains(errb.Bytes(), []byte("checkpoint saved")) {
		t.Fatalf("no save reported:\n%s", errb.String())
	}
	if _, err := os.Stat(filepath.Join(out, "latest")); err != nil {
		t.Fatalf("no checkpoint after Ctrl-C: %v", err)
	}
}

// Bad input to train is reported before any work starts, and no run
// directory is left behind.
func TestTrainBadInput(t *testing.T) {
	dir := t.TempDir()
	empty := filepath.Join(dir, "empty.txt")
	os.WriteFile(empty, nil, 0o644)
	short := filepath.Join(dir, "short.txt")
	os.WriteFile(short, []byte("far too short for a window"), 0o644)
	corpus := corpusFile(t, 50_000)
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"missing corpus", []string{"--data", filepath.Join(dir, "none.txt")}, "none.txt"},
		{"glob matching nothing", []string{"--data", filepath.Join(dir, "*.nothing")}, "matches no files"},
		{"empty corpus", []string{"--data", empty}, "empty"},
		{"shorter than a window", []string{"--data", short}, "too small"},
		{"unknown preset", []string{"--data", corpus, "--preset", "giant"}, "unknown preset"},
		{"bad shape", []string{"--data", corpus, "--d-model", "0"}, "d_model"},
		{"bad norm", []string{"--data", corpus, "--norm", "batchnorm"}, "norm"},
		{"min-lr above lr", []string{"--data", corpus, "--lr", "1e-3", "--min-lr", "1e-2"}, "min-lr"},
		{"resume with nothing to resume", []string{"--data", corpus, "--resume"}, "no checkpoint"},
		{"unknown device", []string{"--data", corpus, "--device", "tpu"}, "unknown device"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out := filepath.Join(t.TempDir(), "run")
			args := append([]string{"train", "--out", out, "--preset", "tiny", "--seq-len", "64"}, tc.args...)
			_, errs, code := mb(t, args...)
			if code == 0 {
				t.Fatal("exit 0")
			}
			if !strings.Contains(errs, tc.want) {
				t.Fatalf("stderr %q does not mention %q", errs, tc.want)
			}
			if _, err := os.Stat(out); err == nil {
				t.Fatal("the run directory was created")
			}
		})
	}
}
