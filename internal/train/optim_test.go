package train

import (
	"math"
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
