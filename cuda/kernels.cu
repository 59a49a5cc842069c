// kernels.cu — CUDA kernels of the MambaByte backend behind the C ABI in
// mambabyte_cuda.h. Each kernel computes what the CPU kernel of the same name
// in internal/backend/cpu computes (that package documents the semantics);
// the comments here say how the work is split across threads.
//
// Glossary: B batch, T time, D d_model, E d_inner, N d_state, K d_conv,
// V vocab. Everything runs on one stream of the library's own, g_stream, in
// call order; CUDA graphs capture it (mb_graph_begin).
//
// Reductions of parameter gradients over rows (norm weights and biases, conv
// weights and bias, dt bias, Dskip, A_log) are deterministic: partial sums
// over fixed chunks of rows, then a fixed-order sum of the partials. The
// embedding gradient and the scan's dBt/dCt (sums over channels) use atomics.

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mambabyte_cuda.h"

// ---------------------------------------------------------------------------
// Errors and library state.

static char g_err[1024] = "no error";
static char g_name[512] = "";
static int g_sms = 1;  // the device's SM count (mb_init)
// Shared memory an SM has, and the most one block may ask for (mb_init).
static size_t g_smem_sm = 0, g_smem_block = 0;
static int g_ready = 0;
static int g_device = 0;
static int g_sync = 0;
static cublasHandle_t g_blas = nullptr;
// g_stream carries all work (kernels, cuBLAS, copies, memsets). It is a
// created stream because the legacy default stream cannot be captured.
static cudaStream_t g_stream = nullptr;
// g_capturing is set between mb_graph_begin and mb_graph_end: work is
// recorded, not run, so nothing may wait for the stream or reallocate
// memory that recorded work refers to.
static int g_capturing = 0;
// cuBLAS workspace, set explicitly so cuBLAS never allocates while a graph
// is being captured (32 MiB, NVIDIA's recommendation for Hopper).
static const size_t kBlasWorkspace = 32u << 20;
static void *g_blas_ws = nullptr;

static void set_err(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(g_err, sizeof g_err, fmt, ap);
    va_end(ap);
}

#define CK(call)                                                                       \
    do {                                                                               \
        cudaError_t e_ = (call);                                                       \
        if (e_ != cudaSuccess) {                                                       \
            set_err("%s: %s: %s (%s:%d)", __func__, #call, cudaGetErrorString(e_),     \
                    __FILE__, __LINE__);                                               \
            return 1;                                                                  \
        }                                                                              \
    } while (0)

#define CKB(call)                                                                      \
    do {                                                                               \
        cublasStatus_t s_ = (call);                                                    \
        if (s_ != CUBLAS_STATUS_SUCCESS) {                                             \
            set_err("%s: %s: cuBLAS %s (%d) (%s:%d)", __func__, #call,                 \
                    cublasGetStatusString(s_), (int)s_, __FILE__, __LINE__);           \
            return 1;                                                                  \
        }                                                                              \
    } while (0)

// In sync mode, wait for the stream so a kernel's errors are reported by the
// operation that launched it (not while capturing: nothing runs then).
#define SYNC_DEBUG()                                                                   \
    do {                                                                               \
        if (g_sync && !g_capturing) CK(cudaStreamSynchronize(g_stream));               \
    } while (0)

// After a kernel launch: report launch errors, and in sync mode the errors of
// the kernel itself.
#define LAUNCHED()                                                                     \
    do {                                                                               \
        CK(cudaGetLastError());                                                        \
        SYNC_DEBUG();                                                                  \
    } while (0)

// NOT_CAPTURING fails an operation that cannot be recorded in a graph (it
// returns a value to the host or uploads from host memory).
#define NOT_CAPTURING()                                                                \
    do {                                                                               \
        if (g_capturing) {                                                             \
            set_err("%s: cannot run while a graph is being captured", __func__);      \
            return 1;                                                                  \
        }                                                                              \
    } while (0)

// g_packA_ok says the bf16 copy of the last GEMM's A operand (g_packA,
// mb_gemm) still matches its source; ENTER drops it for every entry point
// but mb_gemm, which may write anything.
static bool g_packA_ok = false;

#define ENTER_GEMM()                                                                   \
    do {                                                                               \
        if (!g_ready) {                                                                \
            set_err("%s: mb_init has not been called", __func__);                      \
            return 1;                                                                  \
        }                                                                              \
    } while (0)

#define ENTER()                                                                        \
    do {                                                                               \
        ENTER_GEMM();                                                                  \
        g_packA_ok = false;                                                            \
    } while (0)

// Growable device scratch: one general workspace, two int32 upload buffers
// (ids, targets) and a double result slot. g_staged holds ids uploaded by
// mb_stage_ids for graphs; it is allocated once (kStagedIDs values) so its
// address stays what captured kernels recorded.
static void *g_ws = nullptr;
static size_t g_ws_bytes = 0;
static int32_t *g_i32[2] = {nullptr, nullptr};
static size_t g_i32_bytes[2] = {0, 0};
static double *g_result = nullptr;
static const int64_t kStagedIDs = 1 << 20;
static int32_t *g_staged = nullptr;
// g_xacc: the one-stream step's x_proj sums in fixed point (step.cuh,
// kXAccMax values), zero between steps; allocated once, like g_staged.
static const int64_t kXAccMax = 1025;
static long long *g_xacc = nullptr;
// g_xacc_many: the same sums for the many-stream cuBLAS path, a row of
// J + 1 values a stream (kXAccManyMax in all), zeroed by the norm before
// each layer.
static const int64_t kXAccManyMax = 1 << 17;
static long long *g_xacc_many = nullptr;

// grow makes *buf a device buffer of at least bytes (*have its size),
// reallocating with room to spare. Work launched earlier may still use the
// old buffer, so it waits for the stream first.
static int grow(void **buf, size_t *have, size_t bytes) {
    if (bytes <= *have) return 0;
    CK(cudaStreamSynchronize(g_stream));
    if (*buf) CK(cudaFree(*buf));
    *buf = nullptr;
    *have = 0;
    size_t want = bytes + bytes / 4 + 4096;
    CK(cudaMalloc(buf, want));
    *have = want;
    return 0;
}

// grow_uncaptured is grow for a buffer that a graph being captured may
// already refer to, so it cannot grow then (what names it in the error).
static int grow_uncaptured(const char *what, void **buf, size_t *have, size_t bytes) {
    if (bytes > *have && g_capturing) {
        set_err("%s: cannot grow to %zu bytes while a graph is being captured", what, bytes);
        return 1;
    }
    return grow(buf, have, bytes);
}

// workspace makes *p point at a device workspace of at least bytes.
static int workspace(size_t bytes, void **p) {
    if (grow_uncaptured("workspace", &g_ws, &g_ws_bytes, bytes)) return 1;
    *p = g_ws;
    return 0;
}

// upload_i32 copies n int32 values from the host into upload buffer slot.
static int upload_i32(int slot, const int32_t *host, int64_t n, int32_t **out) {
    NOT_CAPTURING();
    if (grow((void **)&g_i32[slot], &g_i32_bytes[slot], (size_t)n * sizeof(int32_t))) return 1;
    // Ordered after earlier work on g_stream, so a kernel still reading the
    // buffer finishes first. From pageable memory, cudaMemcpyAsync returns
    // once the host values have been taken.
    CK(cudaMemcpyAsync(g_i32[slot], host, (size_t)n * sizeof(int32_t), cudaMemcpyHostToDevice,
                       g_stream));
    *out = g_i32[slot];
    return 0;
}

// carve returns the next 256-byte aligned piece of count values of type T
// from a workspace cursor.
template <class T>
static T *carve(char **cursor, int64_t count) {
    uintptr_t p = ((uintptr_t)*cursor + 255) & ~(uintptr_t)255;
    *cursor = (char *)(p + (uintptr_t)count * sizeof(T));
    return (T *)p;
}

template <class T>
static size_t carve_size(int64_t count) {
    return (size_t)count * sizeof(T) + 256;
}

// ---------------------------------------------------------------------------
// Device helpers (the CPU's mathf.go).

// sigmoid_ takes one exponential, of -|x| (it cannot overflow), and one
// correctly rounded reciprocal: 1/(1+e) for x >= 0, e·(1/(1+e)) below
// (within an ulp of e/(1+e), and half the instructions of a division).
__device__ __forceinline__ float sigmoid_(float x) {
    float e = expf(-fabsf(x));
    float r = __frcp_rn(1.f + e);
    return x >= 0.f ? r : e * r;
}
__device__ __forceinline__ float silu_(float x) { return x * sigmoid_(x); }
// silu_grad_s is silu'(x) from s = sigmoid(x).
__device__ __forceinline__ float silu_grad_s(float x, float s) { return s * (1.f + x * (1.f - s)); }
__device__ __forceinline__ float silu_grad_(float x) { return silu_grad_s(x, sigmoid_(x)); }
// ex2_ is 2^x, approximately: the instruction __expf uses after scaling
// its argument, which the scan's lanes do once for A instead of every step.
// Subnormal arguments and results are taken as zero (no fix-up
// instructions around it); a state's decay below 2^-126 is zero.
__device__ __forceinline__ float ex2_(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

// softplus_ is log(1 + e^x) as max(x, 0) + log1p(t) with t = e^-|x| in
// (0, 1], and log1p(t) = 2·atanh(s) for s = t/(2 + t) in (0, 1/3]:
// 2s·(1 + s²/3 + ... + s¹⁴/15), whose next term is under 2e-9 of the sum.
// Above 20 that is x itself (log1p(t) is under half a unit in x's last
// place), as PyTorch's cut-over gives, with no branch. Within 1e-6 of the
// exact value, relative, where x >= -15, and 4e-6 below, where the ex2
// argument's rounding grows (TestSoftplusElementwise); about half the
// instructions of log1pf(expf(x)): the scan kernels take it of every Δ
// they stage.
__device__ __forceinline__ float softplus_(float x) {
    const float t = ex2_(-fabsf(x) * 1.4426950408889634f);
    const float s = __fdividef(t, 2.f + t), w = s * s;
    float q = fmaf(w, 1.f / 15, 1.f / 13);
    q = fmaf(q, w, 1.f / 11);
    q = fmaf(q, w, 1.f / 9);
    q = fmaf(q, w, 1.f / 7);
    q = fmaf(q, w, 1.f / 5);
    q = fmaf(q, w, 1.f / 3);
    q = fmaf(q, w, 1.f);
    return fmaf(s + s, q, fmaxf(x, 0.f));
}

// load_v and store_v move V consecutive floats (V = 4: one 16-byte
// access; the address must be 16-byte aligned).
template <int V>
__device__ __forceinline__ void load_v(float (&v)[V], const float *p) {
    if constexpr (V == 4) {
        float4 q = *(const float4 *)p;
        v[0] = q.x, v[1] = q.y, v[2] = q.z, v[3] = q.w;
    } else {
#pragma unroll
        for (int k = 0; k < V; k++) v[k] = p[k];
    }
}

template <int V>
__device__ __forceinline__ void store_v(float *p, const float (&v)[V]) {
    if constexpr (V == 4) {
        *(float4 *)p = make_float4(v[0], v[1], v[2], v[3]);
    } else {
#pragma unroll
        for (int k = 0; k < V; k++) p[k] = v[k];
    }
}

// A bf16 store of V values (V even: as pairs, 4-byte aligned).
template <int V>
__device__ __forceinline__ void store_v(__nv_bfloat16 *p, const float (&v)[V]) {
    if constexpr (V % 2 == 0) {
#pragma unroll
        for (int k = 0; k < V; k += 2) *(__nv_bfloat162 *)(p + k) = __floats2bfloat162_rn(v[k], v[k + 1]);
    } else {
#pragma unroll
        for (int k = 0; k < V; k++) p[k] = __float2bfloat16_rn(v[k]);
    }
}

// put stores a float32 value as the destination's type (the kernels that
// may write GEMM operands in bf16: norm, gate, gate and conv backward).
__device__ __forceinline__ void put(float *p, float v) { *p = v; }
__device__ __forceinline__ void put(__nv_bfloat16 *p, float v) { *p = __float2bfloat16_rn(v); }

template <class T>
__device__ __forceinline__ T warp_sum(T v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// block_sum returns the sum of v over the block (blockDim.x a multiple of 32)
// to every thread.
template <class T>
__device__ T block_sum(T v) {
    __shared__ T sh[32];
    int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) sh[wid] = v;
    __syncthreads();
    if (wid == 0) {
        v = lane < nw ? sh[lane] : T(0);
        v = warp_sum(v);
        if (lane == 0) sh[0] = v;
    }
    __syncthreads();
    return sh[0];
}

__device__ float block_max(float v) {
    __shared__ float sh[32];
    int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) sh[wid] = v;
    __syncthreads();
    if (wid == 0) {
        v = lane < nw ? sh[lane] : -INFINITY;
        v = warp_max(v);
        if (lane == 0) sh[0] = v;
    }
    __syncthreads();
    return sh[0];
}

#define GRID_LOOP(i, n)                                                                \
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < (int64_t)(n); \
         i += (int64_t)blockDim.x * gridDim.x)

static const int kThreads = 256;

static unsigned grid_for(int64_t n) {
    int64_t b = (n + kThreads - 1) / kThreads;
    if (b > 65536) b = 65536;
    if (b < 1) b = 1;
    return (unsigned)b;
}

// allow_smem raises a kernel's dynamic shared memory limit past the default
// 48 KiB (a host-side setting, allowed while a graph is being captured).
// It never lowers a limit it set before, so a smaller launch (or an
// occupancy query) cannot take away what an earlier launch, perhaps one
// recorded in a graph, was allowed; and it asks the driver only when the
// limit grows.
template <class F>
static int allow_smem(F kernel, size_t smem) {
    if (smem <= (48u << 10)) return 0;
    struct Limit {
        const void *kernel;
        size_t smem;
    };
    static Limit limits[256];
    static int nlimits;
    Limit *l = nullptr;
    for (int i = 0; i < nlimits && !l; i++)
        if (limits[i].kernel == (const void *)kernel) l = &limits[i];
    if (l && l->smem >= smem) return 0;
    CK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    if (!l && nlimits < 256) l = &limits[nlimits++];
    if (l) *l = {(const void *)kernel, smem};
    return 0;
}

// ---------------------------------------------------------------------------
// Deterministic column sums: out[q][c] (+)= Σ_r f(r, c, q) for c < C, q < Q.
// Stage 1: a block of 32×8 threads sums a 32-column tile over one chunk of
// rows into part[chunk][q][c]. Stage 2 (colsum_final): a block of 32×8
// threads takes 32 of the Q·C sums; its row y adds the partials of the
// y-th eighth of the chunks in chunk order, and the block adds the eight
// in row order before handing the total to the functor's store. (With one
// thread a sum walking all the chunks, a norm's 2,048 sums ran on 8 SMs
// and took 15 µs, a chain of round trips.)

static const int kMaxChunks = 256;
static const int kColsumBatch = 8;

template <class F>
__global__ void k_colsum_partial(F f, float *part, int64_t rows, int64_t C, int64_t rch) {
    __shared__ float sh[8][33];
    int64_t c = (int64_t)blockIdx.x * 32 + threadIdx.x;
    int64_t r0 = (int64_t)blockIdx.y * rch;
    int64_t r1 = r0 + rch < rows ? r0 + rch : rows;
    int q = blockIdx.z;
    float acc = 0.f;
    if (c < C)
        for (int64_t r = r0 + threadIdx.y; r < r1; r += 8) acc += f(r, c, q);
    sh[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.y == 0 && c < C) {
        float s = 0.f;
        for (int k = 0; k < 8; k++) s += sh[k][threadIdx.x];
        part[((int64_t)blockIdx.y * gridDim.z + q) * C + c] = s;
    }
}

template <class F>
__global__ void k_colsum_final(F f, const float *part, int64_t chunks, int Q, int64_t C) {
    __shared__ float sh[8][33];
    const int64_t QC = (int64_t)Q * C, i = (int64_t)blockIdx.x * 32 + threadIdx.x;
    const int64_t per = (chunks + 7) / 8, k0 = threadIdx.y * per;
    const int64_t k1 = k0 + per < chunks ? k0 + per : chunks;
    float s = 0.f;
    if (i < QC) {
        // The partials are loaded kColsumBatch at a time and added in
        // chunk order.
        const float *p = part + i;
        for (int64_t ch = k0; ch < k1; ch += kColsumBatch) {
            float v[kColsumBatch];
#pragma unroll
            for (int j = 0; j < kColsumBatch; j++) v[j] = ch + j < k1 ? p[(ch + j) * QC] : 0.f;
#pragma unroll
            for (int j = 0; j < kColsumBatch; j++) s += v[j];
        }
    }
    sh[threadIdx.y][threadIdx.x] = s;
    __syncthreads();
    if (threadIdx.y == 0 && i < QC) {
        float t = 0.f;
        for (int k = 0; k < 8; k++) t += sh[k][threadIdx.x];
        const int q = (int)(i / C);
        f.store(i - (int64_t)q * C, q, t);
    }
}

// colsum_final launches stage 2 over chunks partials part[chunk][q][c].
template <class F>
static void colsum_final(F f, const float *part, int64_t chunks, int Q, int64_t C) {
    const int64_t QC = (int64_t)Q * C;
    k_colsum_final<<<(unsigned)((QC + 31) / 32), dim3(32, 8), 0, g_stream>>>(f, part, chunks, Q, C);
}

// colsum runs both stages for functor f (with operator()(r,c,q) and
// store(c,q,s)).
template <class F>
static int colsum(F f, int64_t rows, int64_t C, int Q) {
    if (rows <= 0 || C <= 0 || Q <= 0) return 0;
    int64_t rch = (rows + kMaxChunks - 1) / kMaxChunks;
    if (rch < 256) rch = 256;
    int64_t chunks = (rows + rch - 1) / rch;
    void *ws;
    if (workspace((size_t)chunks * Q * C * sizeof(float), &ws)) return 1;
    float *part = (float *)ws;
    dim3 grid((unsigned)((C + 31) / 32), (unsigned)chunks, (unsigned)Q);
    k_colsum_partial<<<grid, dim3(32, 8), 0, g_stream>>>(f, part, rows, C, rch);
    LAUNCHED();
    colsum_final(f, part, chunks, Q, C);
    LAUNCHED();
    return 0;
}

// ---------------------------------------------------------------------------
// Init and memory.

extern "C" int mb_abi_version(void) { return MB_ABI_VERSION; }

extern "C" const char *mb_last_error(void) { return g_err; }

extern "C" const char *mb_device_name(void) { return g_name; }

extern "C" int mb_init(int device, int sync) {
    if (g_ready) {
        if (device != g_device) {
            set_err("mb_init: already initialised on device %d", g_device);
            return 1;
        }
        if (sync) g_sync = 1;
        return 0;
    }
    int count = 0;
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess) {
        set_err("no CUDA driver/GPU: cudaGetDeviceCount: %s", cudaGetErrorString(e));
        return 2;
    }
    if (count == 0) {
        set_err("no CUDA driver/GPU: no CUDA device found");
        return 2;
    }
    if (device < 0 || device >= count) {
        set_err("no CUDA driver/GPU: device %d requested, %d present", device, count);
        return 2;
    }
    CK(cudaSetDevice(device));
    cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, device));
    if (prop.major < 9) {
        set_err("no CUDA driver/GPU: %s is sm_%d%d; this library is built for sm_90 and newer",
                prop.name, prop.major, prop.minor);
        return 2;
    }
    snprintf(g_name, sizeof g_name, "%s (sm_%d%d, %d SMs, %.1f GiB)", prop.name, prop.major,
             prop.minor, prop.multiProcessorCount,
             (double)prop.totalGlobalMem / (1024.0 * 1024.0 * 1024.0));
    g_sms = prop.multiProcessorCount;
    g_smem_sm = prop.sharedMemPerMultiprocessor, g_smem_block = prop.sharedMemPerBlockOptin;
    CK(cudaStreamCreate(&g_stream));
    CKB(cublasCreate(&g_blas));
    CKB(cublasSetPointerMode(g_blas, CUBLAS_POINTER_MODE_HOST));
    CKB(cublasSetStream(g_blas, g_stream));
    CK(cudaMalloc(&g_blas_ws, kBlasWorkspace));
    CKB(cublasSetWorkspace(g_blas, g_blas_ws, kBlasWorkspace));
    CK(cudaMalloc(&g_result, sizeof(double)));
    CK(cudaMalloc(&g_staged, (size_t)kStagedIDs * sizeof(int32_t)));
    CK(cudaMalloc(&g_xacc, (size_t)kXAccMax * sizeof(long long)));
    CK(cudaMemset(g_xacc, 0, (size_t)kXAccMax * sizeof(long long)));
    CK(cudaMalloc(&g_xacc_many, (size_t)kXAccManyMax * sizeof(long long)));
    g_device = device;
    g_sync = sync ? 1 : 0;
    g_ready = 1;
    return 0;
}

extern "C" uintptr_t mb_malloc(int64_t bytes) {
    if (!g_ready) {
        set_err("mb_malloc: mb_init has not been called");
        return 0;
    }
    if (bytes <= 0) return 0;
    void *p = nullptr;
    cudaError_t e = cudaMalloc(&p, (size_t)bytes);
    if (e != cudaSuccess) {
        set_err("mb_malloc: cudaMalloc(%lld bytes): %s", (long long)bytes, cudaGetErrorString(e));
        return 0;
    }
    return (uintptr_t)p;
}

// mb_free may run on another thread than the other calls (Go cleanups); it
// leaves g_err alone.
extern "C" int mb_free(void *p) {
    if (!p) return 0;
    return cudaFree(p) == cudaSuccess ? 0 : 1;
}

// Host to device: from pageable memory cudaMemcpyAsync returns once the
// host values have been taken (staged), so the caller may reuse them, as
// after cudaMemcpy.
extern "C" int mb_memcpy_h2d(void *dst, const void *src_host, int64_t bytes) {
    ENTER();
    NOT_CAPTURING();
    if (bytes <= 0) return 0;
    CK(cudaMemcpyAsync(dst, src_host, (size_t)bytes, cudaMemcpyHostToDevice, g_stream));
    SYNC_DEBUG();
    return 0;
}

extern "C" int mb_memcpy_d2h(void *dst_host, const void *src, int64_t bytes) {
    ENTER();
    NOT_CAPTURING();
    if (bytes <= 0) return 0;
    CK(cudaMemcpyAsync(dst_host, src, (size_t)bytes, cudaMemcpyDeviceToHost, g_stream));
    CK(cudaStreamSynchronize(g_stream));
    return 0;
}

extern "C" int mb_memcpy_d2d(void *dst, const void *src, int64_t bytes) {
    ENTER();
    if (bytes <= 0 || dst == src) return 0;
    CK(cudaMemcpyAsync(dst, src, (size_t)bytes, cudaMemcpyDeviceToDevice, g_stream));
    SYNC_DEBUG();
    return 0;
}

extern "C" int mb_memset(void *dst, int value, int64_t bytes) {
    ENTER();
    if (bytes <= 0) return 0;
    CK(cudaMemsetAsync(dst, value, (size_t)bytes, g_stream));
    SYNC_DEBUG();
    return 0;
}

extern "C" int mb_mem_info(int64_t *free_host, int64_t *total_host) {
    ENTER();
    size_t f = 0, t = 0;
    CK(cudaMemGetInfo(&f, &t));
    *free_host = (int64_t)f;
    *total_host = (int64_t)t;
    return 0;
}

extern "C" int mb_sync(void) {
    ENTER();
    NOT_CAPTURING();
    CK(cudaStreamSynchronize(g_stream));
    return 0;
}

// ---------------------------------------------------------------------------
// CUDA graphs: record the work issued between mb_graph_begin and
// mb_graph_end once, then replay it with one launch.

extern "C" int mb_graph_begin(void) {
    ENTER();
    if (g_capturing) {
        set_err("mb_graph_begin: a capture is already under way");
        return 1;
    }
    // Relaxed: the Go caller may move between OS threads during a capture.
    CK(cudaStreamBeginCapture(g_stream, cudaStreamCaptureModeRelaxed));
    g_capturing = 1;
    return 0;
}

extern "C" int mb_graph_end(uintptr_t *exec_out) {
    ENTER();
    *exec_out = 0;
    if (!g_capturing) {
        set_err("mb_graph_end: no capture under way");
        return 1;
    }
    g_capturing = 0;
    cudaGraph_t graph = nullptr;
    // A failure inside the capture (an operation that cannot be recorded)
    // invalidates it and shows here.
    CK(cudaStreamEndCapture(g_stream, &graph));
    if (!graph) {
        set_err("mb_graph_end: the capture was invalidated");
        return 1;
    }
    cudaGraphExec_t exec = nullptr;
    cudaError_t e = cudaGraphInstantiateWithFlags(&exec, graph, 0);
    cudaGraphDestroy(graph);
    if (e != cudaSuccess) {
        set_err("mb_graph_end: cudaGraphInstantiateWithFlags: %s", cudaGetErrorString(e));
        return 1;
    }
    *exec_out = (uintptr_t)exec;
    return 0;
}

extern "C" int mb_graph_launch(uintptr_t exec) {
    ENTER();
    NOT_CAPTURING();
    CK(cudaGraphLaunch((cudaGraphExec_t)exec, g_stream));
    SYNC_DEBUG();
    return 0;
}

// Like mb_free, may be called for a graph still running: waits for the
// stream first.
extern "C" int mb_graph_free(uintptr_t exec) {
    if (!exec) return 0;
    if (g_ready && !g_capturing && cudaStreamSynchronize(g_stream) != cudaSuccess) return 1;
    return cudaGraphExecDestroy((cudaGraphExec_t)exec) == cudaSuccess ? 0 : 1;
}

extern "C" int mb_stage_ids(const int32_t *ids_host, int64_t n) {
    ENTER();
    NOT_CAPTURING();
    if (n <= 0) return 0;
    if (n > kStagedIDs) {
        set_err("mb_stage_ids: %lld ids; at most %lld can be staged", (long long)n,
                (long long)kStagedIDs);
        return 1;
    }
    CK(cudaMemcpyAsync(g_staged, ids_host, (size_t)n * sizeof(int32_t), cudaMemcpyHostToDevice,
                       g_stream));
    SYNC_DEBUG();
    return 0;
}

// ---------------------------------------------------------------------------
// GEMM.

// k_scale_rows: C[i, j] = beta·C[i, j] (beta 0: zero, ignoring NaNs) for an
// (m,n) matrix of row stride ldc; the k = 0 or alpha = 0 case of GEMM.
__global__ void k_scale_rows(float *c, int64_t ldc, int64_t m, int64_t n, float beta) {
    GRID_LOOP(i, m * n) {
        int64_t r = i / n, j = i - r * n;
        float *p = c + r * ldc + j;
        *p = beta == 0.f ? 0.f : beta * *p;
    }
}

// Small-m GEMM, the decode step's x·Wᵀ: C (m,n) = alpha·A (m,k)·Bᵀ + beta·C
// with B (n,k) row-major and m <= M <= 8. Bound by reading B once, which
// cuBLAS does slowly at this shape. One warp per output column j: the lanes
// stride over row j of B (16-byte loads, four in flight, streamed past L1)
// and dot it with the m rows of A (small and reread by every warp: served by
// L1), then sum across the warp. Reading B dominates, so it computes in
// float32 in both modes (bf16 mode does not round the operands here).
static const int kGemvMaxM = 8;

__device__ __forceinline__ float dot4(float4 w, float4 x) {
    return w.x * x.x + w.y * x.y + w.z * x.z + w.w * x.w;
}

// VEC: k, lda and ldb are multiples of 4 and a, b 16-byte aligned.
template <int M, bool VEC>
__global__ void __launch_bounds__(256)
    k_gemv_nt(float *c, int64_t ldc, const float *a, int64_t lda, const float *b, int64_t ldb,
              int m, int64_t n, int64_t k, float alpha, float beta) {
    int64_t j = (int64_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    int lane = threadIdx.x & 31;
    if (j >= n) return;  // the whole warp leaves together
    const float *bj = b + j * ldb;
    float acc[M];
#pragma unroll
    for (int i = 0; i < M; i++) acc[i] = 0.f;
    if (VEC) {
        const float4 *b4 = (const float4 *)bj;
        int64_t k4 = k / 4, p = lane;
        for (; p + 96 < k4; p += 128) {
            float4 w0 = __ldcs(b4 + p), w1 = __ldcs(b4 + p + 32), w2 = __ldcs(b4 + p + 64),
                   w3 = __ldcs(b4 + p + 96);
#pragma unroll
            for (int i = 0; i < M; i++) {
                if (i < m) {
                    const float4 *a4 = (const float4 *)(a + i * lda);
                    acc[i] += dot4(w0, a4[p]) + dot4(w1, a4[p + 32]) + dot4(w2, a4[p + 64]) +
                              dot4(w3, a4[p + 96]);
                }
            }
        }
        for (; p < k4; p += 32) {
            float4 w = __ldcs(b4 + p);
#pragma unroll
            for (int i = 0; i < M; i++)
                if (i < m) acc[i] += dot4(w, ((const float4 *)(a + i * lda))[p]);
        }
    } else {
        for (int64_t p = lane; p < k; p += 32) {
            float w = bj[p];
#pragma unroll
            for (int i = 0; i < M; i++)
                if (i < m) acc[i] += w * a[i * lda + p];
        }
    }
#pragma unroll
    for (int i = 0; i < M; i++) acc[i] = warp_sum(acc[i]);
    if (lane == 0) {
#pragma unroll
        for (int i = 0; i < M; i++) {
            if (i < m) {
                float *cp = c + i * ldc + j;
                float v = alpha * acc[i];
                *cp = beta == 0.f ? v : v + beta * *cp;
            }
        }
    }
}

template <int M>
static void launch_gemv(int vec, float *c, int64_t ldc, const float *a, int64_t lda,
                        const float *b, int64_t ldb, int m, int64_t n, int64_t k, float alpha,
                        float beta) {
    unsigned blocks = (unsigned)((n + 7) / 8);
    if (vec)
        k_gemv_nt<M, true><<<blocks, 256, 0, g_stream>>>(c, ldc, a, lda, b, ldb, m, n, k, alpha, beta);
    else
        k_gemv_nt<M, false><<<blocks, 256, 0, g_stream>>>(c, ldc, a, lda, b, ldb, m, n, k, alpha, beta);
}

static int gemv_nt(float *c, int64_t ldc, const float *a, int64_t lda, const float *b,
                   int64_t ldb, int64_t m, int64_t n, int64_t k, float alpha, float beta) {
    int vec = k % 4 == 0 && lda % 4 == 0 && ldb % 4 == 0 && (uintptr_t)a % 16 == 0 &&
              (uintptr_t)b % 16 == 0;
    if (m == 1)
        launch_gemv<1>(vec, c, ldc, a, lda, b, ldb, (int)m, n, k, alpha, beta);
    else if (m == 2)
        launch_gemv<2>(vec, c, ldc, a, lda, b, ldb, (int)m, n, k, alpha, beta);
    else if (m <= 4)
        launch_gemv<4>(vec, c, ldc, a, lda, b, ldb, (int)m, n, k, alpha, beta);
    else
        launch_gemv<8>(vec, c, ldc, a, lda, b, ldb, (int)m, n, k, alpha, beta);
    LAUNCHED();
    return 0;
}

// switched_off says whether the environment variable name is "0" (the
// library's switches for comparing a fast path with the general one).
static bool switched_off(const char *name) {
    const char *v = getenv(name);
    return v && strcmp(v, "0") == 0;
}

// In bf16 mode a GEMM whose sides are all at least kGemmBf16Min runs on
// bf16 copies of its operands, made just before it: cuBLAS then takes its
// bf16 kernels, about twice the rate it reaches on float32 operands with
// CUBLAS_COMPUTE_32F_FAST_16BF (which rounds them to bf16 all the same),
// which is more than the copies cost (cuda/gemm_bench.cu times both).
// Thinner GEMMs gain less than the copies cost and stay on float32
// operands.
static const int64_t kGemmBf16Min = 512;

// gemm_bf16_ok says whether such GEMMs may take the bf16 copies
// (MAMBABYTE_CUDA_GEMM_PACK=0 keeps float32 operands, for comparisons).
static bool gemm_bf16_ok() {
    static const bool ok = !switched_off("MAMBABYTE_CUDA_GEMM_PACK");
    return ok;
}

extern "C" int64_t mb_gemm_operand_min(void) { return gemm_bf16_ok() ? kGemmBf16Min : 0; }

// k_pack_bf16 writes src (rows, cols; row stride ld) as packed bf16 rows;
// vec: cols and ld are multiples of 4 and src is 16-byte aligned.
template <bool vec>
__global__ void k_pack_bf16(__nv_bfloat16 *dst, const float *src, int64_t rows, int64_t cols,
                            int64_t ld) {
    if (vec) {
        int64_t q = cols / 4;
        GRID_LOOP(i, rows * q) {
            int64_t r = i / q, c = (i - r * q) * 4;
            float4 v = *(const float4 *)&src[r * ld + c];
            __nv_bfloat162 *d = (__nv_bfloat162 *)&dst[r * cols + c];
            d[0] = __floats2bfloat162_rn(v.x, v.y);
            d[1] = __floats2bfloat162_rn(v.z, v.w);
        }
    } else {
        GRID_LOOP(i, rows * cols) {
            int64_t r = i / cols, c = i - r * cols;
            dst[i] = __float2bfloat16_rn(src[r * ld + c]);
        }
    }
}

// The bf16 copy of the A operand of the last bf16-operand GEMM, and what
// it was made from. The backward's dW and dX products of a projection
// take the same A (dh for out_proj; dxz for in_proj, unless it is a bf16
// operand tensor already) in consecutive calls; the second reuses the
// copy. It is valid (g_packA_ok) only while nothing but mb_gemm has run
// since it was made (ENTER drops it) and no GEMM has written over its
// source since; memory written by other means (NCCL) must not be a GEMM's
// A operand between two mb_gemm calls.
static __nv_bfloat16 *g_packA = nullptr;
static size_t g_packA_bytes = 0;
static const float *g_packA_src = nullptr;
static int64_t g_packA_rows = 0, g_packA_cols = 0, g_packA_ld = 0;

// overlaps says whether the float ranges [a, a+an) and [b, b+bn) meet.
static bool overlaps(const float *a, int64_t an, const float *b, int64_t bn) {
    return a < b + bn && b < a + an;
}

static void pack_bf16(__nv_bfloat16 *dst, const float *src, int64_t rows, int64_t cols, int64_t ld) {
    bool vec = cols % 4 == 0 && ld % 4 == 0 && (uintptr_t)src % 16 == 0;
    if (vec)
        k_pack_bf16<true><<<grid_for(rows * cols / 4), kThreads, 0, g_stream>>>(dst, src, rows, cols, ld);
    else
        k_pack_bf16<false><<<grid_for(rows * cols), kThreads, 0, g_stream>>>(dst, src, rows, cols, ld);
}

extern "C" int mb_gemm(int transA, int transB, int64_t m, int64_t n, int64_t k, float alpha,
                       const void *av, int64_t lda, const void *bv, int64_t ldb, float beta,
                       void *cv, int64_t ldc, int mode) {
    ENTER_GEMM();
    const bool keep = g_packA_ok;  // this call's A may reuse the last copy
    g_packA_ok = false;            // unless re-established below
    // Mode bits: 1 bf16 GEMMs, 2 A is stored in bf16, 4 B is, 8 C is.
    const bool a_in16 = mode & MB_GEMM_A16, b_in16 = mode & MB_GEMM_B16, c_in16 = mode & MB_GEMM_C16;
    mode &= MB_GEMM_BF16;
    const float *a = (const float *)av, *b = (const float *)bv;
    float *c = (float *)cv;
    if (c_in16 && beta != 0.f) {
        set_err("mb_gemm: a bf16 C takes beta 0, not %g", (double)beta);
        return 1;
    }
    if (m <= 0 || n <= 0) return 0;
    if (k <= 0 || alpha == 0.f) {
        if (beta == 1.f) return 0;
        if (c_in16) {
            CK(cudaMemset2DAsync(cv, (size_t)ldc * 2, 0, (size_t)n * 2, (size_t)m, g_stream));
            return 0;
        }
        k_scale_rows<<<grid_for(m * n), kThreads, 0, g_stream>>>(c, ldc, m, n, beta);
        LAUNCHED();
        return 0;
    }
    if (m > INT32_MAX || n > INT32_MAX || k > INT32_MAX || lda > INT32_MAX || ldb > INT32_MAX ||
        ldc > INT32_MAX) {
        set_err("mb_gemm: sizes beyond int32 (m=%lld n=%lld k=%lld)", (long long)m, (long long)n,
                (long long)k);
        return 1;
    }
    const bool in16 = a_in16 || b_in16 || c_in16;
    if (!in16 && !transA && transB && m <= kGemvMaxM)
        return gemv_nt(c, ldc, a, lda, b, ldb, m, n, k, alpha, beta);
    // Row-major C = op(A)·op(B) is column-major Cᵀ = op(B)ᵀ·op(A)ᵀ: a
    // row-major buffer read column-major is the transpose, so pass B first
    // with the same transpose flags.
    cublasOperation_t opA = transA ? CUBLAS_OP_T : CUBLAS_OP_N;
    cublasOperation_t opB = transB ? CUBLAS_OP_T : CUBLAS_OP_N;
    if (mode == 0 && !in16) {
        CKB(cublasSgemm(g_blas, opB, opA, (int)n, (int)m, (int)k, &alpha, b, (int)ldb, a,
                        (int)lda, &beta, c, (int)ldc));
    } else if (in16 || (m >= kGemmBf16Min && n >= kGemmBf16Min && k >= kGemmBf16Min && gemm_bf16_ok())) {
        // bf16 operands: an operand stored in bf16 (an operand tensor,
        // whatever the sizes) as it is, a float32 one as a bf16 copy. (A
        // bf16 C takes this path too.)
        // As stored: A is (k, m) when transposed, else (m, k); B likewise.
        int64_t ar = transA ? k : m, ac = transA ? m : k, br = transB ? n : k, bc = transB ? k : n;
        const int64_t na = a_in16 ? 0 : ar * ac, nb = b_in16 ? 0 : br * bc;  // copies to make
        void *wsv;
        if (workspace(carve_size<__nv_bfloat16>(na) + carve_size<__nv_bfloat16>(nb), &wsv)) return 1;
        char *cur = (char *)wsv;
        __nv_bfloat16 *a16 = carve<__nv_bfloat16>(&cur, na), *b16 = carve<__nv_bfloat16>(&cur, nb);
        if (a_in16) {
            a16 = (__nv_bfloat16 *)av;
        } else if (keep && a == g_packA_src && ar == g_packA_rows && ac == g_packA_cols && lda == g_packA_ld) {
            a16 = g_packA, lda = ac;
        } else if (!g_capturing) {
            if (grow((void **)&g_packA, &g_packA_bytes, (size_t)(ar * ac) * sizeof(__nv_bfloat16))) return 1;
            a16 = g_packA;
            pack_bf16(a16, a, ar, ac, lda);
            LAUNCHED();
            g_packA_src = a, g_packA_rows = ar, g_packA_cols = ac, g_packA_ld = lda;
            lda = ac;
        } else {
            pack_bf16(a16, a, ar, ac, lda);  // a graph keeps nothing between calls
            LAUNCHED();
            lda = ac;
        }
        if (b_in16) {
            b16 = (__nv_bfloat16 *)bv;
        } else {
            pack_bf16(b16, b, br, bc, ldb);
            LAUNCHED();
            ldb = bc;
        }
        CKB(cublasGemmEx(g_blas, opB, opA, (int)n, (int)m, (int)k, &alpha, b16, CUDA_R_16BF,
                         (int)ldb, a16, CUDA_R_16BF, (int)lda, &beta, cv, c_in16 ? CUDA_R_16BF : CUDA_R_32F,
                         (int)ldc, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
        // The copy stays valid for the next call unless this one wrote over
        // its source.
        g_packA_ok = !g_capturing && a16 == g_packA &&
                     !overlaps(c, (m - 1) * ldc + n, g_packA_src, (g_packA_rows - 1) * g_packA_ld + g_packA_cols);
    } else {
        CKB(cublasGemmEx(g_blas, opB, opA, (int)n, (int)m, (int)k, &alpha, b, CUDA_R_32F,
                         (int)ldb, a, CUDA_R_32F, (int)lda, &beta, c, CUDA_R_32F, (int)ldc,
                         CUBLAS_COMPUTE_32F_FAST_16BF, CUBLAS_GEMM_DEFAULT));
    }
    SYNC_DEBUG();
    return 0;
}

// ---------------------------------------------------------------------------
// Embedding: one thread per output value.

__global__ void k_embed_fwd(float *out, const int32_t *ids, const float *w, int64_t n, int64_t D) {
    GRID_LOOP(i, n * D) {
        int64_t r = i / D, j = i - r * D;
        out[i] = w[(int64_t)ids[r] * D + j];
    }
}

__global__ void k_embed_bwd(float *dw, const float *dout, const int32_t *ids, int64_t n, int64_t D) {
    GRID_LOOP(i, n * D) {
        int64_t r = i / D, j = i - r * D;
        atomicAdd(&dw[(int64_t)ids[r] * D + j], dout[i]);
    }
}

extern "C" int mb_embed_fwd(float *out, const int32_t *ids_host, const float *w, int64_t n,
                            int64_t D) {
    ENTER();
    if (n <= 0 || D <= 0) return 0;
    int32_t *ids;
    if (upload_i32(0, ids_host, n, &ids)) return 1;
    k_embed_fwd<<<grid_for(n * D), kThreads, 0, g_stream>>>(out, ids, w, n, D);
    LAUNCHED();
    return 0;
}

extern "C" int mb_embed_fwd_staged(float *out, const float *w, int64_t n, int64_t D) {
    ENTER();
    if (n <= 0 || D <= 0) return 0;
    if (n > kStagedIDs) {
        set_err("mb_embed_fwd_staged: %lld ids; at most %lld can be staged", (long long)n,
                (long long)kStagedIDs);
        return 1;
    }
    k_embed_fwd<<<grid_for(n * D), kThreads, 0, g_stream>>>(out, g_staged, w, n, D);
    LAUNCHED();
    return 0;
}

extern "C" int mb_embed_bwd(float *dw, const float *dout, const int32_t *ids_host, int64_t n,
                            int64_t D) {
    ENTER();
    if (n <= 0 || D <= 0) return 0;
    int32_t *ids;
    if (upload_i32(0, ids_host, n, &ids)) return 1;
    k_embed_bwd<<<grid_for(n * D), kThreads, 0, g_stream>>>(dw, dout, ids, n, D);
    LAUNCHED();
    return 0;
}

// ---------------------------------------------------------------------------
// LayerNorm / RMSNorm: one warp per row (8 rows per block of 256).

// warp_norm_stats gives every lane of a warp the mean (0 for RMSNorm) and
// the reciprocal standard deviation of the row x (D values).
__device__ __forceinline__ void warp_norm_stats(const float *x, int64_t D, float eps, int rms,
                                                int lane, float *mu_out, float *rs_out) {
    float mu = 0.f;
    if (!rms) {
        float s = 0.f;
        for (int64_t i = lane; i < D; i += 32) s += x[i];
        mu = warp_sum(s) / (float)D;
    }
    float ss = 0.f;
    for (int64_t i = lane; i < D; i += 32) {
        float d = x[i] - mu;
        ss += d * d;
    }
    ss = warp_sum(ss);
    *mu_out = mu;
    *rs_out = (float)(1.0 / sqrt((double)ss / (double)D + (double)eps));
}

// The norm kernels' batch of values a lane (see k_norm_fwd).
static const int kNormBatch = 8;

template <typename O>
__global__ void k_norm_fwd(O *out, float *mean, float *rstd, const float *x, const float *w,
                           const float *b, int64_t rows, int64_t D, float eps, int rms) {
    int64_t r = (int64_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    int lane = threadIdx.x & 31;
    if (r >= rows) return;  // the whole warp leaves together
    const float *xr = x + r * D;
    O *orow = out + r * D;
    float mu, rs;
    warp_norm_stats(xr, D, eps, rms, lane, &mu, &rs);
    // kNormBatch values a lane at a time, all loaded before any is stored:
    // storing through a pointer that might alias x, w and b, the compiler
    // otherwise kept one value's loads in flight at a time.
    for (int64_t i0 = lane; i0 < D; i0 += 32 * kNormBatch) {
        float v[kNormBatch];
#pragma unroll
        for (int q = 0; q < kNormBatch; q++) {
            const int64_t i = i0 + 32 * q;
            v[q] = i >= D ? 0.f : rms ? xr[i] * rs * w[i] : (xr[i] - mu) * rs * w[i] + b[i];
        }
#pragma unroll
        for (int q = 0; q < kNormBatch; q++)
            if (i0 + 32 * q < D) put(orow + i0 + 32 * q, v[q]);
    }
    if (lane == 0) {
        if (mean) mean[r] = mu;
        if (rstd) rstd[r] = rs;
    }
}

// The same with one block per row, for few rows (decode): a warp per row
// would leave most of the GPU idle and walk the row in D/32 dependent steps.
template <typename O>
__global__ void k_norm_fwd_rowblock(O *out, float *mean, float *rstd, const float *x,
                                    const float *w, const float *b, int64_t D, float eps,
                                    int rms) {
    int64_t r = blockIdx.x;
    const float *xr = x + r * D;
    O *orow = out + r * D;
    float mu = 0.f;
    if (!rms) {
        float s = 0.f;
        for (int64_t i = threadIdx.x; i < D; i += blockDim.x) s += xr[i];
        mu = block_sum(s) / (float)D;
    }
    float ss = 0.f;
    for (int64_t i = threadIdx.x; i < D; i += blockDim.x) {
        float d = xr[i] - mu;
        ss += d * d;
    }
    ss = block_sum(ss);
    float rs = (float)(1.0 / sqrt((double)ss / (double)D + (double)eps));
    if (rms) {
        for (int64_t i = threadIdx.x; i < D; i += blockDim.x) put(orow + i, xr[i] * rs * w[i]);
    } else {
        for (int64_t i = threadIdx.x; i < D; i += blockDim.x) put(orow + i, (xr[i] - mu) * rs * w[i] + b[i]);
    }
    if (threadIdx.x == 0) {
        if (mean) mean[r] = mu;
        if (rstd) rstd[r] = rs;
    }
}

// dx += rstd·(dout·w - mean(dout·w) - xhat·mean(dout·w·xhat)), one warp per row.
__global__ void k_norm_bwd_dx(float *dx, const float *dout, const float *x, const float *w,
                              const float *mean, const float *rstd, int64_t rows, int64_t D,
                              int rms) {
    int64_t r = (int64_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    int lane = threadIdx.x & 31;
    if (r >= rows) return;
    const float *xr = x + r * D, *gr = dout + r * D;
    float *dr = dx + r * D;
    float m = mean ? mean[r] : 0.f, rs = rstd[r];
    float sg = 0.f, sgx = 0.f;
    for (int64_t i = lane; i < D; i += 32) {
        float xh = (xr[i] - m) * rs;
        float g = gr[i] * w[i];
        sg += g;
        sgx += g * xh;
    }
    float mg = warp_sum(sg) / (float)D;
    float mgx = warp_sum(sgx) / (float)D;
    if (rms) mg = 0.f;
    for (int64_t i = lane; i < D; i += 32) {
        float xh = (xr[i] - m) * rs;
        dr[i] += rs * (gr[i] * w[i] - mg - xh * mgx);
    }
}

// Column sums for the norm: q 0 is Σ dout·xhat (dw), q 1 is Σ dout (db).
struct NormCols {
    float *dw, *db;
    const float *dout, *x, *mean, *rstd;
    int64_t D;
    __device__ float operator()(int64_t r, int64_t c, int q) const {
        float g = dout[r * D + c];
        if (q == 1) return g;
        float m = mean ? mean[r] : 0.f;
        return g * ((x[r * D + c] - m) * rstd[r]);
    }
    __device__ void store(int64_t c, int q, float s) const {
        if (q == 0)
            dw[c] += s;
        else
            db[c] += s;
    }
};

template <typename O>
static void norm_fwd(O *out, float *mean, float *rstd, const float *x, const float *w,
                     const float *b, int64_t rows, int64_t D, float eps, int rms) {
    if (rows <= 512)
        k_norm_fwd_rowblock<<<(unsigned)rows, 256, 0, g_stream>>>(out, mean, rstd, x, w, b, D, eps, rms);
    else
        k_norm_fwd<<<(unsigned)((rows + 7) / 8), 256, 0, g_stream>>>(out, mean, rstd, x, w, b, rows, D, eps, rms);
}

extern "C" int mb_norm_fwd(void *out, float *mean, float *rstd, const float *x, const float *w,
                           const float *b, int64_t rows, int64_t D, float eps, int rms, int out16) {
    ENTER();
    if (rows <= 0 || D <= 0) return 0;
    if (out16)
        norm_fwd((__nv_bfloat16 *)out, mean, rstd, x, w, b, rows, D, eps, rms);
    else
        norm_fwd((float *)out, mean, rstd, x, w, b, rows, D, eps, rms);
    LAUNCHED();
    return 0;
}

// The norm backward in one pass over the rows: warp w of a block takes rows
// r0+w, r0+w+W, ... of the block's chunk [r0, r0+rch), adds into dx as
// k_norm_bwd_dx does, and sums its rows' dout·xhat (and dout when Q is 2)
// per column in its own slice of shared memory; the block then adds the W
// slices in warp order into part[chunk][q][c], which colsum_final adds.
// With dx16 it also writes dx's new values rounded to bf16 there
// (pack_bf16's values: a GEMM's copy of dx as its A). V > 0: the lane
// keeps its V values of the row's x and dout in registers between the two
// passes (D <= 32·V); V = 0 reads them again. The block keeps w in shared
// memory after the warps' slices, and the second pass reads dx kNormBatch
// values a lane at a time before it writes them: with w read from global
// memory inside that loop, the compiler could not move a load of w or dx
// above a store to dx (they might alias), and each value of a row cost a
// round trip.
template <int V>
__global__ void __launch_bounds__(256, 2)
    k_norm_bwd_rows(float *dx, __nv_bfloat16 *dx16, float *part, const float *dout,
                    const float *x, const float *w, const float *mean, const float *rstd,
                    int64_t rows, int64_t D, int64_t rch, int rms, int Q) {
    extern __shared__ float sacc[];
    const int W = blockDim.x / 32, warp = threadIdx.x / 32, lane = threadIdx.x & 31;
    const int64_t QD = (int64_t)Q * D;
    float *acc = sacc + warp * QD, *sw = sacc + W * QD;
    for (int64_t c = threadIdx.x; c < D; c += blockDim.x) sw[c] = w[c];
    for (int64_t c = lane; c < QD; c += 32) acc[c] = 0.f;
    __syncthreads();  // (sw; and a lane may add to a column another lane zeroed)
    const int64_t r0 = (int64_t)blockIdx.x * rch, r1 = min(rows, r0 + rch);
    // The lane's j-th value of a row is column lane + 32·j: nj of them,
    // a constant with the row in registers.
    const int nj = V > 0 ? V : (int)((D + 31) / 32);
    for (int64_t r = r0 + warp; r < r1; r += W) {
        const float *xr = x + r * D, *gr = dout + r * D;
        float *dr = dx + r * D;
        const float m = mean ? mean[r] : 0.f, rs = rstd[r];
        float xv[V > 0 ? V : 1], gv[V > 0 ? V : 1];
        if constexpr (V > 0) {
#pragma unroll
            for (int j = 0; j < V; j++) {
                const int i = lane + 32 * j;
                xv[j] = i < D ? xr[i] : 0.f;
                gv[j] = i < D ? gr[i] : 0.f;
            }
        }
        float sg = 0.f, sgx = 0.f;
#pragma unroll
        for (int j = 0; j < nj; j++) {
            const int i = lane + 32 * j;
            if (i < D) {
                const float g = (V > 0 ? gv[j] : gr[i]) * sw[i];
                sg += g;
                sgx += g * (((V > 0 ? xv[j] : xr[i]) - m) * rs);
            }
        }
        const float mg = rms ? 0.f : warp_sum(sg) / (float)D;
        const float mgx = warp_sum(sgx) / (float)D;
#pragma unroll
        for (int j0 = 0; j0 < nj; j0 += kNormBatch) {
            // (V = 0: the batch's x and dout as well.)
            float dv[kNormBatch], xb[V > 0 ? 1 : kNormBatch], gb[V > 0 ? 1 : kNormBatch];
#pragma unroll
            for (int q = 0; q < kNormBatch; q++) {
                const int i = lane + 32 * (j0 + q);
                const bool in = j0 + q < nj && i < D;
                dv[q] = in ? dr[i] : 0.f;
                if constexpr (V == 0) {
                    xb[q] = in ? xr[i] : 0.f;
                    gb[q] = in ? gr[i] : 0.f;
                }
            }
#pragma unroll
            for (int q = 0; q < kNormBatch; q++) {
                const int j = j0 + q, i = lane + 32 * j;
                if (j < nj && i < D) {
                    float xh, g;
                    if constexpr (V > 0) {
                        xh = (xv[j] - m) * rs;
                        g = gv[j];
                    } else {
                        xh = (xb[q] - m) * rs;
                        g = gb[q];
                    }
                    const float d = dv[q] + rs * (g * sw[i] - mg - xh * mgx);
                    dr[i] = d;
                    if (dx16) dx16[r * D + i] = __float2bfloat16_rn(d);
                    acc[i] += g * xh;
                    if (Q == 2) acc[D + i] += g;
                }
            }
        }
    }
    __syncthreads();
    for (int64_t c = threadIdx.x; c < QD; c += blockDim.x) {
        float s = 0.f;
        for (int k = 0; k < W; k++) s += sacc[k * QD + c];
        part[(int64_t)blockIdx.x * QD + c] = s;
    }
}

// norm_bwd_rows runs k_norm_bwd_rows and the chunk sums; it reports -1
// (nothing launched) where the per-warp sums do not fit in shared memory.
template <int V>
static int norm_bwd_rows(float *dx, __nv_bfloat16 *dx16, const NormCols &f, const float *dout,
                         const float *x, const float *w, const float *mean, const float *rstd,
                         int64_t rows, int64_t D, int rms, int Q) {
    const size_t per_warp = (size_t)Q * D * sizeof(float), wbytes = (size_t)D * sizeof(float);
    int W = 8;
    while (W > 1 && per_warp * W + wbytes > (160u << 10)) W /= 2;
    if (per_warp * W + wbytes > (160u << 10)) return -1;
    // About two blocks per SM's worth of chunks, each at least 2 rows a warp.
    int64_t rch = (rows + 2 * g_sms - 1) / (2 * g_sms);
    if (rch < 2 * W) rch = 2 * W;
    int64_t chunks = (rows + rch - 1) / rch;
    void *ws;
    if (workspace((size_t)chunks * Q * D * sizeof(float), &ws)) return 1;
    size_t smem = per_warp * W + wbytes;
    if (allow_smem(k_norm_bwd_rows<V>, smem)) return 1;
    k_norm_bwd_rows<V><<<(unsigned)chunks, 32 * W, smem, g_stream>>>(dx, dx16, (float *)ws, dout, x, w, mean,
                                                                     rstd, rows, D, rch, rms, Q);
    LAUNCHED();
    colsum_final(f, (const float *)ws, chunks, Q, D);
    LAUNCHED();
    return 0;
}

extern "C" int mb_norm_bwd(float *dx, float *dw, float *db, const float *dout, const float *x,
                           const float *w, const float *mean, const float *rstd, int64_t rows,
                           int64_t D, int rms, int copy16) {
    ENTER();
    if (rows <= 0 || D <= 0) return 0;
    NormCols f{dw, db, dout, x, mean, rstd, D};
    int Q = (rms || db == nullptr) ? 1 : 2;
    // With copy16 the kernel leaves dx's bf16 copy where mb_gemm keeps the
    // copy of its A, for the next product that reads dx (out_proj's).
    __nv_bfloat16 *dx16 = nullptr;
    if (copy16 && !g_capturing) {
        if (grow((void **)&g_packA, &g_packA_bytes, (size_t)(rows * D) * sizeof(__nv_bfloat16))) return 1;
        dx16 = g_packA;
    }
    int rc = D <= 256    ? norm_bwd_rows<8>(dx, dx16, f, dout, x, w, mean, rstd, rows, D, rms, Q)
             : D <= 512  ? norm_bwd_rows<16>(dx, dx16, f, dout, x, w, mean, rstd, rows, D, rms, Q)
             : D <= 1024 ? norm_bwd_rows<32>(dx, dx16, f, dout, x, w, mean, rstd, rows, D, rms, Q)
                         : norm_bwd_rows<0>(dx, dx16, f, dout, x, w, mean, rstd, rows, D, rms, Q);
    if (rc == 0 && dx16) {
        g_packA_src = dx, g_packA_rows = rows, g_packA_cols = D, g_packA_ld = D;
        g_packA_ok = true;
    }
    if (rc >= 0) return rc;
    unsigned blocks = (unsigned)((rows + 7) / 8);
    k_norm_bwd_dx<<<blocks, 256, 0, g_stream>>>(dx, dout, x, w, mean, rstd, rows, D, rms);
    LAUNCHED();
    return colsum(f, rows, D, Q);
}

// ---------------------------------------------------------------------------
// Causal depthwise conv + SiLU: one thread per (b, t, e).

__device__ __forceinline__ float conv_in(const float *xi, int64_t ldx, const float *prev, int64_t b,
                                         int64_t T, int64_t E, int64_t K, int64_t tau, int64_t e) {
    if (tau >= 0) return xi[(b * T + tau) * ldx + e];
    if (prev) return prev[(b * (K - 1) + K - 1 + tau) * E + e];
    return 0.f;
}

// conv_pre is the pre-activation at (b, t, e): stored in pre (B,T,E), or
// when pre is NULL recomputed from the inputs (the backward's choice: K
// more reads of values it reads anyway, instead of B·T·E stored values).
__device__ __forceinline__ float conv_pre(const float *pre, const float *xi, int64_t ldx,
                                          const float *prev, const float *w, const float *bias,
                                          int64_t b, int64_t T, int64_t E, int64_t K, int64_t t,
                                          int64_t e) {
    if (pre) return pre[(b * T + t) * E + e];
    float acc = bias ? bias[e] : 0.f;
    for (int64_t k = 0; k < K; k++) {
        int64_t tau = t - K + 1 + k;
        if (tau >= 0 || prev) acc += w[e * K + k] * conv_in(xi, ldx, prev, b, T, E, K, tau, e);
    }
    return acc;
}

// u16, when not NULL, receives u rounded to bf16 (a GEMM operand).
__global__ void k_conv_fwd(float *u, __nv_bfloat16 *u16, float *pre, const float *xi, int64_t ldx,
                           const float *prev, const float *w, const float *bias, int64_t B,
                           int64_t T, int64_t E, int64_t K) {
    GRID_LOOP(i, B * T * E) {
        int64_t e = i % E, bt = i / E, t = bt % T, b = bt / T;
        float acc = conv_pre(nullptr, xi, ldx, prev, w, bias, b, T, E, K, t, e);
        if (pre) pre[i] = acc;
        const float v = silu_(acc);
        u[i] = v;
        if (u16) put(u16 + i, v);
    }
}

// put_at stores v at element i of dst, bf16 when o16 (a GEMM operand),
// else float32.
__device__ __forceinline__ void put_at(void *dst, int o16, int64_t i, float v) {
    if (o16)
        put((__nv_bfloat16 *)dst + i, v);
    else
        put((float *)dst + i, v);
}

// dxi[t] = Σ_k dpre[t+K-1-k]·w[k], dpre = du·silu'(pre).
__global__ void k_conv_bwd_dx(void *dxi, int dxi16, int64_t ldx, const float *du, const float *pre,
                              const float *xi, const float *prev, const float *w,
                              const float *bias, int64_t B, int64_t T, int64_t E, int64_t K) {
    GRID_LOOP(i, B * T * E) {
        int64_t e = i % E, bt = i / E, t = bt % T, b = bt / T;
        float acc = 0.f;
        for (int64_t k = 0; k < K; k++) {
            int64_t s = t + K - 1 - k;
            if (s < T) {
                float p = conv_pre(pre, xi, ldx, prev, w, bias, b, T, E, K, s, e);
                acc += du[(b * T + s) * E + e] * silu_grad_(p) * w[e * K + k];
            }
        }
        put_at(dxi, dxi16, (b * T + t) * ldx + e, acc);
    }
}

// Windowed conv kernels for K <= kConvWinMax: one thread walks a chunk of
// kConvChunk steps of one channel, keeping the last K inputs (and, going
// backwards, the last K gradients) in registers, so every value is read
// once; consecutive threads take consecutive channels. The kernels are
// bound by memory: a thread loads kConvBatch steps' values at a time, the
// next batch before the arithmetic on the current one (with one load per
// thread in flight they had reached under half of the memory bandwidth).
static const int kConvChunk = 64;
static const int kConvBatch = 8;
static const int kConvWinMax = 8;

// conv_batch sets v[j] = p[j·ld] for j < min(n, kConvBatch) and the rest
// of the kConvBatch values to zero (all of them when p is NULL).
template <int NB = kConvBatch>
__device__ __forceinline__ void conv_batch(float *v, const float *p, int64_t ld, int64_t n) {
    if (!p) {
#pragma unroll
        for (int j = 0; j < NB; j++) v[j] = 0.f;
        return;
    }
#pragma unroll
    for (int j = 0; j < NB; j++, p += ld) v[j] = j < n ? *p : 0.f;
}

// conv_batch16 is conv_batch for bf16 values at a p that is never NULL.
// (One loader for both types, with conv_batch's NULL test, took the conv
// backward with du2 from 109 to 136 µs a layer.)
template <int NB = kConvBatch>
__device__ __forceinline__ void conv_batch16(float *v, const __nv_bfloat16 *p, int64_t ld, int64_t n) {
#pragma unroll
    for (int j = 0; j < NB; j++, p += ld) v[j] = j < n ? __bfloat162float(*p) : 0.f;
}

template <int K>
__global__ void k_conv_fwd_win(float *u, __nv_bfloat16 *u16, float *pre, const float *xi,
                               int64_t ldx, const float *prev, const float *w, const float *bias,
                               int64_t B, int64_t T, int64_t E, int64_t nc) {
    int64_t e = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= E) return;
    float wk[K];
#pragma unroll
    for (int k = 0; k < K; k++) wk[k] = w[e * K + k];
    float bs = bias ? bias[e] : 0.f;
    for (int64_t cc = blockIdx.y; cc < B * nc; cc += gridDim.y) {
        int64_t b = cc / nc, c = cc - b * nc;
        int64_t t0 = c * kConvChunk, t1 = min(T, t0 + kConvChunk);
        float xw[K];
#pragma unroll
        for (int k = 0; k < K; k++) {
            // xw[k] holds the input at t-K+1+k; before the loop t = t0-1.
            xw[k] = k == 0 ? 0.f : conv_in(xi, ldx, prev, b, T, E, K, t0 - K + k, e);
        }
        const float *xp = xi + (b * T + t0) * ldx + e;
        float *up = u + (b * T + t0) * E + e;
        __nv_bfloat16 *hp = u16 ? u16 + (b * T + t0) * E + e : nullptr;
        float *pp = pre ? pre + (b * T + t0) * E + e : nullptr;
        float xv[kConvBatch];
        conv_batch(xv, xp, ldx, min((int64_t)kConvBatch, t1 - t0));
        for (int64_t t = t0; t < t1; t += kConvBatch) {
            int n = (int)min((int64_t)kConvBatch, t1 - t);
            // The next batch's loads go out before this batch's arithmetic.
            float nx[kConvBatch];
            conv_batch(nx, xp + kConvBatch * ldx, ldx, t1 - t - kConvBatch);
#pragma unroll
            for (int j = 0; j < kConvBatch; j++) {
                if (j >= n) break;
#pragma unroll
                for (int k = 0; k + 1 < K; k++) xw[k] = xw[k + 1];
                xw[K - 1] = xv[j];
                float acc = bs;
#pragma unroll
                for (int k = 0; k < K; k++) acc += wk[k] * xw[k];
                if (pp) pp[j * E] = acc;
                const float v = silu_(acc);
                up[j * E] = v;
                if (hp) put(hp + j * E, v);
            }
#pragma unroll
            for (int j = 0; j < kConvBatch; j++) xv[j] = nx[j];
            xp += kConvBatch * ldx;
            up += kConvBatch * E;
            if (hp) hp += kConvBatch * E;
            if (pp) pp += kConvBatch * E;
        }
    }
}

// silu_grad_fast_ is silu_grad_ with the exponential and the reciprocal
// taken by the approximate instructions (each within about two units in
// the last place; subnormal e^-|x| taken as zero): a fifth of
// silu_grad_'s instructions, for the conv backward, which is bound by
// issuing them.
__device__ __forceinline__ float silu_grad_fast_(float x) {
    const float e = ex2_(-fabsf(x) * 1.4426950408889634f), r = __fdividef(1.f, 1.f + e);
    return silu_grad_s(x, x >= 0.f ? r : e * r);
}

// Writes dxi for the thread's chunks and their sums Σ dpre·input (dw) and
// Σ dpre (dbias) to part (gridDim.y, K+1, E); u's gradient is du, plus
// du2 (bf16) with D2. pre NULL: recomputed from xi, w and bias (the window
// of inputs is at hand). conv_bwd_chunks is the kernel's body for dxi in
// bf16 (O16) or float32.
template <int K, bool O16, bool D2, bool PRE = true, int NB = kConvBatch>
__device__ __forceinline__ void conv_bwd_chunks(void *dxi, int64_t ldx, float *part, const float *du,
                                                const __nv_bfloat16 *du2, const float *pre,
                                                const float *xi, const float *prev, const float *w,
                                                const float *bias, int64_t B, int64_t T, int64_t E,
                                                int64_t nc, int64_t e) {
    float wk[K], dw[K];
#pragma unroll
    for (int k = 0; k < K; k++) {
        wk[k] = w[e * K + k];
        dw[k] = 0.f;
    }
    float bs = bias ? bias[e] : 0.f;
    float db = 0.f;
    for (int64_t cc = blockIdx.y; cc < B * nc; cc += gridDim.y) {
        int64_t b = cc / nc, c = cc - b * nc;
        int64_t t0 = c * kConvChunk, t1 = min(T, t0 + kConvChunk);
        float xw[K], gw[K];
#pragma unroll
        for (int k = 0; k < K; k++) {
            xw[k] = k == 0 ? 0.f : conv_in(xi, ldx, prev, b, T, E, K, t0 - K + k, e);
            gw[k] = 0.f;
        }
        // Step s (counted from t0) brings in dpre at t0+s; dxi at
        // t0+s-K+1 = Σ_k dpre[t0+s-k]·w[k] is then known. The chunk takes
        // len + K - 1 steps; those from send on (past the sequence) bring
        // in zeros. Steps past the last are walked too (no exit inside the
        // unrolled batch, whose windows then stay in registers) and
        // neither add nor store.
        const int len = (int)(t1 - t0), steps = len + K - 1;
        const int send = (int)(min(T, t1 + K - 1) - t0);
        const float *xp = xi + (b * T + t0) * ldx + e;
        const float *gp = du + (b * T + t0) * E + e;
        const __nv_bfloat16 *g2 = D2 ? du2 + (b * T + t0) * E + e : nullptr;
        const float *pp = PRE && pre ? pre + (b * T + t0) * E + e : nullptr;
        int64_t dp = (b * T + t0 - (K - 1)) * ldx + e;  // dxi at t0+s-K+1
        float xv[NB], gv[NB], pv[NB], hv[NB];
        conv_batch<NB>(xv, xp, ldx, send);
        conv_batch<NB>(gv, gp, E, send);
        if (D2) conv_batch16<NB>(hv, g2, E, send);
        if (PRE) conv_batch<NB>(pv, pp, E, send);
        for (int s = 0; s < steps; s += NB) {
            // The next batch's loads go out before this batch's arithmetic.
            float nx[NB], ng[NB], np[NB], nh[NB];
            const int left = send - s - NB;
            conv_batch<NB>(nx, xp + NB * ldx, ldx, left);
            conv_batch<NB>(ng, gp + NB * E, E, left);
            if (D2) conv_batch16<NB>(nh, g2 + NB * E, E, left);
            if (PRE) conv_batch<NB>(np, pp ? pp + NB * E : nullptr, E, left);
#pragma unroll
            for (int j = 0; j < NB; j++) {
                const int sj = s + j;
#pragma unroll
                for (int k = 0; k + 1 < K; k++) xw[k] = xw[k + 1];
                xw[K - 1] = xv[j];
                float p = PRE ? pv[j] : 0.f;
                if (!PRE || !pp) {
                    p = bs;
#pragma unroll
                    for (int k = 0; k < K; k++) p += wk[k] * xw[k];
                }
                const float gs = sj < send ? (D2 ? gv[j] + hv[j] : gv[j]) * silu_grad_fast_(p) : 0.f;
#pragma unroll
                for (int k = 0; k + 1 < K; k++) gw[k] = gw[k + 1];
                gw[K - 1] = gs;
                if (sj < len) {
#pragma unroll
                    for (int k = 0; k < K; k++) dw[k] += gs * xw[k];
                    db += gs;
                }
                if (sj >= K - 1 && sj < steps) {
                    float acc = 0.f;
#pragma unroll
                    for (int k = 0; k < K; k++) acc += gw[K - 1 - k] * wk[k];
                    if constexpr (O16)
                        ((__nv_bfloat16 *)dxi)[dp + j * ldx] = __float2bfloat16_rn(acc);
                    else
                        ((float *)dxi)[dp + j * ldx] = acc;
                }
            }
#pragma unroll
            for (int j = 0; j < NB; j++) {
                xv[j] = nx[j], gv[j] = ng[j];
                if (PRE) pv[j] = np[j];
                if (D2) hv[j] = nh[j];
            }
            xp += NB * ldx;
            gp += NB * E;
            if (D2) g2 += NB * E;
            if (PRE && pp) pp += NB * E;
            dp += NB * ldx;
        }
    }
    float *q = part + (int64_t)blockIdx.y * (K + 1) * E + e;
#pragma unroll
    for (int k = 0; k < K; k++) q[k * E] = dw[k];
    q[K * E] = db;
}

// The windowed conv backward: dxi in float32 or bf16 (O16); the
// pre-activation read or recomputed (PRE: it may be read); u's gradient
// du, or du + du2 (D2, bf16, recomputing only). A kernel each, so that
// each holds one body. With du2, the kernel holding pre's registers and
// kConvBatch steps a batch ran at two blocks an SM at best (at 130
// registers a thread, in one build, one); without pre, kConvBatchR steps
// a batch and three blocks an SM asked of the compiler, it takes 78 and
// no stack, and ncu's time of the 353M layer's conv backward fell from
// 109 to 96 µs. (The kernels without du2 at 111 registers and two blocks
// an SM measured no faster so: 76 µs against 78.)
static const int kConvBatchR = 4;
#define CONV_BWD_WIN(name, O16, D2, PRE, NB, MINB)                                              \
    template <int K>                                                                            \
    __global__ void __launch_bounds__(kThreads, MINB)                                           \
        name(void *dxi, int64_t ldx, float *part, const float *du, const __nv_bfloat16 *du2,    \
             const float *pre, const float *xi, const float *prev, const float *w,              \
             const float *bias, int64_t B, int64_t T, int64_t E, int64_t nc) {                  \
        int64_t e = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;                             \
        if (e >= E) return;                                                                     \
        conv_bwd_chunks<K, O16, D2, PRE, NB>(dxi, ldx, part, du, du2, pre, xi, prev, w, bias, B, \
                                             T, E, nc, e);                                      \
    }
CONV_BWD_WIN(k_conv_bwd_win32, false, false, true, kConvBatch, 1)
CONV_BWD_WIN(k_conv_bwd_win16, true, false, true, kConvBatch, 1)
CONV_BWD_WIN(k_conv_bwd_win16s, true, true, false, kConvBatchR, 3)

#define CONV_WIN_LAUNCH(K, kern, grid, ...)                                               \
    do {                                                                                  \
        switch (K) {                                                                      \
        case 1: kern<1><<<grid, kThreads, 0, g_stream>>>(__VA_ARGS__); break;             \
        case 2: kern<2><<<grid, kThreads, 0, g_stream>>>(__VA_ARGS__); break;             \
        case 3: kern<3><<<grid, kThreads, 0, g_stream>>>(__VA_ARGS__); break;             \
        case 4: kern<4><<<grid, kThreads, 0, g_stream>>>(__VA_ARGS__); break;             \
        case 5: kern<5><<<grid, kThreads, 0, g_stream>>>(__VA_ARGS__); break;             \
        case 6: kern<6><<<grid, kThreads, 0, g_stream>>>(__VA_ARGS__); break;             \
        case 7: kern<7><<<grid, kThreads, 0, g_stream>>>(__VA_ARGS__); break;             \
        default: kern<8><<<grid, kThreads, 0, g_stream>>>(__VA_ARGS__); break;            \
        }                                                                                 \
        LAUNCHED();                                                                       \
    } while (0)

// conv_geometry gives the windowed kernels' chunks per sequence (nc) and
// grid: x over blocks of channels, y over chunks (thread (e, g) walks
// chunks g, g+G, ... of the B·nc, G = gridDim.y; one each up to 65535).
// Shorter chunks (16, 32) and fewer threads walking several chunks each
// measured no faster.
static dim3 conv_geometry(int64_t B, int64_t T, int64_t E, int64_t *nc) {
    *nc = (T + kConvChunk - 1) / kConvChunk;
    int64_t G = B * *nc;
    if (G > 65535) G = 65535;
    return dim3((unsigned)((E + kThreads - 1) / kThreads), (unsigned)G);
}

// Column sums for the conv: q < K is Σ dpre·input[t-K+1+q] (dw[e,q]), q = K
// is Σ dpre (dbias).
struct ConvCols {
    float *dw, *dbias;
    const float *du, *pre, *xi, *prev, *w, *bias;
    int64_t ldx, T, E, K;
    __device__ float operator()(int64_t r, int64_t e, int q) const {
        int64_t b = r / T, t = r - b * T;
        float g = du[r * E + e] * silu_grad_(conv_pre(pre, xi, ldx, prev, w, bias, b, T, E, K, t, e));
        if (q == K) return g;
        return g * conv_in(xi, ldx, prev, b, T, E, K, t - K + 1 + q, e);
    }
    __device__ void store(int64_t e, int q, float s) const {
        if (q == K) {
            if (dbias) dbias[e] += s;
        } else
            dw[e * K + q] += s;
    }
};

// Conv state: one thread per (b, e) walks the K-1 slots in order, so next
// may alias prev (slot j reads slot j+T, which is written later).
__global__ void k_conv_state(float *next, const float *prev, const float *xi, int64_t ldx,
                             int64_t B, int64_t T, int64_t E, int64_t K) {
    int64_t W = K - 1;
    GRID_LOOP(i, B * E) {
        int64_t b = i / E, e = i - b * E;
        for (int64_t j = 0; j < W; j++) {
            float v;
            if (j < W - T)
                v = prev ? prev[(b * W + j + T) * E + e] : 0.f;
            else
                v = xi[(b * T + T - W + j) * ldx + e];
            next[(b * W + j) * E + e] = v;
        }
    }
}

extern "C" int mb_conv_fwd(float *u, void *u16v, float *pre, const float *xi, int64_t ldx,
                           const float *prev, const float *w, const float *bias, int64_t B,
                           int64_t T, int64_t E, int64_t K) {
    ENTER();
    if (B * T * E <= 0) return 0;
    __nv_bfloat16 *u16 = (__nv_bfloat16 *)u16v;
    if (K >= 1 && K <= kConvWinMax) {
        int64_t nc;
        dim3 grid = conv_geometry(B, T, E, &nc);
        CONV_WIN_LAUNCH(K, k_conv_fwd_win, grid, u, u16, pre, xi, ldx, prev, w, bias, B, T, E, nc);
        return 0;
    }
    k_conv_fwd<<<grid_for(B * T * E), kThreads, 0, g_stream>>>(u, u16, pre, xi, ldx, prev, w, bias, B, T, E, K);
    LAUNCHED();
    return 0;
}

// k_add2: dst = a + b (b bf16 when b16), n values.
__global__ void k_add2(float *dst, const float *a, const void *b, int b16, int64_t n) {
    GRID_LOOP(i, n) dst[i] = a[i] + (b16 ? __bfloat162float(((const __nv_bfloat16 *)b)[i]) : ((const float *)b)[i]);
}

// g_du_sum holds du + du2 for the general conv backward.
static float *g_du_sum = nullptr;
static size_t g_du_sum_bytes = 0;

extern "C" int mb_conv_bwd(void *dxi, int64_t ldx, float *dw, float *dbias, const float *du,
                           const void *du2, int du2_16, const float *pre, const float *xi,
                           const float *prev, const float *w, const float *bias, int64_t B,
                           int64_t T, int64_t E, int64_t K, int dxi16) {
    ENTER();
    if (B * T * E <= 0) return 0;
    const bool win = K >= 1 && K <= kConvWinMax;
    if (du2 && (!win || !du2_16 || !dxi16 || pre)) {
        // Elsewhere than the windowed kernel for a bf16 du2 and dxi with
        // pre recomputed, the kernels read one gradient: the sum, made
        // first.
        if (grow_uncaptured("mb_conv_bwd: the gradient's buffer", (void **)&g_du_sum, &g_du_sum_bytes,
                            (size_t)(B * T * E) * sizeof(float)))
            return 1;
        k_add2<<<grid_for(B * T * E), kThreads, 0, g_stream>>>(g_du_sum, du, du2, du2_16, B * T * E);
        LAUNCHED();
        du = g_du_sum;
        du2 = nullptr;
    }
    ConvCols f{dw, dbias, du, pre, xi, prev, w, bias, ldx, T, E, K};
    if (win) {
        int64_t nc;
        dim3 grid = conv_geometry(B, T, E, &nc);
        void *ws;
        if (workspace((size_t)(grid.y * (K + 1) * E) * sizeof(float), &ws)) return 1;
        float *part = (float *)ws;
        const __nv_bfloat16 *d2 = (const __nv_bfloat16 *)du2;
        if (du2)
            CONV_WIN_LAUNCH(K, k_conv_bwd_win16s, grid, dxi, ldx, part, du, d2, pre, xi, prev, w, bias, B, T, E, nc);
        else if (dxi16)
            CONV_WIN_LAUNCH(K, k_conv_bwd_win16, grid, dxi, ldx, part, du, d2, pre, xi, prev, w, bias, B, T, E, nc);
        else
            CONV_WIN_LAUNCH(K, k_conv_bwd_win32, grid, dxi, ldx, part, du, d2, pre, xi, prev, w, bias, B, T, E, nc);
        colsum_final(f, part, grid.y, (int)K + 1, E);
        LAUNCHED();
        return 0;
    }
    k_conv_bwd_dx<<<grid_for(B * T * E), kThreads, 0, g_stream>>>(dxi, dxi16, ldx, du, pre, xi, prev, w, bias, B, T, E, K);
    LAUNCHED();
    return colsum(f, B * T, E, (int)(dbias ? K + 1 : K));
}

extern "C" int mb_conv_state(float *next, const float *prev, const float *xi, int64_t ldx,
                             int64_t B, int64_t T, int64_t E, int64_t K) {
    ENTER();
    if (B * E <= 0 || K <= 1) return 0;
    k_conv_state<<<grid_for(B * E), kThreads, 0, g_stream>>>(next, prev, xi, ldx, B, T, E, K);
    LAUNCHED();
    return 0;
}

// ---------------------------------------------------------------------------
// dt, gate and other element-wise kernels.

__global__ void k_dt_fwd(float *delta, float *raw, const float *bias, int64_t rows, int64_t E) {
    GRID_LOOP(i, rows * E) {
        float x = raw[i] + (bias ? bias[i % E] : 0.f);
        raw[i] = x;
        delta[i] = softplus_(x);
    }
}

__global__ void k_dt_bwd(float *draw, const float *ddelta, const float *raw, int64_t n) {
    GRID_LOOP(i, n) draw[i] = ddelta[i] * sigmoid_(raw[i]);
}

// Column sum of draw into dbias.
struct DtCols {
    float *dbias;
    const float *draw;
    int64_t E;
    __device__ float operator()(int64_t r, int64_t c, int) const { return draw[r * E + c]; }
    __device__ void store(int64_t c, int, float s) const { dbias[c] += s; }
};

extern "C" int mb_dt_fwd(float *delta, float *raw, const float *bias, int64_t rows, int64_t E) {
    ENTER();
    if (rows * E <= 0) return 0;
    k_dt_fwd<<<grid_for(rows * E), kThreads, 0, g_stream>>>(delta, raw, bias, rows, E);
    LAUNCHED();
    return 0;
}

extern "C" int mb_dt_bwd(float *draw, float *dbias, const float *ddelta, const float *raw,
                         int64_t rows, int64_t E) {
    ENTER();
    if (rows * E <= 0) return 0;
    k_dt_bwd<<<grid_for(rows * E), kThreads, 0, g_stream>>>(draw, ddelta, raw, rows * E);
    LAUNCHED();
    if (!dbias) return 0;
    DtCols f{dbias, draw, E};
    return colsum(f, rows, E, 1);
}

__global__ void k_negexp(float *a, const float *alog, int64_t n) {
    GRID_LOOP(i, n) a[i] = -expf(alog[i]);
}

extern "C" int mb_negexp(float *a, const float *alog, int64_t n) {
    ENTER();
    if (n <= 0) return 0;
    k_negexp<<<grid_for(n), kThreads, 0, g_stream>>>(a, alog, n);
    LAUNCHED();
    return 0;
}

// The gate kernels walk (rows, E) as a 2D grid, x over runs of V columns
// (V = 4: float4 loads and stores) and y over rows, so that no element
// pays for an index division.
template <int V, typename O>
__global__ void k_gate_fwd(O *out, const float *y, const float *z, int64_t ldz, int64_t rows,
                           int64_t E) {
    for (int64_t r = blockIdx.y; r < rows; r += gridDim.y)
        for (int64_t c = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) * V; c < E;
             c += (int64_t)gridDim.x * blockDim.x * V) {
            float yv[V], zv[V], ov[V];
            load_v<V>(yv, y + r * E + c);
            load_v<V>(zv, z + r * ldz + c);
#pragma unroll
            for (int k = 0; k < V; k++) ov[k] = yv[k] * silu_(zv[k]);
            store_v<V>(out + r * E + c, ov);
        }
}

template <int V, typename DZ>
__global__ void k_gate_bwd(float *dy, DZ *dz, const float *dout, const float *y, const float *z,
                           int64_t ldz, int64_t rows, int64_t E) {
    for (int64_t r = blockIdx.y; r < rows; r += gridDim.y)
        for (int64_t c = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) * V; c < E;
             c += (int64_t)gridDim.x * blockDim.x * V) {
            float zv[V], gv[V], yv[V], dyv[V], dzv[V];
            load_v<V>(zv, z + r * ldz + c);
            load_v<V>(gv, dout + r * E + c);
            load_v<V>(yv, y + r * E + c);
#pragma unroll
            for (int k = 0; k < V; k++) {
                dyv[k] = gv[k] * silu_(zv[k]);
                dzv[k] = gv[k] * yv[k] * silu_grad_(zv[k]);
            }
            store_v<V>(dy + r * E + c, dyv);
            store_v<V>(dz + r * ldz + c, dzv);
        }
}

// gate_grid is the 2D grid of the gate kernels.
static dim3 gate_grid(int64_t rows, int64_t E, int V) {
    int64_t bx = (E / V + kThreads - 1) / kThreads;
    return dim3((unsigned)(bx < 1 ? 1 : bx > 65535 ? 65535 : bx), (unsigned)(rows > 65535 ? 65535 : rows));
}

static __host__ __device__ bool aligned16(const void *p) { return (uintptr_t)p % 16 == 0; }

template <typename O>
static void gate_fwd(O *out, const float *y, const float *z, int64_t ldz, int64_t rows, int64_t E) {
    if (E % 4 == 0 && ldz % 4 == 0 && aligned16(out) && aligned16(y) && aligned16(z))
        k_gate_fwd<4><<<gate_grid(rows, E, 4), kThreads, 0, g_stream>>>(out, y, z, ldz, rows, E);
    else
        k_gate_fwd<1><<<gate_grid(rows, E, 1), kThreads, 0, g_stream>>>(out, y, z, ldz, rows, E);
}

// gate_fwd_to launches the gate into out, bf16 (a GEMM operand) when out16.
static int gate_fwd_to(void *out, int out16, const float *y, const float *z, int64_t ldz,
                       int64_t rows, int64_t E) {
    if (rows * E <= 0) return 0;
    if (out16)
        gate_fwd((__nv_bfloat16 *)out, y, z, ldz, rows, E);
    else
        gate_fwd((float *)out, y, z, ldz, rows, E);
    LAUNCHED();
    return 0;
}

extern "C" int mb_gate_fwd(void *out, const float *y, const float *z, int64_t ldz, int64_t rows,
                           int64_t E, int out16) {
    ENTER();
    return gate_fwd_to(out, out16, y, z, ldz, rows, E);
}

template <typename DZ>
static void gate_bwd(float *dy, DZ *dz, const float *dout, const float *y, const float *z,
                     int64_t ldz, int64_t rows, int64_t E) {
    if (E % 4 == 0 && ldz % 4 == 0 && aligned16(dy) && aligned16(dz) && aligned16(dout) &&
        aligned16(y) && aligned16(z))
        k_gate_bwd<4><<<gate_grid(rows, E, 4), kThreads, 0, g_stream>>>(dy, dz, dout, y, z, ldz, rows, E);
    else
        k_gate_bwd<1><<<gate_grid(rows, E, 1), kThreads, 0, g_stream>>>(dy, dz, dout, y, z, ldz, rows, E);
}

// gate_bwd_to launches the gate's backward; dz16: dz is bf16 (a GEMM
// operand).
static int gate_bwd_to(float *dy, void *dz, int dz16, const float *dout, const float *y,
                       const float *z, int64_t ldz, int64_t rows, int64_t E) {
    if (rows * E <= 0) return 0;
    if (dz16)
        gate_bwd(dy, (__nv_bfloat16 *)dz, dout, y, z, ldz, rows, E);
    else
        gate_bwd(dy, (float *)dz, dout, y, z, ldz, rows, E);
    LAUNCHED();
    return 0;
}

extern "C" int mb_gate_bwd(float *dy, void *dz, const float *dout, const float *y, const float *z,
                           int64_t ldz, int64_t rows, int64_t E, int dz16) {
    ENTER();
    return gate_bwd_to(dy, dz, dz16, dout, y, z, ldz, rows, E);
}

__global__ void k_add(float *dst, const float *src, int64_t n) {
    GRID_LOOP(i, n) dst[i] += src[i];
}

extern "C" int mb_add(float *dst, const float *src, int64_t n) {
    ENTER();
    if (n <= 0) return 0;
    k_add<<<grid_for(n), kThreads, 0, g_stream>>>(dst, src, n);
    LAUNCHED();
    return 0;
}

__global__ void k_scale(float *x, float s, int64_t n) {
    GRID_LOOP(i, n) x[i] *= s;
}

extern "C" int mb_scale(float *x, float s, int64_t n) {
    ENTER();
    if (n <= 0) return 0;
    k_scale<<<grid_for(n), kThreads, 0, g_stream>>>(x, s, n);
    LAUNCHED();
    return 0;
}

// adamw_val is one AdamW update of a value p with gradient g and moments
// m, v.
__device__ __forceinline__ void adamw_val(float &p, float g, float &m, float &v, float lr,
                                          float beta1, float beta2, float eps, float wd, float bc1,
                                          float bc2) {
    const float mi = beta1 * m + (1.f - beta1) * g;
    const float vi = beta2 * v + (1.f - beta2) * g * g;
    m = mi;
    v = vi;
    const float den = sqrtf(vi / bc2) + eps;
    p = p - lr * (mi / bc1 / den + wd * p);
}

// adamw_one is one AdamW update of value i.
__device__ __forceinline__ void adamw_one(float *param, const float *grad, float *m, float *v,
                                          int64_t i, float lr, float beta1, float beta2, float eps,
                                          float wd, float bc1, float bc2) {
    float p = param[i], mi = m[i], vi = v[i];
    adamw_val(p, grad[i], mi, vi, lr, beta1, beta2, eps, wd, bc1, bc2);
    m[i] = mi;
    v[i] = vi;
    param[i] = p;
}

__global__ void k_adamw(float *param, const float *grad, float *m, float *v, int64_t n, float lr,
                        float beta1, float beta2, float eps, float wd, float bc1, float bc2) {
    GRID_LOOP(i, n) adamw_one(param, grad, m, v, i, lr, beta1, beta2, eps, wd, bc1, bc2);
}

// AdamWPiece is a piece of a run for one block of k_adamw_runs: at most
// kAdamWPiece values from off, with weight decay wd.
struct AdamWPiece {
    int64_t off;
    int32_t n;
    float wd;
};
static const int32_t kAdamWPiece = 1 << 16;

// A thread of k_adamw_runs loads kAdamWBatch values of each array before it
// stores any: with the four arrays possibly aliasing one another, the
// compiler kept one value's round trip in flight at a time.
static const int kAdamWBatch = 4;

__global__ void k_adamw_runs(float *param, const float *grad, float *m, float *v,
                             const AdamWPiece *pieces, float lr, float beta1, float beta2,
                             float eps, float bc1, float bc2) {
    const AdamWPiece pc = pieces[blockIdx.x];
    float *pp = param + pc.off, *mp = m + pc.off, *vp = v + pc.off;
    const float *gp = grad + pc.off;
    const int32_t bd = blockDim.x;
    for (int32_t j0 = threadIdx.x; j0 < pc.n; j0 += kAdamWBatch * bd) {
        float pv[kAdamWBatch], gv[kAdamWBatch], mv[kAdamWBatch], vv[kAdamWBatch];
#pragma unroll
        for (int q = 0; q < kAdamWBatch; q++) {
            const int32_t j = j0 + q * bd;
            const bool in = j < pc.n;
            pv[q] = in ? pp[j] : 0.f;
            gv[q] = in ? gp[j] : 0.f;
            mv[q] = in ? mp[j] : 0.f;
            vv[q] = in ? vp[j] : 0.f;
        }
#pragma unroll
        for (int q = 0; q < kAdamWBatch; q++) {
            const int32_t j = j0 + q * bd;
            if (j >= pc.n) break;
            adamw_val(pv[q], gv[q], mv[q], vv[q], lr, beta1, beta2, eps, pc.wd, bc1, bc2);
            mp[j] = mv[q];
            vp[j] = vv[q];
            pp[j] = pv[q];
        }
    }
}

static AdamWPiece *g_pieces = nullptr;
static size_t g_pieces_bytes = 0;

extern "C" int mb_adamw(float *param, const float *grad, float *m, float *v, int64_t n, float lr,
                        float beta1, float beta2, float eps, float wd, float bc1, float bc2) {
    ENTER();
    if (n <= 0) return 0;
    k_adamw<<<grid_for(n), kThreads, 0, g_stream>>>(param, grad, m, v, n, lr, beta1, beta2, eps, wd, bc1, bc2);
    LAUNCHED();
    return 0;
}

// One launch for all runs (a launch per run cost more than the update: 320
// runs for 353M). The runs are cut into pieces of kAdamWPiece values, one
// block each; every value gets exactly mb_adamw's arithmetic.
extern "C" int mb_adamw_runs(float *param, const float *grad, float *m, float *v,
                             const int64_t *runs_host, const uint8_t *decay_host, int64_t nruns,
                             float lr, float beta1, float beta2, float eps, float wd, float bc1,
                             float bc2) {
    ENTER();
    NOT_CAPTURING();
    if (nruns <= 0) return 0;
    size_t count = 0;
    for (int64_t r = 0; r < nruns; r++) {
        int64_t n = runs_host[2 * r + 1];
        if (runs_host[2 * r] < 0 || n < 0) {
            set_err("mb_adamw_runs: run %lld has offset %lld, length %lld", (long long)r,
                    (long long)runs_host[2 * r], (long long)n);
            return 1;
        }
        count += (size_t)((n + kAdamWPiece - 1) / kAdamWPiece);
    }
    if (count == 0) return 0;
    if (count > 0x7fffffff) {
        set_err("mb_adamw_runs: %zu pieces", count);
        return 1;
    }
    AdamWPiece *host = (AdamWPiece *)malloc(count * sizeof(AdamWPiece));
    if (!host) {
        set_err("mb_adamw_runs: out of host memory");
        return 1;
    }
    size_t k = 0;
    for (int64_t r = 0; r < nruns; r++) {
        int64_t off = runs_host[2 * r], n = runs_host[2 * r + 1];
        for (int64_t j = 0; j < n; j += kAdamWPiece) {
            int64_t len = n - j < kAdamWPiece ? n - j : kAdamWPiece;
            host[k++] = AdamWPiece{off + j, (int32_t)len, decay_host[r] ? wd : 0.f};
        }
    }
    if (grow((void **)&g_pieces, &g_pieces_bytes, count * sizeof(AdamWPiece))) {
        free(host);
        return 1;
    }
    // From pageable memory the copy has taken the values when it returns;
    // it is ordered after earlier launches that read the table.
    cudaError_t e = cudaMemcpyAsync(g_pieces, host, count * sizeof(AdamWPiece), cudaMemcpyHostToDevice, g_stream);
    free(host);
    if (e != cudaSuccess) {
        set_err("mb_adamw_runs: %s", cudaGetErrorString(e));
        return 1;
    }
    k_adamw_runs<<<(unsigned)count, kThreads, 0, g_stream>>>(param, grad, m, v, g_pieces, lr, beta1, beta2, eps, bc1, bc2);
    LAUNCHED();
    return 0;
}

// ---------------------------------------------------------------------------
// Sums returned to the host, in double, deterministic: block partials, then
// one block adds them in order.

static const int kSumBlocks = 1024;

__global__ void k_sumsq_partial(double *part, const float *x, int64_t n) {
    double s = 0.0;
    GRID_LOOP(i, n) {
        double v = (double)x[i];
        s += v * v;
    }
    s = block_sum(s);
    if (threadIdx.x == 0) part[blockIdx.x] = s;
}

// k_sum_f32_to_f64 sums x (n floats) in double with one block.
__global__ void k_sum_f32(double *out, const float *x, int64_t n) {
    double s = 0.0;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) s += (double)x[i];
    s = block_sum(s);
    if (threadIdx.x == 0) *out = s;
}

__global__ void k_sum_f64(double *out, const double *x, int64_t n) {
    double s = 0.0;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) s += x[i];
    s = block_sum(s);
    if (threadIdx.x == 0) *out = s;
}

extern "C" int mb_sum_squares(const float *x, int64_t n, double *out_host) {
    ENTER();
    NOT_CAPTURING();
    *out_host = 0;
    if (n <= 0) return 0;
    int64_t blocks = (n + kThreads - 1) / kThreads;
    if (blocks > kSumBlocks) blocks = kSumBlocks;
    void *ws;
    if (workspace((size_t)blocks * sizeof(double), &ws)) return 1;
    double *part = (double *)ws;
    k_sumsq_partial<<<(unsigned)blocks, kThreads, 0, g_stream>>>(part, x, n);
    LAUNCHED();
    k_sum_f64<<<1, 1024, 0, g_stream>>>(g_result, part, blocks);
    LAUNCHED();
    CK(cudaMemcpyAsync(out_host, g_result, sizeof(double), cudaMemcpyDeviceToHost, g_stream));
    CK(cudaStreamSynchronize(g_stream));
    return 0;
}

// ---------------------------------------------------------------------------
// Cross-entropy: one block per row. dlogits may alias logits: every thread
// reads x[t] before the barrier that precedes the writes, and each element
// is read and written by the same thread.

__global__ void k_xent(float *dlogits, float *nll, float *rowloss, const float *logits,
                       const int32_t *targets, int64_t V, float scale) {
    int64_t r = blockIdx.x;
    const float *x = logits + r * V;
    float *d = dlogits ? dlogits + r * V : nullptr;
    int tg = targets[r];
    if (tg < 0) {
        if (d)
            for (int64_t i = threadIdx.x; i < V; i += blockDim.x) d[i] = 0.f;
        if (threadIdx.x == 0) {
            if (nll) nll[r] = 0.f;
            rowloss[r] = 0.f;
        }
        return;
    }
    float mx = -INFINITY;
    for (int64_t i = threadIdx.x; i < V; i += blockDim.x) mx = fmaxf(mx, x[i]);
    mx = block_max(mx);
    float z = 0.f;
    for (int64_t i = threadIdx.x; i < V; i += blockDim.x) z += expf(x[i] - mx);
    z = block_sum(z);
    float xt = x[tg];
    __syncthreads();
    float l = (float)(log((double)z) - (double)(xt - mx));
    if (threadIdx.x == 0) {
        rowloss[r] = l;
        if (nll) nll[r] = l;
    }
    if (d) {
        float inv = 1.f / z;
        for (int64_t i = threadIdx.x; i < V; i += blockDim.x) {
            float v = expf(x[i] - mx) * inv * scale;
            if (i == tg) v -= scale;
            d[i] = v;
        }
    }
}

extern "C" int mb_cross_entropy(float *dlogits, float *nll, const float *logits,
                                const int32_t *targets_host, int64_t n, int64_t V, float scale,
                                double *sum_host) {
    ENTER();
    NOT_CAPTURING();
    *sum_host = 0;
    if (n <= 0) return 0;
    if (n > INT32_MAX) {
        set_err("mb_cross_entropy: %lld rows", (long long)n);
        return 1;
    }
    int32_t *tg;
    if (upload_i32(1, targets_host, n, &tg)) return 1;
    void *ws;
    if (workspace((size_t)n * sizeof(float), &ws)) return 1;
    float *rowloss = (float *)ws;
    k_xent<<<(unsigned)n, kThreads, 0, g_stream>>>(dlogits, nll, rowloss, logits, tg, V, scale);
    LAUNCHED();
    k_sum_f32<<<1, 1024, 0, g_stream>>>(g_result, rowloss, n);
    LAUNCHED();
    CK(cudaMemcpyAsync(sum_host, g_result, sizeof(double), cudaMemcpyDeviceToHost, g_stream));
    CK(cudaStreamSynchronize(g_stream));
    return 0;
}

// ---------------------------------------------------------------------------
// Selective scan, parallel over chunks of kScanChunk time steps.
//
// Thread layout: a channel (b, e) is served by a group of P lanes, lane l
// holding states n = l + j·P for j < J (J = ceil(N/P) <= 4), in registers.
// A block of 256 threads serves 256/P consecutive channels of one sequence
// b over one chunk: grid (ceil(E/(256/P)), chunks, B). Lanes with n >= N or
// e >= E compute zeros but stay in every loop, so shuffles and barriers see
// whole warps. The backward's second pass, which sums over channels at
// every step, takes P = N rounded up to a power of two (at most 32;
// scan_geometry); the other kernels take fewer lanes (scan_geometry_wide).
//
// The recurrence s_t = a_t·s_{t-1} + Δ_t·u_t·B_t (a_t = exp(Δ_t·A)) is
// linear, and the decay over a chunk is Π a_t = exp(A·ΣΔ_t), so the chunks
// run side by side: each first from a zero state (k_scan_local), then a
// short pass in chunk order turns those ends into every chunk's true start
// state (k_scan_carry), and each chunk runs again from there writing y
// (k_scan_out). The backward does the same for the adjoint, which runs the
// other way in time.

static const int kScanThreads = 256;
static const int kScanChunk = 64;  // = cpu.ScanChunk
static const int kStageAhead = 8;   // loads in flight per thread as a chunk is staged
static const int kStageAhead4 = 4;  // the same, of 16-byte loads

struct ScanArgs {
    const float *u, *delta, *Bt, *Ct, *A, *Dskip;
    int64_t ldbc;
    int T, E, N, P;
    // dtraw: delta holds the dt pre-activation without its bias dtb (may
    // be NULL), and Δ = softplus(delta + dtb) is taken as it is staged.
    const float *dtb;
    int dtraw;
};

// The gate that the backward may take in (mb_scan_dims.gate_z): its dy is
// then dout, the gradient of g = y·silu(z), and what the scan stages as its
// own output gradient is dout·silu(z); the backward's second pass also
// writes dz = dout·y·silu'(z) (row stride ldz, bf16 when dz16) as it
// stages (as k_gate_bwd computes both). z NULL: dy is the scan's.
struct GateBwd {
    const float *z;
    int64_t ldz;
    const float *y;
    void *dz;
    int dz16;
};

// gate_bwd_one is k_gate_bwd's arithmetic for one value, the same
// operations in the same order: *dy = g·silu(z), and dz = g·y·silu'(z).
__device__ __forceinline__ float gate_bwd_one(float g, float z, float y, float *dz) {
    const float s = sigmoid_(z);
    *dz = g * y * silu_grad_s(z, s);
    return g * (z * s);
}

// dt_grad is dΔ/d(pre-activation) = sigmoid(x) for Δ = softplus(x), from
// Δ: 1 - exp(-Δ), without cancellation when Δ is small: below 0.5 as
// Δ·(1 - Δ/2 + Δ²/6 - ... - Δ⁷/40320) (the next term is under 2e-8 of the
// result), above as 1 - e^-Δ by ex2_ (its error, near 2^-22 of e^-Δ, is
// under 1e-6 of the result, at least 0.39). About a third of the
// instructions of expm1f, which the backward paid at every step.
__device__ __forceinline__ float dt_grad(float delta) {
    const float d = delta;
    float q = fmaf(d, -1.f / 40320, 1.f / 5040);
    q = fmaf(q, d, -1.f / 720);
    q = fmaf(q, d, 1.f / 120);
    q = fmaf(q, d, -1.f / 24);
    q = fmaf(q, d, 1.f / 6);
    q = fmaf(q, d, -0.5f);
    q = fmaf(q, d, 1.f);
    return d < 0.5f ? d * q : 1.f - ex2_(d * -1.4426950408889634f);
}

// stage4 stages the rows j = j0, j0 + jstep, ... below kScanChunk of a
// chunk, four values a row, with 16-byte loads (kStageAhead4 in flight) and
// stores: dst[j·dld ..] = f(the row's four values at s, which points at row
// j0, rows sld floats apart), zeros from row `rows` on and where !ok.
template <class F>
__device__ __forceinline__ void stage4(float *dst, int dld, const float *s, int64_t sld, int j0,
                                       int jstep, int rows, bool ok, F f) {
    const int64_t sstep = (int64_t)jstep * sld;
    const float4 zero = make_float4(0.f, 0.f, 0.f, 0.f);
    for (int j1 = j0; j1 < kScanChunk; j1 += kStageAhead4 * jstep) {
        float4 v[kStageAhead4];
#pragma unroll
        for (int q = 0; q < kStageAhead4; q++, s += sstep)
            v[q] = j1 + q * jstep < rows && ok ? *(const float4 *)s : zero;
#pragma unroll
        for (int q = 0; q < kStageAhead4; q++) {
            const int jt = j1 + q * jstep;
            const float4 r = f(v[q]);  // of the zeros past the end too: no branch
            if (jt < kScanChunk) *(float4 *)&dst[jt * dld] = jt < rows && ok ? r : zero;
        }
    }
}

// ScanLane is one thread's place in the layout above, and the block's
// chunk of inputs staged in shared memory: per-channel values as
// [step][channel of the block] (cpb channels) and Bt, Ct rows as [step][n],
// so the time loops read no global memory.
template <int J>
struct ScanLane {
    int tid, ln, grp, cpb, e, c, t0, t1;
    int64_t b;
    bool ce;
    bool v[J];
    float A[J], A2[J];  // A2 = A·log2(e): exp(Δ·A) = ex2_(Δ·A2)
    __device__ ScanLane(const ScanArgs &a, int chunk) {
        tid = threadIdx.x;
        ln = tid % a.P;
        grp = tid / a.P;
        cpb = blockDim.x / a.P;
        e = blockIdx.x * cpb + grp;
        b = blockIdx.z;
        c = chunk;
        t0 = c * kScanChunk;
        t1 = min(a.T, t0 + kScanChunk);
        ce = e < a.E;
#pragma unroll
        for (int j = 0; j < J; j++) {
            int n = ln + j * a.P;
            v[j] = ce && n < a.N;
            A[j] = v[j] ? a.A[(int64_t)e * a.N + n] : 0.f;
            A2[j] = A[j] * 1.4426950408889634f;
        }
    }
    // at indexes a (B, chunks, E, N) array; the value of lane slot j.
    __device__ int64_t at(const ScanArgs &a, int nc, int j) const {
        return ((b * nc + c) * a.E + e) * a.N + ln + j * a.P;
    }
    // stage copies the chunk's rows of src (B·T, E) into dst [step][cpb].
    // cpb divides the block, so each thread keeps one column.
    __device__ void stage(float *dst, const float *src, const ScanArgs &a) const {
        stage_map(dst, src, a, [](int64_t) { return [](float v) { return v; }; });
    }
    // stage_delta stages Δ (from the pre-activation when a.dtraw).
    __device__ void stage_delta(float *dst, const ScanArgs &a) const {
        if (!a.dtraw) {
            stage(dst, a.delta, a);
            return;
        }
        const float *dtb = a.dtb;
        stage_map(dst, a.delta, a, [dtb](int64_t e) {
            float bias = dtb ? dtb[e] : 0.f;
            return [bias](float v) { return softplus_(v + bias); };
        });
    }
    // stage_map is stage with a function of each value applied; per(e)
    // makes the function for the thread's channel e, once.
    template <class Per>
    __device__ void stage_map(float *dst, const float *src, const ScanArgs &a, Per per) const {
        int e0 = blockIdx.x * cpb, rows = t1 - t0;
        if (cpb % 4 == 0 && a.E % 4 == 0 && aligned16(src) && aligned16(dst)) {
            // Four channels a thread: one 16-byte load and store a row.
            const int c4 = cpb / 4, k = 4 * (tid % c4), j0 = tid / c4, jstep = blockDim.x / c4;
            const bool ok = e0 + k < a.E;  // for all four, as E % 4 == 0
            const int e = ok ? e0 + k : e0;
            auto f0 = per(e), f1 = per(ok ? e + 1 : e), f2 = per(ok ? e + 2 : e), f3 = per(ok ? e + 3 : e);
            stage4(dst + k, cpb, src + (b * a.T + t0 + j0) * a.E + e0 + k, a.E, j0, jstep, rows, ok,
                   [=](float4 v) { return make_float4(f0(v.x), f1(v.y), f2(v.z), f3(v.w)); });
            return;
        }
        const int k = tid % cpb;
        const bool ok = e0 + k < a.E;
        auto f = per(ok ? e0 + k : e0);
        // The source walks down the rows by pointer increments: an index
        // times E in 64 bits cost more instructions than the copy itself.
        const int j0 = tid / cpb, jstep = blockDim.x / cpb;
        // The thread's loads go out kStageAhead at a time, before the
        // first of them is used.
        const float *s = src + (b * a.T + t0 + j0) * a.E + e0 + k;
        const int64_t sstep = (int64_t)jstep * a.E;
        for (int j1 = j0; j1 < kScanChunk; j1 += kStageAhead * jstep) {
            float v[kStageAhead];
#pragma unroll
            for (int q = 0; q < kStageAhead; q++, s += sstep)
                v[q] = j1 + q * jstep < rows && ok ? *s : 0.f;
#pragma unroll
            for (int q = 0; q < kStageAhead; q++) {
                const int jt = j1 + q * jstep;
                const float r = f(v[q]);  // of the zeros past the end too: no branch
                if (jt < kScanChunk) dst[jt * cpb + k] = jt < rows && ok ? r : 0.f;
            }
        }
    }
    // stage_dy stages the chunk's output gradient: dy's rows, or with the
    // gate (gb.z set) dy·silu(z) from dy = dout, writing dz as well when
    // dz is set (each value once: the backward's second pass).
    __device__ void stage_dy(float *dst, const float *dy, const ScanArgs &a, const GateBwd &gb,
                             bool dz) const {
        if (!gb.z) {
            stage(dst, dy, a);
            return;
        }
        const int e0 = blockIdx.x * cpb, rows = t1 - t0;
        const int64_t row0 = b * a.T + t0;
        const bool dzv = dz && (gb.dz16 ? (uintptr_t)gb.dz % 8 == 0 : aligned16(gb.dz));
        if (cpb % 4 == 0 && a.E % 4 == 0 && gb.ldz % 4 == 0 && aligned16(dy) && aligned16(gb.z) &&
            aligned16(gb.y) && aligned16(dst) && (!dz || dzv)) {
            // Four channels a thread, 16-byte loads, kStageAhead4 rows in
            // flight.
            const int c4 = cpb / 4, k = 4 * (tid % c4), j0 = tid / c4, jstep = blockDim.x / c4;
            const bool ok = e0 + k < a.E;
            const float4 zero = make_float4(0.f, 0.f, 0.f, 0.f);
            for (int j1 = j0; j1 < kScanChunk; j1 += kStageAhead4 * jstep) {
                float4 g[kStageAhead4], z[kStageAhead4], y[kStageAhead4];
#pragma unroll
                for (int q = 0; q < kStageAhead4; q++) {
                    const int jt = j1 + q * jstep;
                    const bool in = jt < rows && ok;
                    const int64_t r = row0 + jt;
                    g[q] = in ? *(const float4 *)(dy + r * a.E + e0 + k) : zero;
                    z[q] = in ? *(const float4 *)(gb.z + r * gb.ldz + e0 + k) : zero;
                    y[q] = in && dz ? *(const float4 *)(gb.y + r * a.E + e0 + k) : zero;
                }
#pragma unroll
                for (int q = 0; q < kStageAhead4; q++) {
                    const int jt = j1 + q * jstep;
                    if (jt >= kScanChunk) break;
                    float d[4];
                    const float4 o = make_float4(gate_bwd_one(g[q].x, z[q].x, y[q].x, &d[0]),
                                                 gate_bwd_one(g[q].y, z[q].y, y[q].y, &d[1]),
                                                 gate_bwd_one(g[q].z, z[q].z, y[q].z, &d[2]),
                                                 gate_bwd_one(g[q].w, z[q].w, y[q].w, &d[3]));
                    const bool in = jt < rows && ok;
                    *(float4 *)&dst[jt * cpb + k] = in ? o : zero;
                    if (dz && in) {
                        const int64_t at = (row0 + jt) * gb.ldz + e0 + k;
                        if (gb.dz16)
                            store_v<4>((__nv_bfloat16 *)gb.dz + at, d);
                        else
                            store_v<4>((float *)gb.dz + at, d);
                    }
                }
            }
            return;
        }
        const int k = tid % cpb, j0 = tid / cpb, jstep = blockDim.x / cpb;
        const bool ok = e0 + k < a.E;
        for (int jt = j0; jt < kScanChunk; jt += jstep) {
            const bool in = jt < rows && ok;
            float o = 0.f;
            if (in) {
                const int64_t r = row0 + jt, e = e0 + k;
                float d;
                o = gate_bwd_one(dy[r * a.E + e], gb.z[r * gb.ldz + e], dz ? gb.y[r * a.E + e] : 0.f,
                                 &d);
                if (dz) put_at(gb.dz, gb.dz16, r * gb.ldz + e, d);
            }
            dst[jt * cpb + k] = o;
        }
    }
    // stage_bc copies the chunk's rows of Bt or Ct into dst [step][N]
    // (N <= 128, so each pass of the block covers at least two rows).
    __device__ void stage_bc(float *dst, const float *src, const ScanArgs &a) const {
        const int rows = t1 - t0;
        if (a.N % 4 == 0 && a.ldbc % 4 == 0 && aligned16(src) && aligned16(dst)) {
            // Four values a thread: one 16-byte load and store a row.
            const int n4 = a.N / 4, n = 4 * (tid % n4), r0 = tid / n4, rstep = blockDim.x / n4;
            if (r0 < rstep)
                stage4(dst + n, a.N, src + (b * a.T + t0 + r0) * a.ldbc + n, a.ldbc, r0, rstep, rows,
                       true, [](float4 v) { return v; });
            return;
        }
        int n = tid % a.N, r0 = tid / a.N, rstep = blockDim.x / a.N;
        if (r0 >= rstep) return;
        const float *s = src + (b * a.T + t0 + r0) * a.ldbc + n;
        const int64_t sstep = (int64_t)rstep * a.ldbc;
        for (int j1 = r0; j1 < kScanChunk; j1 += kStageAhead * rstep) {
            float v[kStageAhead];
#pragma unroll
            for (int q = 0; q < kStageAhead; q++, s += sstep)
                v[q] = j1 + q * rstep < rows ? *s : 0.f;
#pragma unroll
            for (int q = 0; q < kStageAhead; q++)
                if (j1 + q * rstep < kScanChunk) dst[(j1 + q * rstep) * a.N + n] = v[q];
        }
    }
};

// Each chunk c = blockIdx.y but the last (whose end is not needed) from a
// zero state: its end state to loc and its ΣΔ to dsum (both indexed by c in
// (B, chunks, ...) arrays).
template <int J>
__global__ void __launch_bounds__(kScanThreads)
    k_scan_local(ScanArgs a, int nc, float *loc, float *dsum) {
    extern __shared__ float sh[];
    ScanLane<J> L(a, blockIdx.y);
    float *sd = sh, *su = sd + kScanChunk * L.cpb, *sb = su + kScanChunk * L.cpb;
    L.stage_delta(sd, a);
    L.stage(su, a.u, a);
    L.stage_bc(sb, a.Bt, a);
    __syncthreads();
    float s[J];
#pragma unroll
    for (int j = 0; j < J; j++) s[j] = 0.f;
    float ds = 0.f;
    for (int jt = 0; jt < L.t1 - L.t0; jt++) {
        float d = sd[jt * L.cpb + L.grp];
        float du = d * su[jt * L.cpb + L.grp];
        ds += d;
#pragma unroll
        for (int j = 0; j < J; j++)
            if (L.v[j]) s[j] = ex2_(d * L.A2[j]) * s[j] + du * sb[jt * a.N + L.ln + j * a.P];
    }
#pragma unroll
    for (int j = 0; j < J; j++)
        if (L.v[j]) loc[L.at(a, nc, j)] = s[j];
    if (L.ce && L.ln == 0) dsum[(L.b * nc + L.c) * a.E + L.e] = ds;
}

// The carry kernels' chains are short on arithmetic; each loads this many
// chunks' inputs at a time, so their latencies overlap.
static const int kCarryBatch = 32;

// One thread per (b, e, n) in chunk order: start[c] = S; S = exp(A·ΣΔ_c)·S
// + loc[c], from S = s0 (or zero).
__global__ void k_scan_carry(float *start, const float *loc, const float *dsum, const float *A,
                             const float *s0, int64_t B, int nc, int64_t E, int64_t N) {
    GRID_LOOP(i, B * E * N) {
        int64_t n = i % N, e = (i / N) % E, b = i / (E * N);
        float S = s0 ? s0[i] : 0.f, an = A[e * N + n];
        // Loads a batch of chunks ahead of the chain that uses them.
        for (int c0 = 0; c0 < nc; c0 += kCarryBatch) {
            float lv[kCarryBatch], dv[kCarryBatch];
#pragma unroll
            for (int q = 0; q < kCarryBatch; q++) {
                int c = c0 + q;
                bool ok = c + 1 < nc;
                lv[q] = ok ? loc[((b * nc + c) * E + e) * N + n] : 0.f;
                dv[q] = ok ? dsum[(b * nc + c) * E + e] : 0.f;
            }
#pragma unroll
            for (int q = 0; q < kCarryBatch; q++) {
                int c = c0 + q;
                if (c >= nc) break;
                start[((b * nc + c) * E + e) * N + n] = S;
                if (c + 1 < nc) S = __expf(an * dv[q]) * S + lv[q];
            }
        }
    }
}

// Each chunk from its start state (start (B, chunks, E, N); NULL: zeros),
// writing y = Σ_n s·Ct + Dskip·u; the last chunk's end state goes to sT.
template <int J>
__global__ void __launch_bounds__(kScanThreads)
    k_scan_out(ScanArgs a, int nc, float *y, const float *start, float *sT) {
    extern __shared__ float sh[];
    ScanLane<J> L(a, blockIdx.y);
    const int P = a.P, N = a.N;
    float *sd = sh, *su = sd + kScanChunk * L.cpb, *sb = su + kScanChunk * L.cpb,
          *sc = sb + kScanChunk * N;
    L.stage_delta(sd, a);
    L.stage(su, a.u, a);
    L.stage_bc(sb, a.Bt, a);
    L.stage_bc(sc, a.Ct, a);
    float s[J];
#pragma unroll
    for (int j = 0; j < J; j++) s[j] = (L.v[j] && start) ? start[L.at(a, nc, j)] : 0.f;
    float dsk = L.ce ? a.Dskip[L.e] : 0.f;
    __syncthreads();
    for (int jt = 0; jt < L.t1 - L.t0; jt++) {
        float d = sd[jt * L.cpb + L.grp], uu = su[jt * L.cpb + L.grp];
        float du = d * uu;
        float acc = 0.f;
#pragma unroll
        for (int j = 0; j < J; j++) {
            if (L.v[j]) {
                int n = L.ln + j * P;
                s[j] = ex2_(d * L.A2[j]) * s[j] + du * sb[jt * N + n];
                acc += s[j] * sc[jt * N + n];
            }
        }
        for (int o = P / 2; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
        if (L.ce && L.ln == 0) y[(L.b * a.T + L.t0 + jt) * a.E + L.e] = acc + dsk * uu;
    }
    if (sT && L.c == nc - 1) {
#pragma unroll
        for (int j = 0; j < J; j++)
            if (L.v[j]) sT[(L.b * a.E + L.e) * N + L.ln + j * P] = s[j];
    }
}

// Backward, first pass: for each chunk c = blockIdx.y + 1 >= 1, the adjoint from zero at the
// chunk's end back to its start. With G_t = dL/ds_t = dy_t·Ct_t + a_{t+1}·G_{t+1},
// what a chunk passes to the one before is a_{t0}·G_{t0}; from a zero carry
// that is hloc[c]. ΣΔ of the chunk goes to dsum[c].
template <int J>
__global__ void __launch_bounds__(kScanThreads)
    k_scan_bwd_local(ScanArgs a, int nc, float *hloc, float *dsum, const float *dy) {
    extern __shared__ float sh[];
    ScanLane<J> L(a, blockIdx.y + 1);
    float *sd = sh, *sg = sd + kScanChunk * L.cpb, *sc = sg + kScanChunk * L.cpb;
    L.stage_delta(sd, a);
    L.stage(sg, dy, a);
    L.stage_bc(sc, a.Ct, a);
    __syncthreads();
    float g[J];
#pragma unroll
    for (int j = 0; j < J; j++) g[j] = 0.f;
    float ds = 0.f;
    for (int jt = L.t1 - L.t0 - 1; jt >= 0; jt--) {
        float d = sd[jt * L.cpb + L.grp];
        float gy = sg[jt * L.cpb + L.grp];
        ds += d;
#pragma unroll
        for (int j = 0; j < J; j++)
            if (L.v[j]) g[j] = ex2_(d * L.A2[j]) * (gy * sc[jt * a.N + L.ln + j * a.P] + g[j]);
    }
#pragma unroll
    for (int j = 0; j < J; j++)
        if (L.v[j]) hloc[L.at(a, nc, j)] = g[j];
    if (L.ce && L.ln == 0) dsum[(L.b * nc + L.c) * a.E + L.e] = ds;
}

// One thread per (b, e, n), from the last chunk to the first: the carry
// into chunk c from the right is h_c (zero for the last), and
// h_{c-1} = hloc[c] + exp(A·ΣΔ_c)·h_c. Overwrites h[c] (hloc[c] on entry)
// with h_c.
__global__ void k_scan_bwd_carry(float *h, const float *dsum, const float *A, int64_t B, int nc,
                                 int64_t E, int64_t N) {
    GRID_LOOP(i, B * E * N) {
        int64_t n = i % N, e = (i / N) % E, b = i / (E * N);
        float H = 0.f, an = A[e * N + n];
        // Loads a batch of chunks ahead of the chain that uses them.
        for (int c0 = nc - 1; c0 >= 1; c0 -= kCarryBatch) {
            float lv[kCarryBatch], dv[kCarryBatch];
#pragma unroll
            for (int q = 0; q < kCarryBatch; q++) {
                int c = c0 - q;
                lv[q] = c >= 1 ? h[((b * nc + c) * E + e) * N + n] : 0.f;
                dv[q] = c >= 1 ? dsum[(b * nc + c) * E + e] : 0.f;
            }
#pragma unroll
            for (int q = 0; q < kCarryBatch; q++) {
                int c = c0 - q;
                if (c < 1) break;
                h[((b * nc + c) * E + e) * N + n] = H;
                H = __expf(an * dv[q]) * H + lv[q];
            }
        }
        h[((b * nc) * E + e) * N + n] = H;
    }
}

// The backward's state storage: kScanSub steps × J slots per thread,
// recomputed in sub-chunks of scan_sub_steps(J) steps.
static const int kScanSub = 32;

// scan_sub_steps is kScanSub / J rounded down to a power of two.
__host__ __device__ constexpr int scan_sub_steps(int J) {
    return kScanSub / (J <= 1 ? 1 : J <= 2 ? 2 : 4);
}

// Backward, second pass, each chunk from its checkpoint and its carry h[c]:
// the states are recomputed into shared memory (a sub-chunk at a time,
// from the last, each from the checkpoint), then walked backwards. du and
// ddelta are written; the sums over the block's channels of dBt and dCt
// for the chunk's rows go to part (blocks.x, B·T, 2N); each lane's dA·Δ
// sum over the chunk overwrites h (B, chunks, E, N).
template <int J>
__global__ void __launch_bounds__(kScanThreads)
    k_scan_bwd_chunk(ScanArgs a, int nc, float *du_out, float *ddelta_out, float *part, float *h,
                     const float *dy, const float *ckpt) {
    extern __shared__ float sh[];
    constexpr int Ls = scan_sub_steps(J);
    ScanLane<J> L(a, blockIdx.y);
    const int P = a.P, N = a.N, bd = blockDim.x, tid = L.tid, wl = tid & 31, cpb = L.cpb;
    float *sS = sh, *sB = sS + Ls * J * bd, *sC = sB + kScanChunk * N;
    float *sd = sC + kScanChunk * N, *su = sd + kScanChunk * cpb, *sg = su + kScanChunk * cpb;
    float *sbt = sg + kScanChunk * cpb, *sct = sbt + kScanChunk * N;
    L.stage_delta(sd, a);
    L.stage(su, a.u, a);
    L.stage(sg, dy, a);
    L.stage_bc(sbt, a.Bt, a);
    L.stage_bc(sct, a.Ct, a);
    float g[J], dA[J];
#pragma unroll
    for (int j = 0; j < J; j++) {
        g[j] = L.v[j] ? h[L.at(a, nc, j)] : 0.f;
        dA[j] = 0.f;
    }
    float dsk = L.ce ? a.Dskip[L.e] : 0.f;
    for (int i = tid; i < 2 * kScanChunk * N; i += bd) sB[i] = 0.f;
    __syncthreads();
    int rows = L.t1 - L.t0;
    for (int js = ((rows - 1) / Ls) * Ls; js >= 0; js -= Ls) {
        int je = min(rows, js + Ls);
        float s[J];
#pragma unroll
        for (int j = 0; j < J; j++) s[j] = L.v[j] ? ckpt[L.at(a, nc, j)] : 0.f;
        for (int jt = 0; jt < je; jt++) {
            float d = sd[jt * cpb + L.grp];
            float du = d * su[jt * cpb + L.grp];
#pragma unroll
            for (int j = 0; j < J; j++) {
                if (jt >= js) sS[((jt - js) * J + j) * bd + tid] = s[j];
                if (L.v[j]) s[j] = ex2_(d * L.A2[j]) * s[j] + du * sbt[jt * N + L.ln + j * P];
            }
        }
        for (int jt = je - 1; jt >= js; jt--) {
            float gy = sg[jt * cpb + L.grp];
            float d = sd[jt * cpb + L.grp];
            float uu = su[jt * cpb + L.grp];
            float dd = 0.f, dus = 0.f;
#pragma unroll
            for (int j = 0; j < J; j++) {
                int n = L.ln + j * P;
                float pb = 0.f, pc = 0.f;
                if (L.v[j]) {
                    float prev = sS[((jt - js) * J + j) * bd + tid];
                    float ad = ex2_(d * L.A2[j]);
                    float bt = sbt[jt * N + n], ct = sct[jt * N + n];
                    float cur = ad * prev + d * uu * bt;
                    float G = gy * ct + g[j];  // dL/ds_t
                    pc = gy * cur;
                    float da = G * prev * ad;  // dL/d(Δ·A)
                    dd += da * L.A[j] + G * bt * uu;
                    dA[j] += da * d;
                    pb = G * d * uu;
                    dus += G * d * bt;
                    g[j] = ad * G;
                }
                // Sum over the warp's channels: lanes with the same ln.
                for (int o = P; o < 32; o <<= 1) {
                    pb += __shfl_xor_sync(0xffffffffu, pb, o);
                    pc += __shfl_xor_sync(0xffffffffu, pc, o);
                }
                if (wl < P && n < N) {
                    atomicAdd(&sB[jt * N + n], pb);
                    atomicAdd(&sC[jt * N + n], pc);
                }
            }
            for (int o = P / 2; o > 0; o >>= 1) {
                dd += __shfl_xor_sync(0xffffffffu, dd, o);
                dus += __shfl_xor_sync(0xffffffffu, dus, o);
            }
            if (L.ce && L.ln == 0) {
                int64_t row = L.b * a.T + L.t0 + jt;
                du_out[row * a.E + L.e] = dus + gy * dsk;
                ddelta_out[row * a.E + L.e] = a.dtraw ? dd * dt_grad(d) : dd;
            }
        }
    }
#pragma unroll
    for (int j = 0; j < J; j++)
        if (L.v[j]) h[L.at(a, nc, j)] = dA[j];
    __syncthreads();
    int64_t BT = (int64_t)gridDim.z * a.T;
    for (int i = tid; i < rows * N; i += bd) {
        int jt = i / N, n = i - jt * N;
        int64_t row = L.b * a.T + L.t0 + jt;
        float *p = part + ((int64_t)blockIdx.x * BT + row) * 2 * N;
        p[n] = sB[i];
        p[N + n] = sC[i];
    }
}

// The four-state backward (k_scan_bwd_quad) serves N = 4·P for P in
// {2, 4, 8}, the common state sizes, in a layout with less overhead per
// state than k_scan_bwd_chunk: a channel is served by P lanes, lane l
// holding the four consecutive states n = 4l..4l+3, so its staged Bt, Ct
// values and saved states move as one float4, the sums over n for ddelta
// and du are mostly in-lane, and the 2·4 per-step products a lane adds
// to dBt, dCt are summed over the warp's 32/P channels by halving
// exchanges (each step of which sends half of what is left), so each lane
// ends with one or two finished warp sums; the warps leave them in shared
// memory and the block adds them up (in warp order, no atomics) after
// every sub-chunk of kScanQuadSub steps. The states such a sub-chunk walks
// back over are recomputed into registers (the loops over a sub-chunk are
// unrolled) from the sub-chunk's start, which a first pass over the chunk
// leaves in shared memory; so a block's shared memory is its staged chunk,
// those starts and two sub-chunks of warp sums, and four blocks of 128
// threads fit on an SM.
static const int kScanQuadThreads = 128;
static const int kScanQuadSub = 8;

// quad_P is the lanes per channel of k_scan_bwd_quad for N, or 0 where
// it does not apply.
static int quad_P(int64_t N) { return (N == 8 || N == 16 || N == 32) ? (int)(N / 4) : 0; }

// quad_exchange sums the eight values v over the warp's channels (lanes
// that differ in bits o = 16, 8, ..., P), leaving the lane's share of the
// finished sums in v[0..] (one value for P <= 4, two for P = 8; which ones,
// quad_first says). Exchanges below offset 4 (P = 2) add whole values, so
// lanes that differ only there end with equal sums.
template <int P>
__device__ __forceinline__ void quad_exchange(float (&v)[8], int lane) {
#pragma unroll
    for (int o = 16, k = 8; o >= P; o >>= 1) {
        if (k > 1) {
            const bool up = lane & o;
            const int hk = k / 2;
#pragma unroll
            for (int i = 0; i < hk; i++) {
                float send = up ? v[i] : v[i + hk], keep = up ? v[i + hk] : v[i];
                v[i] = keep + __shfl_xor_sync(0xffffffffu, send, o);
            }
            k = hk;
        } else {
            v[0] += __shfl_xor_sync(0xffffffffu, v[0], o);
        }
    }
}

// quad_first is the index in the eight values of quad_exchange of the
// first finished sum a lane keeps.
template <int P>
__device__ __forceinline__ int quad_first(int lane) {
    int idx = 0;
#pragma unroll
    for (int o = 16, k = 8; o >= P && k > 1; o >>= 1, k /= 2)
        if (lane & o) idx += k / 2;
    return idx;
}

// quad_advance takes the four states s over step jt of the staged chunk.
template <int N, int cpb>
__device__ __forceinline__ void quad_advance(float (&s)[4], const float (&A2)[4], const float *sd,
                                             const float *su, const float *sbt, int jt, int grp,
                                             int ln) {
    const float d = sd[jt * cpb + grp], du = d * su[jt * cpb + grp];
    const float4 b4 = *(const float4 *)&sbt[jt * N + 4 * ln];
    s[0] = fmaf(ex2_(d * A2[0]), s[0], du * b4.x);
    s[1] = fmaf(ex2_(d * A2[1]), s[1], du * b4.y);
    s[2] = fmaf(ex2_(d * A2[2]), s[2], du * b4.z);
    s[3] = fmaf(ex2_(d * A2[3]), s[3], du * b4.w);
}

// quad_load loads four consecutive values from src + at (zeros unless ok).
__device__ __forceinline__ void quad_load(float (&v)[4], const float *src, bool ok, int64_t at) {
#pragma unroll
    for (int j = 0; j < 4; j++) v[j] = ok ? src[at + j] : 0.f;
}

// quad_at is the index of lane L's first state in a (B, chunks, E, N)
// array (the four-state layout: states 4·ln .. 4·ln+3).
__device__ __forceinline__ int64_t quad_at(const ScanLane<1> &L, const ScanArgs &a, int nc) {
    return ((L.b * nc + L.c) * a.E + L.e) * a.N + 4 * L.ln;
}

// quad_decay loads lane L's four A values and A2 = A·log2(e).
__device__ __forceinline__ void quad_decay(float (&A)[4], float (&A2)[4], const ScanLane<1> &L,
                                           const ScanArgs &a) {
    quad_load(A, a.A, L.ce, (int64_t)L.e * a.N + 4 * L.ln);
#pragma unroll
    for (int j = 0; j < 4; j++) A2[j] = A[j] * 1.4426950408889634f;
}

// quad_end writes a chunk pass's four end values v to dst (B, chunks, E, N)
// and its ΣΔ ds to dsum (B, chunks, E).
__device__ __forceinline__ void quad_end(float *dst, float *dsum, const float (&v)[4], float ds,
                                         const ScanLane<1> &L, const ScanArgs &a, int nc) {
    if (!L.ce) return;
    const int64_t at = quad_at(L, a, nc);
#pragma unroll
    for (int j = 0; j < 4; j++) dst[at + j] = v[j];
    if (L.ln == 0) dsum[(L.b * nc + L.c) * a.E + L.e] = ds;
}

// k_scan_local in the four-state layout (N = 4·P).
template <int P>
__global__ void __launch_bounds__(kScanQuadThreads)
    k_scan_local_quad(ScanArgs a, int nc, float *loc, float *dsum) {
    extern __shared__ float4 sh4[];
    constexpr int N = 4 * P, cpb = kScanQuadThreads / P;
    ScanLane<1> L(a, blockIdx.y);
    const int grp = L.grp, ln = L.ln;
    float *sd = (float *)sh4, *su = sd + kScanChunk * cpb, *sbt = su + kScanChunk * cpb;
    L.stage_delta(sd, a);
    L.stage(su, a.u, a);
    L.stage_bc(sbt, a.Bt, a);
    float A[4], A2[4], s[4] = {0.f, 0.f, 0.f, 0.f}, ds = 0.f;
    quad_decay(A, A2, L, a);
    __syncthreads();
    const int rows = L.t1 - L.t0;
    for (int jt = 0; jt < rows; jt++) {
        ds += sd[jt * cpb + grp];
        quad_advance<N, cpb>(s, A2, sd, su, sbt, jt, grp, ln);
    }
    quad_end(loc, dsum, s, ds, L, a, nc);
}

// The gate that k_scan_out_quad may apply as it writes y: out (B·T, E) =
// y·silu(z), z with row stride ldz, out bf16 when out16 (as mb_gate_fwd).
struct GateOut {
    const float *z;
    int64_t ldz;
    void *out;
    int out16;
};

// k_scan_out in the four-state layout (N = 4·P). The channel's first lane
// leaves each step's y in shared memory in place of the step's u (read no
// more once every lane of the channel has read it: __syncwarp), and after
// the chunk the block writes y, and the gate when go.z is set, a row of
// its channels at a time.
template <int P>
__global__ void __launch_bounds__(kScanQuadThreads)
    k_scan_out_quad(ScanArgs a, int nc, float *y, const float *start, float *sT, GateOut go) {
    extern __shared__ float4 sh4[];
    constexpr int N = 4 * P, cpb = kScanQuadThreads / P;
    ScanLane<1> L(a, blockIdx.y);
    const int grp = L.grp, ln = L.ln;
    float *sd = (float *)sh4, *su = sd + kScanChunk * cpb, *sbt = su + kScanChunk * cpb,
          *sct = sbt + kScanChunk * N;
    L.stage_delta(sd, a);
    L.stage(su, a.u, a);
    L.stage_bc(sbt, a.Bt, a);
    L.stage_bc(sct, a.Ct, a);
    float A[4], A2[4], s[4];
    quad_decay(A, A2, L, a);
    quad_load(s, start, L.ce && start, quad_at(L, a, nc));
    const float dsk = L.ce ? a.Dskip[L.e] : 0.f;
    __syncthreads();
    const int rows = L.t1 - L.t0;
    for (int jt = 0; jt < rows; jt++) {
        quad_advance<N, cpb>(s, A2, sd, su, sbt, jt, grp, ln);
        const float4 c4 = *(const float4 *)&sct[jt * N + 4 * ln];
        float acc = s[0] * c4.x;
        acc = fmaf(s[1], c4.y, acc);
        acc = fmaf(s[2], c4.z, acc);
        acc = fmaf(s[3], c4.w, acc);
#pragma unroll
        for (int o = 1; o < P; o <<= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
        const float yv = fmaf(dsk, su[jt * cpb + grp], acc);
        __syncwarp();
        if (ln == 0) su[jt * cpb + grp] = yv;
    }
    if (sT && L.c == nc - 1 && L.ce) {
#pragma unroll
        for (int j = 0; j < 4; j++) sT[(L.b * a.E + L.e) * N + 4 * ln + j] = s[j];
    }
    // After the chunk, thread tid writes channel ch's rows tid/cpb + i·P,
    // loading all their z values first.
    const int64_t E = a.E, row0 = L.b * a.T + L.t0;
    const int ch = L.tid % cpb, r0 = L.tid / cpb;
    const int64_t ech = (int64_t)blockIdx.x * cpb + ch;
    constexpr int nz = kScanChunk / P;
    float zv[nz];
#pragma unroll
    for (int i = 0; i < nz; i++) {
        const int jt = r0 + i * P;
        zv[i] = go.z && ech < E && jt < rows ? go.z[(row0 + jt) * go.ldz + ech] : 0.f;
    }
    __syncthreads();
    if (ech >= E) return;
#pragma unroll
    for (int i = 0; i < nz; i++) {
        const int jt = r0 + i * P;
        if (jt >= rows) break;
        const float yv = su[jt * cpb + ch];
        const int64_t at = (row0 + jt) * E + ech;
        y[at] = yv;
        if (go.z) put_at(go.out, go.out16, at, yv * silu_(zv[i]));
    }
}

// k_scan_bwd_local in the four-state layout (N = 4·P); chunk blockIdx.y + 1.
template <int P>
__global__ void __launch_bounds__(kScanQuadThreads)
    k_scan_bwd_local_quad(ScanArgs a, int nc, float *hloc, float *dsum, const float *dy,
                          GateBwd gb) {
    extern __shared__ float4 sh4[];
    constexpr int N = 4 * P, cpb = kScanQuadThreads / P;
    ScanLane<1> L(a, blockIdx.y + 1);
    const int grp = L.grp, ln = L.ln;
    float *sd = (float *)sh4, *sg = sd + kScanChunk * cpb, *sct = sg + kScanChunk * cpb;
    L.stage_delta(sd, a);
    L.stage_dy(sg, dy, a, gb, false);
    L.stage_bc(sct, a.Ct, a);
    float A[4], A2[4], g[4] = {0.f, 0.f, 0.f, 0.f}, ds = 0.f;
    quad_decay(A, A2, L, a);
    __syncthreads();
    for (int jt = L.t1 - L.t0 - 1; jt >= 0; jt--) {
        const float d = sd[jt * cpb + grp], gy = sg[jt * cpb + grp];
        const float4 c4 = *(const float4 *)&sct[jt * N + 4 * ln];
        ds += d;
        g[0] = ex2_(d * A2[0]) * fmaf(gy, c4.x, g[0]);
        g[1] = ex2_(d * A2[1]) * fmaf(gy, c4.y, g[1]);
        g[2] = ex2_(d * A2[2]) * fmaf(gy, c4.z, g[2]);
        g[3] = ex2_(d * A2[3]) * fmaf(gy, c4.w, g[3]);
    }
    quad_end(hloc, dsum, g, ds, L, a, nc);
}

// Backward, second pass, for N = 4·P: what k_scan_bwd_chunk computes, in
// the four-state layout above; ddelta_out is bf16 when dd16.
template <int P>
__global__ void __launch_bounds__(kScanQuadThreads, 4)
    k_scan_bwd_quad(ScanArgs a, int nc, float *du_out, void *ddelta_out, int dd16, float *part,
                    float *h, const float *dy, const float *ckpt, float *cols, GateBwd gb) {
    extern __shared__ float4 sh4[];
    constexpr int N = 4 * P, Ls = kScanQuadSub;
    constexpr int kept = P == 8 ? 2 : 1;               // finished sums per lane
    constexpr int twin = P < 4 ? (3 & ~(P - 1)) : 0;  // lane bits of equal sums
    constexpr int cpb = kScanQuadThreads / P, bd = kScanQuadThreads, warps = bd / 32;
    constexpr int row2 = 2 * N;  // a row of dBt, dCt sums
    ScanLane<1> L(a, blockIdx.y);  // a.P == P: indices and staging only
    const int tid = L.tid, ln = L.ln, grp = L.grp, lane = tid & 31, warp = tid / 32;
    float *sd = (float *)sh4, *su = sd + kScanChunk * cpb, *sg = su + kScanChunk * cpb;
    float *sbt = sg + kScanChunk * cpb, *sct = sbt + kScanChunk * N;
    // Each warp's finished dBt, dCt sums of a sub-chunk, two sub-chunks
    // deep: [sub-chunk parity][warp][step][2N].
    float *sW = sct + kScanChunk * N;
    float4 *sK = (float4 *)(sW + 2 * warps * Ls * row2);  // [sub-chunk][thread]: its start
    L.stage_delta(sd, a);
    L.stage(su, a.u, a);
    L.stage_dy(sg, dy, a, gb, true);
    L.stage_bc(sbt, a.Bt, a);
    L.stage_bc(sct, a.Ct, a);
    // Where the lane's finished sums go in a row; lanes that hold copies of
    // another's sums (P = 2) write nothing.
    const int q0 = quad_first<P>(lane);
    const bool writer = (lane & twin) == 0;
    float *wcol = sW + warp * Ls * row2 + (q0 < 4 ? 0 : N) + 4 * ln + (q0 & 3);
    const int64_t BT = (int64_t)gridDim.z * a.T;
    float *pout = part + ((int64_t)blockIdx.x * BT + L.b * a.T + L.t0) * row2;
    // du and ddelta are written after each sub-chunk by the whole block,
    // a row of the block's channels at a time: thread tid keeps channel
    // tid % cpb (cpb divides the block), ech in the layer.
    const int E = a.E, ch = tid % cpb, ech = blockIdx.x * cpb + ch;
    const int64_t at0 = (L.b * a.T + L.t0) * E + ech;  // (row t0, channel ech)
    float *pdu = du_out + at0;
    const int64_t at = quad_at(L, a, nc);
    float A[4], A2[4], g[4], dA[4] = {0.f, 0.f, 0.f, 0.f}, s[4];
    quad_decay(A, A2, L, a);
    quad_load(g, h, L.ce, at);
    quad_load(s, ckpt, L.ce, at);
    const float dsk = L.ce ? a.Dskip[L.e] : 0.f;
    // The chunk's Σ dy·u (dDskip), in the lane's channel, and the thread's
    // part of Σ draw (dt bias) in channel ch.
    float sdy = 0.f, sdr = 0.f;
    __syncthreads();
    const int rows = L.t1 - L.t0;
    // First pass: from the checkpoint over the chunk, keeping each
    // sub-chunk's start. s ends as the state after the last step.
    for (int jt = 0; jt < rows; jt++) {
        if (jt % Ls == 0) sK[(jt / Ls) * bd + tid] = make_float4(s[0], s[1], s[2], s[3]);
        quad_advance<N, cpb>(s, A2, sd, su, sbt, jt, grp, ln);
    }
    for (int js = ((rows - 1) / Ls) * Ls; js >= 0; js -= Ls) {
        float *myW = wcol + ((js / Ls) & 1) * warps * Ls * row2;
        // hist[i]: the state before step js + i.
        float hist[Ls][4];
        {
            const float4 k4 = sK[(js / Ls) * bd + tid];
            hist[0][0] = k4.x, hist[0][1] = k4.y, hist[0][2] = k4.z, hist[0][3] = k4.w;
        }
#pragma unroll
        for (int i = 1; i < Ls; i++) {
#pragma unroll
            for (int j = 0; j < 4; j++) hist[i][j] = hist[i - 1][j];
            if (js + i < rows) quad_advance<N, cpb>(hist[i], A2, sd, su, sbt, js + i - 1, grp, ln);
        }
        // Walking back, s is the state after step jt (the one before the
        // step above it).
#pragma unroll
        for (int i = Ls - 1; i >= 0; i--) {
            const int jt = js + i;
            if (jt >= rows) continue;
            const float d = sd[jt * cpb + grp], uu = su[jt * cpb + grp], gy = sg[jt * cpb + grp];
            const float du = d * uu;
            const float4 b4 = *(const float4 *)&sbt[jt * N + 4 * ln];
            const float4 c4 = *(const float4 *)&sct[jt * N + 4 * ln];
            const float bt[4] = {b4.x, b4.y, b4.z, b4.w}, ct[4] = {c4.x, c4.y, c4.z, c4.w};
            float sa = 0.f, sgb = 0.f, v[8];
#pragma unroll
            for (int j = 0; j < 4; j++) {
                float ad = ex2_(d * A2[j]);
                float G = fmaf(gy, ct[j], g[j]);  // dL/ds_t
                v[4 + j] = gy * s[j];             // into dCt
                v[j] = G * du;                    // into dBt
                g[j] = ad * G;
                float da = g[j] * hist[i][j];     // dL/d(Δ·A)
                sa = fmaf(da, A[j], sa);
                sgb = fmaf(G, bt[j], sgb);
                dA[j] = fmaf(da, d, dA[j]);
                s[j] = hist[i][j];
            }
#pragma unroll
            for (int o = 1; o < P; o <<= 1) {
                sa += __shfl_xor_sync(0xffffffffu, sa, o);
                sgb += __shfl_xor_sync(0xffffffffu, sgb, o);
            }
            // Every lane of the channel holds the step's sums; the first
            // leaves du and the Δ gradient (before softplus) in place of the
            // step's u and dy, which nothing reads again (once every lane
            // has read them: __syncwarp).
            sdy = fmaf(gy, uu, sdy);
            const float dus = fmaf(d, sgb, gy * dsk), dd = fmaf(uu, sgb, sa);
            __syncwarp();
            if (ln == 0) {
                sg[jt * cpb + grp] = dus;
                su[jt * cpb + grp] = dd;
            }
            quad_exchange<P>(v, lane);
            if (writer) {
#pragma unroll
                for (int k = 0; k < kept; k++) myW[i * row2 + k] = v[k];
            }
        }
        // The block's sums of the sub-chunk's rows, warps in order. The
        // buffer written next is the other one; the one after that waits
        // for this barrier of the next sub-chunk.
        __syncthreads();
        const float *w0 = sW + ((js / Ls) & 1) * warps * Ls * row2;
        const int n2 = (min(rows, js + Ls) - js) * row2;
        for (int x = tid; x < n2; x += bd) {
            float sum = w0[x];
#pragma unroll
            for (int w = 1; w < warps; w++) sum += w0[w * Ls * row2 + x];
            pout[js * row2 + x] = sum;
        }
        // The sub-chunk's du and ddelta rows (the next sub-chunk writes
        // rows before js, so these stay until the next barrier).
        if (ech < E) {
            for (int jt = js + tid / cpb; jt < min(rows, js + Ls); jt += bd / cpb) {
                pdu[(int64_t)jt * E] = sg[jt * cpb + ch];
                const float dd = su[jt * cpb + ch];
                const float dr = a.dtraw ? dd * dt_grad(sd[jt * cpb + ch]) : dd;
                put_at(ddelta_out, dd16, at0 + (int64_t)jt * E, dr);
                sdr += dr;
            }
        }
    }
    // Σ draw over the block's threads of each channel, in thread order.
    __syncthreads();
    sW[tid] = sdr;
    __syncthreads();
    if (L.ce) {
#pragma unroll
        for (int j = 0; j < 4; j++) h[at + j] = dA[j];
        if (ln == 0) cols[(L.b * nc + L.c) * 2 * E + L.e] = sdy;
    }
    if (tid < cpb && ech < E) {
        float s = 0.f;
        for (int k = tid; k < bd; k += cpb) s += sW[k];
        cols[(L.b * nc + L.c) * 2 * E + E + ech] = s;
    }
}

// dBt, dCt (rows, row stride ldbc) = Σ over channel groups of part
// (groups, rows, 2N), in group order.
__global__ void k_scan_dbc(float *dBt, float *dCt, int64_t ldbc, const float *part, int groups,
                           int64_t rows, int64_t N) {
    GRID_LOOP(i, rows * 2 * N) {
        float s = 0.f;
        for (int k = 0; k < groups; k++) s += part[(int64_t)k * rows * 2 * N + i];
        int64_t row = i / (2 * N), q = i - row * 2 * N;
        if (q < N)
            dBt[row * ldbc + q] = s;
        else
            dCt[row * ldbc + q - N] = s;
    }
}

// dAlog[e,n] += A[e,n]·Σ_k part[k,e,n] over k < K, in order (d(Δ·A)/dA_log = Δ·A).
// The loads go out kCarryBatch at a time ahead of the adds: with one
// thread per (e, n) and K in the hundreds, the sum is otherwise a chain of
// round trips.
__global__ void k_scan_dalog(float *dAlog, const float *part, const float *A, int64_t K,
                             int64_t EN) {
    GRID_LOOP(i, EN) {
        float s = 0.f;
        for (int64_t k0 = 0; k0 < K; k0 += kCarryBatch) {
            float v[kCarryBatch];
#pragma unroll
            for (int q = 0; q < kCarryBatch; q++) v[q] = k0 + q < K ? part[(k0 + q) * EN + i] : 0.f;
#pragma unroll
            for (int q = 0; q < kCarryBatch; q++)
                if (k0 + q < K) s += v[q];
        }
        dAlog[i] += s * A[i];
    }
}

// The four-state backward's column sums, from its chunk partials (B·nc,
// 2, E): q 0 into dDskip, q 1 into the dt bias (when the scan took the dt
// pre-activation and dbias is not NULL).
struct ScanCols {
    float *dDskip, *dbias;
    __device__ void store(int64_t c, int q, float s) const {
        if (q == 0)
            dDskip[c] += s;
        else if (dbias)
            dbias[c] += s;
    }
};

// dDskip[e] += Σ_rows dy·u.
struct DskipCols {
    float *dDskip;
    const float *dy, *u;
    int64_t E;
    __device__ float operator()(int64_t r, int64_t c, int) const {
        return dy[r * E + c] * u[r * E + c];
    }
    __device__ void store(int64_t c, int, float s) const { dDskip[c] += s; }
};

static void scan_geometry(int64_t N, int *P, int *J) {
    int p = 1;
    while (p < N && p < 32) p <<= 1;
    *P = p;
    *J = (int)((N + p - 1) / p);
}

// scan_geometry_wide is the layout of the kernels that carry no per-step
// sums over channels (k_scan_local, k_scan_out, k_scan_bwd_local): the
// fewest lanes per channel, at least 4, that keep J <= 4, so each lane does
// more of the work that every step repeats (reading Δ and u, the sum for y)
// while a block's staged inputs stay small.
static void scan_geometry_wide(int64_t N, int *P, int *J) {
    int p = 4;
    while ((N + p - 1) / p > 4) p <<= 1;
    *P = p;
    *J = (int)((N + p - 1) / p);
}

// scan_check validates the sizes of a scan call.
static int scan_check(const char *fn, const mb_scan_dims *dims) {
    if (dims->N <= 0 || dims->N > 128) {
        set_err("%s: N = %lld; the scan supports 1 <= N <= 128", fn, (long long)dims->N);
        return 1;
    }
    if (dims->T > INT32_MAX || dims->E > INT32_MAX || dims->B > 65535 ||
        (dims->T + kScanChunk - 1) / kScanChunk > 65535) {
        set_err("%s: sizes out of range (B=%lld T=%lld E=%lld)", fn, (long long)dims->B,
                (long long)dims->T, (long long)dims->E);
        return 1;
    }
    return 0;
}

// scan_grid is the grid of a chunk kernel of blocks of threads over count
// chunks, P lanes per channel.
static dim3 scan_grid(int64_t B, int64_t E, int P, int count, int threads = kScanThreads) {
    int cpb = threads / P;
    return dim3((unsigned)((E + cpb - 1) / cpb), (unsigned)count, (unsigned)B);
}

// scan_smem is the dynamic shared memory of a chunk kernel that stages
// cols per-channel arrays and bcs Bt/Ct arrays, plus extra values.
static size_t scan_smem(int P, int64_t N, int cols, int bcs, size_t extra, int threads = kScanThreads) {
    int cpb = threads / P;
    return ((size_t)kScanChunk * ((size_t)cols * cpb + (size_t)bcs * N) + extra) * sizeof(float);
}

// Dispatch on J (1..4) to a kernel template.
#define SCAN_LAUNCH(J, kern, grid, shmem, ...)                                                  \
    do {                                                                                        \
        switch (J) {                                                                            \
        case 1:                                                                                 \
            if (allow_smem(kern<1>, shmem)) return 1;                                           \
            kern<1><<<grid, kScanThreads, shmem, g_stream>>>(__VA_ARGS__);                      \
            break;                                                                              \
        case 2:                                                                                 \
            if (allow_smem(kern<2>, shmem)) return 1;                                           \
            kern<2><<<grid, kScanThreads, shmem, g_stream>>>(__VA_ARGS__);                      \
            break;                                                                              \
        case 3:                                                                                 \
            if (allow_smem(kern<3>, shmem)) return 1;                                           \
            kern<3><<<grid, kScanThreads, shmem, g_stream>>>(__VA_ARGS__);                      \
            break;                                                                              \
        default:                                                                                \
            if (allow_smem(kern<4>, shmem)) return 1;                                           \
            kern<4><<<grid, kScanThreads, shmem, g_stream>>>(__VA_ARGS__);                      \
            break;                                                                              \
        }                                                                                       \
        LAUNCHED();                                                                             \
    } while (0)

// quad_ok says whether the scan may take the four-state kernels for N = 8,
// 16, 32 (MAMBABYTE_CUDA_SCAN_QUAD=0 keeps the general kernels for every
// N, for comparisons).
static bool quad_ok() {
    static const bool ok = !switched_off("MAMBABYTE_CUDA_SCAN_QUAD");
    return ok;
}

// gate_bwd_fused says whether the four-state backward may take the gate in
// (MAMBABYTE_CUDA_GATE_BWD=0 runs mb_gate_bwd's kernel first instead, for
// comparisons). g_gate_dy holds that kernel's dy then.
static bool gate_bwd_fused() {
    static const bool ok = !switched_off("MAMBABYTE_CUDA_GATE_BWD");
    return ok;
}
static float *g_gate_dy = nullptr;
static size_t g_gate_dy_bytes = 0;

template <class K, class... Args>
static int quad_launch(K kernel, dim3 grid, size_t shmem, Args... args) {
    if (allow_smem(kernel, shmem)) return 1;
    kernel<<<grid, kScanQuadThreads, shmem, g_stream>>>(args...);
    LAUNCHED();
    return 0;
}

// quad_grid and quad_smem are scan_grid and scan_smem for a four-state
// kernel.
static dim3 quad_grid(int64_t B, int64_t E, int qP, int count) {
    return scan_grid(B, E, qP, count, kScanQuadThreads);
}

static size_t quad_smem(int qP, int64_t N, int cols, int bcs, size_t extra) {
    return scan_smem(qP, N, cols, bcs, extra, kScanQuadThreads);
}

// Dispatch on P (2, 4, 8) to a four-state kernel template.
#define QUAD_LAUNCH(qP, kern, grid, shmem, ...)                                                   \
    do {                                                                                          \
        int rc_ = qP == 2   ? quad_launch(kern<2>, grid, shmem, __VA_ARGS__)                      \
                  : qP == 4 ? quad_launch(kern<4>, grid, shmem, __VA_ARGS__)                      \
                            : quad_launch(kern<8>, grid, shmem, __VA_ARGS__);                     \
        if (rc_) return 1;                                                                        \
    } while (0)

extern "C" int mb_scan_fwd(float *y, const float *u, const float *delta, const float *Bt,
                           const float *Ct, const float *A, const float *Dskip, const float *s0,
                           float *sT, float *ckpt, const mb_scan_dims *dims) {
    ENTER();
    int64_t B = dims->B, T = dims->T, E = dims->E, N = dims->N;
    if (B <= 0 || T <= 0 || E <= 0) return 0;
    if (scan_check("mb_scan_fwd", dims)) return 1;
    int nc = (int)((T + kScanChunk - 1) / kScanChunk);
    int Pw, Jw;
    scan_geometry_wide(N, &Pw, &Jw);
    const int qP = quad_ok() ? quad_P(N) : 0;
    ScanArgs aw{u, delta, Bt, Ct, A, Dskip, dims->ldbc, (int)T, (int)E, (int)N, qP ? qP : Pw,
                dims->dt_bias, dims->dt_raw != 0};
    const float *start = s0;
    if (nc == 1) {
        // One chunk: it starts from s0; that is also the checkpoint.
        if (ckpt) {
            if (s0)
                CK(cudaMemcpyAsync(ckpt, s0, (size_t)(B * E * N) * sizeof(float),
                                   cudaMemcpyDeviceToDevice, g_stream));
            else
                CK(cudaMemsetAsync(ckpt, 0, (size_t)(B * E * N) * sizeof(float), g_stream));
        }
    } else {
        // Workspace: chunk ends (B, nc, E, N), ΣΔ (B, nc, E), and the
        // start states when there is no ckpt to hold them.
        void *wsv;
        size_t need = carve_size<float>(B * nc * E * N) + carve_size<float>(B * nc * E) +
                      (ckpt ? 0 : carve_size<float>(B * nc * E * N));
        if (workspace(need, &wsv)) return 1;
        char *cur = (char *)wsv;
        float *loc = carve<float>(&cur, B * nc * E * N);
        float *dsum = carve<float>(&cur, B * nc * E);
        float *st = ckpt ? ckpt : carve<float>(&cur, B * nc * E * N);
        if (qP)
            QUAD_LAUNCH(qP, k_scan_local_quad, quad_grid(B, E, qP, nc - 1), quad_smem(qP, N, 2, 1, 0), aw, nc, loc, dsum);
        else
            SCAN_LAUNCH(Jw, k_scan_local, scan_grid(B, E, Pw, nc - 1), scan_smem(Pw, N, 2, 1, 0), aw, nc, loc, dsum);
        k_scan_carry<<<grid_for(B * E * N), kThreads, 0, g_stream>>>(st, loc, dsum, A, s0, B, nc, E, N);
        LAUNCHED();
        start = st;
    }
    GateOut go{dims->gate_z, dims->ldz, dims->gate_out, dims->gate_out16 != 0};
    if (qP) {
        QUAD_LAUNCH(qP, k_scan_out_quad, quad_grid(B, E, qP, nc), quad_smem(qP, N, 2, 2, 0), aw, nc, y, start, sT, go);
        return 0;
    }
    SCAN_LAUNCH(Jw, k_scan_out, scan_grid(B, E, Pw, nc), scan_smem(Pw, N, 2, 2, 0), aw, nc, y, start, sT);
    return go.z ? gate_fwd_to(go.out, go.out16, y, go.z, go.ldz, B * T, E) : 0;
}

// g_ddelta32 holds the general backward's float32 ddelta where the caller
// asked for bf16 (mb_scan_dims.ddelta16), before the copy.
static float *g_ddelta32 = nullptr;
static size_t g_ddelta32_bytes = 0;

extern "C" int mb_scan_bwd(float *du, void *ddeltav, float *dBt, float *dCt, float *dAlog,
                           float *dDskip, const float *dy, const float *u, const float *delta,
                           const float *Bt, const float *Ct, const float *A, const float *Dskip,
                           const float *ckpt, const mb_scan_dims *dims) {
    ENTER();
    int64_t B = dims->B, T = dims->T, E = dims->E, N = dims->N, ldbc = dims->ldbc;
    if (B <= 0 || T <= 0 || E <= 0) return 0;
    if (scan_check("mb_scan_bwd", dims)) return 1;
    float *ddelta = (float *)ddeltav;  // when float32
    if (dims->gate_z && (!dims->gate_y || !dims->gate_dz)) {
        set_err("mb_scan_bwd: the gate needs gate_y and gate_dz with gate_z");
        return 1;
    }
    int P, J;
    scan_geometry(N, &P, &J);
    int nc = (int)((T + kScanChunk - 1) / kScanChunk);
    const int qP = quad_ok() ? quad_P(N) : 0;
    dim3 grid = qP ? quad_grid(B, E, qP, nc) : scan_grid(B, E, P, nc);
    int groups = (int)grid.x;
    // Workspace: carries, then dA partials (B, nc, E, N); ΣΔ (B, nc, E);
    // the channel groups' dBt, dCt partials (groups, B·T, 2N).
    void *wsv;
    size_t need = carve_size<float>(B * nc * E * N) + carve_size<float>(B * nc * E) +
                  carve_size<float>((int64_t)groups * B * T * 2 * N) + carve_size<float>(B * nc * 2 * E);
    if (workspace(need, &wsv)) return 1;
    char *cur = (char *)wsv;
    float *h = carve<float>(&cur, B * nc * E * N);
    float *dsum = carve<float>(&cur, B * nc * E);
    float *part = carve<float>(&cur, (int64_t)groups * B * T * 2 * N);
    float *cols = carve<float>(&cur, B * nc * 2 * E);

    GateBwd gb{dims->gate_z, dims->ldz, dims->gate_y, dims->gate_dz, dims->gate_dz16 != 0};
    if (gb.z && (!qP || !gate_bwd_fused())) {
        // Only the four-state kernels take the gate in: the gate's backward
        // runs first, its dy to a buffer of its own.
        if (grow_uncaptured("mb_scan_bwd: the gate's buffer", (void **)&g_gate_dy, &g_gate_dy_bytes,
                      (size_t)(B * T * E) * sizeof(float)))
            return 1;
        if (gate_bwd_to(g_gate_dy, gb.dz, gb.dz16, dy, gb.y, gb.z, gb.ldz, B * T, E)) return 1;
        dy = g_gate_dy;
        gb.z = nullptr;
    }
    ScanArgs a{u, delta, Bt, Ct, A, Dskip, ldbc, (int)T, (int)E, (int)N, P, dims->dt_bias, dims->dt_raw != 0};
    if (nc > 1 && qP) {
        ScanArgs aq = a;
        aq.P = qP;
        QUAD_LAUNCH(qP, k_scan_bwd_local_quad, quad_grid(B, E, qP, nc - 1), quad_smem(qP, N, 2, 1, 0), aq, nc, h, dsum, dy, gb);
    } else if (nc > 1) {
        int Pw, Jw;
        scan_geometry_wide(N, &Pw, &Jw);
        ScanArgs aw = a;
        aw.P = Pw;
        SCAN_LAUNCH(Jw, k_scan_bwd_local, scan_grid(B, E, Pw, nc - 1), scan_smem(Pw, N, 2, 1, 0), aw, nc, h, dsum, dy);
    }
    k_scan_bwd_carry<<<grid_for(B * E * N), kThreads, 0, g_stream>>>(h, dsum, A, B, nc, E, N);
    LAUNCHED();
    if (qP) {
        // Staged chunk (3 per-channel arrays, Bt, Ct), the sub-chunks'
        // starts, and the warps' dBt, dCt sums of two sub-chunks.
        size_t shmem = quad_smem(qP, N, 3, 2,
                                 (size_t)(kScanChunk / kScanQuadSub) * kScanQuadThreads * 4 +
                                     (size_t)2 * (kScanQuadThreads / 32) * kScanQuadSub * 2 * N);
        a.P = qP;
        QUAD_LAUNCH(qP, k_scan_bwd_quad, grid, shmem, a, nc, du, ddeltav, (int)(dims->ddelta16 != 0),
                    part, h, dy, ckpt, cols, gb);
    } else {
        // k_scan_bwd_chunk writes float32 (to a buffer of its own, copied
        // at the end, where bf16 is asked for) and also holds the
        // recomputed states and the block's dBt, dCt sums.
        if (dims->ddelta16) {
            if (grow_uncaptured("mb_scan_bwd: the ddelta buffer", (void **)&g_ddelta32, &g_ddelta32_bytes,
                                (size_t)(B * T * E) * sizeof(float)))
                return 1;
            ddelta = g_ddelta32;
        }
        size_t shmem = scan_smem(P, N, 3, 2, (size_t)scan_sub_steps(J) * J * kScanThreads + 2 * kScanChunk * (size_t)N);
        SCAN_LAUNCH(J, k_scan_bwd_chunk, grid, shmem, a, nc, du, ddelta, part, h, dy, ckpt);
    }
    k_scan_dbc<<<grid_for(B * T * 2 * N), kThreads, 0, g_stream>>>(dBt, dCt, ldbc, part, groups, B * T, N);
    LAUNCHED();
    k_scan_dalog<<<grid_for(E * N), kThreads, 0, g_stream>>>(dAlog, h, A, B * nc, E * N);
    LAUNCHED();
    if (qP) {
        // dDskip and the dt bias from the chunk sums the kernel left.
        ScanCols f{dDskip, dims->dt_raw ? dims->dbias : nullptr};
        colsum_final(f, cols, B * nc, 2, E);
        LAUNCHED();
        return 0;
    }
    // The workspace now belongs to colsum; h and part were consumed above
    // (same stream), so reusing it is safe.
    DskipCols f{dDskip, dy, u, E};
    if (colsum(f, B * T, E, 1)) return 1;
    if (dims->dt_raw && dims->dbias) {
        DtCols fb{dims->dbias, ddelta, E};
        if (colsum(fb, B * T, E, 1)) return 1;
    }
    if (dims->ddelta16) {
        pack_bf16((__nv_bfloat16 *)ddeltav, ddelta, B * T, E, E);
        LAUNCHED();
    }
    return 0;
}

// ---------------------------------------------------------------------------
// The fused recurrent step.

#include "step.cuh"
#include "whole.cuh"
