// whole_bench.cu — times the one-kernel decode step (whole.cuh) on random
// bf16 weights of a D×L model and prints block 0's mean time per phase of a
// layer (a WHOLE_TIMING build), and the cost of a grid barrier alone.
//
//   make -C cuda whole_bench && cuda/whole_bench [D [L [mode]]]
//
// D 1024 L 53 is the 353M model, 1792 48 the 972M; mode 1 reads the
// weights from global memory.
#define WHOLE_TIMING
#include "kernels.cu"
#include <stdlib.h>

// k_fill16 fills n bf16 values with small pseudo-random numbers. The timer
// fills the whole weight buffer this way, float32 sections included: a
// float32 whose high half is a small bf16 is about that value.
__global__ void k_fill16(uint16_t *p, int64_t n, uint32_t seed) {
    GRID_LOOP(i, n) {
        uint32_t x = (uint32_t)i * 2654435761u ^ seed;
        x ^= x >> 13; x *= 0x5bd1e995u; x ^= x >> 15;
        float v = ((x & 0xffff) / 65536.f - 0.5f) * 0.05f;
        p[i] = __bfloat16_as_ushort(__float2bfloat16(v));
    }
}
__global__ void k_bar_only(unsigned *bar, int n) {
    unsigned k = 0;
    for (int i = 0; i < n; i++) grid_sync(bar, &k);
}
#define C(x) do { int rc_ = (x); if (rc_) { printf("%s: %s\n", #x, mb_last_error()); return 1; } } while (0)
#define CU(x) do { cudaError_t e_ = (x); if (e_) { printf("%s: %s\n", #x, cudaGetErrorString(e_)); return 1; } } while (0)
int main(int argc, char **argv) {
    int D = argc > 1 ? atoi(argv[1]) : 1024, L = argc > 2 ? atoi(argv[2]) : 53;
    int mode = argc > 3 ? atoi(argv[3]) : 0;
    C(mb_init(0, 0));
    mb_whole_shape s = {L, D, 2 * D, 16, 4, (D + 15) / 16, 256, 1e-5f, 0, mode};
    mb_whole_layout lay;
    C(mb_whole_plan(&s, &lay));
    char *w; float *h, *state, *logits, *scratch;
    CU(cudaMalloc(&w, lay.total));
    k_fill16<<<1024, 256, 0, g_stream>>>((uint16_t *)w, lay.total / 2, 7);
    int64_t lstride = (s.K - 1) * s.E + s.E * s.N;
    CU(cudaMalloc(&h, D * 4)); CU(cudaMalloc(&state, L * lstride * 4)); CU(cudaMalloc(&logits, 256 * 4));
    CU(cudaMalloc(&scratch, lay.scratch_floats * 4));
    CU(cudaMemsetAsync(state, 0, L * lstride * 4, g_stream));
    CU(cudaMemsetAsync(h, 0, D * 4, g_stream));
    for (int i = 0; i < 3; i++) C(mb_step_whole(&s, w, h, state, logits, scratch));
    cudaEvent_t a, b; cudaEventCreate(&a); cudaEventCreate(&b);
    int reps = 50;
    cudaEventRecord(a, g_stream);
    for (int i = 0; i < reps; i++) C(mb_step_whole(&s, w, h, state, logits, scratch));
    cudaEventRecord(b, g_stream);
    CU(cudaEventSynchronize(b));
    float ms; cudaEventElapsedTime(&ms, a, b);
    double per = ms / reps;
    double gb = (double)lay.total / 1e9;
    printf("D %d L %d mode %d: %.3f ms/step (%.0f bytes/s), %.0f GB/s of %.2f GB\n", D, L, mode, per, 1e3 / per, gb / (per / 1e3), gb);
    static unsigned long long t[4096 * 16];
    CU(cudaMemcpyFromSymbol(t, g_whole_times, sizeof(unsigned long long) * L * 16));
    const char *names[] = {"wait", "norm", "indot", "conv+xp", "bar1", "reduce", "scan", "bar2", "gload", "outdot", "bar3", "next"};
    double sum[12] = {0};
    for (int l = 1; l < L - 1; l++) {
        for (int k = 0; k < 11; k++) sum[k] += (double)(t[l * 16 + k + 1] - t[l * 16 + k]);
        sum[11] += (double)(t[(l + 1) * 16] - t[l * 16 + 11]);
    }
    printf("block 0, mean ns per layer:");
    double tot = 0;
    for (int k = 0; k < 12; k++) { printf(" %s %.0f", names[k], sum[k] / (L - 2)); tot += sum[k] / (L - 2); }
    printf(" | total %.0f\n", tot);
    static unsigned long long c[4096 * 16];
    CU(cudaMemcpyFromSymbol(c, g_whole_clocks, sizeof(unsigned long long) * L * 16));
    double dt = (double)(t[(L - 2) * 16 + 11] - t[16]), dc = (double)(c[(L - 2) * 16 + 11] - c[16]);
    printf("SM clock during the step: %.0f MHz; %d threads per block\n", dc / dt * 1e3, kWholeThreads);
    unsigned *bar; CU(cudaMalloc(&bar, 4 * g_whole_sms)); CU(cudaMemset(bar, 0, 4 * g_whole_sms));
    int nb = 159;
    void *args[] = {&bar, &nb};
    CU(cudaLaunchCooperativeKernel((void *)k_bar_only, g_whole_sms, 512, args, 0, g_stream));
    CU(cudaMemset(bar, 0, 4 * g_whole_sms));
    cudaEventRecord(a, g_stream);
    CU(cudaLaunchCooperativeKernel((void *)k_bar_only, g_whole_sms, 512, args, 0, g_stream));
    cudaEventRecord(b, g_stream);
    CU(cudaEventSynchronize(b));
    cudaEventElapsedTime(&ms, a, b);
    printf("barrier only: %.0f ns per barrier\n", ms * 1e6 / nb);
    return 0;
}
