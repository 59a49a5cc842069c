package data

import (
	"fmt"
	"path"
	"path/filepath"
	"strings"
)

// globRecursive expands a pattern holding "**", which stands for any
// number of directories (none included): "src/**/*.go" names every .go
// file below src. The part before "**" may itself be a glob; the part
// after is matched, segment by segment, against the end of each file's
// path. Dot-directories are skipped as in a directory walk.
func globRecursive(spec string) ([]string, error) {
	i := strings.Index(spec, "**")
	root, rest := filepath.Clean(spec[:i]+"."), strings.TrimLeft(spec[i+2:], `/`)
	if strings.Contains(rest, "**") {
		return nil, fmt.Errorf("data: pattern %q: only one ** is supported", spec)
	}
	var want []string
	if rest != "" {
		want = strings.Split(filepath.ToSlash(rest), "/")
		for _, seg := range want {
			if _, err := path.Match(seg, ""); err != nil {
				return nil, fmt.Errorf("data: bad pattern %q: %w", spec, err)
			}
		}
	}
	roots := []string{root}
	if hasGlobMeta(root) {
		m, err := filepath.Glob(root)
		if err != nil {
			return nil, fmt.Errorf("data: bad pattern %q: %w", spec, err)
		}
		roots = m
	}
	var out []string
	for _, r := range roots {
		err := walkDir(r, func(p string) {
			rel, err := filepath.Rel(r, p)
			if err != nil {
				return
			}
			segs := strings.Split(filepath.ToSlash(rel), "/")
			if len(segs) < len(want) {
				return
			}
			tail := segs[len(segs)-len(want):]
			for k, w := range want {
				if ok, _ := path.Match(w, tail[k]); !ok {
					return
				}
			}
			out = append(out, p)
		})
		if err != nil {
			return nil, err
		}
	}
	return out, nil
}
