package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/mambabyte/mambabyte/internal/dist"
)

// Data-parallel launch: `mambabyte train --gpus N` starts N copies of
// itself as workers, one per GPU of this host, with the environment of
// package internal/dist, and supervises them. With --nodes M the same
// command runs on each of M hosts (--node-rank 0 … M-1, one
// --rendezvous address, that of node 0); the workers of node k are ranks
// k·N … k·N+N-1.

// jobEnvs returns the environments of this host's workers.
func jobEnvs(gpus, nodes, nodeRank int, addr string) ([]dist.Env, error) {
	if gpus < 1 || nodes < 1 {
		return nil, fmt.Errorf("--gpus and --nodes must be at least 1, got %d and %d", gpus, nodes)
	}
	if nodeRank < 0 || nodeRank >= nodes {
		return nil, fmt.Errorf("--node-rank %d is not in 0 … %d", nodeRank, nodes-1)
	}
	if addr == "" {
		if nodes > 1 {
			return nil, fmt.Errorf("--nodes %d needs --rendezvous HOST:PORT, an address of node 0 that every node reaches", nodes)
		}
		// One host: a free loopback port.
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("choosing a rendezvous port: %w", err)
		}
		addr = ln.Addr().String()
		ln.Close()
	} else if _, _, err := net.SplitHostPort(addr); err != nil {
		return nil, fmt.Errorf("--rendezvous %q: want host:port: %v", addr, err)
	}
	timeout := dist.DefaultRendezvousTimeout
	if v := os.Getenv(dist.EnvRendezvousTimeout); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			return nil, fmt.Errorf("%s=%q: want a positive duration such as 90s or 10m", dist.EnvRendezvousTimeout, v)
		}
		timeout = d
	}
	envs := make([]dist.Env, gpus)
	for l := range envs {
		envs[l] = dist.Env{Rank: nodeRank*gpus + l, World: nodes * gpus, LocalRank: l, Addr: addr, Timeout: timeout}
	}
	return envs, nil
}

// workerCmds returns the commands of the workers: exe with args, in the
// environment base plus each worker's variables, with NVLink multicast
// off (NCCL_NVLS_ENABLE=0) unless base sets it.
func workerCmds(exe string, args []string, envs []dist.Env, base []string) []*exec.Cmd {
	nvls := false
	for _, kv := range base {
		if strings.HasPrefix(kv, "NCCL_NVLS_ENABLE=") {
			nvls = true
		}
	}
	cmds := make([]*exec.Cmd, len(envs))
	for i, e := range envs {
		c := exec.Command(exe, args...)
		c.Env = append(append([]string(nil), base...), e.Environ()...)
		if !nvls {
			c.Env = append(c.Env, "NCCL_NVLS_ENABLE=0")
		}
		cmds[i] = c
	}
	return cmds
}

// lineLog passes a worker's output on (prefixed with "[rank R] " for
// ranks other than 0) and remembers the line that best explains a
// failure: the last error line, else the last line.
type lineLog struct {
	mu     *sync.Mutex // shared by every worker writing to out
	out    io.Writer
	prefix string
	part   []byte // the unfinished line
	last   string // last non-empty line
	errLn  string // last line that reads as an error
}

func (l *lineLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := len(p)
	if l.prefix == "" {
		l.out.Write(p)
	}
	for len(p) > 0 {
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			l.part = append(l.part, p...)
			break
		}
		line := append(l.part, p[:i]...)
		l.part = l.part[:0]
		p = p[i+1:]
		if l.prefix != "" {
			fmt.Fprintf(l.out, "%s%s\n", l.prefix, line)
		}
		l.note(line)
	}
	return n, nil
}

// flush handles an unfinished last line.
func (l *lineLog) flush() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.part) > 0 {
		if l.prefix != "" {
			fmt.Fprintf(l.out, "%s%s\n", l.prefix, l.part)
		}
		l.note(l.part)
		l.part = nil
	}
}

func (l *lineLog) note(line []byte) {
	// A progress bar redraws with \r and erases with ESC[K.
	if i := bytes.LastIndexByte(line, '\r'); i >= 0 {
		line = line[i+1:]
	}
	s := strings.TrimSpace(strings.ReplaceAll(string(line), "\033[K", ""))
	if s == "" {
		return
	}
	l.last = s
	if strings.HasPrefix(s, "mambabyte ") || strings.HasPrefix(s, "panic: ") || strings.HasPrefix(s, "fatal error: ") {
		l.errLn = s
	}
}

func (l *lineLog) reason() string {
	if l.errLn != "" {
		return l.errLn
	}
	if l.last != "" {
		return l.last
	}
	return "(no output)"
}

// supervise runs the workers of one host (cmds[i] is rank ranks[i]) to
// the end. Rank 0's output goes to stdout and stderr as it is (its
// progress bar included); the others' goes to stderr, each line prefixed
// with its rank (they print only warnings and errors). Signals from sigs
// are passed to every worker still running. When a worker fails, the
// others are killed (the checkpoints on disk are complete whatever the
// moment) and the error names the rank, how it ended and its last error
// line.
func supervise(cmds []*exec.Cmd, ranks []int, stdout, stderr io.Writer, sigs <-chan os.Signal) error {
	var mu sync.Mutex
	logs := make([]*lineLog, len(cmds))
	for i, c := range cmds {
		c.SysProcAttr = workerProcAttr()
		if ranks[i] == 0 {
			logs[i] = &lineLog{mu: &mu, out: stderr}
			c.Stdout, c.Stderr = stdout, logs[i]
			continue
		}
		logs[i] = &lineLog{mu: &mu, out: stderr, prefix: "[rank " + strconv.Itoa(ranks[i]) + "] "}
		c.Stdout, c.Stderr = logs[i], logs[i]
	}
	type exit struct {
		i   int
		err error
	}
	exits := make(chan exit, len(cmds))
	running := make([]bool, len(cmds))
	kill := func() {
		for i, c := range cmds {
			if running[i] {
				c.Process.Kill()
			}
		}
	}
	for i, c := range cmds {
		if err := c.Start(); err != nil {
			kill()
			for j := range cmds {
				if running[j] {
					<-exits
				}
			}
			return fmt.Errorf("starting the worker of rank %d: %w", ranks[i], err)
		}
		running[i] = true
		go func() { exits <- exit{i, c.Wait()} }()
	}
	var failure error
	for left := len(cmds); left > 0; {
		select {
		case sig := <-sigs:
			for i, c := range cmds {
				if running[i] {
					c.Process.Signal(sig)
				}
			}
		case e := <-exits:
			running[e.i] = false
			left--
			logs[e.i].flush()
			if e.err != nil && failure == nil {
				how := e.err.Error()
				var ee *exec.ExitError
				if errors.As(e.err, &ee) {
					how = ee.ProcessState.String()
				}
				failure = fmt.Errorf("rank %d failed (%s): %s", ranks[e.i], how, logs[e.i].reason())
				if left > 0 {
					failure = fmt.Errorf("%w; stopped the other workers", failure)
				}
				kill()
			}
		}
	}
	return failure
}

// isTerminal reports whether f is a terminal.
func isTerminal(f *os.File) bool {
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// envProgressTTY tells rank 0 that its launcher's stderr is a terminal,
// so that it draws its progress bar although its own stderr is a pipe.
const envProgressTTY = "MAMBABYTE_PROGRESS_TTY"

const multiGPUHelp = `
Several GPUs (data parallel):
  mambabyte train --gpus N --device cuda ...
      starts N workers on this host, one per GPU (worker k uses GPU k), and
      supervises them: rank 0 shows the progress, the others print only
      errors ("[rank R] ..."); Ctrl-C and SIGTERM reach every worker, which
      save the step they agree on; a worker that fails stops the others.
      --batch is the whole micro-batch, split evenly over the GPUs, so a
      run gives the losses of one GPU with the same --batch and resumes on
      any number of GPUs that divides it. Only rank 0 writes checkpoints.
      NVLink multicast is off (NCCL_NVLS_ENABLE=0) unless set.
  Several hosts: run on every host, with --out on a filesystem all share,
      mambabyte train --gpus N --nodes M --node-rank K --rendezvous HOST0:PORT ...
      (K = 0 … M-1; HOST0:PORT an address of node 0 that every node reaches).
  Any other launcher may start the workers itself, one process per GPU,
  with MAMBABYTE_WORLD_SIZE, MAMBABYTE_RANK, MAMBABYTE_LOCAL_RANK (the GPU)
  and MAMBABYTE_RENDEZVOUS=HOST0:PORT set and the same arguments.
`

// trainUsage is train's help: the flags, then the multi-GPU launch.
func trainUsage(fs *flag.FlagSet) func() {
	prev := fs.Usage
	return func() {
		prev()
		fmt.Fprint(fs.Output(), multiGPUHelp)
	}
}

// launchWorkers starts this host's workers of a data-parallel run with
// args (train's arguments) and supervises them.
func launchWorkers(args []string, gpus, nodes, nodeRank int, addr string) error {
	envs, err := jobEnvs(gpus, nodes, nodeRank, addr)
	if err != nil {
		return err
	}
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("finding this program to start its workers: %w", err)
	}
	base := os.Environ()
	if isTerminal(os.Stderr) {
		base = append(base, envProgressTTY+"=1")
	}
	cmds := workerCmds(exe, append([]string{"train"}, args...), envs, base)
	ranks := make([]int, len(envs))
	for i, e := range envs {
		ranks[i] = e.Rank
	}
	fmt.Fprintf(os.Stderr, "launching ranks %d … %d of %d (rendezvous %s)\n", ranks[0], ranks[len(ranks)-1], envs[0].World, envs[0].Addr)
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sigs)
	return supervise(cmds, ranks, os.Stdout, os.Stderr, sigs)
}

// commName describes a communicator for the run's banner.
func commName(c dist.Comm) string {
	switch c.(type) {
	case *dist.NCCL:
		return "NCCL"
	case *dist.HostComm:
		return "CPU test communicator over TCP"
	}
	return "one process"
}
