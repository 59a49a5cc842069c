package train

import (
	"fmt"
	"io"
	"math"
	"sort"
	"strings"
)

// PlotFile is the SVG chart of a run's curves, next to its checkpoints.
const PlotFile = "curve.svg"

// PlotSVG draws training and validation bits per byte against training
// bytes seen, one point per logged step (the last entry of a step wins).
func PlotSVG(w io.Writer, title string, ms []Metrics) error {
	const W, H = 720, 420
	const left, right, top, bottom = 70, 20, 40, 50
	byStep := map[int]Metrics{}
	maxStep := 0
	for _, m := range ms {
		byStep[m.Step] = m
		maxStep = max(maxStep, m.Step)
	}
	type pt struct{ x, y float64 }
	var trainPts, valPts []pt
	for s := 1; s <= maxStep; s++ {
		m, ok := byStep[s]
		if !ok {
			continue
		}
		trainPts = append(trainPts, pt{float64(m.Bytes), m.BPB})
		if m.ValBPB != nil {
			valPts = append(valPts, pt{float64(m.Bytes), *m.ValBPB})
		}
	}
	// The y range covers the validation points and 95% of the training
	// points: the first steps (about 8 bits) would squash the rest; points
	// above the range are drawn at its top.
	xmax, ymin, ymax := 1.0, math.Inf(1), math.Inf(-1)
	var trainY []float64
	for _, p := range append(append([]pt{}, trainPts...), valPts...) {
		if math.IsNaN(p.y) || math.IsInf(p.y, 0) {
			continue
		}
		xmax = max(xmax, p.x)
		ymin = min(ymin, p.y)
	}
	for _, p := range trainPts {
		if !math.IsNaN(p.y) && !math.IsInf(p.y, 0) {
			trainY = append(trainY, p.y)
		}
	}
	if len(trainY) > 0 {
		sort.Float64s(trainY)
		ymax = trainY[len(trainY)*95/100]
	}
	for _, p := range valPts {
		if !math.IsNaN(p.y) && !math.IsInf(p.y, 0) {
			ymax = max(ymax, p.y)
		}
	}
	if math.IsInf(ymin, 1) {
		ymin, ymax = 0, 8
	}
	ymin = math.Max(0, math.Floor(ymin*2)/2)
	ymax = math.Ceil(ymax*2) / 2
	if ymax <= ymin {
		ymax = ymin + 1
	}
	px := func(x float64) float64 { return left + x/xmax*(W-left-right) }
	py := func(y float64) float64 { return H - bottom - (y-ymin)/(ymax-ymin)*(H-top-bottom) }
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="12">`+"\n", W, H)
	fmt.Fprintf(&b, `<rect width="%d" height="%d" fill="white"/>`+"\n", W, H)
	fmt.Fprintf(&b, `<text x="%d" y="22" font-size="14">%s</text>`+"\n", left, xmlEscape(title))
	// Axes and grid.
	for i := 0; i <= 5; i++ {
		y := ymin + (ymax-ymin)*float64(i)/5
		fmt.Fprintf(&b, `<line x1="%d" x2="%d" y1="%.1f" y2="%.1f" stroke="#ddd"/>`+"\n", left, W-right, py(y), py(y))
		fmt.Fprintf(&b, `<text x="%d" y="%.1f" text-anchor="end">%.2f</text>`+"\n", left-6, py(y)+4, y)
		x := xmax * float64(i) / 5
		fmt.Fprintf(&b, `<text x="%.1f" y="%d" text-anchor="middle">%s</text>`+"\n", px(x), H-bottom+18, humanBytes(x))
	}
	fmt.Fprintf(&b, `<text x="%d" y="%d" text-anchor="middle">training bytes</text>`+"\n", (W+left)/2, H-12)
	fmt.Fprintf(&b, `<text x="16" y="%d" transform="rotate(-90 16 %d)" text-anchor="middle">bits per byte</text>`+"\n", (H)/2, H/2)
	line := func(pts []pt, color string, width float64) {
		if len(pts) == 0 {
			return
		}
		var s strings.Builder
		for _, p := range pts {
			if math.IsNaN(p.y) || math.IsInf(p.y, 0) {
				continue
			}
			fmt.Fprintf(&s, "%.1f,%.1f ", px(p.x), py(math.Min(ymax, p.y)))
		}
		fmt.Fprintf(&b, `<polyline fill="none" stroke="%s" stroke-width="%.1f" points="%s"/>`+"\n", color, width, s.String())
	}
	line(trainPts, "#4a7bd0", 1.2)
	line(valPts, "#d0542a", 2)
	for _, p := range valPts {
		fmt.Fprintf(&b, `<circle cx="%.1f" cy="%.1f" r="3" fill="#d0542a"/>`+"\n", px(p.x), py(math.Min(ymax, p.y)))
	}
	fmt.Fprintf(&b, `<text x="%d" y="%d" fill="#4a7bd0">training</text>`+"\n", W-right-150, top+12)
	fmt.Fprintf(&b, `<text x="%d" y="%d" fill="#d0542a">validation</text>`+"\n", W-right-80, top+12)
	if len(valPts) > 0 {
		fmt.Fprintf(&b, `<text x="%d" y="%d" fill="#d0542a">last validation: %.4f bits/byte</text>`+"\n", W-right-220, top+30, valPts[len(valPts)-1].y)
	}
	b.WriteString("</svg>\n")
	_, err := io.WriteString(w, b.String())
	return err
}

func humanBytes(x float64) string {
	switch {
	case x >= 1e9:
		return fmt.Sprintf("%.1fG", x/1e9)
	case x >= 1e6:
		return fmt.Sprintf("%.1fM", x/1e6)
	case x >= 1e3:
		return fmt.Sprintf("%.0fK", x/1e3)
	}
	return fmt.Sprintf("%.0f", x)
}

func xmlEscape(s string) string {
	return strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;", `"`, "&quot;").Replace(s)
}
