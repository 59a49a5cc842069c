// step_bench.cu — times the decode step (step.cuh) of B streams (one unless
// given) on random bf16 weights of a D×L model, recorded in a CUDA graph as
// the backend records it (the blocks only; no embedding or head), and
// prints where a layer's time goes from the kernels' own clocks (a
// STEP_TRACE build: every block records when it starts, when its pdl_wait
// returns and when it ends). Of the many-stream step (B > 16) it traces the
// norm, the conv with x_proj's sums and the scan; cuBLAS's in_proj and
// out_proj are not traced, and run in the gaps before the conv and before
// the norm.
//
//   make -C cuda step_bench && cuda/step_bench [D [L [B]]]
//
// D 1024 L 53 is the 353M model, 1792 48 the 972M. Per kernel it prints
// the number of SMs its blocks ran on, and times relative to the end of
// the kernel before (its last block): the first and last block's start,
// wait and end, then the mean over blocks of the time from a block's wait
// to two midpoints (the tile loaded, in in_proj with the norm's partial
// statistics; then in_proj: the statistics merged, the others: the
// product done; the many-stream kernels record none, and print zeros).
// Reading the timer takes time too: the midpoints are a guide, the step
// time the measure.
#define STEP_TRACE
#include "kernels.cu"
#include <algorithm>
#include <vector>

#define C(x)                                                                                \
    do {                                                                                    \
        if (int rc_ = (x)) {                                                                \
            printf("%s: %s (%d)\n", #x, mb_last_error(), rc_);                              \
            return 1;                                                                       \
        }                                                                                   \
    } while (0)
#define CU(x)                                                                               \
    do {                                                                                    \
        if (cudaError_t e_ = (x)) {                                                         \
            printf("%s: %s\n", #x, cudaGetErrorString(e_));                                 \
            return 1;                                                                       \
        }                                                                                   \
    } while (0)

// k_rand fills n floats with lo + (hi-lo)·u, u pseudo-random in [0,1).
__global__ void k_rand(float *p, int64_t n, float lo, float hi, uint32_t seed) {
    GRID_LOOP(i, n) {
        uint32_t x = (uint32_t)i * 2654435761u ^ seed;
        x ^= x >> 13; x *= 0x5bd1e995u; x ^= x >> 15;
        p[i] = lo + (hi - lo) * ((x & 0xffffff) / 16777216.f);
    }
}

static float *frand(int64_t n, float lo, float hi, uint32_t seed) {
    float *p = (float *)mb_malloc(n * 4);
    if (p) k_rand<<<1024, 256, 0, g_stream>>>(p, n, lo, hi, seed);
    return p;
}

static void *brand(int64_t n, float scale, uint32_t seed) {
    float *f = frand(n, -scale, scale, seed);
    void *b = (void *)mb_malloc(n * 2);
    if (f && b) mb_to_bf16(b, f, n);
    cudaStreamSynchronize(g_stream);
    cudaFree(f);
    return b;
}

int main(int argc, char **argv) {
    const int64_t D = argc > 1 ? atoi(argv[1]) : 1024, L = argc > 2 ? atoi(argv[2]) : 53,
                  B = argc > 3 ? atoi(argv[3]) : 1;
    if (B < 1 || (B > 1 && B <= 16)) {
        printf("B: 1, or more than 16 (the traced paths)\n");
        return 1;
    }
    const int64_t E = 2 * D, N = 16, K = 4, R = (D + 15) / 16, J = R + 2 * N;
    C(mb_init(0, 0));
    std::vector<mb_step_args> layers(L);
    float *h = frand(B * D, -1, 1, 1);
    float *xz = frand(B * 2 * E, 0, 0, 2), *xdbl = frand(B * J, 0, 0, 3),
          *u = frand(B * E, 0, 0, 4), *g = frand(B * E, 0, 0, 5);
    void *xw = (void *)mb_malloc(2 * B * std::max(D, E));
    for (int64_t l = 0; l < L; l++) {
        mb_step_args &a = layers[l];
        memset(&a, 0, sizeof a);
        uint32_t s = 100 + 20 * (uint32_t)l;
        a.in_proj = brand(2 * E * D, 0.03f, s);
        a.x_proj = brand(J * E, 0.02f, s + 1);
        a.dt_proj = brand(E * R, 0.1f, s + 2);
        a.out_proj = brand(D * E, 0.02f, s + 3);
        a.dt_proj_f32 = frand(E * R, -0.1f, 0.1f, s + 4);
        a.norm_w = frand(D, 0.9f, 1.1f, s + 5);
        a.norm_b = frand(D, -0.1f, 0.1f, s + 6);
        a.conv_w = frand(E * K, -0.3f, 0.3f, s + 7);
        a.conv_b = frand(E, -0.1f, 0.1f, s + 8);
        a.dt_bias = frand(E, -5, -3, s + 9);
        a.neg_a = frand(E * N, -16, -1, s + 10);
        a.dskip = frand(E, 0.5f, 1.5f, s + 11);
        a.conv = frand(B * (K - 1) * E, -0.5f, 0.5f, s + 12);
        a.ssm = frand(B * E * N, -0.5f, 0.5f, s + 13);
        a.h = h, a.xz = xz, a.xdbl = xdbl, a.u = u, a.g = g, a.xw = xw;
        a.B = B, a.D = D, a.E = E, a.N = N, a.K = K, a.R = R;
        a.eps = 1e-5f, a.rms = 0, a.wtype = 1;
        float *fold = (float *)mb_malloc(4 * E * 4);
        if (fold) C(mb_step_fold(fold, a.in_proj, 1, a.norm_w, a.norm_b, 2 * E, D));
        a.in_fold = fold;
        if (!a.in_fold || !a.in_proj || !a.x_proj || !a.dt_proj || !a.out_proj || !a.conv || !a.ssm) {
            printf("out of memory\n");
            return 1;
        }
    }
    CU(cudaStreamSynchronize(g_stream));
    C(mb_graph_begin());
    for (int64_t l = 0; l < L; l++) C(mb_step_block(&layers[l]));
    uintptr_t ge;
    C(mb_graph_end(&ge));
    for (int i = 0; i < 5; i++) C(mb_graph_launch(ge));
    cudaEvent_t a, b;
    cudaEventCreate(&a), cudaEventCreate(&b);
    std::vector<float> times;
    for (int r = 0; r < 30; r++) {
        cudaEventRecord(a, g_stream);
        C(mb_graph_launch(ge));
        cudaEventRecord(b, g_stream);
        CU(cudaEventSynchronize(b));
        float ms;
        cudaEventElapsedTime(&ms, a, b);
        times.push_back(ms);
    }
    std::sort(times.begin(), times.end());
    const float med = times[times.size() / 2];
    printf("D %lld L %lld B %lld: %.1f us a step of the blocks, %.2f us a layer (median of 30)\n",
           (long long)D, (long long)L, (long long)B, med * 1e3, med * 1e3 / L);

    // The table leaves out the first and last layer (no kernel before the
    // first; the last one's successor is the end of the graph).
    if (L < 3) {
        printf("(no trace table: it needs at least 3 layers)\n");
        return 0;
    }

    // One traced replay.
    unsigned zero = 0;
    CU(cudaMemcpyToSymbol(g_step_trace_n, &zero, sizeof zero));
    C(mb_graph_launch(ge));
    CU(cudaStreamSynchronize(g_stream));
    unsigned n;
    CU(cudaMemcpyFromSymbol(&n, g_step_trace_n, sizeof n));
    n = std::min(n, kStepTraceCap);
    std::vector<StepTrace> t(n);
    CU(cudaMemcpyFromSymbol(t.data(), g_step_trace, n * sizeof(StepTrace)));
    // Every block of a kernel starts before any block of the same kernel
    // one layer on, so sorting a tag's records by start time and cutting
    // them into runs of its grid size gives the kernel of each layer.
    // x_proj has no records where in_proj makes its sums (kXRounds).
    // Tags 1-4 are the one-stream kernels, 5-7 the many-stream ones.
    const char *names[8] = {"", "in_proj+conv", "x_proj", "dt+scan+gate", "out_proj",
                            "norm", "conv+x sums", "scan"};
    const int t0 = B == 1 ? 1 : 5, t1 = B == 1 ? 4 : 7;
    struct Inst { double s0, s1, w0, w1, e0, e1, m0, m1; };
    std::vector<Inst> inst[8];
    double smsum[8] = {0};  // distinct SMs a kernel's blocks ran on, mean over layers
    for (int tag = t0; tag <= t1; tag++) {
        std::vector<StepTrace> v;
        for (auto &r : t) if ((int)r.tag == tag) v.push_back(r);
        std::sort(v.begin(), v.end(),
                  [](const StepTrace &x, const StepTrace &y) { return x.t0 < y.t0; });
        size_t per = v.size() / L;
        if (tag == 2 && v.empty()) {
            printf("%-14s none (inside in_proj)\n", names[tag]);
            continue;
        }
        if (per == 0 || v.size() % L) {
            // (With MAMBABYTE_CUDA_STEP_FUSE_X=0 the many-stream step has no
            // conv kernel of tag 6.)
            printf("tag %d: %zu records for %lld layers\n", tag, v.size(), (long long)L);
            return 1;
        }
        for (int64_t l = 0; l < L; l++) {
            Inst I = {1e30, 0, 1e30, 0, 1e30, 0, 0, 0};
            std::vector<int> sms;
            for (size_t i = l * per; i < (l + 1) * per; i++) sms.push_back((int)v[i].sm);
            std::sort(sms.begin(), sms.end());
            smsum[tag] += (double)(std::unique(sms.begin(), sms.end()) - sms.begin()) / L;
            for (size_t i = l * per; i < (l + 1) * per; i++) {
                const StepTrace &r = v[i];
                I.s0 = std::min(I.s0, (double)r.t0), I.s1 = std::max(I.s1, (double)r.t0);
                I.w0 = std::min(I.w0, (double)r.t1), I.w1 = std::max(I.w1, (double)r.t1);
                I.e0 = std::min(I.e0, (double)r.t2), I.e1 = std::max(I.e1, (double)r.t2);
                // Mid points: the mean over blocks of the time since the block's wait.
                I.m0 += r.m0 ? (double)(r.m0 - r.t1) / per : 0;
                I.m1 += r.m1 ? (double)(r.m1 - r.t1) / per : 0;
            }
            inst[tag].push_back(I);
        }
        printf("%-14s %4zu blocks on %.1f SMs\n", names[tag], per, smsum[tag]);
    }
    // Times in µs relative to the end of the kernel before (its last block),
    // averaged over the layers but the first and last.
    printf("%-14s %9s %9s %9s %9s %9s %9s | %9s %9s\n", "kernel", "1st start", "lst start",
           "1st wait", "lst wait", "1st end", "lst end", "wait-m0", "wait-m1");
    double layer = 0;
    for (int tag = t0; tag <= t1; tag++) {
        if (inst[tag].empty()) continue;
        const int before = tag == 3 && inst[2].empty() ? 1 : tag - 1;
        double acc[8] = {0};
        int cnt = 0;
        for (int64_t l = 1; l + 1 < L; l++) {
            const Inst &I = inst[tag][l];
            const Inst &P = tag == t0 ? inst[t1][l - 1] : inst[before][l];
            double ref = P.e1;
            double v[6] = {I.s0 - ref, I.s1 - ref, I.w0 - ref, I.w1 - ref, I.e0 - ref, I.e1 - ref};
            for (int k = 0; k < 6; k++) acc[k] += v[k];
            acc[6] += I.m0, acc[7] += I.m1;
            cnt++;
        }
        printf("%-14s", names[tag]);
        for (int k = 0; k < 6; k++) printf(" %9.2f", acc[k] / cnt / 1e3);
        printf(" | %9.2f %9.2f\n", acc[6] / cnt / 1e3, acc[7] / cnt / 1e3);
        layer += acc[5] / cnt / 1e3;
    }
    printf("sum of the last-end gaps: %.2f us a layer (traced replay)\n", layer);
    return 0;
}
