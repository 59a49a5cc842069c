package data

import (
	"os"
	"path/filepath"
	"testing"
)

func TestRecursiveGlob(t *testing.T) {
	dir := t.TempDir()
	for _, f := range []string{"a.go", "x/b.go", "x/y/c.go", "x/y/c.txt", "x/.hidden/d.go", "z/e.go"} {
		p := filepath.Join(dir, f)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(f), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		spec string
		want int
	}{
		{"**/*.go", 4},   // a, b, c, e; not the dot-directory
		{"x/**/*.go", 2}, // b, c
		{"x/**", 3},      // b, c, c.txt
		{"*/**/c.*", 2},  // c.go, c.txt (roots x and z)
		{"**/y/*.go", 1}, // c.go
		{"**/nothing", 0},
	} {
		got, err := globRecursive(filepath.Join(dir, tc.spec))
		if err != nil {
			t.Fatalf("%s: %v", tc.spec, err)
		}
		if len(got) != tc.want {
			t.Errorf("%s: %d files %v, want %d", tc.spec, len(got), got, tc.want)
		}
	}
	if _, err := globRecursive(filepath.Join(dir, "**/a/**")); err == nil {
		t.Error("two ** accepted")
	}
	c, err := Open([]string{filepath.Join(dir, "**/*.go")})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if len(c.Files()) != 4 {
		t.Errorf("Open found %d files, want 4", len(c.Files()))
	}
	if _, err := Open([]string{filepath.Join(dir, "**/*.rs")}); err == nil {
		t.Error("a pattern matching nothing opened")
	}
}
