package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/mambabyte/mambabyte/internal/checkpoint"
	"github.com/mambabyte/mambabyte/internal/dist"
)

// fakeWorker is what the test binary does when the supervisor tests start
// it as a worker (MB_FAKE_WORKER=mode); it returns the exit code.
func fakeWorker(mode string) int {
	e, ok, err := dist.FromEnv(os.Getenv)
	if !ok || err != nil {
		fmt.Fprintln(os.Stderr, "fake worker: no worker environment:", err)
		return 9
	}
	fmt.Fprintf(os.Stdout, "out of rank %d\n", e.Rank)
	fmt.Fprintf(os.Stderr, "progress of rank %d\rredrawn by rank %d\n", e.Rank, e.Rank)
	switch mode {
	case "ok":
		fmt.Fprintf(os.Stderr, "env rank=%d world=%d local=%d addr=%s nvls=%s\n", e.Rank, e.World, e.LocalRank, e.Addr, os.Getenv("NCCL_NVLS_ENABLE"))
		return 0
	case "crash":
		if e.Rank == 2 {
			time.Sleep(200 * time.Millisecond)
			fmt.Fprintln(os.Stderr, "mambabyte train: step 7: something broke on rank 2")
			fmt.Fprintln(os.Stderr, "a line after the error")
			return 3
		}
		time.Sleep(time.Minute) // until killed
		return 0
	case "signal":
		sigs := make(chan os.Signal, 1)
		signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
		fmt.Fprintln(os.Stderr, "ready")
		select {
		case s := <-sigs:
			fmt.Fprintf(os.Stderr, "rank %d got %v, saving\n", e.Rank, s)
			return 0
		case <-time.After(time.Minute):
			return 4
		}
	}
	return 5
}

// fakeJob returns the commands of a job of world fake workers on one
// host.
func fakeJob(t *testing.T, mode string, world int, base []string) ([]*exec.Cmd, []int) {
	t.Helper()
	envs, err := jobEnvs(world, 1, 0, "")
	if err != nil {
		t.Fatal(err)
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmds := workerCmds(exe, nil, envs, append(base, "MB_FAKE_WORKER="+mode))
	ranks := make([]int, world)
	for i := range ranks {
		ranks[i] = i
	}
	return cmds, ranks
}

// syncBuffer is a bytes.Buffer safe for the supervisor's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestSuperviseRoutesOutput(t *testing.T) {
	cmds, ranks := fakeJob(t, "ok", 3, os.Environ())
	var out, errs syncBuffer
	if err := supervise(cmds, ranks, &out, &errs, nil); err != nil {
		t.Fatal(err)
	}
	if got := out.String(); got != "out of rank 0\n" {
		t.Errorf("stdout %q: want rank 0's output only", got)
	}
	e := errs.String()
	for _, want := range []string{
		"progress of rank 0\rredrawn by rank 0\n", // rank 0 as it is
		"[rank 1] out of rank 1\n",
		"[rank 2] progress of rank 2\rredrawn by rank 2\n",
		"env rank=0 world=3 local=0 addr=127.0.0.1:",
		"[rank 2] env rank=2 world=3 local=2 addr=127.0.0.1:",
		"nvls=0",
	} {
		if !strings.Contains(e, want) {
			t.Errorf("stderr does not contain %q:\n%s", want, e)
		}
	}
	// A user's NCCL_NVLS_ENABLE is kept.
	cmds, ranks = fakeJob(t, "ok", 2, append(os.Environ(), "NCCL_NVLS_ENABLE=1"))
	errs = syncBuffer{}
	if err := supervise(cmds, ranks, &out, &errs, nil); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(errs.String(), "nvls=1") || strings.Contains(errs.String(), "nvls=0") {
		t.Errorf("NCCL_NVLS_ENABLE=1 was not kept:\n%s", errs.String())
	}
}

// A worker that fails stops the others at once, and the error names it
// with its last error line.
func TestSuperviseStopsTheJobWhenAWorkerFails(t *testing.T) {
	cmds, ranks := fakeJob(t, "crash", 4, os.Environ())
	var out, errs syncBuffer
	start := time.Now()
	err := supervise(cmds, ranks, &out, &errs, nil)
	if err == nil {
		t.Fatal("no error")
	}
	for _, want := range []string{"rank 2 failed", "exit status 3", "step 7: something broke on rank 2", "stopped the other workers"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not contain %q", err, want)
		}
	}
	if d := time.Since(start); d > 20*time.Second {
		t.Errorf("the job took %v to stop", d)
	}
	for i, c := range cmds {
		if c.ProcessState == nil || (i != 2 && c.ProcessState.Success()) {
			t.Errorf("worker %d: %v; want killed", i, c.ProcessState)
		}
	}
	// A worker that cannot start.
	cmds, ranks = fakeJob(t, "ok", 2, os.Environ())
	cmds[1].Path = filepath.Join(t.TempDir(), "missing")
	if err := supervise(cmds, ranks, &out, &errs, nil); err == nil || !strings.Contains(err.Error(), "starting the worker of rank 1") {
		t.Errorf("missing worker program: %v", err)
	}
}

func TestSuperviseForwardsSignals(t *testing.T) {
	for _, sig := range []os.Signal{os.Interrupt, syscall.SIGTERM} {
		cmds, ranks := fakeJob(t, "signal", 3, os.Environ())
		var out, errs syncBuffer
		sigs := make(chan os.Signal, 1)
		go func() {
			for strings.Count(errs.String(), "ready") < 3 {
				time.Sleep(10 * time.Millisecond)
			}
			sigs <- sig
		}()
		if err := supervise(cmds, ranks, &out, &errs, sigs); err != nil {
			t.Fatalf("%v: %v\n%s", sig, err, errs.String())
		}
		for r := range 3 {
			prefix := ""
			if r > 0 {
				prefix = fmt.Sprintf("[rank %d] ", r)
			}
			if want := fmt.Sprintf("%srank %d got %v, saving", prefix, r, sig); !strings.Contains(errs.String(), want) {
				t.Errorf("stderr lacks %q:\n%s", want, errs.String())
			}
		}
	}
}

func TestJobEnvs(t *testing.T) {
	envs, err := jobEnvs(4, 3, 2, "node0:29500")
	if err != nil {
		t.Fatal(err)
	}
	var ranks []int
	for i, e := range envs {
		ranks = append(ranks, e.Rank)
		if e.World != 12 || e.LocalRank != i || e.Addr != "node0:29500" {
			t.Errorf("worker %d: %+v", i, e)
		}
	}
	if !slices.Equal(ranks, []int{8, 9, 10, 11}) {
		t.Errorf("node 2 of 3 with 4 GPUs runs ranks %v", ranks)
	}
	for _, c := range []struct {
		gpus, nodes, node int
		addr, want        string
	}{
		{2, 2, 0, "", "needs --rendezvous"},
		{2, 2, 2, "h:1", "--node-rank 2"},
		{0, 1, 0, "", "at least 1"},
		{2, 1, 0, "nohost", "want host:port"},
	} {
		if _, err := jobEnvs(c.gpus, c.nodes, c.node, c.addr); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: %v", c, err)
		}
	}
}

// distArgs is a small data-parallel run on the CPU through the test
// communicator (MAMBABYTE_DIST_CPU=1).
func distArgs(corpus, out string, steps int) []string {
	return []string{"train", "--data", corpus, "--out", out, "--preset", "tiny",
		"--steps", fmt.Sprint(steps), "--seq-len", "64", "--batch", "4", "--accum", "2", "--warmup", "2",
		"--ckpt-every", "3", "--val-every", "3", "--seed", "5", "--json"}
}

func distEnv() []string {
	return append(os.Environ(), "MAMBABYTE_DIST_CPU=1", "MAMBABYTE_THREADS=1")
}

func runMB(t *testing.T, env []string, args ...string) (string, string, error) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = env
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	return out.String(), errb.String(), err
}

func weights(t *testing.T, out string, step int) map[string][]float32 {
	t.Helper()
	_, ts, _, err := checkpoint.Load(filepath.Join(out, fmt.Sprintf("step-%08d", step)))
	if err != nil {
		t.Fatal(err)
	}
	return ts
}

func jsonLosses(t *testing.T, stdout string) map[int]float64 {
	t.Helper()
	m := map[int]float64{}
	for _, line := range strings.Split(strings.TrimSpace(stdout), "\n") {
		var v struct {
			Step int     `json:"step"`
			Loss float64 `json:"loss"`
		}
		if err := json.Unmarshal([]byte(line), &v); err != nil {
			t.Fatalf("stdout line %q: %v", line, err)
		}
		m[v.Step] = v.Loss
	}
	return m
}

// `train --gpus 2` (CPU workers) takes the steps of one process with the
// same batch; stopped after 3 steps and resumed with 4 workers it ends
// where one process stopped and resumed at the same step ends; a number
// of workers that does not divide the batch is refused.
func TestTrainGPUsOnCPUWorkers(t *testing.T) {
	corpus := corpusFile(t, 100_000)
	ref := t.TempDir()
	o1, e1, err := runMB(t, distEnv(), distArgs(corpus, ref, 3)...)
	if err != nil {
		t.Fatalf("one process: %v\n%s", err, e1)
	}
	o1b, e1b, err := runMB(t, distEnv(), append(distArgs(corpus, ref, 6), "--resume")...)
	if err != nil {
		t.Fatalf("one process, resumed: %v\n%s", err, e1b)
	}

	out := t.TempDir()
	o2, e2, err := runMB(t, distEnv(), append(distArgs(corpus, out, 3), "--gpus", "2")...)
	if err != nil {
		t.Fatalf("2 workers: %v\n%s", err, e2)
	}
	if !strings.Contains(e2, "data parallel: 2 workers") || strings.Contains(e2, "[rank 1]") {
		t.Errorf("2 workers: rank 1 printed, or no banner:\n%s", e2)
	}
	o4, e4, err := runMB(t, distEnv(), append(distArgs(corpus, out, 6), "--gpus", "4", "--resume")...)
	if err != nil {
		t.Fatalf("4 workers, resumed: %v\n%s", err, e4)
	}
	want, got := jsonLosses(t, o1+o1b), jsonLosses(t, o2+o4)
	for step, w := range want {
		if g, ok := got[step]; !ok || math.Abs(g-w) > 1e-5*w {
			t.Errorf("step %d: loss %v with workers, %v alone", step, g, w)
		}
	}
	var worst float64
	wref, wgot := weights(t, ref, 6), weights(t, out, 6)
	for name, w := range wref {
		for i := range w {
			worst = max(worst, math.Abs(float64(wgot[name][i]-w[i])))
		}
	}
	if worst > 2e-5 {
		t.Errorf("final weights differ from one process's by up to %g", worst)
	}
	t.Logf("final weights within %.2g of one process's", worst)

	_, e3, err := runMB(t, distEnv(), append(distArgs(corpus, out, 9), "--gpus", "3", "--resume")...)
	if err == nil || !strings.Contains(e3, "does not split evenly over 3 GPUs") || !strings.Contains(e3, "rank ") {
		t.Errorf("3 workers for a batch of 4: %v\n%s", err, e3)
	}
	// Without the test communicator, CPU workers are refused.
	_, e5, err := runMB(t, os.Environ(), append(distArgs(corpus, t.TempDir(), 3), "--gpus", "2")...)
	if err == nil || !strings.Contains(e5, "--device cuda") {
		t.Errorf("CPU workers without MAMBABYTE_DIST_CPU: %v\n%s", err, e5)
	}
}

// SIGTERM to the launcher reaches the workers, which agree on a step,
// save it and exit cleanly.
func TestTrainGPUsStopsOnSignal(t *testing.T) {
	corpus := corpusFile(t, 100_000)
	out := t.TempDir()
	cmd := exec.Command(bin, append(distArgs(corpus, out, 100000), "--gpus", "2", "--ckpt-every", "0", "--val-every", "0")...)
	cmd.Env = distEnv()
	var errb syncBuffer
	cmd.Stderr = &errb
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(60 * time.Second)
	for !strings.Contains(errb.String(), "data parallel") {
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			cmd.Wait()
			t.Fatalf("no \"data parallel\" line within 60 s:\n%s", errb.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(500 * time.Millisecond)
	cmd.Process.Signal(syscall.SIGTERM)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("stopped job: %v\n%s", err, errb.String())
	}
	if !strings.Contains(errb.String(), "checkpoint saved") {
		t.Fatalf("no save reported:\n%s", errb.String())
	}
	if _, err := os.Stat(filepath.Join(out, "latest")); err != nil {
		t.Fatalf("no checkpoint: %v", err)
	}
}
