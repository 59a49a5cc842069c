package main

import (
	"bytes"
	"encoding/json"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mambabyte/mambabyte/internal/checkpoint"
)

var bin string

func TestMain(m *testing.M) {
	if mode := os.Getenv("MB_FAKE_WORKER"); mode != "" {
		os.Exit(fakeWorker(mode)) // launch_test.go
	}
	dir, err := os.MkdirTemp("", "mambabyte-cli")
	if err != nil {
		panic(err)
	}
	bin = filepath.Join(dir, "mambabyte")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		os.Stderr.Write(out)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// mb runs the binary and returns stdout, stderr and the exit code.
func mb(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(errb.String(), "panic") || strings.Contains(errb.String(), "goroutine ") {
		t.Fatalf("mambabyte %v panicked:\n%s", args, errb.String())
	}
	return out.String(), errb.String(), code
}

type reference struct {
	dir    string
	rows   [][]byte
	loss   float64
	prompt []byte
	greedy []byte
}

func references(t *testing.T) []reference {
	dirs, _ := filepath.Glob("../../testdata/reference/*")
	if len(dirs) < 3 {
		t.Fatalf("found %d reference directories", len(dirs))
	}
	var refs []reference
	for _, d := range dirs {
		var e struct {
			B, T           int
			Loss           float64
			Prompt, Greedy []int
		}
		raw, err := os.ReadFile(filepath.Join(d, "expected.json"))
		if err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(raw, &e); err != nil {
			t.Fatal(err)
		}
		ts, err := checkpoint.ReadSafetensors(filepath.Join(d, "expected.safetensors"))
		if err != nil {
			t.Fatal(err)
		}
		r := reference{dir: filepath.Join(d, "model"), loss: e.Loss}
		ids := ts["input_ids"].Data
		for b := 0; b < e.B; b++ {
			row := make([]byte, e.T)
			for i := range row {
				row[i] = byte(ids[b*e.T+i])
			}
			r.rows = append(r.rows, row)
		}
		for _, v := range e.Prompt {
			r.prompt = append(r.prompt, byte(v))
		}
		for _, v := range e.Greedy {
			r.greedy = append(r.greedy, byte(v))
		}
		refs = append(refs, r)
	}
	return refs
}

func TestEvalEqualsReferenceLoss(t *testing.T) {
	for _, r := range references(t) {
		t.Run(filepath.Base(filepath.Dir(r.dir)), func(t *testing.T) {
			// The reference loss is the mean over rows of equal length, so
			// it is the mean of the rows' nll.
			for _, chunk := range []string{"2048", "5"} {
				var sum float64
				for i, row := range r.rows {
					f := filepath.Join(t.TempDir(), "row.txt")
					if err := os.WriteFile(f, row, 0o644); err != nil {
						t.Fatal(err)
					}
					out, errs, code := mb(t, "eval", "--model", r.dir, "--data", f, "--json", "--chunk", chunk)
					if code != 0 {
						t.Fatalf("row %d: exit %d: %s", i, code, errs)
					}
					var res struct {
						NLL, BPB float64
						Bytes    int
					}
					if err := json.Unmarshal([]byte(out), &res); err != nil {
						t.Fatalf("output %q: %v", out, err)
					}
					if res.Bytes != len(row)-1 {
						t.Errorf("scored %d bytes, want %d", res.Bytes, len(row)-1)
					}
					if math.Abs(res.BPB-res.NLL/math.Ln2) > 1e-9 {
						t.Errorf("bpb %g is not nll/ln2 (%g)", res.BPB, res.NLL/math.Ln2)
					}
					sum += res.NLL
				}
				nll := sum / float64(len(r.rows))
				if d := math.Abs(nll-r.loss) / r.loss; d > 1e-4 {
					t.Errorf("chunk %s: nll %.8g, reference loss %.8g (%.2g relative)", chunk, nll, r.loss, d)
				}
			}
		})
	}
}

func TestGenerateGreedyMatchesReference(t *testing.T) {
	for _, r := range references(t) {
		t.Run(filepath.Base(filepath.Dir(r.dir)), func(t *testing.T) {
			f := filepath.Join(t.TempDir(), "prompt")
			if err := os.WriteFile(f, r.prompt, 0o644); err != nil {
				t.Fatal(err)
			}
			out, errs, code := mb(t, "generate", "--model", r.dir, "--prompt-file", f, "--max-bytes", "40", "--greedy")
			if code != 0 {
				t.Fatalf("exit %d: %s", code, errs)
			}
			if out != string(r.greedy) {
				t.Fatalf("stdout %q, want exactly the reference continuation %q", out, r.greedy)
			}
		})
	}
}

func copyDir(t *testing.T, src string) string {
	t.Helper()
	dst := t.TempDir()
	entries, err := os.ReadDir(src)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(src, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dst, e.Name()), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dst
}

func TestBadInputGivesClearErrors(t *testing.T) {
	refs := references(t)
	text := filepath.Join(t.TempDir(), "t.txt")
	os.WriteFile(text, []byte("hello world"), 0o644)

	truncated := copyDir(t, refs[0].dir)
	st := filepath.Join(truncated, "model.safetensors")
	if info, err := os.Stat(st); err == nil {
		os.Truncate(st, info.Size()/2)
	}
	badConfig := copyDir(t, refs[0].dir)
	cfgPath := filepath.Join(badConfig, "config.json")
	raw, _ := os.ReadFile(cfgPath)
	raw = bytes.Replace(raw, []byte(`"state_size": 16`), []byte(`"state_size": 8`), 1)
	os.WriteFile(cfgPath, raw, 0o644)

	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"no model", []string{"eval", "--model", filepath.Join(t.TempDir(), "none"), "--data", text}, "config.json"},
		{"truncated weights", []string{"eval", "--model", truncated, "--data", text}, "model.safetensors"},
		{"config contradicts weights", []string{"eval", "--model", badConfig, "--data", text}, "state_size"},
		{"missing data", []string{"eval", "--model", refs[0].dir, "--data", "/nonexistent/x"}, "/nonexistent/x"},
		{"empty prompt", []string{"generate", "--model", refs[0].dir}, "prompt"},
		{"unknown command", []string{"frobnicate"}, "unknown command"},
		{"stray argument", []string{"eval", "--model", refs[0].dir, "--data", text, "extra"}, "unexpected argument"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, errs, code := mb(t, tc.args...)
			if code == 0 {
				t.Fatalf("exit 0, stdout %q", out)
			}
			if !strings.Contains(errs, tc.want) {
				t.Fatalf("stderr %q does not mention %q", errs, tc.want)
			}
		})
	}
}

func TestParseInterspersed(t *testing.T) {
	for _, tc := range []struct {
		args  []string
		words []string
		n     int
	}{
		{[]string{"hello", "--n", "3"}, []string{"hello"}, 3},
		{[]string{"--n", "3", "a", "b"}, []string{"a", "b"}, 3},
		{[]string{"a", "--n", "4", "b"}, []string{"a", "b"}, 4},
		{[]string{"--", "--n", "5"}, []string{"--n", "5"}, 1},
		{[]string{"x", "--", "-y"}, []string{"x", "-y"}, 1},
	} {
		fs := newFlags("t", "")
		n := fs.Int("n", 1, "")
		words, err := parseInterspersed(fs, tc.args)
		if err != nil {
			t.Fatalf("%v: %v", tc.args, err)
		}
		if strings.Join(words, "|") != strings.Join(tc.words, "|") || *n != tc.n {
			t.Errorf("%v: words %q n %d, want %q n %d", tc.args, words, *n, tc.words, tc.n)
		}
	}
}

// TestBenchModelShape: --d-model and --n-layer replace the preset's shape in
// the decode figures' model, and a negative one is refused.
func TestBenchModelShape(t *testing.T) {
	out, errs, code := mb(t, "bench", "--only", "decode", "--preset", "small", "--d-model", "32",
		"--n-layer", "1", "--reps", "1")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	if !strings.Contains(out, "D 32 L 1") {
		t.Fatalf("decode figure does not name the model D 32 L 1:\n%s", out)
	}
	if _, errs, code := mb(t, "bench", "--only", "decode", "--n-layer", "-1"); code == 0 || !strings.Contains(errs, "--n-layer") {
		t.Fatalf("--n-layer -1: exit %d, stderr %q", code, errs)
	}
}
