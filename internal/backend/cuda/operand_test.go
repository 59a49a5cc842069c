package cuda_test

import (
	"fmt"
	"math"
	"os"
	"testing"

	"github.com/mambabyte/mambabyte/internal/backend"
	"github.com/mambabyte/mambabyte/internal/backend/cpu"
	"github.com/mambabyte/mambabyte/internal/backend/cuda"
)

// GEMM operand tensors (AllocOperand in bf16 mode) hold bf16 values. The
// kernels that write them must write the CPU's float32 result rounded to
// bf16 (so within an ulp of bf16 at the rare values where the two float32
// results round differently: the fp32 tolerance here), and a GEMM that
// reads them must compute what the CPU computes on the same rounded values.

// operandGPUs is gpus for the tests of bf16 operand tensors, which
// MAMBABYTE_CUDA_GEMM_PACK=0 turns into float32 ones.
func operandGPUs(t *testing.T) (fp32, bf16 *cuda.Backend) {
	g32, g16 := gpus(t)
	if os.Getenv("MAMBABYTE_CUDA_GEMM_PACK") == "0" {
		t.Skip("MAMBABYTE_CUDA_GEMM_PACK=0: operand tensors are float32")
	}
	return g32, g16
}

func roundAll(v []float32) []float32 {
	out := make([]float32, len(v))
	for i, x := range v {
		out[i] = bf16Round(x)
	}
	return out
}

// operand is a GEMM operand pair: CPU values rounded to bf16, and a GPU
// operand tensor holding them (NaN-poisoned when v is nil).
func (e *env) operand(n int, v []float32) *pair {
	if v == nil {
		v = nans(n)
	}
	g := e.g.AllocOperand(n, 1<<20)
	e.g.Upload(g, v)
	return &pair{c: roundAll(v), g: g}
}

// checkRounded compares a GPU operand tensor with its CPU values rounded
// to bf16.
func (e *env) checkRounded(name string, p *pair) {
	e.t.Helper()
	want := &pair{c: roundAll(p.c), g: p.g}
	e.check(name, "operand outputs", want, tolFP32)
}

func TestOperandTransfers(t *testing.T) {
	g32, g16 := operandGPUs(t)
	e := newEnv(t, g16, 21)
	v := e.values(7, 0, 3)
	v[2] = float32(math.Inf(-1))
	v[5] = 1 + 1.0/256 // a tie: rounds to even (1)
	x := g16.AllocOperand(7, 1<<20)
	g16.Upload(x, v)
	got := make([]float32, 7)
	g16.Download(got, x)
	want := roundAll(v)
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("round trip: value %d is %g, want %g (from %g)", i, got[i], want[i], v[i])
		}
	}
	// A view at an odd offset: its upload changes its values only.
	w := e.values(3, 0, 1)
	g16.Upload(x.Slice(1, 3), w)
	g16.Download(got, x)
	copy(want[1:4], roundAll(w))
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("upload into a view: value %d is %g, want %g", i, got[i], want[i])
		}
	}
	g16.Zero(x.Slice(4, 2))
	g16.Download(got, x)
	want[4], want[5] = 0, 0
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("zero a view: value %d is %g, want %g", i, got[i], want[i])
		}
	}
	y := g16.AllocOperand(7, 1<<20)
	g16.Copy(y, x)
	g16.Download(got, y)
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("copy: value %d is %g, want %g", i, got[i], want[i])
		}
	}
	// Operands of GEMMs that stay on float32 operands, and fp32 mode's,
	// are float32 tensors; float32 operations refuse bf16 ones.
	g16.Add(g16.AllocOperand(4, 100), g16.Alloc(4)) // these would panic for a bf16 tensor
	g32.Add(g32.AllocOperand(4, 1<<20), g32.Alloc(4))
	mustPanic(t, "Add with a bf16 tensor", func() { g16.Add(x, g16.Alloc(7)) })
	mustPanic(t, "Copy across types", func() { g16.Copy(g16.Alloc(7), x) })
}

func mustPanic(t *testing.T, what string, f func()) {
	t.Helper()
	defer func() {
		if recover() == nil {
			t.Errorf("%s did not panic", what)
		}
	}()
	f()
}

func TestOperandWriters(t *testing.T) {
	_, g16 := operandGPUs(t)
	e := newEnv(t, g16, 22)
	// Norm: many rows (a warp per row) and few (a block per row).
	for _, rows := range []int{600, 3} {
		for _, rms := range []bool{false, true} {
			const D = 96
			x, w, b := e.randn(rows*D, 0.5, 2), e.randn(D, 1, 0.3), e.randn(D, 0, 0.3)
			out, mean, rstd := e.operand(rows*D, nil), e.nan(rows), e.nan(rows)
			e.run(func(be backend.Backend, s side) {
				be.Norm(out.on(s), mean.on(s), rstd.on(s), x.on(s), w.on(s), b.on(s), rows, D, 1e-5, rms)
			})
			name := fmt.Sprintf("norm rows=%d rms=%v", rows, rms)
			e.checkRounded(name+" out (bf16)", out)
			e.check(name+" rstd", "operand outputs", rstd, tolFP32)
		}
	}
	for _, sz := range [][2]int{{70, 64}, {9, 10}} { // float4 runs, and single values
		rows, E := sz[0], sz[1]
		y, xz, dout := e.randn(rows*E, 0, 1), e.randn(rows*2*E, 0, 2), e.randn(rows*E, 0, 1)
		z := xz.slice(E, rows*2*E-E)
		g := e.operand(rows*E, nil)
		e.run(func(be backend.Backend, s side) { be.Gate(g.on(s), y.on(s), z.on(s), 2*E, rows, E) })
		e.checkRounded(fmt.Sprintf("gate rows=%d E=%d out (bf16)", rows, E), g)
		// The gate inside the scan writes the same operand (rows as B·T
		// of one sequence, N 16: the four-state kernels; N 5: the others).
		for _, N := range []int{16, 5} {
			const R = 3
			ldbc := R + 2*N
			xdbl := e.randn(rows*ldbc, 0, 1)
			bt, ct := bcViews(xdbl, R, N)
			u, raw, bias := e.randn(rows*E, 0, 1), e.randn(rows*E, -1, 1), e.randn(E, 0, 0.5)
			a, dskip := scanDecay(e, E, N), e.randn(E, 1, 0.5)
			ys, gs16 := e.nan(rows*E), e.operand(rows*E, nil)
			e.run(func(be backend.Backend, s side) {
				if gs, ok := be.(backend.GatedScanner); ok {
					gs.ScanDtGate(gs16.on(s), z.on(s), 2*E, ys.on(s), u.on(s), raw.on(s), bias.on(s), bt.on(s), ct.on(s), ldbc, a.on(s), dskip.on(s), nil, nil, nil, 1, rows, E, N)
					return
				}
				delta := cpu.New().Alloc(rows * E)
				be.Dt(delta, raw.on(s), bias.on(s), rows, E)
				be.Scan(ys.on(s), u.on(s), delta, bt.on(s), ct.on(s), ldbc, a.on(s), dskip.on(s), nil, nil, nil, 1, rows, E, N)
				be.Gate(gs16.on(s), ys.on(s), z.on(s), 2*E, rows, E)
			})
			e.checkRounded(fmt.Sprintf("scan with gate rows=%d E=%d N=%d out (bf16)", rows, E, N), gs16)
			// And the gate's backward inside the scan's writes dz into the
			// second half of a (rows, 2E) operand, as the model's dxz (N 16:
			// inside the four-state kernels; N 5: the gate's kernel first).
			nc := cpu.New().ScanCheckpoints(rows)
			ckpt := e.randn(nc*E*N, 0, 1)
			du, draw, dxdbl := e.nan(rows*E), e.nan(rows*E), e.nan(rows*ldbc)
			dbt, dct := bcViews(dxdbl, R, N)
			dalog, ddskip, dbias := e.randn(E*N, 0, 1), e.randn(E, 0, 1), e.randn(E, 0, 1)
			dxz2 := e.operand(rows*2*E, nil)
			dz2 := dxz2.slice(E, rows*2*E-E)
			e.run(func(be backend.Backend, s side) {
				if gs, ok := be.(backend.GatedScanner); ok {
					gs.ScanDtGateBackward(dz2.on(s), dout.on(s), y.on(s), z.on(s), 2*E, du.on(s), draw.on(s), dbt.on(s), dct.on(s), dalog.on(s), ddskip.on(s), dbias.on(s), u.on(s), raw.on(s), bias.on(s), bt.on(s), ct.on(s), ldbc, a.on(s), dskip.on(s), ckpt.on(s), 1, rows, E, N)
					return
				}
				be.GateBackward(cpu.New().Alloc(rows*E), dz2.on(s), dout.on(s), y.on(s), z.on(s), 2*E, rows, E)
			})
			e.checkRounded(fmt.Sprintf("scan with gate backward rows=%d E=%d N=%d dz (bf16)", rows, E, N), dz2)
		}
		// dz into the second half of a (rows, 2E) operand, as the model's dxz.
		dxz, dy := e.operand(rows*2*E, nil), e.nan(rows*E)
		dz := dxz.slice(E, rows*2*E-E)
		e.run(func(be backend.Backend, s side) {
			be.GateBackward(dy.on(s), dz.on(s), dout.on(s), y.on(s), z.on(s), 2*E, rows, E)
		})
		e.check(fmt.Sprintf("gate backward rows=%d E=%d dy", rows, E), "operand outputs", dy, tolFP32)
		// dxi into the first half, with the pre-activation recomputed (and
		// stored, on the CPU).
		const B, K = 1, 4
		T := rows
		cw, cb := e.randn(E*K, 0, 0.5), e.randn(E, 0, 0.5)
		u, pre := e.nan(B*T*E), e.nan(B*T*E)
		dw, db := e.randn(E*K, 0, 1), e.randn(E, 0, 1)
		e.run(func(be backend.Backend, s side) {
			be.Conv(u.on(s), pre.on(s), xz.on(s), 2*E, nil, cw.on(s), cb.on(s), B, T, E, K)
			if s == onGPU {
				be.(backend.ConvRecomputer).ConvBackwardRecompute(dxz.on(s), 2*E, dw.on(s), db.on(s), dout.on(s), xz.on(s), nil, cw.on(s), cb.on(s), B, T, E, K)
			} else {
				be.ConvBackward(dxz.on(s), 2*E, dw.on(s), db.on(s), dout.on(s), pre.on(s), xz.on(s), nil, cw.on(s), B, T, E, K)
			}
		})
		e.checkRounded(fmt.Sprintf("gate and conv backward rows=%d E=%d dxz (bf16)", rows, E), dxz)
		e.check(fmt.Sprintf("conv backward rows=%d E=%d dw", rows, E), "operand outputs", dw, tolFP32)
	}
}

func TestOperandGemm(t *testing.T) {
	_, g16 := operandGPUs(t)
	e := newEnv(t, g16, 23)
	// Small products (which would otherwise stay on float32 operands) and
	// ones with every side at least 512.
	for _, sz := range [][3]int{{5, 7, 9}, {33, 20, 64}, {520, 536, 512}} {
		m, n, k := sz[0], sz[1], sz[2]
		for _, ta := range []bool{false, true} {
			for _, tb := range []bool{false, true} {
				for _, which := range []string{"A", "B", "AB"} {
					ra, ca, rb, cb := m, k, k, n
					if ta {
						ra, ca = k, m
					}
					if tb {
						rb, cb = n, k
					}
					// Operands rounded to bf16 on both sides; a float32 one is
					// rounded by the GEMM's own copy, so it gets bf16 values too.
					mk := func(rows, cols int, half bool) *pair {
						v := roundAll(e.values(rows*cols, 0, 1))
						if half {
							return e.operand(rows*cols, v)
						}
						return e.from(v)
					}
					a := mk(ra, ca, which != "B")
					b := mk(rb, cb, which != "A")
					c := e.randn(m*n, 0, 1)
					e.run(func(be backend.Backend, s side) {
						be.Gemm(ta, tb, m, n, k, 0.5, a.on(s), ca, b.on(s), cb, 1, c.on(s), n)
					})
					e.check(fmt.Sprintf("gemm bf16 operand %s m=%d n=%d k=%d ta=%v tb=%v", which, m, n, k, ta, tb), "gemm bf16 operands", c, tolFP32)
				}
			}
		}
		// A bf16 C (beta 0) holds the float32 product rounded.
		a, b := e.from(roundAll(e.values(m*k, 0, 1))), e.from(roundAll(e.values(k*n, 0, 1)))
		c := e.operand(m*n, nil)
		e.run(func(be backend.Backend, s side) {
			be.Gemm(false, false, m, n, k, 0.5, a.on(s), k, b.on(s), n, 0, c.on(s), n)
		})
		e.checkRounded(fmt.Sprintf("gemm bf16 C m=%d n=%d k=%d", m, n, k), c)
	}
}

// TestThinOperands checks the writers of a backend.ThinRounder's bf16
// operands: ConvCopy's u16, and ScanDtGateBackward's draw as a bf16 tensor
// (N 16: the four-state kernel writes it; N 5: the other kernels' float32
// result is copied), must hold exactly the float32 results of the same
// operations rounded to bf16, and leave every other output as it was; and
// ConvBackwardRecomputeSum with du2 must write what ConvBackwardRecompute
// writes for the sum du + du2 made on the host.
func TestThinOperands(t *testing.T) {
	_, g16 := operandGPUs(t)
	e := newEnv(t, g16, 23)
	down := func(x backend.Tensor) []float32 {
		v := make([]float32, x.Len())
		g16.Download(v, x)
		return v
	}
	same := func(name string, got, want []float32) {
		t.Helper()
		for i := range want {
			if math.Float32bits(got[i]) != math.Float32bits(want[i]) {
				t.Errorf("%s: [%d] = %g, want %g", name, i, got[i], want[i])
				return
			}
		}
	}
	for _, K := range []int{4, 9} { // the windowed kernel, and the general one
		const B, T, E = 2, 150, 64
		xz := e.randn(B*T*2*E, 0, 1)
		w, b := e.randn(E*K, 0, 0.5), e.randn(E, 0, 0.5)
		u, u2, u16 := g16.Alloc(B*T*E), g16.Alloc(B*T*E), g16.AllocThin(B*T*E)
		g16.Conv(u, nil, xz.g, 2*E, nil, w.g, b.g, B, T, E, K)
		g16.ConvCopy(u2, u16, nil, xz.g, 2*E, nil, w.g, b.g, B, T, E, K)
		name := fmt.Sprintf("conv K=%d", K)
		same(name+" u", down(u2), down(u))
		same(name+" u16", down(u16), roundAll(down(u)))
		// The backward with a second gradient: bf16 (as the model's) or
		// float32, into a bf16 or a float32 dxi.
		du := e.randn(B*T*E, 0, 1)
		for _, c := range []struct{ du2Half, dxiHalf bool }{{true, true}, {true, false}, {false, true}} {
			du2v := e.values(B*T*E, 0, 1)
			var du2 backend.Tensor
			if c.du2Half {
				du2v = roundAll(du2v)
				du2 = g16.AllocThin(B * T * E)
			} else {
				du2 = g16.Alloc(B * T * E)
			}
			g16.Upload(du2, du2v)
			sum := make([]float32, B*T*E)
			for i := range sum {
				sum[i] = du.c[i] + du2v[i]
			}
			dus := g16.Alloc(B * T * E)
			g16.Upload(dus, sum)
			out := func(two bool) [][]float32 {
				var dxz backend.Tensor
				if c.dxiHalf {
					dxz = g16.AllocThin(B * T * 2 * E)
				} else {
					dxz = g16.Alloc(B * T * 2 * E)
				}
				dw, db := g16.Alloc(E*K), g16.Alloc(E)
				if two {
					g16.ConvBackwardRecomputeSum(dxz, 2*E, dw, db, du.g, du2, xz.g, nil, w.g, b.g, B, T, E, K)
				} else {
					g16.ConvBackwardRecompute(dxz, 2*E, dw, db, dus, xz.g, nil, w.g, b.g, B, T, E, K)
				}
				return [][]float32{down(dxz), down(dw), down(db)}
			}
			got, want := out(true), out(false)
			for i, o := range []string{"dxz", "dw", "dbias"} {
				same(fmt.Sprintf("%s backward du2 bf16=%v dxi bf16=%v %s", name, c.du2Half, c.dxiHalf, o), got[i], want[i])
			}
		}
	}
	for _, N := range []int{16, 5} {
		const R, rows, E = 3, 150, 64
		ldbc := R + 2*N
		xdbl := e.randn(rows*ldbc, 0, 1)
		bt, ct := bcViews(xdbl, R, N)
		u, raw, bias := e.randn(rows*E, 0, 1), e.randn(rows*E, -1, 1), e.randn(E, 0, 0.5)
		a, dskip := scanDecay(e, E, N), e.randn(E, 1, 0.5)
		y, xz, dout := e.randn(rows*E, 0, 1), e.randn(rows*2*E, 0, 2), e.randn(rows*E, 0, 1)
		z := xz.slice(E, rows*2*E-E)
		ckpt := e.randn(g16.ScanCheckpoints(rows)*E*N, 0, 1)
		run := func(draw backend.Tensor) [][]float32 {
			dxz, du, dxdbl := g16.Alloc(rows*2*E), g16.Alloc(rows*E), g16.Alloc(rows*ldbc)
			dalog, ddskip, dbias := g16.Alloc(E*N), g16.Alloc(E), g16.Alloc(E)
			dbt, dct := dxdbl.Slice(R, rows*ldbc-R), dxdbl.Slice(R+N, rows*ldbc-R-N)
			g16.ScanDtGateBackward(dxz.Slice(E, rows*2*E-E), dout.g, y.g, z.g, 2*E, du, draw, dbt, dct, dalog, ddskip, dbias,
				u.g, raw.g, bias.g, bt.g, ct.g, ldbc, a.g, dskip.g, ckpt.g, 1, rows, E, N)
			return [][]float32{down(dxz), down(du), down(dalog), down(ddskip), down(dbias), down(dxdbl)}
		}
		d32, d16 := g16.Alloc(rows*E), g16.AllocThin(rows*E)
		want, got := run(d32), run(d16)
		name := fmt.Sprintf("scan backward N=%d", N)
		same(name+" draw (bf16)", down(d16), roundAll(down(d32)))
		for i, out := range []string{"dz", "du", "dalog", "ddskip", "dbias"} {
			same(name+" "+out, got[i], want[i])
		}
		// The general kernels sum dBt and dCt with atomics (in any order).
		if d := relDiff(got[5], want[5]); !(d <= 1e-6) {
			t.Errorf("%s dBt, dCt: relative difference %.3g between the runs", name, d)
		}
	}
}
