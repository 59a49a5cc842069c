package train

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"os"

	"github.com/mambabyte/mambabyte/internal/checkpoint"
)

// MetricsFile is the run directory's log: one JSON Metrics object a line.
const MetricsFile = "metrics.jsonl"

// ReadMetrics reads a metrics log; a torn last line (a crash while
// writing) is ignored.
func ReadMetrics(path string) ([]Metrics, error) {
	b, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var ms []Metrics
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var m Metrics
		if json.Unmarshal(sc.Bytes(), &m) == nil && m.Step > 0 {
			ms = append(ms, m)
		}
	}
	return ms, sc.Err()
}

// MetricsWriter appends metrics to a run's log.
type MetricsWriter struct {
	f *os.File
}

// OpenMetrics opens the log for appending after dropping entries past
// step resumeStep (written by a run that died after its last checkpoint,
// and about to be recomputed).
func OpenMetrics(path string, resumeStep int) (*MetricsWriter, error) {
	old, err := ReadMetrics(path)
	if err != nil {
		return nil, err
	}
	var keep bytes.Buffer
	for _, m := range old {
		if m.Step <= resumeStep {
			b, _ := json.Marshal(m)
			keep.Write(append(b, '\n'))
		}
	}
	if err := checkpoint.WriteFileAtomic(path, keep.Bytes()); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	return &MetricsWriter{f: f}, nil
}

// Write appends one line.
func (w *MetricsWriter) Write(m Metrics) error {
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	if _, err := w.f.Write(append(b, '\n')); err != nil {
		return fmt.Errorf("%s: %w", w.f.Name(), err)
	}
	return nil
}

// Close closes the log.
func (w *MetricsWriter) Close() error { return w.f.Close() }
