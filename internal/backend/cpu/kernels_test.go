package cpu

import (
	"fmt"
	"math/rand/v2"
	"testing"
)

func TestNormMatchesReference(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for _, tc := range []struct {
		rows, D int
		rms     bool
	}{{1, 1, false}, {3, 7, false}, {40, 64, false}, {5, 33, true}, {70, 128, true}} {
		t.Run(fmt.Sprintf("%dx%d/rms=%v", tc.rows, tc.D, tc.rms), func(t *testing.T) {
			x := randSlice(r, tc.rows*tc.D, 2)
			for i := range x {
				x[i] += 0.5
			}
			w := randSlice(r, tc.D, 1)
			b := randSlice(r, tc.D, 1)
			out := make([]float32, tc.rows*tc.D)
			mean := make([]float32, tc.rows)
			rstd := make([]float32, tc.rows)
			NormForward(out, mean, rstd, x, w, b, tc.rows, tc.D, 1e-5, tc.rms)
			if d := maxRelDiff(out, refNorm(x, w, b, tc.rows, tc.D, 1e-5, tc.rms)); d > 1e-6 {
				t.Fatalf("forward differs from reference by %.3g", d)
			}
		})
	}
}

func TestNormBackwardFiniteDifference(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	for _, rms := range []bool{false, true} {
		rows, D := 4, 9
		x := randSlice(r, rows*D, 1)
		w := randSlice(r, D, 1)
		b := randSlice(r, D, 1)
		R := randSlice(r, rows*D, 1)
		out := make([]float32, rows*D)
		mean := make([]float32, rows)
		rstd := make([]float32, rows)
		loss := func() float64 {
			NormForward(out, mean, rstd, x, w, b, rows, D, 1e-5, rms)
			return weightedLoss(out, R)
		}
		loss()
		dx := make([]float32, rows*D)
		dw := make([]float32, D)
		db := make([]float32, D)
		NormBackward(dx, dw, db, R, x, w, mean, rstd, rows, D, rms)
		checkGrad(t, fmt.Sprintf("norm rms=%v dx", rms), x, dx, loss)
		checkGrad(t, fmt.Sprintf("norm rms=%v dw", rms), w, dw, loss)
		if !rms {
			checkGrad(t, "norm db", b, db, loss)
		}
	}
}

func TestConvMatchesReference(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	for _, tc := range []struct{ B, T, E, K int }{{1, 1, 1, 1}, {2, 5, 3, 4}, {3, 17, 70, 4}, {2, 2, 40, 5}, {1, 9, 8, 2}} {
		for _, withPrev := range []bool{false, true} {
			B, T, E, K := tc.B, tc.T, tc.E, tc.K
			ldx := 2*E + 1
			xi := randSlice(r, B*T*ldx, 1)
			w := randSlice(r, E*K, 1)
			bias := randSlice(r, E, 1)
			var prev []float32
			if withPrev && K > 1 {
				prev = randSlice(r, B*(K-1)*E, 1)
			}
			u := make([]float32, B*T*E)
			pre := make([]float32, B*T*E)
			ConvForward(u, pre, xi, ldx, prev, w, bias, B, T, E, K)
			want := refConv(xi, ldx, prev, w, bias, B, T, E, K)
			if d := maxRelDiff(pre, want); d > 1e-6 {
				t.Fatalf("%+v prev=%v: pre differs by %.3g", tc, withPrev, d)
			}
			wu := make([]float64, len(want))
			for i, v := range want {
				wu[i] = v * sig(v)
			}
			if d := maxRelDiff(u, wu); d > 1e-6 {
				t.Fatalf("%+v prev=%v: silu output differs by %.3g", tc, withPrev, d)
			}
		}
	}
}

func TestConvBackwardFiniteDifference(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 8))
	B, T, E, K := 2, 6, 5, 4
	ldx := 2 * E
	xi := randSlice(r, B*T*ldx, 1)
	prev := randSlice(r, B*(K-1)*E, 1)
	w := randSlice(r, E*K, 1)
	bias := randSlice(r, E, 1)
	R := randSlice(r, B*T*E, 1)
	u := make([]float32, B*T*E)
	pre := make([]float32, B*T*E)
	loss := func() float64 {
		ConvForward(u, pre, xi, ldx, prev, w, bias, B, T, E, K)
		return weightedLoss(u, R)
	}
	loss()
	dxi := make([]float32, B*T*ldx)
	dw := make([]float32, E*K)
	db := make([]float32, E)
	ConvBackward(dxi, ldx, dw, db, R, pre, xi, prev, w, B, T, E, K)
	// Only the first E columns of each row are inputs.
	for i := range xi {
		if i%ldx >= E {
			xi[i], dxi[i] = 0, 0
		}
	}
	checkGrad(t, "conv dxi", xi, dxi, loss)
	checkGrad(t, "conv dw", w, dw, loss)
	checkGrad(t, "conv dbias", bias, db, loss)
}

func TestConvState(t *testing.T) {
	r := rand.New(rand.NewPCG(9, 10))
	// Running the conv over a sequence in pieces, carrying ConvState,
	// equals running it over the whole sequence.
	for _, pieces := range [][]int{{7}, {3, 4}, {1, 1, 5}, {2, 1, 1, 3}} {
		B, E, K := 2, 6, 4
		T := 7
		ldx := E
		xi := randSlice(r, B*T*E, 1)
		w := randSlice(r, E*K, 1)
		whole := make([]float32, B*T*E)
		ConvForward(whole, nil, xi, ldx, nil, w, nil, B, T, E, K)
		state := make([]float32, B*(K-1)*E)
		t0 := 0
		for _, n := range pieces {
			part := make([]float32, B*n*E)
			chunk := make([]float32, B*n*E)
			for b := 0; b < B; b++ {
				copy(chunk[b*n*E:(b+1)*n*E], xi[(b*T+t0)*E:(b*T+t0+n)*E])
			}
			ConvForward(part, nil, chunk, ldx, state, w, nil, B, n, E, K)
			ConvState(state, state, chunk, ldx, B, n, E, K)
			for b := 0; b < B; b++ {
				for i := 0; i < n*E; i++ {
					if got, want := part[b*n*E+i], whole[(b*T+t0)*E+i]; got != want {
						t.Fatalf("pieces %v: b=%d t=%d: got %g want %g", pieces, b, t0+i/E, got, want)
					}
				}
			}
			t0 += n
		}
	}
}

// scanTestInputs returns random scan inputs for rows positions of E
// channels: u, Δ in [0.01, 0.01+span), and an x_proj output of rows of
// ldbc values (the callers take Bt and Ct as views into it).
func scanTestInputs(r *rand.Rand, rows, E, ldbc int, span float64) (u, delta, xdbl []float32) {
	u = randSlice(r, rows*E, 1)
	delta = make([]float32, rows*E)
	for i := range delta {
		delta[i] = float32(r.Float64()*span + 0.01)
	}
	return u, delta, randSlice(r, rows*ldbc, 1)
}

func TestScanMatchesReference(t *testing.T) {
	r := rand.New(rand.NewPCG(11, 12))
	for _, tc := range []struct{ B, T, E, N int }{{1, 1, 1, 1}, {2, 5, 3, 4}, {2, 150, 20, 16}, {1, 70, 9, 7}, {2, 150, 32, 16}, {1, 70, 48, 7}, {3, 9, 64, 1}, {3, 20, 7, 32}, {1, 5, 16, 16}} {
		for _, withState := range []bool{false, true} {
			B, T, E, N := tc.B, tc.T, tc.E, tc.N
			ldbc := 2*N + 3
			u, delta, xdbl := scanTestInputs(r, B*T, E, ldbc, 0.5)
			Bt, Ct := xdbl[3:], xdbl[3+N:]
			Alog := randSlice(r, E*N, 0.7)
			Dskip := randSlice(r, E, 1)
			var s0 []float32
			if withState {
				s0 = randSlice(r, B*E*N, 1)
			}
			A := make([]float32, E*N)
			NegExp(A, Alog)
			y := make([]float32, B*T*E)
			sT := make([]float32, B*E*N)
			ScanForward(y, u, delta, Bt, Ct, ldbc, A, Dskip, s0, sT, nil, B, T, E, N)
			wy, ws := refScan(u, delta, Bt, Ct, ldbc, Alog, Dskip, s0, B, T, E, N)
			if d := maxRelDiff(y, wy); d > 1e-5 {
				t.Fatalf("%+v state=%v: y differs by %.3g", tc, withState, d)
			}
			if d := maxRelDiff(sT, ws); d > 1e-5 {
				t.Fatalf("%+v state=%v: final state differs by %.3g", tc, withState, d)
			}
			// Stepping one time step at a time gives the same outputs
			// and final state (this runs the single-step kernel).
			s := make([]float32, B*E*N)
			if s0 != nil {
				copy(s, s0)
			}
			ys := make([]float32, B*T*E)
			ut, dt, yt := make([]float32, B*E), make([]float32, B*E), make([]float32, B*E)
			xt := make([]float32, B*ldbc)
			for tt := 0; tt < T; tt++ {
				for b := 0; b < B; b++ {
					copy(ut[b*E:(b+1)*E], u[(b*T+tt)*E:])
					copy(dt[b*E:(b+1)*E], delta[(b*T+tt)*E:])
					copy(xt[b*ldbc:(b+1)*ldbc], xdbl[(b*T+tt)*ldbc:])
				}
				ScanForward(yt, ut, dt, xt[3:], xt[3+N:], ldbc, A, Dskip, s, s, nil, B, 1, E, N)
				for b := 0; b < B; b++ {
					copy(ys[(b*T+tt)*E:(b*T+tt+1)*E], yt[b*E:])
				}
			}
			if d := maxRelDiff(ys, wy); d > 1e-5 {
				t.Fatalf("%+v: stepped y differs by %.3g", tc, d)
			}
			if d := maxRelDiff(s, ws); d > 1e-5 {
				t.Fatalf("%+v: stepped final state differs by %.3g", tc, d)
			}
		}
	}
}

func TestScanBackwardFiniteDifference(t *testing.T) {
	r := rand.New(rand.NewPCG(13, 14))
	// T spans several chunks so the recomputation inside ScanBackward is
	// exercised; ScanChunk is large, so use few channels.
	for _, E := range []int{3, 16} { // 16: the vector kernels where built
		testScanBackwardFD(t, r, E)
	}
}

func testScanBackwardFD(t *testing.T, r *rand.Rand, E int) {
	B, T, N := 2, ScanChunk+9, 4
	ldbc := 2*N + 2
	u := randSlice(r, B*T*E, 1)
	delta := make([]float32, B*T*E)
	for i := range delta {
		delta[i] = float32(r.Float64()*0.3 + 0.05)
	}
	xdbl := randSlice(r, B*T*ldbc, 0.5)
	Bt, Ct := xdbl[2:], xdbl[2+N:]
	Alog := randSlice(r, E*N, 0.5)
	Dskip := randSlice(r, E, 1)
	R := randSlice(r, B*T*E, 1)
	y := make([]float32, B*T*E)
	A := make([]float32, E*N)
	ckpt := make([]float32, B*ScanChunks(T)*E*N)
	loss := func() float64 {
		NegExp(A, Alog)
		ScanForward(y, u, delta, Bt, Ct, ldbc, A, Dskip, nil, nil, ckpt, B, T, E, N)
		return weightedLoss(y, R)
	}
	loss()
	du := make([]float32, B*T*E)
	ddelta := make([]float32, B*T*E)
	dxdbl := make([]float32, B*T*ldbc)
	dAlog := make([]float32, E*N)
	dD := make([]float32, E)
	ScanBackward(du, ddelta, dxdbl[2:], dxdbl[2+N:], dAlog, dD, R, u, delta, Bt, Ct, ldbc, A, Dskip, ckpt, B, T, E, N)
	checkGrad(t, "scan du", u, du, loss)
	checkGrad(t, "scan ddelta", delta, ddelta, loss)
	for i := range xdbl {
		if i%ldbc < 2 {
			xdbl[i], dxdbl[i] = 0, 0
		}
	}
	checkGrad(t, "scan dB,dC", xdbl, dxdbl, loss)
	checkGrad(t, "scan dAlog", Alog, dAlog, loss)
	checkGrad(t, "scan dD", Dskip, dD, loss)
}

// ScanBackward (the vector kernels where built) against the plain
// backward on the same checkpoints, at shapes that cover several channel
// blocks and a partial one (E 160 is blocks of 64, 64 and 32 channels), N
// of 16 and 32 (whole lane reductions) and 7 and 20 (remainders), and T
// that is not a multiple of ScanChunk. How ScanBackward splits the
// channels depends on the core count, so the vector kernel also runs once
// over all of them.
func TestScanBackwardMatchesPlain(t *testing.T) {
	r := rand.New(rand.NewPCG(19, 20))
	for _, tc := range []struct{ B, T, E, N int }{{2, 150, 160, 16}, {1, 70, 48, 32}, {2, 65, 32, 7}, {1, 130, 64, 20}, {3, 9, 16, 16}} {
		B, T, E, N := tc.B, tc.T, tc.E, tc.N
		ldbc := 2*N + 5
		u, delta, xdbl := scanTestInputs(r, B*T, E, ldbc, 0.4)
		Bt, Ct := xdbl[5:], xdbl[5+N:]
		A := make([]float32, E*N)
		NegExp(A, randSlice(r, E*N, 1))
		Dskip := randSlice(r, E, 1)
		dy := randSlice(r, B*T*E, 1)
		ckpt := make([]float32, B*ScanChunks(T)*E*N)
		ScanForward(make([]float32, B*T*E), u, delta, Bt, Ct, ldbc, A, Dskip, nil, nil, ckpt, B, T, E, N)

		du, dd := make([]float32, B*T*E), make([]float32, B*T*E)
		dx := make([]float32, B*T*ldbc)
		dAlog, dD := randSlice(r, E*N, 1), randSlice(r, E, 1) // accumulated into
		wdAlog, wdD := append([]float32(nil), dAlog...), append([]float32(nil), dD...)
		vdAlog, vdD := append([]float32(nil), dAlog...), append([]float32(nil), dD...)
		ScanBackward(du, dd, dx[5:], dx[5+N:], dAlog, dD, dy, u, delta, Bt, Ct, ldbc, A, Dskip, ckpt, B, T, E, N)

		wdu, wdd := make([]float32, B*T*E), make([]float32, B*T*E)
		pBC := make([]float32, 2*B*T*N)
		scanBackwardPlain(wdu, wdd, pBC[:B*T*N], pBC[B*T*N:], wdAlog, wdD, dy, u, delta, Bt, Ct, ldbc, A, Dskip, ckpt, B, T, E, N, 0, E)
		wdx := make([]float32, B*T*ldbc)
		for row := 0; row < B*T; row++ {
			copy(wdx[row*ldbc+5:], pBC[row*N:(row+1)*N])
			copy(wdx[row*ldbc+5+N:], pBC[B*T*N+row*N:B*T*N+(row+1)*N])
		}
		type cmp struct {
			name      string
			got, want []float32
		}
		cmps := []cmp{{"du", du, wdu}, {"ddelta", dd, wdd}, {"dB,dC", dx, wdx}, {"dAlog", dAlog, wdAlog}, {"dD", dD, wdD}}
		if scanVector {
			vdu, vdd := make([]float32, B*T*E), make([]float32, B*T*E)
			vBC := make([]float32, 2*B*T*N)
			scanBackwardVec(vdu, vdd, vBC[:B*T*N], vBC[B*T*N:], vdAlog, vdD, dy, u, delta, Bt, Ct, ldbc, A, Dskip, ckpt, B, T, E, N, 0, E)
			cmps = append(cmps, cmp{"du (one vector call)", vdu, wdu}, cmp{"ddelta (one vector call)", vdd, wdd},
				cmp{"dB,dC (one vector call)", vBC, pBC}, cmp{"dAlog (one vector call)", vdAlog, wdAlog}, cmp{"dD (one vector call)", vdD, wdD})
		}
		for _, c := range cmps {
			want := make([]float64, len(c.want))
			for i, v := range c.want {
				want[i] = float64(v)
			}
			if d := maxRelDiff(c.got, want); d > 2e-5 {
				t.Errorf("%+v: %s differs from the plain backward by %.3g", tc, c.name, d)
			}
		}
	}
}

func TestElementwiseBackwardFiniteDifference(t *testing.T) {
	r := rand.New(rand.NewPCG(15, 16))
	rows, E := 5, 7
	// Dt.
	raw0 := randSlice(r, rows*E, 2)
	bias := randSlice(r, E, 1)
	R := randSlice(r, rows*E, 1)
	raw := make([]float32, rows*E)
	delta := make([]float32, rows*E)
	lossDt := func() float64 {
		copy(raw, raw0)
		DtForward(delta, raw, bias, rows, E)
		return weightedLoss(delta, R)
	}
	lossDt()
	draw := make([]float32, rows*E)
	dbias := make([]float32, E)
	DtBackward(draw, dbias, R, raw, rows, E)
	checkGrad(t, "dt draw", raw0, draw, lossDt)
	checkGrad(t, "dt dbias", bias, dbias, lossDt)

	// Gate.
	ldz := 2 * E
	y := randSlice(r, rows*E, 1)
	z := randSlice(r, rows*ldz, 2)
	out := make([]float32, rows*E)
	lossGate := func() float64 {
		GateForward(out, y, z, ldz, rows, E)
		return weightedLoss(out, R)
	}
	lossGate()
	dy := make([]float32, rows*E)
	dz := make([]float32, rows*ldz)
	GateBackward(dy, dz, R, y, z, ldz, rows, E)
	checkGrad(t, "gate dy", y, dy, lossGate)
	for i := range z {
		if i%ldz >= E {
			z[i], dz[i] = 0, 0
		}
	}
	checkGrad(t, "gate dz", z, dz, lossGate)

	// Embedding.
	V, D, n := 11, 4, 9
	W := randSlice(r, V*D, 1)
	ids := []int32{3, 0, 3, 10, 7, 3, 1, 0, 10}
	Re := randSlice(r, n*D, 1)
	emb := make([]float32, n*D)
	lossEmb := func() float64 {
		EmbedForward(emb, ids, W, n, D)
		return weightedLoss(emb, Re)
	}
	dW := make([]float32, V*D)
	EmbedBackward(dW, Re, ids, n, D)
	checkGrad(t, "embed dW", W, dW, lossEmb)
}

func TestCrossEntropy(t *testing.T) {
	r := rand.New(rand.NewPCG(17, 18))
	n, V := 6, 13
	logits := randSlice(r, n*V, 3)
	targets := []int32{0, 12, -1, 5, 5, 7}
	var want float64
	for i := 0; i < n; i++ {
		if targets[i] < 0 {
			continue
		}
		var z float64
		for j := 0; j < V; j++ {
			z += mathExp(logits[i*V+j])
		}
		want += mathLog(z) - float64(logits[i*V+int(targets[i])])
	}
	nll := make([]float32, n)
	got := CrossEntropy(nil, nll, logits, targets, n, V, 1)
	if d := got - want; d > 1e-4*want || d < -1e-4*want {
		t.Fatalf("loss %g, want %g", got, want)
	}
	if nll[2] != 0 {
		t.Fatalf("unscored row has nll %g", nll[2])
	}
	d := make([]float32, n*V)
	CrossEntropy(d, nil, logits, targets, n, V, 0.5)
	checkGrad(t, "cross-entropy dlogits", logits, d, func() float64 {
		return 0.5 * CrossEntropy(nil, nil, logits, targets, n, V, 1)
	})
	// In place: dlogits aliasing logits gives the same gradient.
	inplace := append([]float32(nil), logits...)
	CrossEntropy(inplace, nil, inplace, targets, n, V, 0.5)
	for i := range d {
		if d[i] != inplace[i] {
			t.Fatalf("in-place gradient differs at %d: %g vs %g", i, inplace[i], d[i])
		}
	}
}
