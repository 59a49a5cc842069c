package checkpoint

import (
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

func TestLoadBytesEqualsLoad(t *testing.T) {
	dir := "../../testdata/reference/hf_odd/model"
	if _, err := os.Stat(dir); err != nil {
		t.Skip("reference checkpoint not present")
	}
	wantCfg, want, wantFormat, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := os.ReadFile(filepath.Join(dir, ConfigFile))
	w, _ := os.ReadFile(filepath.Join(dir, SafetensorsFile))
	cfg, got, format, err := LoadBytes("embedded", c, w)
	if err != nil {
		t.Fatal(err)
	}
	if cfg != wantCfg || format != wantFormat || !reflect.DeepEqual(got, want) {
		t.Fatal("LoadBytes differs from Load")
	}
	if _, _, _, err := LoadBytes("embedded", c, w[:len(w)/2]); err == nil {
		t.Fatal("truncated weights accepted")
	}
}
