package parallel

import (
	"sync/atomic"
	"testing"
)

func TestForCoversEveryIndexOnce(t *testing.T) {
	for _, n := range []int{0, 1, 2, 3, 7, 100, 1001} {
		for _, grain := range []int{0, 1, 5, 64, 2000} {
			hits := make([]int32, n)
			For(n, grain, func(lo, hi int) {
				for i := lo; i < hi; i++ {
					atomic.AddInt32(&hits[i], 1)
				}
			})
			for i, h := range hits {
				if h != 1 {
					t.Fatalf("n=%d grain=%d: index %d visited %d times", n, grain, i, h)
				}
			}
		}
	}
}

func TestChunksPartsAreDistinct(t *testing.T) {
	for _, n := range []int{1, 5, 99, 1000} {
		parts := Parts(n, 3)
		seen := make([]int32, parts)
		covered := make([]int32, n)
		Chunks(n, 3, func(p, lo, hi int) {
			atomic.AddInt32(&seen[p], 1)
			for i := lo; i < hi; i++ {
				atomic.AddInt32(&covered[i], 1)
			}
		})
		for p, s := range seen {
			if s > 1 {
				t.Fatalf("n=%d: part %d ran %d times", n, p, s)
			}
		}
		for i, c := range covered {
			if c != 1 {
				t.Fatalf("n=%d: index %d covered %d times", n, i, c)
			}
		}
	}
}
