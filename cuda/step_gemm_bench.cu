// step_gemm_bench.cu — a development timer for the decode step's products at
// many streams, out (B, rows) = X (B, K)·Wᵀ in bf16 with float32 output, as
// step_gemm runs them (cublasGemmEx, the default algorithm), against every
// candidate cublasLt's heuristic offers for the same product. Each is timed
// as 50 launches captured in one CUDA graph (best of five), the way the step
// runs; the same W every launch, so it stays in L2: a floor, not the step.
// With the argument "cold", the launches cycle through copies of W filling
// 128 MB, so that each reads W from memory as the step does (the step's
// other layers push a layer's weights out of the 50 MB L2).
// Shapes: in_proj, x_proj and out_proj (beta 1) of the 353M model at 64 and
// 32 streams and of the 972M model at 64.
//
//   make -C cuda step_gemm_bench && cuda/step_gemm_bench [cold]
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <stdio.h>
#include <string.h>
#define CU(x) do { cudaError_t e_ = (x); if (e_) { printf("%s: %s line %d\n", #x, cudaGetErrorString(e_), __LINE__); return 1; } } while (0)
#define CB(x) do { cublasStatus_t s_ = (x); if (s_) { printf("%s: status %d line %d\n", #x, (int)s_, __LINE__); return 1; } } while (0)
__global__ void k_fill16(__nv_bfloat16 *p, long n) {
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x)
        p[i] = __float2bfloat16(((i * 2654435761u) % 1000) * 1e-3f - 0.5f);
}
struct Shape { long B, rows, K; float beta; };
cudaStream_t st;
template <class F> float graph_us(F f, int reps) {
    cudaGraph_t g; cudaGraphExec_t ge;
    cudaStreamBeginCapture(st, cudaStreamCaptureModeGlobal);
    for (int r = 0; r < reps; r++) f();
    cudaStreamEndCapture(st, &g);
    if (cudaGraphInstantiate(&ge, g, 0)) return -1;
    cudaEvent_t e0, e1; cudaEventCreate(&e0); cudaEventCreate(&e1);
    float best = 1e30f;
    for (int t = 0; t < 5; t++) {
        cudaEventRecord(e0, st); cudaGraphLaunch(ge, st); cudaEventRecord(e1, st);
        cudaEventSynchronize(e1); float ms; cudaEventElapsedTime(&ms, e0, e1);
        if (ms < best) best = ms;
    }
    cudaGraphExecDestroy(ge); cudaGraphDestroy(g);
    return best * 1e3f / reps;
}
int main(int argc, char **argv) {
    const bool cold = argc > 1 && strcmp(argv[1], "cold") == 0;
    Shape shapes[] = {{64, 4096, 1024, 0}, {64, 96, 2048, 0}, {64, 1024, 2048, 1},
                      {32, 4096, 1024, 0}, {32, 96, 2048, 0}, {32, 1024, 2048, 1},
                      {64, 7168, 1792, 0}, {64, 144, 3584, 0}, {64, 1792, 3584, 1}};
    long maxe = 7168L * 1792, pool = cold ? (128L << 20) / 2 : maxe;
    __nv_bfloat16 *W, *X; float *C;
    CU(cudaMalloc(&W, pool * 2)); CU(cudaMalloc(&X, 64 * 4096 * 2)); CU(cudaMalloc(&C, 64 * 8192 * 4));
    k_fill16<<<1024, 256>>>(W, pool); k_fill16<<<1024, 256>>>(X, 64 * 4096);
    CU(cudaMemset(C, 0, 64 * 8192 * 4));
    CU(cudaStreamCreate(&st));
    cublasHandle_t h; CB(cublasCreate(&h)); CB(cublasSetStream(h, st));
    cublasLtHandle_t lt; CB(cublasLtCreate(&lt));
    size_t wsz = 32 << 20; void *ws; CU(cudaMalloc(&ws, wsz));
    CB(cublasSetWorkspace(h, ws, wsz));
    const int reps = 50;
    float alpha = 1;
    for (const Shape &s : shapes) {
        float beta = s.beta;
        // The copies of W the launches cycle through (one unless cold).
        const long welems = (s.rows * s.K + 127) / 128 * 128, copies = pool / welems;
        int launch = 0;
        auto wnext = [&] { return W + (launch++ % copies) * welems; };
        cublasStatus_t bad = CUBLAS_STATUS_SUCCESS;
        float dflt = graph_us([&] {
            bad = cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, s.rows, s.B, s.K, &alpha, wnext(), CUDA_R_16BF, s.K, X,
                               CUDA_R_16BF, s.K, &beta, C, CUDA_R_32F, s.rows, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
        }, reps);
        CB(bad);
        cublasLtMatmulDesc_t op; CB(cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
        cublasOperation_t tT = CUBLAS_OP_T, tN = CUBLAS_OP_N;
        CB(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &tT, sizeof tT));
        CB(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &tN, sizeof tN));
        cublasLtMatrixLayout_t la, lb, lc;
        CB(cublasLtMatrixLayoutCreate(&la, CUDA_R_16BF, s.K, s.rows, s.K));
        CB(cublasLtMatrixLayoutCreate(&lb, CUDA_R_16BF, s.K, s.B, s.K));
        CB(cublasLtMatrixLayoutCreate(&lc, CUDA_R_32F, s.rows, s.B, s.rows));
        cublasLtMatmulPreference_t pref; CB(cublasLtMatmulPreferenceCreate(&pref));
        CB(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &wsz, sizeof wsz));
        cublasLtMatmulHeuristicResult_t res[32]; int nres = 0;
        CB(cublasLtMatmulAlgoGetHeuristic(lt, op, la, lb, lc, lc, pref, 32, res, &nres));
        float best = 1e30f, first = 0; int bi = -1;
        for (int i = 0; i < nres; i++) {
            float us = graph_us([&] {
                bad = cublasLtMatmul(lt, op, &alpha, wnext(), la, X, lb, &beta, C, lc, C, lc, &res[i].algo, ws, wsz, st);
            }, reps);
            if (bad || us < 0) continue;
            if (i == 0) first = us;
            if (cold) {
                int tile = 0, sk = 0; size_t n;
                cublasLtMatmulAlgoConfigGetAttribute(&res[i].algo, CUBLASLT_ALGO_CONFIG_TILE_ID, &tile, sizeof tile, &n);
                cublasLtMatmulAlgoConfigGetAttribute(&res[i].algo, CUBLASLT_ALGO_CONFIG_SPLITK_NUM, &sk, sizeof sk, &n);
                printf("  #%d %6.2f us (tile %d, split %d)\n", i, us, tile, sk);
            }
            if (us < best) best = us, bi = i;
        }
        double gb = (double)s.rows * s.K * 2 / 1e3;
        printf("B %3ld rows %5ld K %5ld beta %g: GemmEx %6.2f us (%4.0f GB/s), Lt #0 %6.2f, best %6.2f (#%d of %d, %4.0f GB/s)\n",
               s.B, s.rows, s.K, s.beta, dflt, gb / dflt, first, best, bi, nres, gb / best);
    }
    return 0;
}
