package cuda_test

import (
	"fmt"
	"math"
	"os"
	"testing"

	"github.com/mambabyte/mambabyte/internal/backend"
	"github.com/mambabyte/mambabyte/internal/backend/cpu"
)

// Every operation against the CPU backend on fresh random inputs, with
// outputs poisoned by NaN and inputs read through views with row strides.

func TestGemm(t *testing.T) {
	g32, g16 := gpus(t)
	for _, mode := range []struct {
		name string
		tol  float64
		e    *env
	}{{"fp32", tolFP32, newEnv(t, g32, 1)}, {"bf16", tolBF16, newEnv(t, g16, 2)}} {
		e := mode.e
		// {520, 600, 512}: every side at least 512, so bf16 mode runs on
		// bf16 copies of the operands (packed ones with beta 1.3: the
		// copying kernel's vector path).
		for _, sz := range [][3]int{{1, 1, 1}, {7, 13, 5}, {33, 65, 17}, {128, 96, 200}, {300, 257, 64}, {5, 6, 0}, {520, 600, 512}} {
			m, n, k := sz[0], sz[1], sz[2]
			for _, ta := range []bool{false, true} {
				for _, tb := range []bool{false, true} {
					if k == 0 && (ta || tb) {
						continue
					}
					for _, beta := range []float32{0, 1.3} {
						ra, ca := m, k
						if ta {
							ra, ca = k, m
						}
						rb, cb := k, n
						if tb {
							rb, cb = n, k
						}
						lda, ldb, ldc := ca+3, cb+1, n+2
						a := e.randn(ra*lda+5, 0, 1).slice(5, ra*lda)
						b := e.randn(rb*ldb+2, 0, 1).slice(2, rb*ldb)
						if m >= 512 && beta != 0 {
							lda, ldb = ca, cb
							a, b = e.randn(ra*lda, 0, 1), e.randn(rb*ldb, 0, 1)
						}
						var c *pair
						if beta == 0 {
							c = e.nan(m*ldc+1).slice(1, m*ldc)
						} else {
							c = e.randn(m*ldc, 0, 1)
						}
						e.run(func(be backend.Backend, s side) {
							be.Gemm(ta, tb, m, n, k, 0.7, a.on(s), lda, b.on(s), ldb, beta, c.on(s), ldc)
						})
						e.check(fmt.Sprintf("gemm %s m=%d n=%d k=%d ta=%v tb=%v beta=%g", mode.name, m, n, k, ta, tb, beta), "gemm "+mode.name, c, mode.tol)
					}
				}
			}
		}
	}
}

// The bf16 path keeps its copy of a GEMM's A operand for the next GEMM
// with the same A (the backward's dW and dX pairs take the same dxz and dh
// one after the other). Consecutive products of one A, in both stored
// layouts' readings, must match the CPU, and so must a product after
// another operation changed A in between.
func TestGemmReusesACopy(t *testing.T) {
	_, g16 := gpus(t)
	e := newEnv(t, g16, 12)
	const M, K, N = 520, 512, 536
	x := e.randn(M*K, 0, 1) // A of every product: (M,K), or (K,M) read transposed
	w1, w2 := e.randn(K*N, 0, 1), e.randn(N*K, 0, 1)
	d := e.randn(M*N, 0, 1)
	c1, c2, c3, c4 := e.nan(M*N), e.nan(M*N), e.nan(K*N), e.nan(M*N)
	e.run(func(be backend.Backend, s side) {
		be.Gemm(false, false, M, N, K, 1, x.on(s), K, w1.on(s), N, 0, c1.on(s), N) // makes the copy
		be.Gemm(false, true, M, N, K, 1, x.on(s), K, w2.on(s), K, 0, c2.on(s), N)  // reuses it
		be.Gemm(true, false, K, N, M, 1, x.on(s), K, d.on(s), N, 0, c3.on(s), N)   // xᵀ·d: the same stored A
		be.Scale(x.on(s), -2)                                                      // A changes
		be.Gemm(false, false, M, N, K, 1, x.on(s), K, w1.on(s), N, 0, c4.on(s), N) // must see it
	})
	e.check("gemm bf16 A copied", "gemm bf16", c1, tolBF16)
	e.check("gemm bf16 A copy reused", "gemm bf16", c2, tolBF16)
	e.check("gemm bf16 A copy reused, transposed", "gemm bf16", c3, tolBF16)
	e.check("gemm bf16 A changed in between", "gemm bf16", c4, tolBF16)
}

// In bf16 mode NormBackward leaves its dx's bf16 copy as the A copy of the
// next GEMM (out_proj's backward reads dh so). The two products that
// follow, dW (A transposed) and dX, must give exactly what they give when
// the first of them makes the copy (MAMBABYTE_CUDA_NORM_COPY=0), for both
// of the norm backward's kernels (D up to 1024 in registers, and more).
func TestNormBackwardCopy(t *testing.T) {
	_, g16 := gpus(t)
	const rows, N = 600, 520
	for _, D := range []int{1024, 1500} {
		e := newEnv(t, g16, 14)
		x, dout, dx0 := e.values(rows*D, 0.5, 2), e.values(rows*D, 0, 1), e.values(rows*D, 0, 1)
		w, b := e.values(D, 1, 0.5), e.values(D, 0, 1)
		g, wo := e.values(rows*N, 0, 1), e.values(D*N, 0, 1)
		run := func() (dx, c1, c2 []float32) {
			be := g16
			up := func(v []float32) backend.Tensor {
				t := be.Alloc(len(v))
				be.Upload(t, v)
				return t
			}
			xt, dxt, wt, bt, doutt, gt, wot := up(x), up(dx0), up(w), up(b), up(dout), up(g), up(wo)
			mean, rstd, out := be.Alloc(rows), be.Alloc(rows), be.Alloc(rows*D)
			be.Norm(out, mean, rstd, xt, wt, bt, rows, D, 1e-5, false)
			dw, db := be.Alloc(D), be.Alloc(D)
			ct1, ct2 := be.Alloc(D*N), be.Alloc(rows*N)
			// (Nothing may run between the norm and the products but
			// products: any other call drops the copy.)
			be.NormBackward(dxt, dw, db, doutt, xt, wt, mean, rstd, rows, D, false)
			be.Gemm(true, false, D, N, rows, 1, dxt, D, gt, N, 0, ct1, N)
			be.Gemm(false, false, rows, N, D, 1, dxt, D, wot, N, 0, ct2, N)
			dx, c1, c2 = make([]float32, rows*D), make([]float32, D*N), make([]float32, rows*N)
			be.Download(dx, dxt)
			be.Download(c1, ct1)
			be.Download(c2, ct2)
			return
		}
		dx, c1, c2 := run()
		t.Setenv("MAMBABYTE_CUDA_NORM_COPY", "0")
		wdx, wc1, wc2 := run()
		os.Unsetenv("MAMBABYTE_CUDA_NORM_COPY")
		for _, c := range []struct {
			name      string
			got, want []float32
		}{{"dx", dx, wdx}, {"dW", c1, wc1}, {"dX", c2, wc2}} {
			for i := range c.want {
				if c.got[i] != c.want[i] {
					t.Errorf("D %d: %s[%d] is %g with the norm's copy, %g without", D, c.name, i, c.got[i], c.want[i])
					break
				}
			}
		}
	}
}

func TestEmbed(t *testing.T) {
	g, _ := gpus(t)
	e := newEnv(t, g, 3)
	for _, sz := range [][3]int{{37, 19, 11}, {500, 64, 256}, {1, 1, 1}} {
		n, D, V := sz[0], sz[1], sz[2]
		id := ids(e.r, n, V)
		w := e.randn(V*D, 0, 1)
		out := e.nan(n * D)
		e.run(func(be backend.Backend, s side) { be.Embed(out.on(s), id, w.on(s), n, D) })
		e.check(fmt.Sprintf("embed n=%d D=%d", n, D), "embed", out, tolFP32)
		dw := e.randn(V*D, 0, 1)
		dout := e.randn(n*D, 0, 1)
		e.run(func(be backend.Backend, s side) { be.EmbedBackward(dw.on(s), dout.on(s), id, n, D) })
		e.check(fmt.Sprintf("embed backward n=%d D=%d", n, D), "embed backward", dw, tolFP32)
	}
}

// TestNorm also takes rows of 20500 values: the backward keeps a warp's
// column sums in shared memory, one warp a block for RMSNorm there, and
// for LayerNorm's two sums they do not fit, so it takes its other kernels.
// D 300 and 1500 take the backward's middle and general sizes (V 16, 0)
// with more than 40 rows.
func TestNorm(t *testing.T) {
	g, _ := gpus(t)
	e := newEnv(t, g, 4)
	for _, rows := range []int{1, 5, 37, 300, 600} {
		for _, D := range []int{7, 32, 130, 300, 1024, 1500, 20500} {
			if D > 2048 && rows > 40 {
				continue
			}
			for _, rms := range []bool{false, true} {
				name := fmt.Sprintf("rows=%d D=%d rms=%v", rows, D, rms)
				x := e.randn(rows*D, 0.5, 2)
				w := e.randn(D, 1, 0.5)
				var b, db *pair
				if !rms {
					b = e.randn(D, 0, 1)
					db = e.randn(D, 0, 1)
				}
				out, mean, rstd := e.nan(rows*D), e.nan(rows), e.nan(rows)
				e.run(func(be backend.Backend, s side) {
					be.Norm(out.on(s), mean.on(s), rstd.on(s), x.on(s), w.on(s), b.on(s), rows, D, 1e-5, rms)
				})
				e.check("norm out "+name, "norm", out, tolFP32)
				e.check("norm mean "+name, "norm", mean, tolFP32)
				e.check("norm rstd "+name, "norm", rstd, tolFP32)
				out2 := e.nan(rows * D)
				e.run(func(be backend.Backend, s side) {
					be.Norm(out2.on(s), nil, nil, x.on(s), w.on(s), b.on(s), rows, D, 1e-5, rms)
				})
				e.check("norm (no stats) "+name, "norm", out2, tolFP32)

				dx := e.randn(rows*D, 0, 1) // accumulated into
				dw := e.randn(D, 0, 1)
				dout := e.randn(rows*D, 0, 1)
				e.run(func(be backend.Backend, s side) {
					be.NormBackward(dx.on(s), dw.on(s), db.on(s), dout.on(s), x.on(s), w.on(s), mean.on(s), rstd.on(s), rows, D, rms)
				})
				e.check("norm backward dx "+name, "norm backward", dx, tolFP32)
				e.check("norm backward dw "+name, "norm backward", dw, tolFP32)
				if db != nil {
					e.check("norm backward db "+name, "norm backward", db, tolFP32)
				}
			}
		}
	}
}

func TestConv(t *testing.T) {
	g, _ := gpus(t)
	e := newEnv(t, g, 5)
	for _, sz := range [][4]int{{2, 9, 5, 4}, {1, 70, 33, 3}, {3, 130, 16, 4}, {2, 5, 8, 1}, {1, 2, 7, 4}, {2, 300, 64, 4},
		{2, 140, 20, 2}, {1, 66, 12, 8}, {1, 100, 10, 9}} {
		B, T, E, K := sz[0], sz[1], sz[2], sz[3]
		for _, withPrev := range []bool{false, true} {
			for _, withBias := range []bool{false, true} {
				name := fmt.Sprintf("B=%d T=%d E=%d K=%d prev=%v bias=%v", B, T, E, K, withPrev, withBias)
				ldx := 2*E + 1
				xi := e.randn(B*T*ldx+3, 0, 1).slice(3, B*T*ldx)
				w := e.randn(E*K, 0, 0.5)
				var prev, bias, dbias *pair
				if withPrev {
					prev = e.randn(B*(K-1)*E, 0, 1)
				}
				if withBias {
					bias = e.randn(E, 0, 0.5)
					dbias = e.randn(E, 0, 1)
				}
				u, pre := e.nan(B*T*E), e.nan(B*T*E)
				e.run(func(be backend.Backend, s side) {
					be.Conv(u.on(s), pre.on(s), xi.on(s), ldx, prev.on(s), w.on(s), bias.on(s), B, T, E, K)
				})
				e.check("conv u "+name, "conv", u, tolFP32)
				e.check("conv pre "+name, "conv", pre, tolFP32)
				u2 := e.nan(B * T * E)
				e.run(func(be backend.Backend, s side) {
					be.Conv(u2.on(s), nil, xi.on(s), ldx, prev.on(s), w.on(s), bias.on(s), B, T, E, K)
				})
				e.check("conv (no pre) "+name, "conv", u2, tolFP32)

				dxi := e.nan(B * T * ldx)
				dw := e.randn(E*K, 0, 1)
				du := e.randn(B*T*E, 0, 1)
				e.run(func(be backend.Backend, s side) {
					be.ConvBackward(dxi.on(s), ldx, dw.on(s), dbias.on(s), du.on(s), pre.on(s), xi.on(s), prev.on(s), w.on(s), B, T, E, K)
				})
				e.check("conv backward dxi "+name, "conv backward", dxi, tolFP32)
				e.check("conv backward dw "+name, "conv backward", dw, tolFP32)
				if dbias != nil {
					e.check("conv backward dbias "+name, "conv backward", dbias, tolFP32)
				}
				// The same with the pre-activation recomputed on the GPU.
				dxi2, dw2 := e.nan(B*T*ldx), e.randn(E*K, 0, 1)
				var dbias2 *pair
				if withBias {
					dbias2 = e.randn(E, 0, 1)
				}
				e.run(func(be backend.Backend, s side) {
					if s == onGPU {
						be.(backend.ConvRecomputer).ConvBackwardRecompute(dxi2.on(s), ldx, dw2.on(s), dbias2.on(s), du.on(s), xi.on(s), prev.on(s), w.on(s), bias.on(s), B, T, E, K)
					} else {
						be.ConvBackward(dxi2.on(s), ldx, dw2.on(s), dbias2.on(s), du.on(s), pre.on(s), xi.on(s), prev.on(s), w.on(s), B, T, E, K)
					}
				})
				e.check("conv backward (recomputed pre) dxi "+name, "conv backward", dxi2, tolFP32)
				e.check("conv backward (recomputed pre) dw "+name, "conv backward", dw2, tolFP32)
				if dbias2 != nil {
					e.check("conv backward (recomputed pre) dbias "+name, "conv backward", dbias2, tolFP32)
				}

				// The state after xi: into a separate buffer, and in place.
				next := e.nan(B * (K - 1) * E)
				e.run(func(be backend.Backend, s side) {
					be.ConvState(next.on(s), prev.on(s), xi.on(s), ldx, B, T, E, K)
				})
				e.check("conv state "+name, "conv state", next, tolFP32)
				if prev != nil {
					st := e.clone(prev)
					e.run(func(be backend.Backend, s side) {
						be.ConvState(st.on(s), st.on(s), xi.on(s), ldx, B, T, E, K)
					})
					e.check("conv state in place "+name, "conv state", st, tolFP32)
				}
			}
		}
	}
}

func TestDt(t *testing.T) {
	g, _ := gpus(t)
	e := newEnv(t, g, 6)
	for _, sz := range [][2]int{{37, 24}, {1, 1}, {513, 96}} {
		rows, E := sz[0], sz[1]
		name := fmt.Sprintf("rows=%d E=%d", rows, E)
		raw := e.randn(rows*E, 0, 12) // reaches past softplus's threshold of 20
		bias := e.randn(E, 0, 2)
		delta := e.nan(rows * E)
		e.run(func(be backend.Backend, s side) { be.Dt(delta.on(s), raw.on(s), bias.on(s), rows, E) })
		e.check("dt raw "+name, "dt", raw, tolFP32)
		e.check("dt delta "+name, "dt", delta, tolFP32)

		dbias := e.randn(E, 0, 1)
		ddelta := e.randn(rows*E, 0, 1)
		draw := e.nan(rows * E)
		e.run(func(be backend.Backend, s side) {
			be.DtBackward(draw.on(s), dbias.on(s), ddelta.on(s), raw.on(s), rows, E)
		})
		e.check("dt backward draw "+name, "dt backward", draw, tolFP32)
		e.check("dt backward dbias "+name, "dt backward", dbias, tolFP32)
		// In place, as the model calls it.
		e.run(func(be backend.Backend, s side) {
			be.DtBackward(ddelta.on(s), dbias.on(s), ddelta.on(s), raw.on(s), rows, E)
		})
		e.check("dt backward in place draw "+name, "dt backward", ddelta, tolFP32)
		e.check("dt backward in place dbias "+name, "dt backward", dbias, tolFP32)
	}
}

// TestSoftplusElementwise holds the device's softplus (which the dt kernel
// and every scan kernel that stages Δ use) to a per-element bound against
// float64 log1p(exp(x)), over a sweep of x that crosses 0, the cut-over to
// x itself at 20, and e^x below float32's normal range.
func TestSoftplusElementwise(t *testing.T) {
	g, _ := gpus(t)
	const n = 1 << 16
	x := make([]float32, n)
	for i := range x {
		x[i] = float32(-100 + 130*float64(i)/(n-1))
	}
	x = append(x, 0, 1e-30, -1e-30, 20, 20.000002, 19.999998, -87.3, -87.4, -103, 88)
	raw := g.Alloc(len(x))
	bias, delta := g.Alloc(1), g.Alloc(len(x))
	g.Upload(raw, x)
	g.Upload(bias, []float32{0})
	g.Dt(delta, raw, bias, len(x), 1)
	got := make([]float32, len(x))
	g.Download(got, delta)
	// Where Δ matters (x ≥ -15, Δ ≥ 3e-7) the bound is 2e-6, relative;
	// below, e^x's argument grows and so does its rounding: 1e-5.
	var worst, worstNear float64
	for i, v := range x {
		want := math.Log1p(math.Exp(float64(v)))
		if v > 20 {
			want = float64(v)
		}
		if want < 0x1p-126 { // float32 would flush it to zero
			if got[i] != 0 && math.Abs(float64(got[i])-want) > 0x1p-126 {
				t.Errorf("softplus(%g) = %g, want %g", v, got[i], want)
			}
			continue
		}
		rel := math.Abs(float64(got[i])-want) / want
		if v >= -15 {
			worstNear = math.Max(worstNear, rel)
			if rel > 2e-6 {
				t.Errorf("softplus(%g) = %g, want %g (relative error %.3g)", v, got[i], want, rel)
			}
		} else if rel > 1e-5 {
			t.Errorf("softplus(%g) = %g, want %g (relative error %.3g)", v, got[i], want, rel)
		}
		worst = math.Max(worst, rel)
	}
	t.Logf("largest relative error: %.3g for x >= -15, %.3g overall", worstNear, worst)
}

func TestGateAddScaleNegExp(t *testing.T) {
	g, _ := gpus(t)
	e := newEnv(t, g, 7)
	for _, sz := range [][2]int{{37, 24}, {1, 3}, {700, 130}, {70000, 8}} { // more rows than a grid's 65535
		rows, E := sz[0], sz[1]
		name := fmt.Sprintf("rows=%d E=%d", rows, E)
		ldz := 2 * E
		xz := e.randn(rows*ldz, 0, 3)
		z := xz.slice(E, rows*ldz-E)
		y := e.randn(rows*E, 0, 1)
		out := e.nan(rows * E)
		e.run(func(be backend.Backend, s side) { be.Gate(out.on(s), y.on(s), z.on(s), ldz, rows, E) })
		e.check("gate "+name, "gate", out, tolFP32)
		dy := e.nan(rows * E)
		dxz := e.nan(rows * ldz)
		dz := dxz.slice(E, rows*ldz-E)
		dout := e.randn(rows*E, 0, 1)
		e.run(func(be backend.Backend, s side) {
			be.GateBackward(dy.on(s), dz.on(s), dout.on(s), y.on(s), z.on(s), ldz, rows, E)
		})
		e.check("gate backward dy "+name, "gate backward", dy, tolFP32)
		e.check("gate backward dz "+name, "gate backward", dxz, tolFP32)
	}
	for _, n := range []int{1, 1000, 100003} {
		dst, src := e.randn(n, 0, 1), e.randn(n+5, 0, 1)
		e.run(func(be backend.Backend, s side) { be.Add(dst.on(s), src.on(s)) })
		e.check(fmt.Sprintf("add n=%d", n), "add", dst, tolFP32)
		e.run(func(be backend.Backend, s side) { be.Scale(dst.on(s), -0.37) })
		e.check(fmt.Sprintf("scale n=%d", n), "scale", dst, tolFP32)
		alog := e.randn(n, 0.5, 1)
		a := e.nan(n)
		e.run(func(be backend.Backend, s side) { be.NegExp(a.on(s), alog.on(s)) })
		e.check(fmt.Sprintf("negexp n=%d", n), "negexp", a, tolFP32)
		want := cpu.New().SumSquares(src.c)
		got := g.SumSquares(src.g)
		d := math.Abs(got-want) / want
		record("sum squares", d)
		if d > 1e-9 {
			t.Errorf("sum squares n=%d: %g, want %g", n, got, want)
		}
	}
}

// adamwInputs returns parameters, gradients and moments of n values (the
// second moments non-negative).
func adamwInputs(e *env, n int) (param, grad, m, v *pair) {
	vv := make([]float32, n)
	for i := range vv {
		vv[i] = float32(e.r.Float64() * 1e-3)
	}
	return e.randn(n, 0, 1), e.randn(n, 0, 0.1), e.randn(n, 0, 0.01), e.from(vv)
}

func TestAdamW(t *testing.T) {
	g, _ := gpus(t)
	e := newEnv(t, g, 8)
	for _, n := range []int{1, 999, 65537} {
		param, grad, m, v := adamwInputs(e, n)
		for step := 1; step <= 3; step++ {
			bc1, bc2 := 1-math.Pow(0.9, float64(step)), 1-math.Pow(0.95, float64(step))
			e.run(func(be backend.Backend, s side) {
				be.AdamW(param.on(s), grad.on(s), m.on(s), v.on(s), 1e-3, 0.9, 0.95, 1e-8, 0.1, float32(bc1), float32(bc2))
			})
		}
		e.check(fmt.Sprintf("adamw param n=%d", n), "adamw", param, 1e-6)
		e.check(fmt.Sprintf("adamw m n=%d", n), "adamw", m, 1e-6)
		e.check(fmt.Sprintf("adamw v n=%d", n), "adamw", v, 1e-6)
	}
}

// AdamWRuns (one launch) against one AdamW call per run on the CPU: runs
// longer than a launch block's piece (65,536 values), with and without
// decay, and values in no run, which must stay as they are.
func TestAdamWRuns(t *testing.T) {
	g, _ := gpus(t)
	e := newEnv(t, g, 13)
	const n = 200_000
	runs := []backend.Run{{Off: 0, Len: 5, Decay: false}, {Off: 5, Len: 140_000, Decay: true}, {Off: 140_005, Len: 1, Decay: false},
		{Off: 140_010, Len: 59_000, Decay: true}, {Off: 199_010, Len: 990, Decay: false}} // 140_006..140_009 in no run
	param, grad, m, v := adamwInputs(e, n)
	for step := 1; step <= 3; step++ {
		bc1, bc2 := 1-math.Pow(0.9, float64(step)), 1-math.Pow(0.95, float64(step))
		e.run(func(be backend.Backend, s side) {
			if ar, ok := be.(backend.AdamWRunner); ok {
				ar.AdamWRuns(param.on(s), grad.on(s), m.on(s), v.on(s), runs, 1e-3, 0.9, 0.95, 1e-8, 0.1, float32(bc1), float32(bc2))
				return
			}
			for _, r := range runs {
				wd := float32(0)
				if r.Decay {
					wd = 0.1
				}
				be.AdamW(param.on(s).Slice(r.Off, r.Len), grad.on(s).Slice(r.Off, r.Len), m.on(s).Slice(r.Off, r.Len),
					v.on(s).Slice(r.Off, r.Len), 1e-3, 0.9, 0.95, 1e-8, wd, float32(bc1), float32(bc2))
			}
		})
	}
	e.check("adamw runs param", "adamw", param, 1e-6)
	e.check("adamw runs m", "adamw", m, 1e-6)
	e.check("adamw runs v", "adamw", v, 1e-6)
}

func TestCrossEntropy(t *testing.T) {
	g, _ := gpus(t)
	e := newEnv(t, g, 9)
	for _, sz := range [][2]int{{37, 256}, {5, 40}, {300, 1000}, {1, 1}} {
		n, V := sz[0], sz[1]
		tg := ids(e.r, n, V)
		for i := range tg {
			if e.r.IntN(5) == 0 {
				tg[i] = -1
			}
		}
		for _, variant := range []string{"sum only", "separate", "in place"} {
			name := fmt.Sprintf("n=%d V=%d %s", n, V, variant)
			logits := e.randn(n*V, 0, 3)
			var dl, nll *pair
			switch variant {
			case "separate":
				dl, nll = e.nan(n*V), e.nan(n)
			case "in place":
				dl, nll = logits, e.nan(n)
			}
			var sums [2]float64
			e.run(func(be backend.Backend, s side) {
				sums[s] = be.CrossEntropy(dl.on(s), nll.on(s), logits.on(s), tg, n, V, 0.25)
			})
			d := math.Abs(sums[1]-sums[0]) / math.Max(math.Abs(sums[0]), 1e-30)
			record("cross entropy sum", d)
			if d > 1e-5 || math.IsNaN(sums[1]) {
				t.Errorf("cross entropy %s: sum %g, want %g", name, sums[1], sums[0])
			}
			if dl != nil {
				e.check("cross entropy dlogits "+name, "cross entropy", dl, tolFP32)
				e.check("cross entropy nll "+name, "cross entropy", nll, tolFP32)
			}
		}
	}
}

func TestScanCheckpoints(t *testing.T) {
	g, _ := gpus(t)
	for T := 1; T <= 300; T++ {
		if got, want := g.ScanCheckpoints(T), (cpu.Backend{}).ScanCheckpoints(T); got != want {
			t.Fatalf("ScanCheckpoints(%d) = %d, want %d", T, got, want)
		}
	}
}

// bcViews are the Bt and Ct columns of an xdbl-shaped (rows, R+2N) pair.
func bcViews(x *pair, R, N int) (bt, ct *pair) {
	return x.slice(R, x.c.Len()-R), x.slice(R+N, x.c.Len()-R-N)
}

// scanDecay is an A (E, N) near the model's initialisation: -(n+1) times
// a random factor about e^(±0.3).
func scanDecay(e *env, E, N int) *pair {
	av := make([]float32, E*N)
	for i := range av {
		av[i] = -float32(math.Exp(math.Log(float64(i%N+1)) + 0.3*e.r.NormFloat64()))
	}
	return e.from(av)
}

func TestScan(t *testing.T) {
	g, _ := gpus(t)
	e := newEnv(t, g, 10)
	cb := cpu.New()
	for _, sz := range [][5]int{ // B, T, E, N, R
		{2, 150, 24, 5, 3}, {1, 64, 16, 16, 3}, {3, 130, 40, 16, 3}, {2, 1, 8, 16, 3},
		{1, 70, 9, 40, 3}, {2, 65, 12, 80, 3}, {1, 100, 5, 128, 3}, {2, 257, 64, 16, 3}, {2, 300, 512, 16, 3},
		{1, 2000, 32, 16, 3}, {1, 1000, 16, 96, 3},
		// N = 8, 16, 32 take the four-state backward; E off its block
		// widths (64, 32, 16 channels).
		{1, 200, 24, 8, 3}, {2, 130, 20, 32, 3}, {1, 64, 33, 16, 3}, {2, 129, 70, 8, 3},
		// Bt, Ct rows on 16-byte boundaries, as the model's (R and R+2N
		// multiples of 4), and E on the four-state blocks' widths.
		{1, 200, 64, 8, 4}, {2, 130, 32, 16, 4}, {1, 150, 16, 32, 4}, {2, 300, 512, 16, 4},
		{1, 2000, 32, 16, 8}, {3, 64, 48, 16, 4},
	} {
		B, T, E, N, R := sz[0], sz[1], sz[2], sz[3], sz[4]
		ldbc := R + 2*N
		nc := cb.ScanCheckpoints(T)
		for _, withS0 := range []bool{false, true} {
			name := fmt.Sprintf("B=%d T=%d E=%d N=%d s0=%v", B, T, E, N, withS0)
			xdbl := e.randn(B*T*ldbc, 0, 1)
			bt, ct := bcViews(xdbl, R, N)
			u := e.randn(B*T*E, 0, 1)
			dv := make([]float32, B*T*E)
			for i := range dv {
				dv[i] = float32(math.Log1p(math.Exp(e.r.NormFloat64()*1.5 - 2))) // softplus outputs
			}
			delta := e.from(dv)
			a := scanDecay(e, E, N)
			dskip := e.randn(E, 1, 0.5)
			y, ckpt := e.nan(B*T*E), e.nan(B*nc*E*N)
			var s0, sT *pair
			if withS0 {
				s0 = e.randn(B*E*N, 0, 1)
				sT = s0 // in place, as a recurrent step runs it
			} else {
				sT = e.nan(B * E * N)
			}
			e.run(func(be backend.Backend, s side) {
				be.Scan(y.on(s), u.on(s), delta.on(s), bt.on(s), ct.on(s), ldbc, a.on(s), dskip.on(s), s0.on(s), sT.on(s), ckpt.on(s), B, T, E, N)
			})
			e.check("scan y "+name, "scan", y, tolFP32)
			e.check("scan sT "+name, "scan", sT, tolFP32)
			e.check("scan ckpt "+name, "scan", ckpt, tolFP32)

			du, ddelta := e.nan(B*T*E), e.nan(B*T*E)
			dxdbl := e.nan(B * T * ldbc)
			dbt, dct := bcViews(dxdbl, R, N)
			dalog, ddskip := e.randn(E*N, 0, 1), e.randn(E, 0, 1)
			dy := e.randn(B*T*E, 0, 1)
			e.run(func(be backend.Backend, s side) {
				be.ScanBackward(du.on(s), ddelta.on(s), dbt.on(s), dct.on(s), dalog.on(s), ddskip.on(s), dy.on(s), u.on(s), delta.on(s), bt.on(s), ct.on(s), ldbc, a.on(s), dskip.on(s), ckpt.on(s), B, T, E, N)
			})
			e.check("scan backward du "+name, "scan backward", du, tolFP32)
			e.check("scan backward ddelta "+name, "scan backward", ddelta, tolFP32)
			e.check("scan backward dBt,dCt "+name, "scan backward", dxdbl, tolFP32)
			e.check("scan backward dalog "+name, "scan backward", dalog, tolFP32)
			e.check("scan backward ddskip "+name, "scan backward", ddskip, tolFP32)
		}
	}
}

// TestScanDt checks the scan with the dt activation inside it (ScanDt,
// ScanDtBackward) against the CPU's Dt, Scan, ScanBackward and DtBackward,
// for N that take the four-state kernels and N that do not. raw must come
// back unchanged.
func TestScanDt(t *testing.T) {
	g, _ := gpus(t)
	e := newEnv(t, g, 11)
	for _, sz := range [][5]int{ // B, T, E, N, R (as in TestScan)
		{2, 150, 24, 5, 3}, {1, 130, 40, 16, 3}, {2, 70, 20, 32, 3}, {1, 64, 33, 16, 3},
		{1, 130, 32, 16, 4}, {2, 70, 16, 32, 4}, {1, 200, 64, 8, 4},
	} {
		B, T, E, N, R := sz[0], sz[1], sz[2], sz[3], sz[4]
		ldbc := R + 2*N
		nc := cpu.New().ScanCheckpoints(T)
		name := fmt.Sprintf("B=%d T=%d E=%d N=%d", B, T, E, N)
		xdbl := e.randn(B*T*ldbc, 0, 1)
		bt, ct := bcViews(xdbl, R, N)
		u := e.randn(B*T*E, 0, 1)
		rv := make([]float32, B*T*E)
		for i := range rv {
			rv[i] = float32(e.r.NormFloat64()*3 - 2) // softplus from about 1e-4 to 4
		}
		raw, rawCPU := e.from(rv), e.from(rv) // rawCPU: the CPU's Dt adds the bias in place
		bias := e.randn(E, -0.5, 0.5)
		a := scanDecay(e, E, N)
		dskip := e.randn(E, 1, 0.5)
		delta := e.nan(B * T * E) // the CPU's Δ
		y, ckpt, sT := e.nan(B*T*E), e.nan(B*nc*E*N), e.nan(B*E*N)
		e.run(func(be backend.Backend, s side) {
			if dts, ok := be.(backend.DtScanner); ok {
				dts.ScanDt(y.on(s), u.on(s), raw.on(s), bias.on(s), bt.on(s), ct.on(s), ldbc, a.on(s), dskip.on(s), nil, sT.on(s), ckpt.on(s), B, T, E, N)
				return
			}
			be.Dt(delta.on(s), rawCPU.on(s), bias.on(s), B*T, E)
			be.Scan(y.on(s), u.on(s), delta.on(s), bt.on(s), ct.on(s), ldbc, a.on(s), dskip.on(s), nil, sT.on(s), ckpt.on(s), B, T, E, N)
		})
		e.check("scan dt y "+name, "scan", y, tolFP32)
		e.check("scan dt sT "+name, "scan", sT, tolFP32)
		e.check("scan dt ckpt "+name, "scan", ckpt, tolFP32)
		e.check("scan dt raw unchanged "+name, "scan", raw, 0)

		// With the gate inside the scan (GatedScanner): y as before and
		// g = y·silu(z), z the second half of (B·T, 2E) rows as the model's.
		xz := e.randn(B*T*2*E, 0, 2)
		z := xz.slice(E, B*T*2*E-E)
		yg, g := e.nan(B*T*E), e.nan(B*T*E)
		e.run(func(be backend.Backend, s side) {
			if gs, ok := be.(backend.GatedScanner); ok {
				gs.ScanDtGate(g.on(s), z.on(s), 2*E, yg.on(s), u.on(s), raw.on(s), bias.on(s), bt.on(s), ct.on(s), ldbc, a.on(s), dskip.on(s), nil, nil, nil, B, T, E, N)
				return
			}
			be.Scan(yg.on(s), u.on(s), delta.on(s), bt.on(s), ct.on(s), ldbc, a.on(s), dskip.on(s), nil, nil, nil, B, T, E, N)
			be.Gate(g.on(s), yg.on(s), z.on(s), 2*E, B*T, E)
		})
		e.check("scan dt gate y "+name, "scan", yg, tolFP32)
		e.check("scan dt gate g "+name, "scan", g, tolFP32)

		du, draw := e.nan(B*T*E), e.nan(B*T*E)
		dxdbl := e.nan(B * T * ldbc)
		dbt, dct := bcViews(dxdbl, R, N)
		dalog, ddskip := e.randn(E*N, 0, 1), e.randn(E, 0, 1)
		dbias := e.randn(E, 0, 1)
		dy := e.randn(B*T*E, 0, 1)
		e.run(func(be backend.Backend, s side) {
			if dts, ok := be.(backend.DtScanner); ok {
				dts.ScanDtBackward(du.on(s), draw.on(s), dbt.on(s), dct.on(s), dalog.on(s), ddskip.on(s), dbias.on(s), dy.on(s), u.on(s), raw.on(s), bias.on(s), bt.on(s), ct.on(s), ldbc, a.on(s), dskip.on(s), ckpt.on(s), B, T, E, N)
				return
			}
			be.ScanBackward(du.on(s), draw.on(s), dbt.on(s), dct.on(s), dalog.on(s), ddskip.on(s), dy.on(s), u.on(s), delta.on(s), bt.on(s), ct.on(s), ldbc, a.on(s), dskip.on(s), ckpt.on(s), B, T, E, N)
			be.DtBackward(draw.on(s), dbias.on(s), draw.on(s), rawCPU.on(s), B*T, E)
		})
		// checkGrads checks the gradients both backward runs write.
		checkGrads := func(what string) {
			e.check(what+" du "+name, "scan backward", du, tolFP32)
			e.check(what+" draw "+name, "scan backward", draw, tolFP32)
			e.check(what+" dBt,dCt "+name, "scan backward", dxdbl, tolFP32)
			e.check(what+" dalog "+name, "scan backward", dalog, tolFP32)
			e.check(what+" ddskip "+name, "scan backward", ddskip, tolFP32)
			e.check(what+" dbias "+name, "scan backward", dbias, tolFP32)
		}
		checkGrads("scan dt backward")

		// With the gate's backward inside the scan's (GatedScanner): dg the
		// gradient of g, dz into the second half of (B·T, 2E) rows as the
		// model's dxz; the CPU runs GateBackward, then the scan's and Dt's.
		dg := e.randn(B*T*E, 0, 1)
		dxz := e.nan(B * T * 2 * E)
		dz := dxz.slice(E, B*T*2*E-E)
		dyc := e.nan(B * T * E) // the CPU's dy
		e.run(func(be backend.Backend, s side) {
			if gs, ok := be.(backend.GatedScanner); ok {
				gs.ScanDtGateBackward(dz.on(s), dg.on(s), yg.on(s), z.on(s), 2*E, du.on(s), draw.on(s), dbt.on(s), dct.on(s), dalog.on(s), ddskip.on(s), dbias.on(s), u.on(s), raw.on(s), bias.on(s), bt.on(s), ct.on(s), ldbc, a.on(s), dskip.on(s), ckpt.on(s), B, T, E, N)
				return
			}
			be.GateBackward(dyc.on(s), dz.on(s), dg.on(s), yg.on(s), z.on(s), 2*E, B*T, E)
			be.ScanBackward(du.on(s), draw.on(s), dbt.on(s), dct.on(s), dalog.on(s), ddskip.on(s), dyc.on(s), u.on(s), delta.on(s), bt.on(s), ct.on(s), ldbc, a.on(s), dskip.on(s), ckpt.on(s), B, T, E, N)
			be.DtBackward(draw.on(s), dbias.on(s), draw.on(s), rawCPU.on(s), B*T, E)
		})
		e.check("scan gate backward dz "+name, "scan backward", dz, tolFP32)
		checkGrads("scan gate backward")
	}
}
