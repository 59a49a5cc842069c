// cpu_peak: the float32 multiply-add peak of this CPU's AVX-512 units, the
// physical limit BENCHMARKS.md measures the CPU GEMM and training step
// against. Each thread runs 12 independent chains of 512-bit FMAs (enough
// to cover the instruction's latency) and, separately, of AVX512_BF16 dot
// products (VDPBF16PS: two bf16 products per float32 lane).
//
//   gcc -O2 -mavx512f -mavx512bf16 -fopenmp scripts/cpu_peak.c -o /tmp/cpu_peak
//   OMP_NUM_THREADS=2 /tmp/cpu_peak
#include <immintrin.h>
#include <omp.h>
#include <stdio.h>
#include <time.h>

static double now(void) {
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec + t.tv_nsec * 1e-9;
}

enum { CHAINS = 12 };
static const long iters = 200000000;

int main(void) {
	int threads = omp_get_max_threads();
	double sink = 0, t0 = now();
#pragma omp parallel reduction(+ : sink)
	{
		__m512 acc[CHAINS];
		for (int i = 0; i < CHAINS; i++) acc[i] = _mm512_set1_ps(i * 0.001f);
		__m512 b = _mm512_set1_ps(0.9999f), c = _mm512_set1_ps(0.0001f);
		for (long i = 0; i < iters; i++) {
#pragma GCC unroll 12
			for (int j = 0; j < CHAINS; j++) acc[j] = _mm512_fmadd_ps(acc[j], b, c);
		}
		for (int i = 0; i < CHAINS; i++) sink += _mm512_reduce_add_ps(acc[i]);
	}
	double t = now() - t0;
	printf("%d threads: float32 FMA %.1f GFLOP/s\n", threads, threads * iters * CHAINS * 16 * 2 / t / 1e9);
	t0 = now();
#pragma omp parallel reduction(+ : sink)
	{
		__m512 acc[CHAINS];
		for (int i = 0; i < CHAINS; i++) acc[i] = _mm512_set1_ps(i * 0.001f);
		__m512bh b = (__m512bh)_mm512_set1_epi16(0x3f80), c = (__m512bh)_mm512_set1_epi16(0x3a80);
		for (long i = 0; i < iters; i++) {
#pragma GCC unroll 12
			for (int j = 0; j < CHAINS; j++) acc[j] = _mm512_dpbf16_ps(acc[j], b, c);
		}
		for (int i = 0; i < CHAINS; i++) sink += _mm512_reduce_add_ps(acc[i]);
	}
	t = now() - t0;
	printf("%d threads: bf16 dot products %.1f GFLOP/s (checksum %g)\n", threads, threads * iters * CHAINS * 32 * 2 / t / 1e9, sink);
	return 0;
}
