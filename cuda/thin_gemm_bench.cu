// thin_gemm_bench.cu — a development timer for the six thin products of a
// 353M layer's training step (T 8192: x_proj and dt_proj, forward and
// backward), with the beta and leading dimensions the model passes:
// cublasGemmEx as mb_gemm runs them in bf16 mode (float32 operands,
// CUBLAS_COMPUTE_32F_FAST_16BF) against the best of cublasLt's heuristic
// candidates on the same float32 operands (FAST_TF32 and FAST_16BF) and on
// bf16 operands. Each is 20 launches back to back on the same operands,
// after warm-up, timed with events.
//
//   make -C cuda thin_gemm_bench && cuda/thin_gemm_bench
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <stdio.h>
#define CU(x) do { cudaError_t e_ = (x); if (e_) { printf("%s: %s\n", #x, cudaGetErrorString(e_)); return 1; } } while (0)
#define CB(x) do { cublasStatus_t s_ = (x); if (s_) { printf("%s: status %d line %d\n", #x, (int)s_, __LINE__); return 1; } } while (0)
__global__ void k_fill(float *p, long n) {
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x)
        p[i] = ((i * 2654435761u) % 1000) * 1e-3f - 0.5f;
}
__global__ void k_fill16(__nv_bfloat16 *p, long n) {
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x)
        p[i] = __float2bfloat16(((i * 2654435761u) % 1000) * 1e-3f - 0.5f);
}
struct Shape { const char *name; int tA, tB; long m, n, k; float beta; long lda, ldb, ldc; };
int main() {
    Shape shapes[] = {
        {"x_proj dX", 0, 0, 8192, 2048, 96, 1},   {"dt_proj dX", 0, 0, 8192, 64, 2048, 0, 0, 0, 96},
        {"x_proj fwd", 0, 1, 8192, 96, 2048, 0},  {"dt_proj dW", 1, 0, 2048, 64, 8192, 1, 0, 96},
        {"dt_proj fwd", 0, 1, 8192, 2048, 64, 0, 96}, {"x_proj dW", 1, 0, 96, 2048, 8192, 1},
    };
    long maxe = 8192L * 4096;
    float *A, *B, *C; __nv_bfloat16 *A16, *B16;
    CU(cudaMalloc(&A, maxe * 4)); CU(cudaMalloc(&B, maxe * 4)); CU(cudaMalloc(&C, maxe * 4));
    CU(cudaMalloc(&A16, maxe * 2)); CU(cudaMalloc(&B16, maxe * 2));
    k_fill<<<1024, 256>>>(A, maxe); k_fill<<<1024, 256>>>(B, maxe);
    k_fill16<<<1024, 256>>>(A16, maxe); k_fill16<<<1024, 256>>>(B16, maxe);
    CU(cudaMemset(C, 0, maxe * 4));
    cublasHandle_t h; CB(cublasCreate(&h));
    cublasLtHandle_t lt; CB(cublasLtCreate(&lt));
    size_t wsz = 64 << 20; void *ws; CU(cudaMalloc(&ws, wsz));
    CB(cublasSetWorkspace(h, ws, wsz));
    cudaEvent_t e0, e1; cudaEventCreate(&e0); cudaEventCreate(&e1);
    const int reps = 20;
    float alpha = 1, ms;
    double tot[5] = {0};
    for (const Shape &s : shapes) {
        cublasOperation_t oA = s.tA ? CUBLAS_OP_T : CUBLAS_OP_N, oB = s.tB ? CUBLAS_OP_T : CUBLAS_OP_N;
        long lda = s.lda ? s.lda : s.tA ? s.m : s.k, ldb = s.ldb ? s.ldb : s.tB ? s.k : s.n, ldc = s.ldc ? s.ldc : s.n;
        float beta = s.beta;
        for (int r = -3; r < reps; r++) {
            if (r == 0) cudaEventRecord(e0);
            CB(cublasGemmEx(h, oB, oA, s.n, s.m, s.k, &alpha, B, CUDA_R_32F, ldb, A, CUDA_R_32F, lda,
                            &beta, C, CUDA_R_32F, ldc, CUBLAS_COMPUTE_32F_FAST_16BF, CUBLAS_GEMM_DEFAULT));
        }
        cudaEventRecord(e1); CU(cudaEventSynchronize(e1)); cudaEventElapsedTime(&ms, e0, e1);
        float dflt = ms * 1e3f / reps;
        printf("%-12s %s%s %5ldx%5ldx%5ld b%g: GemmEx f32 %6.1f us |", s.name, s.tA ? "T" : "N", s.tB ? "T" : "N", s.m, s.n, s.k, s.beta, dflt);
        tot[0] += dflt;
        // Lt: v 0 f32 FAST_TF32, 1 f32 FAST_16BF, 2 bf16 operands
        for (int v = 0; v < 3; v++) {
            cublasComputeType_t ct = v == 0 ? CUBLAS_COMPUTE_32F_FAST_TF32 : v == 1 ? CUBLAS_COMPUTE_32F_FAST_16BF : CUBLAS_COMPUTE_32F;
            cudaDataType_t it = v == 2 ? CUDA_R_16BF : CUDA_R_32F;
            const void *pa = v == 2 ? (const void *)B16 : (const void *)B, *pb = v == 2 ? (const void *)A16 : (const void *)A;
            cublasLtMatmulDesc_t op; CB(cublasLtMatmulDescCreate(&op, ct, CUDA_R_32F));
            CB(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &oB, sizeof oB));
            CB(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &oA, sizeof oA));
            cublasLtMatrixLayout_t la, lb, lc;
            CB(cublasLtMatrixLayoutCreate(&la, it, s.tB ? s.k : s.n, s.tB ? s.n : s.k, ldb));
            CB(cublasLtMatrixLayoutCreate(&lb, it, s.tA ? s.m : s.k, s.tA ? s.k : s.m, lda));
            CB(cublasLtMatrixLayoutCreate(&lc, CUDA_R_32F, s.n, s.m, ldc));
            cublasLtMatmulPreference_t pref; CB(cublasLtMatmulPreferenceCreate(&pref));
            CB(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &wsz, sizeof wsz));
            cublasLtMatmulHeuristicResult_t res[64]; int nres = 0;
            CB(cublasLtMatmulAlgoGetHeuristic(lt, op, la, lb, lc, lc, pref, 64, res, &nres));
            float best = 1e30f, first = 0; int bi = -1;
            for (int i = 0; i < nres; i++) {
                bool bad = false;
                for (int r = -2; r < reps && !bad; r++) {
                    if (r == 0) cudaEventRecord(e0);
                    if (cublasLtMatmul(lt, op, &alpha, pa, la, pb, lb, &beta, C, lc, C, lc, &res[i].algo, ws, wsz, 0)) bad = true;
                }
                cudaEventRecord(e1); CU(cudaEventSynchronize(e1)); cudaEventElapsedTime(&ms, e0, e1);
                if (bad) continue;
                float us = ms * 1e3f / reps;
                if (i == 0) first = us;
                if (us < best) best = us, bi = i;
            }
            printf(" %s first %6.1f best %6.1f (#%d/%d) |", v == 0 ? "tf32" : v == 1 ? "16bf" : "bf16in", first, best, bi, nres);
            tot[1 + v] += best;
        }
        printf("\n");
    }
    printf("six thin products a layer: GemmEx f32 %.1f us; Lt best tf32 %.1f, fast16bf %.1f, bf16 operands %.1f us\n", tot[0], tot[1], tot[2], tot[3]);
    return 0;
}
