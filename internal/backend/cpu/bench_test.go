package cpu

import (
	"math/rand/v2"
	"testing"
)

// scanBenchInputs returns scan inputs at the shape of the CPU training
// benchmark's layers (BENCHMARKS.md): B 4, T 1024, E 1024, N 16, Δ in
// softplus's usual range and A at mamba_ssm's initialisation, and the
// checkpoints of a forward over them.
func scanBenchInputs() (B, T, E, N, ldbc int, u, delta, xdbl, A, Dskip, ckpt []float32) {
	B, T, E, N = 4, 1024, 1024, 16
	ldbc = 32 + 2*N
	r := rand.New(rand.NewPCG(5, 6))
	u, delta, xdbl = scanTestInputs(r, B*T, E, ldbc, 0.1)
	A = make([]float32, E*N)
	for e := 0; e < E; e++ {
		for n := 0; n < N; n++ {
			A[e*N+n] = -float32(n + 1)
		}
	}
	Dskip = randSlice(r, E, 1)
	ckpt = make([]float32, B*ScanChunks(T)*E*N)
	ScanForward(make([]float32, B*T*E), u, delta, xdbl[32:], xdbl[32+N:], ldbc, A, Dskip, nil, nil, ckpt, B, T, E, N)
	return
}

// BenchmarkScanForward times the training forward's scan of one layer
// (with the checkpoints the backward needs). Bytes are state elements
// (B·T·E·N) times 4.
func BenchmarkScanForward(b *testing.B) {
	B, T, E, N, ldbc, u, delta, xdbl, A, Dskip, ckpt := scanBenchInputs()
	y := make([]float32, B*T*E)
	b.SetBytes(int64(B * T * E * N * 4))
	for b.Loop() {
		ScanForward(y, u, delta, xdbl[32:], xdbl[32+N:], ldbc, A, Dskip, nil, nil, ckpt, B, T, E, N)
	}
}

// BenchmarkScanBackward times one layer's scan backward.
func BenchmarkScanBackward(b *testing.B) {
	B, T, E, N, ldbc, u, delta, xdbl, A, Dskip, ckpt := scanBenchInputs()
	r := rand.New(rand.NewPCG(7, 8))
	dy := randSlice(r, B*T*E, 1)
	du, dd := make([]float32, B*T*E), make([]float32, B*T*E)
	dx := make([]float32, B*T*ldbc)
	dAlog, dD := make([]float32, E*N), make([]float32, E)
	b.SetBytes(int64(B * T * E * N * 4))
	for b.Loop() {
		ScanBackward(du, dd, dx[32:], dx[32+N:], dAlog, dD, dy, u, delta, xdbl[32:], xdbl[32+N:], ldbc, A, Dskip, ckpt, B, T, E, N)
	}
}
