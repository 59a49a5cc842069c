package model_test

import (
	"math"
	"math/rand/v2"
	"sort"
	"testing"

	"github.com/mambabyte/mambabyte/internal/backend/cpu"
	"github.com/mambabyte/mambabyte/internal/model"
)

// testConfigs cover both norms, tied and separate heads, and unusual K,
// expand, N and R.
func testConfigs() map[string]model.Config {
	base := model.DefaultConfig()
	base.DModel, base.NLayer = 16, 2
	odd := base
	odd.DModel, odd.NLayer, odd.DConv, odd.Expand, odd.DState, odd.DTRank = 12, 3, 3, 3, 5, 3
	odd.Norm, odd.TieEmbeddings = model.RMSNorm, false
	odd.VocabSize = 40
	nobias := base
	nobias.ConvBias = false
	nobias.DConv = 1
	return map[string]model.Config{"layernorm-tied": base, "rmsnorm-odd": odd, "no-conv-bias-K1": nobias}
}

// perturbed returns a model whose weights are moved well off their
// initialisation, so every term of every formula matters.
func perturbed(t testing.TB, cfg model.Config, seed uint64) *model.Model {
	t.Helper()
	m, err := model.New(cfg, cpu.New())
	if err != nil {
		t.Fatal(err)
	}
	m.Init(seed)
	r := rand.New(rand.NewPCG(seed, 99))
	p := m.ParamsHost()
	for name, v := range p {
		for i := range v {
			switch {
			case name == model.NameEmbed:
				v[i] = float32(r.NormFloat64())
			default:
				v[i] += float32(r.NormFloat64() * 0.3)
			}
		}
	}
	if err := m.SetParams(p); err != nil {
		t.Fatal(err)
	}
	return m
}

func randomBytes(r *rand.Rand, n, V int) []int32 {
	ids := make([]int32, n)
	for i := range ids {
		ids[i] = int32(r.IntN(V))
	}
	return ids
}

// nextTargets returns the targets of a (B,T) batch: the next byte, and -1
// at each row's last position.
func nextTargets(ids []int32, B, T int) []int32 {
	tg := make([]int32, len(ids))
	for b := 0; b < B; b++ {
		for t := 0; t < T; t++ {
			if t+1 < T {
				tg[b*T+t] = ids[b*T+t+1]
			} else {
				tg[b*T+t] = -1
			}
		}
	}
	return tg
}

func relDiff(got, want []float32) float64 {
	var num, den float64
	for i := range want {
		d := float64(got[i]) - float64(want[i])
		num += d * d
		den += float64(want[i]) * float64(want[i])
	}
	return math.Sqrt(num / math.Max(den, 1e-300))
}

func TestGradientFiniteDifference(t *testing.T) {
	for name, cfg := range testConfigs() {
		t.Run(name, func(t *testing.T) {
			m := perturbed(t, cfg, 7)
			r := rand.New(rand.NewPCG(1, 1))
			B, T := 2, 9
			ids := randomBytes(r, B*T, cfg.VocabSize)
			tg := nextTargets(ids, B, T)
			pass := m.NewPass(B, T, true)
			m.ZeroGrads()
			if _, _, err := pass.Forward(ids, tg, nil, nil, 1); err != nil {
				t.Fatal(err)
			}
			if err := pass.Backward(); err != nil {
				t.Fatal(err)
			}
			grads := m.GradsHost()
			ref := newRef(cfg, m.ParamsHost())
			for _, spec := range m.Specs() {
				p, g := ref.p[spec.Name], grads[spec.Name]
				// The 16 coordinates with the largest gradients, and 8 more
				// at random.
				idx := make([]int, len(p))
				for i := range idx {
					idx[i] = i
				}
				sort.Slice(idx, func(a, b int) bool { return math.Abs(float64(g[idx[a]])) > math.Abs(float64(g[idx[b]])) })
				if len(idx) > 24 {
					rest := idx[16:]
					r.Shuffle(len(rest), func(a, b int) { rest[a], rest[b] = rest[b], rest[a] })
					idx = idx[:24]
				}
				var num, den float64
				for _, i := range idx {
					old := p[i]
					const h = 1e-5
					p[i] = old + h
					lp := ref.loss(ids, B, T)
					p[i] = old - h
					lm := ref.loss(ids, B, T)
					p[i] = old
					fd := (lp - lm) / (2 * h)
					num += (fd - float64(g[i])) * (fd - float64(g[i]))
					den += fd * fd
				}
				if rel := math.Sqrt(num / math.Max(den, 1e-300)); rel > 1e-3 {
					t.Errorf("%s: gradient differs from finite differences by %.3g relative", spec.Name, rel)
				}
			}
		})
	}
}

// The fast forward matches the plain float64 reference.
func TestForwardMatchesReference(t *testing.T) {
	for name, cfg := range testConfigs() {
		t.Run(name, func(t *testing.T) {
			m := perturbed(t, cfg, 11)
			r := rand.New(rand.NewPCG(4, 4))
			T := 100
			ids := randomBytes(r, T, cfg.VocabSize)
			pass := m.NewPass(1, T, false)
			if _, _, err := pass.Forward(ids, nil, nil, nil, 0); err != nil {
				t.Fatal(err)
			}
			got := make([]float32, T*cfg.VocabSize)
			pass.Logits(got)
			var want []float32
			for _, row := range newRef(cfg, m.ParamsHost()).logits(ids) {
				for _, v := range row {
					want = append(want, float32(v))
				}
			}
			if d := relDiff(got, want); d > 1e-5 {
				t.Errorf("logits differ from the float64 reference by %.3g relative", d)
			}
		})
	}
}

// The recurrent step, byte by byte, gives the logits of the parallel
// forward; so does the parallel forward run over chunks with a carried
// state.
func TestStepAndChunksMatchParallel(t *testing.T) {
	for name, cfg := range testConfigs() {
		t.Run(name, func(t *testing.T) {
			m := perturbed(t, cfg, 3)
			r := rand.New(rand.NewPCG(2, 2))
			B, T := 2, 150 // spans several scan chunks
			V := cfg.VocabSize
			ids := randomBytes(r, B*T, V)
			whole := make([]float32, B*T*V)
			pass := m.NewPass(B, T, false)
			if _, _, err := pass.Forward(ids, nil, nil, nil, 0); err != nil {
				t.Fatal(err)
			}
			pass.Logits(whole)

			st := m.NewState(B)
			sp := m.NewStepper(B)
			stepped := make([]float32, B*T*V)
			for tt := 0; tt < T; tt++ {
				logits, err := sp.Step(st, []int32{ids[tt], ids[T+tt]})
				if err != nil {
					t.Fatal(err)
				}
				for b := 0; b < B; b++ {
					copy(stepped[(b*T+tt)*V:(b*T+tt+1)*V], logits[b*V:(b+1)*V])
				}
			}
			if d := relDiff(stepped, whole); d > 1e-5 {
				t.Errorf("step-by-step logits differ from parallel by %.3g relative", d)
			}

			st.Reset()
			chunked := make([]float32, B*T*V)
			off := 0
			for _, n := range []int{1, 70, 3, 76} {
				part := m.NewPass(B, n, false)
				cids := make([]int32, 0, B*n)
				for b := 0; b < B; b++ {
					cids = append(cids, ids[b*T+off:b*T+off+n]...)
				}
				if _, _, err := part.Forward(cids, nil, st, nil, 0); err != nil {
					t.Fatal(err)
				}
				out := make([]float32, B*n*V)
				part.Logits(out)
				for b := 0; b < B; b++ {
					copy(chunked[(b*T+off)*V:], out[b*n*V:(b+1)*n*V])
				}
				off += n
			}
			if d := relDiff(chunked, whole); d > 1e-5 {
				t.Errorf("chunked logits differ from parallel by %.3g relative", d)
			}
		})
	}
}

func TestStateSnapshotRestore(t *testing.T) {
	cfg := testConfigs()["layernorm-tied"]
	m := perturbed(t, cfg, 5)
	st := m.NewState(1)
	sp := m.NewStepper(1)
	for _, b := range []byte("abc") {
		if _, err := sp.Step(st, []int32{int32(b)}); err != nil {
			t.Fatal(err)
		}
	}
	snap := st.Clone()
	run := func() []float32 {
		var last []float32
		for _, b := range []byte("xyz") {
			l, err := sp.Step(st, []int32{int32(b)})
			if err != nil {
				t.Fatal(err)
			}
			last = append(last[:0], l...)
		}
		return last
	}
	first := run()
	if err := st.CopyFrom(snap); err != nil {
		t.Fatal(err)
	}
	second := run()
	for i := range first {
		if first[i] != second[i] {
			t.Fatalf("after restore, logit %d is %g, first run gave %g", i, second[i], first[i])
		}
	}
	if st.Bytes() != 4*cfg.NLayer*(cfg.DConv-1+cfg.DState)*cfg.DInner() {
		t.Fatalf("state size %d bytes", st.Bytes())
	}
}

func TestForwardRejectsBadInput(t *testing.T) {
	m := perturbed(t, testConfigs()["rmsnorm-odd"], 1)
	p := m.NewPass(1, 4, false)
	for _, tc := range []struct {
		ids, tg []int32
	}{
		{[]int32{1, 2, 3}, nil},
		{[]int32{1, 2, 3, 40}, nil},
		{[]int32{1, 2, 3, -1}, nil},
		{[]int32{1, 2, 3, 4}, []int32{1, 2}},
		{[]int32{1, 2, 3, 4}, []int32{1, 2, 3, 40}},
	} {
		if _, _, err := p.Forward(tc.ids, tc.tg, nil, nil, 0); err == nil {
			t.Errorf("ids %v targets %v: no error", tc.ids, tc.tg)
		}
	}
	if _, _, err := p.Forward([]int32{1, 2, 3, 4}, nil, m.NewState(2), nil, 0); err == nil {
		t.Error("state of the wrong stream count accepted")
	}
	if err := p.Backward(); err == nil {
		t.Error("backward of an inference pass accepted")
	}
}

func TestNoDecayAndRuns(t *testing.T) {
	for name, want := range map[string]bool{
		"backbone.layers.3.mixer.A_log":          true,
		"backbone.layers.3.mixer.D":              true,
		"backbone.layers.3.mixer.dt_proj.bias":   true,
		"backbone.layers.3.mixer.conv1d.bias":    true,
		"backbone.layers.3.norm.weight":          true,
		"backbone.layers.3.norm.bias":            true,
		"backbone.norm_f.weight":                 true,
		"backbone.layers.3.mixer.in_proj.weight": false,
		"backbone.layers.3.mixer.conv1d.weight":  false,
		"backbone.embeddings.weight":             false,
		"lm_head.weight":                         false,
	} {
		if got := model.NoDecay(name); got != want {
			t.Errorf("NoDecay(%q) = %v, want %v", name, got, want)
		}
	}
	m := perturbed(t, testConfigs()["rmsnorm-odd"], 1)
	total, next := 0, 0
	for _, r := range m.DecayRuns() {
		if r.Off != next {
			t.Fatalf("run at %d, want %d", r.Off, next)
		}
		next = r.Off + r.Len
		total += r.Len
	}
	if int64(total) != m.Cfg.NumParams() {
		t.Fatalf("runs cover %d values, model has %d", total, m.Cfg.NumParams())
	}
}

// A recomputing training pass gives the loss and gradients of the ordinary
// one, bit for bit on the CPU (the same operations run in the same order),
// and a second step with the same pass repeats them.
func TestRecomputePassMatches(t *testing.T) {
	for name, cfg := range testConfigs() {
		t.Run(name, func(t *testing.T) {
			m := perturbed(t, cfg, 11)
			r := rand.New(rand.NewPCG(5, 5))
			B, T := 2, 70 // more than one scan checkpoint chunk
			ids := randomBytes(r, B*T, cfg.VocabSize)
			tg := nextTargets(ids, B, T)
			run := func(p *model.Pass) (float64, map[string][]float32) {
				m.ZeroGrads()
				sum, _, err := p.Forward(ids, tg, nil, nil, 1/float32(B*T))
				if err != nil {
					t.Fatal(err)
				}
				if err := p.Backward(); err != nil {
					t.Fatal(err)
				}
				return sum, m.GradsHost()
			}
			wantLoss, want := run(m.NewPass(B, T, true))
			rp := m.NewRecomputePass(B, T)
			for round := 0; round < 2; round++ {
				loss, got := run(rp)
				if loss != wantLoss {
					t.Fatalf("round %d: loss %v, want %v", round, loss, wantLoss)
				}
				for _, spec := range m.Specs() {
					if d := relDiff(got[spec.Name], want[spec.Name]); d != 0 {
						t.Errorf("round %d: %s: gradient differs by %.3g relative", round, spec.Name, d)
					}
				}
			}
		})
	}
}
