// gemm_bench.cu — a development timer for the training GEMMs: each shape
// of the 353M model's step (T 8192), with the beta and leading dimensions the
// model passes, as mb_gemm runs it in bf16 mode
// (float32 operands, CUBLAS_COMPUTE_32F_FAST_16BF) against cuBLAS on bf16
// operands with float32 output and accumulation and against TF32 on the
// float32 operands, and the cost of turning a float32 operand into bf16.
//
//   make -C cuda gemm_bench && cuda/gemm_bench
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <stdio.h>

#define CU(x) do { cudaError_t e_ = (x); if (e_) { printf("%s: %s\n", #x, cudaGetErrorString(e_)); return 1; } } while (0)
#define CB(x) do { cublasStatus_t s_ = (x); if (s_) { printf("%s: status %d\n", #x, (int)s_); return 1; } } while (0)

__global__ void k_fill(float *p, long n) {
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x)
        p[i] = ((i * 2654435761u) % 1000) * 1e-3f - 0.5f;
}
__global__ void k_to_bf16(__nv_bfloat16 *d, const float *s, long n) {
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n / 4; i += (long)gridDim.x * blockDim.x) {
        float4 v = ((const float4 *)s)[i];
        __nv_bfloat162 a = __floats2bfloat162_rn(v.x, v.y), b = __floats2bfloat162_rn(v.z, v.w);
        ((__nv_bfloat162 *)d)[2 * i] = a;
        ((__nv_bfloat162 *)d)[2 * i + 1] = b;
    }
}

// beta is what the model passes (1 where a product adds to a gradient or
// the residual stream); lda, ldb, ldc 0 mean packed, otherwise the model's
// (x_proj's output rows are 96 wide, of which dt_proj reads 64).
struct Shape { int tA, tB; long m, n, k; float beta; long lda, ldb, ldc; };

int main() {
    // Row-major C (m×n) = op(A)·op(B), the profile's names: "gemm TN m x n x k".
    Shape shapes[] = {
        {1, 0, 4096, 1024, 8192, 1}, {0, 0, 8192, 1024, 4096, 0}, {0, 1, 8192, 4096, 1024, 0},
        {1, 0, 1024, 2048, 8192, 1}, {0, 0, 8192, 2048, 1024, 0}, {0, 1, 8192, 1024, 2048, 1},
        {0, 0, 8192, 2048, 96, 1},   {0, 0, 8192, 64, 2048, 0, 0, 0, 96}, {0, 1, 8192, 96, 2048, 0},
        {1, 0, 2048, 64, 8192, 1, 0, 96},  {0, 1, 8192, 2048, 64, 0, 96}, {1, 0, 96, 2048, 8192, 1},
    };
    long maxe = 8192L * 4096;
    float *A, *B, *C;
    __nv_bfloat16 *A16, *B16;
    CU(cudaMalloc(&A, maxe * 4)); CU(cudaMalloc(&B, maxe * 4)); CU(cudaMalloc(&C, maxe * 4));
    CU(cudaMalloc(&A16, maxe * 2)); CU(cudaMalloc(&B16, maxe * 2));
    k_fill<<<1024, 256>>>(A, maxe); k_fill<<<1024, 256>>>(B, maxe);
    cublasHandle_t h;
    CB(cublasCreate(&h));
    void *ws; size_t wsz = 64 << 20;
    CU(cudaMalloc(&ws, wsz));
    CB(cublasSetWorkspace(h, ws, wsz));
    cudaEvent_t e0, e1;
    cudaEventCreate(&e0); cudaEventCreate(&e1);
    const int reps = 20;
    float alpha = 1;
    printf("%-24s %10s %10s %10s %10s %10s\n", "gemm", "f32in TF/s", "bf16 TF/s", "f32in us", "bf16 us", "tf32 us");
    double tot32 = 0, tot16 = 0, tottf = 0, totcv = 0;
    for (const Shape &s : shapes) {
        cublasOperation_t oA = s.tA ? CUBLAS_OP_T : CUBLAS_OP_N, oB = s.tB ? CUBLAS_OP_T : CUBLAS_OP_N;
        int lda = s.lda ? s.lda : s.tA ? s.m : s.k, ldb = s.ldb ? s.ldb : s.tB ? s.k : s.n;
        int ldc = s.ldc ? s.ldc : s.n;
        float beta = s.beta;
        float ms[3];
        for (int v = 0; v < 3; v++) {
            for (int r = -3; r < reps; r++) {
                if (r == 0) cudaEventRecord(e0);
                if (v == 0)
                    CB(cublasGemmEx(h, oB, oA, s.n, s.m, s.k, &alpha, B, CUDA_R_32F, ldb, A, CUDA_R_32F, lda,
                                    &beta, C, CUDA_R_32F, ldc, CUBLAS_COMPUTE_32F_FAST_16BF, CUBLAS_GEMM_DEFAULT));
                else if (v == 1)
                    CB(cublasGemmEx(h, oB, oA, s.n, s.m, s.k, &alpha, B16, CUDA_R_16BF, ldb, A16, CUDA_R_16BF, lda,
                                    &beta, C, CUDA_R_32F, ldc, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
                else
                    CB(cublasGemmEx(h, oB, oA, s.n, s.m, s.k, &alpha, B, CUDA_R_32F, ldb, A, CUDA_R_32F, lda,
                                    &beta, C, CUDA_R_32F, ldc, CUBLAS_COMPUTE_32F_FAST_TF32, CUBLAS_GEMM_DEFAULT));
            }
            cudaEventRecord(e1);
            CU(cudaEventSynchronize(e1));
            cudaEventElapsedTime(&ms[v], e0, e1);
            ms[v] /= reps;
        }
        // Conversion of both operands.
        float mc;
        for (int r = -3; r < reps; r++) {
            if (r == 0) cudaEventRecord(e0);
            k_to_bf16<<<1056, 256>>>(A16, A, s.m * s.k);
            k_to_bf16<<<1056, 256>>>(B16, B, s.k * s.n);
        }
        cudaEventRecord(e1);
        CU(cudaEventSynchronize(e1));
        cudaEventElapsedTime(&mc, e0, e1);
        mc /= reps;
        double fl = 2.0 * s.m * s.n * s.k;
        char name[64];
        snprintf(name, sizeof name, "%s%s %ldx%ldx%ld b%g", s.tA ? "T" : "N", s.tB ? "T" : "N", s.m, s.n, s.k, s.beta);
        printf("%-24s %10.0f %10.0f %10.1f %10.1f %10.1f  (both operands to bf16: %.1f us)\n", name,
               fl / ms[0] / 1e9, fl / ms[1] / 1e9, ms[0] * 1e3, ms[1] * 1e3, ms[2] * 1e3, mc * 1e3);
        tot32 += ms[0]; tot16 += ms[1]; tottf += ms[2]; totcv += mc;
    }
    printf("per layer: f32 operands %.3f ms, bf16 operands %.3f ms, tf32 %.3f ms, conversions of every operand %.3f ms\n",
           tot32, tot16, tottf, totcv);
    return 0;
}
