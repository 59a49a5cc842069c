package train

import (
	"math"
	"strings"
	"testing"
)

func TestLRSchedule(t *testing.T) {
	const peak, low = 4e-4, 4e-5
	for _, tc := range []struct {
		step int
		want float64
	}{
		{1, peak / 500}, {250, peak / 2}, {500, peak},
		{500 + 4750, (peak + low) / 2}, {10000, low}, {20000, low},
	} {
		if got := LR(tc.step, 500, 10000, peak, low); math.Abs(got-tc.want) > 1e-12 {
			t.Errorf("LR(%d) = %g, want %g", tc.step, got, tc.want)
		}
	}
	prev := LR(500, 500, 10000, peak, low)
	for s := 501; s <= 10000; s += 97 {
		cur := LR(s, 500, 10000, peak, low)
		if cur > prev {
			t.Fatalf("LR rises after warm-up at step %d", s)
		}
		prev = cur
	}
}

func TestPlotSVG(t *testing.T) {
	v := 2.5
	ms := []Metrics{{Step: 1, BPB: 8, Bytes: 100}, {Step: 2, BPB: 3, Bytes: 200, ValBPB: &v}, {Step: 3, BPB: 2.8, Bytes: 300}}
	for i := 4; i < 60; i++ {
		ms = append(ms, Metrics{Step: i, BPB: 2.7, Bytes: int64(100 * i)})
	}
	var b strings.Builder
	if err := PlotSVG(&b, `a <title> & "more"`, ms); err != nil {
		t.Fatal(err)
	}
	svg := b.String()
	for _, want := range []string{"<svg", "</svg>", "&lt;title&gt; &amp; &quot;more&quot;", "last validation: 2.5000", "<polyline"} {
		if !strings.Contains(svg, want) {
			t.Errorf("plot lacks %q", want)
		}
	}
	// The first step's 8 bits/byte does not set the axis: its top is 3.
	if !strings.Contains(svg, ">3.00</text>") || strings.Contains(svg, ">8.00</text>") {
		t.Errorf("y axis not fitted to the bulk of the curve:\n%s", svg)
	}
}
