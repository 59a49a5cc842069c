package data

import (
	"bytes"
	"fmt"
	"strings"
	"testing"
)

// The shards of every world size put together are the one-process batch,
// row for row, for every step and micro-batch; a shard of a shard composes.
func TestShardsMakeTheWholeBatch(t *testing.T) {
	c := corpusOf(t, 200_000, 99_991)
	s, err := NewSplit(c, SplitConfig{BlockSize: 8192, ValFraction: 0.1})
	if err != nil {
		t.Fatal(err)
	}
	const B, T = 12, 300
	whole, err := s.Sampler(B, T, 5)
	if err != nil {
		t.Fatal(err)
	}
	want := make([]byte, B*(T+1))
	for _, world := range []int{1, 2, 3, 4, 6, 12} {
		shards := make([]*Sampler, world)
		for r := range shards {
			if shards[r], err = whole.Shard(r, world); err != nil {
				t.Fatal(err)
			}
			if shards[r].B() != B/world {
				t.Fatalf("world %d: shard B %d", world, shards[r].B())
			}
		}
		for step := range 5 {
			for micro := range 2 {
				if err := whole.Batch(want, step, micro); err != nil {
					t.Fatal(err)
				}
				var got []byte
				for r, sh := range shards {
					buf := make([]byte, sh.B()*(T+1))
					if err := sh.Batch(buf, step, micro); err != nil {
						t.Fatal(err)
					}
					offs := make([]int64, sh.B())
					sh.Offsets(offs, step, micro)
					for i, off := range offs {
						if w := whole.Offset(step, micro, r*sh.B()+i); off != w {
							t.Fatalf("world %d rank %d row %d: offset %d, whole batch row %d has %d", world, r, i, off, r*sh.B()+i, w)
						}
					}
					got = append(got, buf...)
				}
				if !bytes.Equal(got, want) {
					t.Fatalf("world %d, step %d, micro %d: the shards differ from the whole batch", world, step, micro)
				}
			}
		}
	}
	// Rank 1 of 2, then rank 1 of 3 within it: rows 6+2 … 6+3 of 12.
	half, _ := whole.Shard(1, 2)
	sub, err := half.Shard(1, 3)
	if err != nil {
		t.Fatal(err)
	}
	for i := range sub.B() {
		if got, w := sub.Offset(3, 0, 0), whole.Offset(3, 0, 0); got != w {
			t.Fatalf("Offset of a shard changed: %d, %d", got, w)
		}
		offs := make([]int64, sub.B())
		sub.Offsets(offs, 3, 0)
		if w := whole.Offset(3, 0, 8+i); offs[i] != w {
			t.Fatalf("nested shard row %d: %d, want row %d's %d", i, offs[i], 8+i, w)
		}
	}
	for _, c := range []struct{ rank, world int }{{0, 5}, {2, 2}, {-1, 2}, {0, 0}} {
		if _, err := whole.Shard(c.rank, c.world); err == nil {
			t.Errorf("Shard(%d, %d) of a batch of %d: no error", c.rank, c.world, B)
		} else if c.world == 5 && !strings.Contains(err.Error(), fmt.Sprintf("batch of %d windows does not split evenly over 5", B)) {
			t.Errorf("Shard(0, 5): %v", err)
		}
	}
}
