// step.cuh — the fused recurrent step: one byte per stream through a residual
// block in four kernels instead of the dozen operations of a general forward
// pass. It is part of kernels.cu's translation unit (included at its end), so
// it shares the library's stream, error state and device helpers.
//
// A decode step reads every weight once and does little arithmetic per
// weight, so its speed is the rate at which the weights stream from memory,
// plus the fixed cost of each kernel: its launch, and every round trip to
// memory it makes before the weights flow. Per block (mb_step_block):
//
//   1. k_step_in:   [xi, z] = Norm(h)·W_inᵀ; then per channel, at once,
//                   u = silu(conv(state, xi)) and the conv state shifted
//   2. k_step_x:    [r, Bt, Ct] = u·W_xᵀ                           (B,R+2N)
//   3. k_step_scan: Δ = softplus(r·W_dtᵀ + b); s = exp(Δ·A)·s + Δ·u·Bt;
//                   g = (Ct·s + Dskip·u)·silu(z)
//   4. k_step_out:  h += g·W_outᵀ                                   (B,D)
//
// Where the sizes allow (x_fused), kernel 2 is not launched: kernel 1's
// blocks add their channels' shares of u·W_xᵀ into fixed-point sums that
// the scan reads ("x_proj inside in_proj" below), so a layer is three
// kernels.
//
// Kernels 1, 2 and 4 (and the head) are matrix-vector products by rows of
// a weight: each block first loads the vectors of a tile of streams into
// shared memory (in kernel 1 times the norm's weight, with the norm's
// statistics taken on the way: the norm is folded into the product, see
// k_step_fold; the head normalises its tile), then each warp takes rows of
// the weight, reads them with 16-byte loads, and dots them with every
// stream of the tile. The scan takes a warp per channel and issues all its
// loads before the first sum. The kernels of the step are launched with
// programmatic dependent launch: each starts while the one before runs,
// loads the first weights it needs into registers (RowPre: a warp's first
// row, up to 8 vectors a lane) and everything else that no kernel of the
// step writes (conv taps, A, dt bias), asks L2 for its other weights and
// for the states it will read, and only then waits for the activations.
// Kernels 2 and 4 also ask for shared memory enough to keep them one block
// an SM (kStepSpreadSmem).
//
// That path serves kStepGemvMaxB (one) stream. In bf16 mode 2 to
// kStepMmaMaxB streams take the same steps on tensor cores, chained the
// same way (norm, in_proj + conv, x_proj, scan, out_proj; "The tensor-core
// path" below); more streams, or float32 weights, go to cuBLAS, on
// operands of the weight's type that small kernels build. On bf16 weights
// that path, too, launches no x_proj product (many_x_fused): its conv
// kernel makes the fixed-point sums (k_step_conv_x), and the scan, chained
// behind it, reads them.
//
// Weights are float32 or bf16 (wtype 0 or 1: bf16 copies made by
// mb_to_bf16); everything else is float32, and products accumulate in
// float32.

#include <cuda_bf16.h>

static const int kStepThreads = 256;
static const int kStepGemvMaxB = 1;
// Shared memory a block may use for its tile of vectors.
static const size_t kStepTileBytes = 96u << 10;

// Wv loads weights: n consecutive values (16 bytes) converted to float.
template <typename W>
struct Wv;

template <>
struct Wv<float> {
    static constexpr int n = 4;
    __device__ static __forceinline__ void load(const float *p, float *o) {
        float4 v = __ldg((const float4 *)p);
        o[0] = v.x, o[1] = v.y, o[2] = v.z, o[3] = v.w;
    }
    __device__ static __forceinline__ void cvt(uint4 v, float *o) {
        o[0] = __uint_as_float(v.x), o[1] = __uint_as_float(v.y);
        o[2] = __uint_as_float(v.z), o[3] = __uint_as_float(v.w);
    }
    __device__ static __forceinline__ float one(const float *p) { return __ldg(p); }
};

template <>
struct Wv<__nv_bfloat16> {
    static constexpr int n = 8;
    __device__ static __forceinline__ void load(const __nv_bfloat16 *p, float *o) {
        unpack(__ldg((const uint4 *)p), o);
    }
    // unpack widens 8 bf16 values (16 bytes) to float; widen2 the two
    // of one 32-bit word.
    __device__ static __forceinline__ void unpack(uint4 v, float *o) {
        widen2(v.x, o), widen2(v.y, o + 2), widen2(v.z, o + 4), widen2(v.w, o + 6);
    }
    __device__ static __forceinline__ void cvt(uint4 v, float *o) { unpack(v, o); }
    __device__ static __forceinline__ void widen2(uint32_t w, float *o) {
        o[0] = __uint_as_float(w << 16);
        o[1] = __uint_as_float(w & 0xffff0000u);
    }
    __device__ static __forceinline__ float one(const __nv_bfloat16 *p) {
        return __bfloat162float(*p);
    }
};

// Wq moves four consecutive weights (8 or 16 bytes, aligned so): load
// reads them from shared memory as float, copy from global memory to
// shared memory as they are.
template <typename W>
struct Wq;

template <>
struct Wq<float> {
    __device__ static __forceinline__ void load(const float *p, float *o) {
        const float4 v = *(const float4 *)p;
        o[0] = v.x, o[1] = v.y, o[2] = v.z, o[3] = v.w;
    }
    __device__ static __forceinline__ void copy(float *dst, const float *src) {
        *(float4 *)dst = __ldg((const float4 *)src);
    }
};

template <>
struct Wq<__nv_bfloat16> {
    __device__ static __forceinline__ void load(const __nv_bfloat16 *p, float *o) {
        const uint2 v = *(const uint2 *)p;
        Wv<__nv_bfloat16>::widen2(v.x, o), Wv<__nv_bfloat16>::widen2(v.y, o + 2);
    }
    __device__ static __forceinline__ void copy(__nv_bfloat16 *dst, const __nv_bfloat16 *src) {
        *(uint2 *)dst = __ldg((const uint2 *)src);
    }
};

// Operand stores for the cuBLAS path (a float32 value as the weight's type)
// use kernels.cu's put.

// ld_stream reads 16 bytes that this kernel reads once (weights), leaving
// L1 to what other warps read again.
__device__ __forceinline__ uint4 ld_stream(const void *p) {
    uint4 v;
    asm("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
        : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
        : "l"(p));
    return v;
}

// RowPre holds, in registers, the first NP (kStepPre unless a kernel's
// rows are shorter) 16-byte vectors a lane reads of its warp's first
// weight row (vectors lane, lane+32, ...): a matrix-vector kernel of the
// step loads them before it waits for the kernels before it, so that the
// weights it needs first are on chip when its vectors arrive. The rest of
// its rows it asks L2 for.
static const int kStepPre = 8;

template <int NP = kStepPre>
struct RowPre {
    uint4 v[NP];  // NP (at most kStepPre) vectors a lane
    int64_t row;  // the row they hold; -1: none
};

// first_row is the first row of w a warp takes in tile_rows; row_stride
// the step from one of its rows to the next.
__device__ __forceinline__ int64_t first_row() {
    return (int64_t)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
}
__device__ __forceinline__ int64_t row_stride() {
    return (int64_t)gridDim.x * (blockDim.x >> 5);
}

template <typename W, int NP>
__device__ __forceinline__ void pre_row(RowPre<NP> &pre, const W *w, int64_t rows, int64_t cols,
                                        bool vec) {
    const int lane = threadIdx.x & 31;
    const int64_t r = first_row(), nv = cols / Wv<W>::n;
    pre.row = vec && r < rows ? r : -1;
    if (pre.row < 0) return;
    const uint4 *p = (const uint4 *)(w + r * cols);
#pragma unroll
    for (int q = 0; q < NP; q++)
        if (lane + 32 * q < nv) pre.v[q] = ld_stream(p + lane + 32 * q);
}

// row_dot adds to acc[s] (per lane; the caller sums across the warp) the dot
// product of weight row w (cols values) with vector s of the tile xs (SB
// rows of stride ldx, a multiple of 4, zero past cols). vec: the row is
// 16-byte aligned and cols a multiple of Wv<W>::n. use_pre: pre holds the
// row's first vectors.
template <typename W, int SB, int NP>
__device__ __forceinline__ void row_dot(const W *__restrict__ w, int64_t cols, bool vec,
                                        const float *xs, int ldx, float *acc, int lane,
                                        const RowPre<NP> &pre, bool use_pre) {
    constexpr int VW = Wv<W>::n;
    auto fma_vec = [&](int64_t p, const float *wv) {
#pragma unroll
        for (int s = 0; s < SB; s++) {
            const float4 *x4 = (const float4 *)(xs + s * ldx + p * VW);
#pragma unroll
            for (int i = 0; i < VW / 4; i++) {
                const float4 xv = x4[i];
                acc[s] += wv[4 * i] * xv.x + wv[4 * i + 1] * xv.y + wv[4 * i + 2] * xv.z +
                          wv[4 * i + 3] * xv.w;
            }
        }
    };
    int64_t c0 = 0;
    if (vec) {
        int64_t nv = cols / VW, p0 = lane;
        if (use_pre) {
#pragma unroll
            for (int q = 0; q < NP; q++) {
                if (lane + 32 * q < nv) {
                    float wv[VW];
                    Wv<W>::cvt(pre.v[q], wv);
                    fma_vec(lane + 32 * q, wv);
                }
            }
            p0 = lane + 32 * NP;
        }
        for (int64_t p = p0; p < nv; p += 4 * 32) {
            float wv[4][VW];
#pragma unroll
            for (int q = 0; q < 4; q++) {
                if (p + 32 * q < nv) {
                    Wv<W>::load(w + (p + 32 * q) * VW, wv[q]);
                } else {
#pragma unroll
                    for (int i = 0; i < VW; i++) wv[q][i] = 0.f;
                }
            }
#pragma unroll
            for (int q = 0; q < 4; q++) {
                if (p + 32 * q >= nv) break;
                fma_vec(p + 32 * q, wv[q]);
            }
        }
        c0 = nv * VW;
    }
    for (int64_t c = c0 + lane; c < cols; c += 32) {
        float wc = Wv<W>::one(w + c);
#pragma unroll
        for (int s = 0; s < SB; s++) acc[s] += wc * xs[s * ldx + c];
    }
}

// tile_rows runs the warps of a block over rows of w (rows, cols) against
// the tile xs and hands each finished dot product to store(row, s, value)
// for the nb streams present, lane s storing stream s's (so per-stream
// epilogues run side by side). The warp's first row may come preloaded
// (pre, see RowPre).
template <typename W, int SB, class Store, int NP>
__device__ __forceinline__ void tile_rows(const W *w, int64_t rows, int64_t cols, bool vec,
                                          const float *xs, int ldx, int nb, Store store,
                                          const RowPre<NP> &pre) {
    const int lane = threadIdx.x & 31;
    const int64_t stride = row_stride();
    auto row = [&](int64_t r, bool use_pre) {
        float acc[SB];
#pragma unroll
        for (int s = 0; s < SB; s++) acc[s] = 0.f;
        row_dot<W, SB, NP>(w + r * cols, cols, vec, xs, ldx, acc, lane, pre, use_pre);
#pragma unroll
        for (int s = 0; s < SB; s++) {
            acc[s] = warp_sum(acc[s]);
            if (lane == s && s < nb) store(r, s, acc[s]);
        }
    };
    int64_t r = first_row();
    if (r == pre.row) row(r, true), r += stride;
    for (; r < rows; r += stride) row(r, false);
}

// Programmatic dependent launch (sm_90): kernels of the step are launched
// so that the next one may start before this one ends (launch_pdl).
// pdl_start lets it; pdl_wait blocks until the kernels before have
// finished and their writes are visible. Before pdl_wait a kernel may
// only read what no kernel of the step writes: the weights.
__device__ __forceinline__ void pdl_start() { asm volatile("griddepcontrol.launch_dependents;"); }
__device__ __forceinline__ void pdl_wait() { asm volatile("griddepcontrol.wait;" ::: "memory"); }

// cp_async16 copies 16 bytes from global to shared memory without holding
// a register, or writes 16 zero bytes when n is 0; cp_async4 copies 4
// bytes, or writes 4 zero bytes when n is 0. cp_async_wait waits for the
// thread's copies.
__device__ __forceinline__ void cp_async16(void *dst, const void *src, int n) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(
                     (uint32_t)__cvta_generic_to_shared(dst)),
                 "l"(src), "r"(n)
                 : "memory");
}
__device__ __forceinline__ void cp_async4(void *dst, const void *src, int n) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;" ::"r"(
                     (uint32_t)__cvta_generic_to_shared(dst)),
                 "l"(src), "r"(n)
                 : "memory");
}
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_all;" ::: "memory");
}
// cp_async_commit closes the thread's group of copies issued since the
// last; cp_async_wait_prior waits for all groups but the last.
__device__ __forceinline__ void cp_async_commit() {
    asm volatile("cp.async.commit_group;" ::: "memory");
}
__device__ __forceinline__ void cp_async_wait_prior() {
    asm volatile("cp.async.wait_group 1;" ::: "memory");
}

// A STEP_TRACE build (cuda/step_bench) records, for every block of the
// one-stream step's kernels and of the many-stream ones but cuBLAS's, the
// global timer when it starts, when its pdl_wait returns and when its first
// thread ends, with the kernel (tag) and the SM; other builds compile none
// of it.
#ifdef STEP_TRACE
struct StepTrace {
    unsigned long long t0, t1, m0, m1, t2;
    unsigned tag, sm;
};
static const unsigned kStepTraceCap = 1u << 17;
__device__ StepTrace g_step_trace[kStepTraceCap];
__device__ unsigned g_step_trace_n;
__device__ __forceinline__ unsigned long long step_now() {
    unsigned long long t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    return t;
}
#define STEP_T0() unsigned long long t0_ = step_now(), t1_ = 0, m0_ = 0, m1_ = 0
#define STEP_T1() t1_ = step_now()
#define STEP_M0() m0_ = step_now()
#define STEP_M1() m1_ = step_now()
#define STEP_T2(tag)                                                            \
    do {                                                                        \
        if (threadIdx.x == 0) {                                                 \
            unsigned i_ = atomicAdd(&g_step_trace_n, 1u), sm_id_;               \
            asm volatile("mov.u32 %0, %%smid;" : "=r"(sm_id_));                 \
            if (i_ < kStepTraceCap)                                             \
                g_step_trace[i_] = StepTrace{t0_, t1_, m0_, m1_, step_now(), tag, sm_id_}; \
        }                                                                       \
    } while (0)
#else
#define STEP_T0()
#define STEP_T1()
#define STEP_M0()
#define STEP_M1()
#define STEP_T2(tag)
#endif

// prefetch_l2 asks L2 for the 128-byte line holding p; prefetch_range for
// every line of the bytes from p.
__device__ __forceinline__ void prefetch_l2(const void *p) {
    asm volatile("prefetch.global.L2 [%0];" ::"l"(p));
}
__device__ __forceinline__ void prefetch_range(const void *p, int64_t bytes) {
    uintptr_t q = (uintptr_t)p & ~(uintptr_t)127, end = (uintptr_t)p + (uintptr_t)bytes;
    for (; q < end; q += 128) prefetch_l2((const void *)q);
}

// prefetch_rows asks L2 for the rows of w (rows, cols) that this warp will
// read in tile_rows, so they stream from memory while the kernels before
// run; of the row pre holds, only the bytes past the preloaded vectors.
template <typename W, int NP>
__device__ __forceinline__ void prefetch_rows(const W *w, int64_t rows, int64_t cols,
                                              const RowPre<NP> &pre) {
    const int lane = threadIdx.x & 31;
    const int64_t bytes = cols * (int64_t)sizeof(W);
    for (int64_t r = first_row(); r < rows; r += row_stride()) {
        const char *row = (const char *)(w + r * cols);
        int64_t from = r == pre.row ? (int64_t)NP * 32 * 16 : 0;
        for (int64_t off = from + (int64_t)lane * 128; off < bytes; off += 32 * 128)
            prefetch_l2(row + off);
    }
}

// load_tile copies SB rows of n floats (row stride n in global memory) for
// the nb streams present into the tile xs (row stride ldx), zero elsewhere,
// with 16-byte loads when n allows.
template <int SB>
__device__ __forceinline__ void load_tile(float *xs, int ldx, const float *src, int64_t n,
                                          int nb) {
    bool vec = n % 4 == 0 && (uintptr_t)src % 16 == 0;
    for (int s = 0; s < SB; s++) {
        float *xr = xs + s * ldx;
        const float *sr = src + (int64_t)s * n;
        if (s < nb && vec) {
            for (int64_t c = threadIdx.x; c < n / 4; c += blockDim.x)
                ((float4 *)xr)[c] = __ldg((const float4 *)sr + c);
            for (int64_t c = n + threadIdx.x; c < ldx; c += blockDim.x) xr[c] = 0.f;
        } else {
            for (int64_t c = threadIdx.x; c < ldx; c += blockDim.x)
                xr[c] = s < nb && c < n ? sr[c] : 0.f;
        }
    }
}

// norm_tile normalises in place the nb rows of D values of the tile xs:
// warp s computes row s's statistics, then the block applies them.
template <int SB>
__device__ __forceinline__ void norm_tile(float *xs, int ldx, int nb, const float *w,
                                          const float *b, int64_t D, float eps, int rms) {
    __shared__ float mu_[SB], rs_[SB];
    int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
    for (int s = wid; s < nb; s += nw) {
        float mu, rs;
        warp_norm_stats(xs + s * ldx, D, eps, rms, lane, &mu, &rs);
        if (lane == 0) mu_[s] = mu, rs_[s] = rs;
    }
    __syncthreads();
    for (int s = 0; s < nb; s++) {
        float *xr = xs + s * ldx;
        float mu = mu_[s], rs = rs_[s];
        for (int64_t c = threadIdx.x; c < D; c += blockDim.x)
            xr[c] = rms ? xr[c] * rs * w[c] : (xr[c] - mu) * rs * w[c] + (b ? b[c] : 0.f);
    }
}

// conv_step is the conv of channel e of one stream given its new input x:
// u = silu(bias + Σ_k w[e,k]·x_k), x_0..x_{K-2} from the stream's conv
// state (K-1,E) and x_{K-1} = x, after which the state shifts by one. The
// caller owns channel e of the stream. K <= kStepMaxK. conv_in loads what
// it reads into c: the taps and the bias (weights: loadable before
// pdl_wait) and, unless st is NULL, the state; conv_out does the rest.
static const int kStepMaxK = 8;
static const int kConvIn = 2 * kStepMaxK + 1;  // taps, state, bias

__device__ __forceinline__ void conv_in(float *c, const float *st, const float *cw,
                                        const float *cb, int64_t e, int64_t E, int K) {
#pragma unroll
    for (int k = 0; k < kStepMaxK; k++) {
        if (k < K) c[k] = cw[e * K + k];
        if (st && k < K - 1) c[kStepMaxK + k] = st[(int64_t)k * E + e];
    }
    c[2 * kStepMaxK] = cb ? cb[e] : 0.f;
}

__device__ __forceinline__ float conv_out(const float *c, float *st, float x, int64_t e,
                                          int64_t E, int K) {
    float acc = c[2 * kStepMaxK];
#pragma unroll
    for (int k = 0; k < kStepMaxK; k++) {
        if (k < K - 1) acc += c[k] * c[kStepMaxK + k];
        if (k == K - 1) acc += c[k] * x;
    }
#pragma unroll
    for (int k = 1; k < kStepMaxK; k++)
        if (k < K - 1) st[(int64_t)(k - 1) * E + e] = c[kStepMaxK + k];
    if (K > 1) st[(int64_t)(K - 2) * E + e] = x;
    return silu_(acc);
}

__device__ __forceinline__ float conv_step(float *st, float x, const float *cw, const float *cb,
                                           int64_t e, int64_t E, int K) {
    float c[kConvIn];
    conv_in(c, st, cw, cb, e, E, K);
    return conv_out(c, st, x, e, E, K);
}

// A matrix-vector kernel of the step over rows of w (rows, cols) starts
// with rows_start: it lets the next kernel launch, loads the warp's first
// vectors of weights into registers (pre) and asks L2 for the rest. After
// pdl_wait, rows_tile loads the block's tile of vectors from x (B, cols)
// into shared memory (the caller then issues its own loads and the
// barrier), returning the tile's row stride *ldx, first stream *s0 and
// number of streams *nb.
template <typename W, int NP>
__device__ __forceinline__ void rows_start(RowPre<NP> &pre, const W *w, int64_t rows, int64_t cols,
                                           bool vec) {
    pdl_start();
    pre_row(pre, w, rows, cols, vec);
    prefetch_rows(w, rows, cols, pre);
}

template <int SB>
__device__ __forceinline__ float *rows_tile(const float *x, int64_t cols, int B, int *ldx,
                                            int *s0, int *nb) {
    extern __shared__ float4 sm_[];
    float *xs = (float *)sm_;
    *ldx = (int)((cols + 3) & ~3);
    *s0 = blockIdx.y * SB, *nb = min(SB, B - *s0);
    load_tile<SB>(xs, *ldx, x + (int64_t)*s0 * cols, cols, *nb);
    return xs;
}

// NormStat is a partial statistic of a norm's input: n values, their mean
// and the sum of their squared deviations from it. stat_merge joins two
// (Chan et al.'s update), warp_stat those of a warp's lanes.
struct NormStat {
    float n, mean, m2;
};

__device__ __forceinline__ NormStat stat_merge(NormStat a, NormStat b) {
    const float n = a.n + b.n, d = b.mean - a.mean;
    const float f = n > 0.f ? __fdividef(b.n, n) : 0.f;  // counts: exact enough
    return {n, a.mean + d * f, a.m2 + b.m2 + d * d * a.n * f};
}

__device__ __forceinline__ NormStat warp_stat(NormStat a) {
#pragma unroll
    for (int o = 16; o; o >>= 1) {
        const NormStat b = {__shfl_xor_sync(0xffffffffu, a.n, o),
                            __shfl_xor_sync(0xffffffffu, a.mean, o),
                            __shfl_xor_sync(0xffffffffu, a.m2, o)};
        a = stat_merge(a, b);
    }
    return a;
}

// The one-stream in_proj does not normalise its input before the product:
// with the norm's weight w and bias b, Norm(h)·W_rowᵀ is
//     rs·(Σ_c W[r,c]·w_c·h_c - mu·S1_r) + S2_r,
// S1_r = Σ_c W[r,c]·w_c, S2_r = Σ_c W[r,c]·b_c (mu = 0 for RMSNorm), so
// the block loads h·w into its tile and the statistics of h at once, and
// the product needs no pass over the tile and no barrier of its own. The
// fold (S1 then S2, 2E values each) depends on the weights only and is
// made by mb_step_fold when they change. (mu·S1 is subtracted in float32:
// where |mu| is large against σ this keeps fewer digits than normalising
// first; the fused-step tests hold both norms to the bounds they held the
// in-place pass to.) kFoldRows: a warp's rows whose S1 and S2 are staged
// before pdl_wait.
static const int kFoldRows = 4;

// k_step_fold: fold (2, rows) = [W·w, W·b] for W (rows, D), a warp a row.
template <typename W>
__global__ void k_step_fold(float *fold, const W *w, const float *nw, const float *nb,
                            int64_t rows, int64_t D) {
    const int64_t r = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    const int lane = threadIdx.x & 31;
    if (r >= rows) return;
    float s1 = 0.f, s2 = 0.f;
    for (int64_t c = lane; c < D; c += 32) {
        const float v = Wv<W>::one(w + r * D + c);
        s1 += v * nw[c];
        if (nb) s2 += v * nb[c];
    }
    s1 = warp_sum(s1), s2 = warp_sum(s2);
    if (lane == 0) fold[r] = s1, fold[rows + r] = s2;
}

// fold_tile loads the SB rows of D values of h (row stride D) for the nb
// streams present into the tile xs (row stride ldx) multiplied by ws (the
// norm weight in shared memory, zero past D), zero elsewhere, and writes
// each warp's statistics of each row of h to st[s·warps + warp].
template <int SB>
__device__ __forceinline__ void fold_tile(float *xs, int ldx, const float *h, int64_t D, int nb,
                                          const float *ws, NormStat *st) {
    const int lane = threadIdx.x & 31, nw = blockDim.x >> 5;
    const bool vec = D % 4 == 0 && (uintptr_t)h % 16 == 0;
#pragma unroll
    for (int s = 0; s < SB; s++) {
        NormStat a = {0.f, 0.f, 0.f};
        const float *hr = h + (int64_t)s * D;
        for (int c = 4 * threadIdx.x; c < ldx; c += 4 * blockDim.x) {
            float x[4];
            if (s < nb && vec) {
                const float4 v = __ldg((const float4 *)(hr + c));
                x[0] = v.x, x[1] = v.y, x[2] = v.z, x[3] = v.w;
            } else {
#pragma unroll
                for (int q = 0; q < 4; q++) x[q] = s < nb && c + q < D ? hr[c + q] : 0.f;
            }
            const int n = s < nb ? (int)min((int64_t)4, D - c) : 0;
            float sum = 0.f, m2 = 0.f;
#pragma unroll
            for (int q = 0; q < 4; q++) sum += x[q];  // zero past D
            const float m = n == 4 ? 0.25f * sum : n ? sum / (float)n : 0.f;
#pragma unroll
            for (int q = 0; q < 4; q++)
                if (q < n) m2 += (x[q] - m) * (x[q] - m);
            a = stat_merge(a, {(float)n, m, m2});
            const float4 wv = *(const float4 *)(ws + c);
            *(float4 *)(xs + s * ldx + c) =
                make_float4(x[0] * wv.x, x[1] * wv.y, x[2] * wv.z, x[3] * wv.w);
        }
        a = warp_stat(a);
        if (lane == 0) st[s * nw + (threadIdx.x >> 5)] = a;
    }
}

// x_proj inside in_proj (one stream). xdbl = u·W_xᵀ is a sum over the
// channels, and in_proj's blocks make u: a block's warps take rows r0 + w
// (w < 8) of each round r0 = 8·blockIdx.x + j·stride, so a round's
// channels are eight neighbours. Each block that makes channels leaves
// their u in shared memory, sums u·W_x over them for every output k
// (W_x[k, eight channels] staged by cp.async before pdl_wait for the first
// round) and adds the sums into g_xacc. The adds are 64-bit integer adds of
// the sums in fixed point (2^-kXAccFrac steps): integer addition does not
// depend on the order the blocks arrive in, so the step stays bitwise
// repeatable, which float atomics would not. A block's sum of at least
// kXAccLimit in magnitude (or NaN) sets the flag g_xacc[J] instead, and the
// scan then reads NaN for the whole of xdbl: out of range, the step's
// output is NaN, never a wrapped sum. (With at most kXAccBlocks blocks
// the total stays below 2^(63-kXAccFrac).) The scan reads the sums, and
// out_proj, which runs after the scan, sets them back to zero. This saves
// the x_proj kernel and its wait; MAMBABYTE_CUDA_STEP_FUSE_X=0 keeps the
// kernel (for comparisons).
static const int kXRounds = 4;       // rounds of channels a block may make
static const int kXAccFrac = 30;     // fraction bits of the fixed point
static const float kXAccLimit = 4194304.f;  // 2^22
static const int kXAccBlocks = 1024;

// xacc_add adds a block's sum p to the fixed-point total row[r], or sets
// the range flag row[J] where p is out of range (or NaN).
__device__ __forceinline__ void xacc_add(long long *row, int r, int J, float p) {
    if (fabsf(p) < kXAccLimit)
        atomicAdd((unsigned long long *)row + r,
                  (unsigned long long)__float2ll_rn(p * (float)(1 << kXAccFrac)));
    else
        atomicOr((unsigned long long *)row + J, 1ull);
}

// xacc_get reads total row[j] back as a float, plus bad: NaN where the
// row's flag is set, else 0 (an addend, so that no load waits for the flag).
__device__ __forceinline__ float xacc_get(const long long *row, int64_t j, float bad) {
    return fmaf(__ll2float_rn(row[j]), 1.f / (float)(1 << kXAccFrac), bad);
}

// 1. [xi, z] = Norm(h)·W_inᵀ, W_in (2E, D), through the fold above; for
// each channel e < E the conv follows at once: u = silu(conv(state, xi)),
// the conv state shifted. z goes to xz (B, 2E) (its first E columns are
// left alone). Shared memory past the tile: the conv slots (the taps of
// the warp's first row, loaded before pdl_wait, and its state, right
// after), the norm weight, the warps' statistics and the warps' staged
// fold values, in that order (in_smem).
__host__ __device__ static size_t in_smem_floats(int64_t D, int SB) {
    const size_t ldx = (size_t)((D + 3) & ~3), warps = kStepThreads / 32;
    const size_t n = warps * SB * kConvIn + ldx + warps * SB * 3 + warps * kFoldRows * 2;
    return (n + kXRounds * warps + 3) & ~(size_t)3;
}
static size_t in_smem(int64_t D, int SB, size_t xw_bytes) {
    return in_smem_floats(D, SB) * sizeof(float) + xw_bytes;
}

template <typename W, int SB, int NP>
__global__ void __launch_bounds__(kStepThreads, 4)
    k_step_in(float *xz, float *u, float *conv, const float *h, const float *nw,
              const float *fold, float eps, int rms, const float *cw, const float *cb,
              const W *w, int64_t D, int64_t E, int K, int B, bool vec, long long *xacc,
              const W *wx, int J, bool xvec) {
    STEP_T0();
    extern __shared__ float4 sm_[];
    const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    const int s0 = blockIdx.y * SB, ldx = (int)((D + 3) & ~3), nb_ = min(SB, B - s0);
    const int64_t r0 = first_row(), rows = 2 * E, stride = row_stride();
    float *xs = (float *)sm_;
    float *c0 = xs + SB * ldx + (wid * SB + lane) * kConvIn;
    float *ws = xs + SB * ldx + nwarps * SB * kConvIn;
    NormStat *st = (NormStat *)(ws + ldx);
    float *fs = (float *)(st + nwarps * SB) + wid * kFoldRows * 2;
    // x_proj's share (xacc set: one stream): the block's u values, a round
    // of its rows at a time, and W_x's slices for its first round.
    const int64_t xb = (int64_t)blockIdx.x * nwarps;
    const bool xpart = xacc && xb < E;
    float *su = (float *)(st + nwarps * SB) + nwarps * kFoldRows * 2;
    W *sxw = (W *)(xs + SB * ldx + in_smem_floats(D, SB));
    // The norm weight and the fold values first, then the weights. Each
    // thread copies the values of ws it reads in fold_tile.
    const bool wvec = D % 4 == 0 && (uintptr_t)nw % 16 == 0;
    for (int c = 4 * threadIdx.x; c < ldx; c += 4 * blockDim.x) {
        if (wvec) {
            cp_async16(ws + c, nw + c, 16);
        } else {
#pragma unroll
            for (int q = 0; q < 4; q++)
                cp_async4(ws + c + q, nw + min((int64_t)(c + q), D - 1), c + q < D ? 4 : 0);
        }
    }
    if (lane < 2 * kFoldRows) {
        const int64_t r = r0 + (lane >> 1) * stride;
        if (r < rows) cp_async4(fs + lane, fold + (lane & 1) * rows + r, 4);
    }
    // xvec: E % 8 == 0 and W_x 16-byte aligned, so a slice is 16 or 32
    // bytes in place (nwarps is 8).
    if (xpart && xvec) {
        constexpr int q = 8 * sizeof(W) / 16;  // 16-byte pieces a slice
        for (int i = threadIdx.x; i < J * q; i += blockDim.x)
            cp_async16(sxw + i * 16 / sizeof(W), wx + (i / q) * E + xb + (i % q) * 16 / sizeof(W),
                       16);
    }
    RowPre<NP> pre;
    rows_start(pre, w, rows, D, vec);
    const bool conv0 = lane < SB && s0 + lane < B && r0 < E;
    float *st0 = conv + (int64_t)(s0 + lane) * (K - 1) * E;
    if (conv0) {
        for (int k = 0; k < K; k++) cp_async4(c0 + k, cw + r0 * K + k, 4);
        cp_async4(c0 + 2 * kStepMaxK, cb ? cb + r0 : cw, cb ? 4 : 0);
        for (int k = 0; k < K - 1; k++) prefetch_l2(st0 + (int64_t)k * E + r0);
    }
    cp_async_commit();
    pdl_wait();
    STEP_T1();
    // The conv state, in flight while the tile loads.
    if (conv0)
        for (int k = 0; k < K - 1; k++) cp_async4(c0 + kStepMaxK + k, st0 + (int64_t)k * E + r0, 4);
    cp_async_commit();
    cp_async_wait_prior();
    fold_tile<SB>(xs, ldx, h + (int64_t)s0 * D, D, nb_, ws, st);
    cp_async_wait();
    __syncthreads();
    STEP_M0();
    // Lane s finishes stream s's rows: its mean and 1/σ.
    float mu = 0.f, rs = 0.f;
    if (lane < nb_) {
        NormStat a = st[lane * nwarps];
        for (int i = 1; i < nwarps; i++) a = stat_merge(a, st[lane * nwarps + i]);
        const float var = a.m2 / a.n + (rms ? a.mean * a.mean : 0.f);
        mu = rms ? 0.f : a.mean;
        rs = 1.f / sqrtf(var + eps);
    }
    STEP_M1();
    tile_rows<W, SB>(
        w, rows, D, vec, xs, ldx, nb_,
        [&](int64_t r, int s, float v) {
            const int64_t b = s0 + s;
            const int j = (int)(r - r0) / (int)stride;
            const float f1 = j < kFoldRows ? fs[2 * j] : fold[r],
                        f2 = j < kFoldRows ? fs[2 * j + 1] : fold[rows + r];
            v = rs * (v - mu * f1) + f2;
            if (r >= E) {
                xz[b * 2 * E + r] = v;
                return;
            }
            const float uv = r == r0 ? conv_out(c0, st0, v, r, E, K)
                                     : conv_step(conv + b * (K - 1) * E, v, cw, cb, r, E, K);
            u[b * E + r] = uv;
            if (xpart) su[j * nwarps + wid] = uv;
        },
        pre);
    if (xpart) {
        __syncthreads();
        const int rounds = (int)min((int64_t)kXRounds, (E - xb + stride - 1) / stride);
        for (int k = threadIdx.x; k < J; k += blockDim.x) {
            float p = 0.f;
            for (int j = 0; j < rounds; j++) {
                const int64_t cx = xb + j * stride;
                float wv[8];
                if (j == 0 && xvec) {
                    const uint4 *p4 = (const uint4 *)(sxw + 8 * k);
#pragma unroll
                    for (int q = 0; q < 8 / Wv<W>::n; q++) Wv<W>::cvt(p4[q], wv + q * Wv<W>::n);
                } else {
#pragma unroll
                    for (int i = 0; i < 8; i++)
                        wv[i] = cx + i < E ? Wv<W>::one(wx + k * E + cx + i) : 0.f;
                }
#pragma unroll
                for (int i = 0; i < 8; i++)
                    if (cx + i < E) p = fmaf(wv[i], su[j * nwarps + i], p);
            }
            xacc_add(xacc, k, J, p);
        }
    }
    STEP_T2(1);
}

// The head: logits (B, V) = Norm(h)·W_headᵀ.
template <typename W, int SB>
__global__ void __launch_bounds__(kStepThreads, 4)
    k_step_head(float *logits, const float *h, const float *nw, const float *nb, float eps,
                int rms, const W *w, int64_t D, int64_t V, int B, bool vec) {
    RowPre<> pre;
    rows_start(pre, w, V, D, vec);
    pdl_wait();
    int ldx, s0, nb_;
    float *xs = rows_tile<SB>(h, D, B, &ldx, &s0, &nb_);
    __syncthreads();
    norm_tile<SB>(xs, ldx, nb_, nw, nb, D, eps, rms);
    __syncthreads();
    tile_rows<W, SB>(
        w, V, D, vec, xs, ldx, nb_,
        [&](int64_t r, int s, float v) { logits[(int64_t)(s0 + s) * V + r] = v; }, pre);
}

// 2. xdbl (B, R+2N) = u·W_xᵀ, W_x (R+2N, E).
template <typename W, int SB>
__global__ void __launch_bounds__(kStepThreads, 4)
    k_step_x(float *xdbl, const float *u, const W *w, int64_t rows, int64_t E, int B, bool vec) {
    STEP_T0();
    RowPre<> pre;
    rows_start(pre, w, rows, E, vec);
    pdl_wait();
    STEP_T1();
    int ldx, s0, nb_;
    const float *xs = rows_tile<SB>(u, E, B, &ldx, &s0, &nb_);
    __syncthreads();
    STEP_M0();
    tile_rows<W, SB>(
        w, rows, E, vec, xs, ldx, nb_,
        [&](int64_t r, int s, float v) {
            STEP_M1();
            xdbl[(int64_t)(s0 + s) * rows + r] = v;
        },
        pre);
    STEP_T2(2);
}

// 4. h (B,D) += g·W_outᵀ, W_out (D, E). The h value of the warp's first row
// is read as soon as the kernels before have finished. xacc (J + 1 values),
// when set, is zeroed.
template <typename W, int SB, int NP = kStepPre, int TH = kStepThreads>
__global__ void __launch_bounds__(TH, TH == kStepThreads ? 4 : 1)
    k_step_out(float *h, const float *g, const W *w, int64_t D, int64_t E, int B, bool vec,
               long long *xacc, int J) {
    STEP_T0();
    RowPre<NP> pre;
    rows_start(pre, w, D, E, vec);
    const int lane = threadIdx.x & 31, s0 = blockIdx.y * SB;
    const int64_t r0 = first_row();
    pdl_wait();
    STEP_T1();
    // The scan has read in_proj's x_proj sums: zero them for the next layer.
    if (xacc && blockIdx.x == 0 && blockIdx.y == 0)
        for (int k = threadIdx.x; k <= J; k += blockDim.x) xacc[k] = 0;
    float h0 = 0.f;
    if (lane < SB && s0 + lane < B && r0 < D) h0 = h[(int64_t)(s0 + lane) * D + r0];
    int ldx, s0_, nb_;
    const float *xs = rows_tile<SB>(g, E, B, &ldx, &s0_, &nb_);
    __syncthreads();
    STEP_M0();
    tile_rows<W, SB>(
        w, D, E, vec, xs, ldx, nb_,
        [&](int64_t r, int s, float v) {
            STEP_M1();
            float *p = h + (int64_t)(s0 + s) * D + r;
            *p = (r == r0 ? h0 : *p) + v;
        },
        pre);
    STEP_T2(4);
}

// 3. The scan step, a warp per channel (b, e): the lanes split the dt rank
// terms and the states. Before pdl_wait each lane loads its W_dt terms (the
// first 64), its A and the channel's dt bias and Dskip, and asks L2 for the
// channel's states; after it, every load goes out before the first sum.
template <typename W>
__global__ void __launch_bounds__(kStepThreads)
    k_step_scan(float *g, float *ssm, const float *xz, const float *xdbl, int64_t ldbc,
                const float *u, const W *wdt, const float *dtb, const float *A,
                const float *dskip, int64_t E, int N, int R, int B, const long long *xacc) {
    STEP_T0();
    int64_t idx = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    int lane = threadIdx.x & 31;
    pdl_start();
    if (idx >= (int64_t)B * E) return;  // the whole warp leaves together
    int b = (int)(idx / E);
    int64_t e = idx - (int64_t)b * E;
    const W *wr = wdt + e * R;
    const float w0 = lane < R ? Wv<W>::one(wr + lane) : 0.f,
                w1 = lane + 32 < R ? Wv<W>::one(wr + lane + 32) : 0.f;
    float *s = ssm + idx * N;
    const float *a = A + e * N;
    const float av = lane < N ? a[lane] : 0.f, bias = dtb ? dtb[e] : 0.f, dsk = dskip[e];
    if (lane == 0) {
        if (R > 64) prefetch_range(wr + 64, (int64_t)(R - 64) * (int64_t)sizeof(W));
        prefetch_range(s, (int64_t)N * (int64_t)sizeof(float));
    }
    pdl_wait();
    STEP_T1();
    const float *xr = xdbl + (int64_t)b * ldbc;
    // xdbl from in_proj's fixed-point sums (xacc set, one stream) or as
    // x_proj wrote it.
    // (The flag enters as an addend, so that no load waits for it.)
    const float bad = xacc && xacc[ldbc] != 0 ? __int_as_float(0x7fffffff) : 0.f;
    auto x = [&](int64_t j) {
        if (!xacc) return xr[j];
        return xacc_get(xacc, j, bad);
    };
    float uu = u[idx], zz = xz[(int64_t)b * 2 * E + E + e];
    float raw = (lane < R ? w0 * x(lane) : 0.f) + (lane + 32 < R ? w1 * x(lane + 32) : 0.f);
    for (int r = lane + 64; r < R; r += 32) raw += Wv<W>::one(wr + r) * x(r);
    // States n = lane + 32j; most models have N <= 32 (one per lane).
    float sv = 0.f, bv = 0.f, cv = 0.f;
    if (lane < N) sv = s[lane], bv = x(R + lane), cv = x(R + N + lane);
    raw = warp_sum(raw);
    STEP_M0();
    float delta = softplus_(raw + bias);
    float du = delta * uu;
    float yp = 0.f;
    if (lane < N) {
        float v = expf(delta * av) * sv + du * bv;
        s[lane] = v;
        yp = cv * v;
    }
    for (int n = lane + 32; n < N; n += 32) {
        float v = expf(delta * a[n]) * s[n] + du * x(R + n);
        s[n] = v;
        yp += x(R + N + n) * v;
    }
    yp = warp_sum(yp);
    STEP_M1();
    if (lane != 0) return;
    float y = yp + dsk * uu;
    float out = y * silu_(zz);
    g[idx] = out;
    STEP_T2(3);
}

// The scan step of the cuBLAS path, a thread per channel: g holds the
// dt_proj product r·W_dtᵀ (B,E) on entry and the gated output on exit.
// The states of a channel move as 16-byte vectors when N allows (N4).
template <typename W, bool N4>
__global__ void __launch_bounds__(kThreads)
    k_step_scan_rows(float *__restrict__ g, W *__restrict__ gw, float *__restrict__ ssm,
                     const float *__restrict__ xz, const float *__restrict__ xdbl, int64_t ldbc,
                     const float *__restrict__ u, const float *__restrict__ dtb,
                     const float *__restrict__ A, const float *__restrict__ dskip, int64_t E,
                     int N, int R, int64_t B) {
    GRID_LOOP(i, B * E) {
        int64_t b = i / E, e = i - b * E;
        const float *bt = xdbl + b * ldbc + R, *ct = bt + N;
        float delta = softplus_(g[i] + (dtb ? dtb[e] : 0.f));
        float uu = u[i], du = delta * uu;
        float *s = ssm + i * N;
        const float *a = A + e * N;
        float y = 0.f;
        if (N4) {
            for (int n = 0; n < N; n += 4) {
                float4 sv = *(const float4 *)(s + n), av = __ldg((const float4 *)(a + n));
                sv.x = expf(delta * av.x) * sv.x + du * bt[n];
                sv.y = expf(delta * av.y) * sv.y + du * bt[n + 1];
                sv.z = expf(delta * av.z) * sv.z + du * bt[n + 2];
                sv.w = expf(delta * av.w) * sv.w + du * bt[n + 3];
                *(float4 *)(s + n) = sv;
                y += ct[n] * sv.x + ct[n + 1] * sv.y + ct[n + 2] * sv.z + ct[n + 3] * sv.w;
            }
        } else {
            for (int n = 0; n < N; n++) {
                float v = expf(delta * a[n]) * s[n] + du * bt[n];
                s[n] = v;
                y += ct[n] * v;
            }
        }
        float out = (y + dskip[e] * uu) * silu_(xz[b * 2 * E + E + e]);
        g[i] = out;
        put(gw + i, out);
    }
}

// The scan step of the many-stream paths for N = 4·P (P a power of two up
// to 32): P lanes a channel, each holding four consecutive states, the
// lanes splitting the channel's dt_proj product r·W_dtᵀ too (so that
// product needs no GEMM launch of its own); a block of CH channels takes SB
// streams. The block stages in shared memory its channels' rows of W_dt and
// its streams' rows of xdbl (the rank terms r, then Bt and Ct), and each
// lane keeps its share of A, the dt bias and Dskip in registers, so W_dt
// and xdbl are read from L2 once a block instead of once a channel and
// stream. All loads are issued before the block's one barrier, and the
// kernel fits four blocks an SM, so that the states of a whole grid's
// streams are asked for at once. Lane l takes the rank terms in groups of
// four, groups l, l+P, l+2P... (the rank padded with zeros to Rp, a
// multiple of 4·P); W_dt is staged group-major ([G][CH][P][4]), so the
// lanes of a warp read neighbouring words, and the P lanes of a channel
// neighbouring 16-byte words of xdbl's row. Chained (launched with
// programmatic dependent launch, in the tensor-core path), the block asks
// L2 for its states and stages W_dt before it waits for the kernels before
// it. g (float32) may be NULL.
//
// The work that is one a channel and stream (the softplus, the gate, the
// output) is not repeated on the channel's P lanes: each lane reads a W_dt
// group once for all SB streams, and the lanes' partial sums, for every
// stream at once, are summed so that each lane ends with whole sums for
// SQ = SB/Q of the streams (Q = min(SB, P); scatter_sum). That lane takes
// the softplus of its streams and hands Δ and Δ·u to the others, and after
// the state update finishes its streams' outputs.
static const int kScanMaxSB = 4;  // 8 would spill registers

// scan_quad_smem is its shared memory: W_dt's rows for the block's
// channels, then the SB staged rows of xdbl.
static size_t scan_quad_smem(int64_t R, int64_t P, int threads, int sb, int wtype) {
    const int64_t Rp = (R + 4 * P - 1) / (4 * P) * (4 * P), ch = threads / P;
    const size_t wbytes = (size_t)(ch * Rp) * (wtype == 1 ? 2 : 4);
    return (wbytes + 15) / 16 * 16 + (size_t)sb * (Rp + 8 * P) * sizeof(float);
}

// scatter_sum sums v[s] (one value a stream) over the P lanes l of a
// channel (aligned groups of P lanes of the warp). Afterwards v[i], i <
// SB/Q, is the sum for stream (l % Q)·SB/Q + i, Q = min(SB, P), the same on
// every lane that holds it. Each of the log2(Q) halving rounds swaps half
// of a lane's values with its partner (SB - SB/Q shuffles in all), and the
// rounds from Q to P add up SB/Q values each: fewer shuffles than summing
// every value over all P lanes (SB·log2(P)).
template <int P, int SB>
__device__ __forceinline__ void scatter_sum(float (&v)[SB], int l) {
    constexpr int Q = SB < P ? SB : P;
#pragma unroll
    for (int o = Q / 2; o >= 1; o /= 2) {
        const bool up = l & o;
        const int h = SB * o / Q;  // values kept: the upper half where up
#pragma unroll
        for (int i = 0; i < h; i++) {
            const float send = up ? v[i] : v[i + h], keep = up ? v[i + h] : v[i];
            v[i] = keep + __shfl_xor_sync(0xffffffffu, send, o);
        }
    }
#pragma unroll
    for (int o = Q; o < P; o <<= 1) {
#pragma unroll
        for (int i = 0; i < SB / Q; i++) v[i] += __shfl_xor_sync(0xffffffffu, v[i], o);
    }
}

template <typename W, int P, int SB>
__global__ void __launch_bounds__(kStepThreads, 4)
    k_step_scan_quad(float *__restrict__ g, W *__restrict__ gw, float *__restrict__ ssm,
                     const float *__restrict__ xz, const float *__restrict__ xdbl, int64_t ldbc,
                     const float *__restrict__ u, const W *__restrict__ wdt,
                     const float *__restrict__ dtb, const float *__restrict__ A,
                     const float *__restrict__ dskip, int64_t E, int R, int64_t B, int chained,
                     const long long *__restrict__ xacc) {
    constexpr int N = 4 * P, Q = SB < P ? SB : P, SQ = SB / Q;
    extern __shared__ float4 sm_[];
    STEP_T0();
    const int G = (R + 4 * P - 1) / (4 * P), Rp = 4 * P * G, J = Rp + 2 * N;
    const int CH = blockDim.x / P, c = threadIdx.x / P, l = threadIdx.x % P;
    W *ws = (W *)sm_;                                                        // [G][CH][P][4]
    float *xs = (float *)sm_ + ((size_t)CH * Rp * sizeof(W) + 15) / 16 * 4;  // [SB][Rp + 2N]
    const int64_t e0 = (int64_t)blockIdx.x * CH, ec = e0 + c;
    const bool eok = ec < E;
    const int64_t e = eok ? ec : E - 1;  // lanes past E compute, store nothing
    const int64_t b0 = (int64_t)blockIdx.y * SB;
    const int nb = (int)min((int64_t)SB, B - b0);
    const int own = (l % Q) * SQ;  // this lane finishes streams own.. own+SQ-1
    pdl_start();
    if (chained && eok && (e * N + 4 * l) % 32 == 0)
        for (int s = 0; s < nb; s++) prefetch_l2(ssm + ((b0 + s) * E + e) * N + 4 * l);
    // W_dt: four terms d = (k·CH + cc)·P + lr at a time, terms
    // 4(k·P + lr).. of channel cc (CH is a power of two).
    const int chs = __ffs(CH) - 1;
    const bool v4 = R % 4 == 0 && (uintptr_t)wdt % (4 * sizeof(W)) == 0;
    for (int d = threadIdx.x; d < G * CH * P; d += blockDim.x) {
        const int lr = d % P, t = d / P, cc = t & (CH - 1), k = t >> chs;
        const int r = 4 * (k * P + lr);
        const W *src = wdt + (e0 + cc) * R + r;
        const bool ok = e0 + cc < E;
        if (v4 && ok && r < R) {
            Wq<W>::copy(ws + 4 * d, src);
        } else {
#pragma unroll
            for (int q = 0; q < 4; q++) ws[4 * d + q] = ok && r + q < R ? src[q] : W(0.f);
        }
    }
    // A·log2(e): exp(Δ·A) = ex2_(Δ·A2), as in the training scan.
    float4 a2 = __ldg((const float4 *)(A + e * N + 4 * l));
    a2.x *= 1.4426950408889634f, a2.y *= 1.4426950408889634f;
    a2.z *= 1.4426950408889634f, a2.w *= 1.4426950408889634f;
    const float bias = dtb ? dtb[e] : 0.f, dsk = dskip[e];
    pdl_wait();
    STEP_T1();
    // xdbl as x_proj wrote it, or from k_step_conv_x's fixed-point sums
    // (xacc set: rows of ldbc + 1, the last a flag entering as an addend).
#pragma unroll
    for (int s = 0; s < SB; s++) {
        if (s >= nb) break;
        const long long *xa = xacc ? xacc + (b0 + s) * (ldbc + 1) : nullptr;
        const float bad = xa && xa[ldbc] != 0 ? __int_as_float(0x7fffffff) : 0.f;
        for (int j = threadIdx.x; j < J; j += blockDim.x) {
            const int src = j < Rp ? j : j - Rp + R;
            float v = 0.f;
            if (j < R || j >= Rp)
                v = xa ? xacc_get(xa, src, bad) : xdbl[(b0 + s) * ldbc + src];
            xs[s * J + j] = v;
        }
    }
    float4 sv[SB];
#pragma unroll
    for (int s = 0; s < SB; s++)
        sv[s] = s < nb ? *(const float4 *)(ssm + ((b0 + s) * E + e) * N + 4 * l)
                       : make_float4(0.f, 0.f, 0.f, 0.f);
    float uo[SQ], zo[SQ];
#pragma unroll
    for (int i = 0; i < SQ; i++) {
        const bool ok = own + i < nb;
        const int64_t b = b0 + (ok ? own + i : 0);
        uo[i] = ok ? u[b * E + e] : 0.f;
        zo[i] = ok ? xz[b * 2 * E + E + e] : 0.f;
    }
    __syncthreads();
    // Δ's pre-activation: this lane's rank groups for every stream.
    float acc[SB];
#pragma unroll
    for (int s = 0; s < SB; s++) acc[s] = 0.f;
    for (int k = 0; k < G; k++) {
        float wv[4];
        Wq<W>::load(ws + ((k * CH + c) * P + l) * 4, wv);
#pragma unroll
        for (int s = 0; s < SB; s++) {
            const float4 xv = *(const float4 *)(xs + s * J + 4 * (k * P + l));
            acc[s] += wv[0] * xv.x + wv[1] * xv.y + wv[2] * xv.z + wv[3] * xv.w;
        }
    }
    // Streams past B (a last block of fewer than SB) are summed, updated
    // and shuffled like the others, from whatever their rows of the tile
    // hold; each stream's values stay apart, and none of theirs is stored.
    scatter_sum<P, SB>(acc, l);
    float dl[SQ], dul[SQ];
#pragma unroll
    for (int i = 0; i < SQ; i++) dl[i] = softplus_(acc[i] + bias), dul[i] = dl[i] * uo[i];
    float y[SB];
#pragma unroll
    for (int s = 0; s < SB; s++) {
        // Stream s is finished by lanes l with l % Q = s / SQ.
        const float delta = __shfl_sync(0xffffffffu, dl[s % SQ], s / SQ, P);
        const float du = __shfl_sync(0xffffffffu, dul[s % SQ], s / SQ, P);
        const float *xr = xs + s * J;
        const float4 bt = *(const float4 *)(xr + Rp + 4 * l);
        const float4 ct = *(const float4 *)(xr + Rp + N + 4 * l);
        float4 v = sv[s];
        v.x = ex2_(delta * a2.x) * v.x + du * bt.x;
        v.y = ex2_(delta * a2.y) * v.y + du * bt.y;
        v.z = ex2_(delta * a2.z) * v.z + du * bt.z;
        v.w = ex2_(delta * a2.w) * v.w + du * bt.w;
        if (eok && s < nb) *(float4 *)(ssm + ((b0 + s) * E + e) * N + 4 * l) = v;
        y[s] = ct.x * v.x + ct.y * v.y + ct.z * v.z + ct.w * v.w;
    }
    scatter_sum<P, SB>(y, l);
    if (eok && l < Q) {
#pragma unroll
        for (int i = 0; i < SQ; i++) {
            if (own + i >= nb) break;
            const int64_t at = (b0 + own + i) * E + e;
            const float out = (y[i] + dsk * uo[i]) * silu_(zo[i]);
            if (g) g[at] = out;
            put(gw + at, out);
        }
    }
    STEP_T2(7);
}

// The cuBLAS path's operand builders: one block per stream. The norm also
// starts the tensor-core path's chain.
// The norm's weight and bias are read into registers before the kernel
// waits (up to kNormPre values a thread), so they are not fetched after
// its statistics; the row itself goes to registers too, and the whole
// block takes its statistics (block_sum). Longer rows go through shared
// memory.
static const int kNormPre = 8;

template <typename W>
__global__ void k_step_norm_op(W *xw, const float *h, const float *nw, const float *nb,
                               float eps, int rms, int64_t D, long long *xacc, int J1) {
    STEP_T0();
    const int b = blockIdx.x;
    pdl_start();  // both no-ops unless launched chained
    // The stream's row of x_proj's fixed-point sums (k_step_conv_x), when
    // set: the scan that read it last has finished.
    if (xacc)
        for (int j = threadIdx.x; j < J1; j += blockDim.x) xacc[(int64_t)b * J1 + j] = 0;
    const bool pre = D <= (int64_t)kNormPre * blockDim.x;
    float wv[kNormPre], bv[kNormPre];
#pragma unroll
    for (int k = 0; k < kNormPre; k++) {
        const int64_t c = threadIdx.x + (int64_t)k * blockDim.x;
        wv[k] = pre && c < D ? nw[c] : 0.f;
        bv[k] = pre && c < D && nb ? nb[c] : 0.f;
    }
    pdl_wait();
    STEP_T1();
    if (!pre) {
        extern __shared__ float4 sm_[];
        float *xs = (float *)sm_;
        const int ldx = (int)((D + 3) & ~3);
        load_tile<1>(xs, ldx, h + (int64_t)b * D, D, 1);
        __syncthreads();
        norm_tile<1>(xs, ldx, 1, nw, nb, D, eps, rms);
        __syncthreads();
        for (int64_t c = threadIdx.x; c < D; c += blockDim.x) put(xw + (int64_t)b * D + c, xs[c]);
        STEP_T2(5);
        return;
    }
    float xv[kNormPre], sum = 0.f;
#pragma unroll
    for (int k = 0; k < kNormPre; k++) {
        const int64_t c = threadIdx.x + (int64_t)k * blockDim.x;
        xv[k] = c < D ? h[(int64_t)b * D + c] : 0.f;
        sum += xv[k];
    }
    const float mu = rms ? 0.f : block_sum(sum) / (float)D;
    float ss = 0.f;
#pragma unroll
    for (int k = 0; k < kNormPre; k++) {
        const int64_t c = threadIdx.x + (int64_t)k * blockDim.x;
        const float d = xv[k] - mu;
        if (c < D) ss += d * d;
    }
    ss = block_sum(ss);
    const float rs = (float)(1.0 / sqrt((double)ss / (double)D + (double)eps));
#pragma unroll
    for (int k = 0; k < kNormPre; k++) {
        const int64_t c = threadIdx.x + (int64_t)k * blockDim.x;
        if (c < D)
            put(xw + (int64_t)b * D + c,
                rms ? xv[k] * rs * wv[k] : (xv[k] - mu) * rs * wv[k] + bv[k]);
    }
    STEP_T2(5);
}

// u = silu(conv(state, xi)) from the in_proj output xz, the state shifted;
// u also to xw in the weight type. Blocks run along the channels (x) and
// the streams (y), so no thread divides a flat index.
template <typename W>
__global__ void k_step_conv_op(W *xw, float *u, const float *xz, float *conv, const float *cw,
                               const float *cb, int64_t E, int K, int64_t B) {
    const int64_t e = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= E) return;
    for (int64_t b = blockIdx.y; b < B; b += gridDim.y) {
        const float v = conv_step(conv + b * (K - 1) * E, xz[b * 2 * E + e], cw, cb, e, E, K);
        u[b * E + e] = v;
        put(xw + b * E + e, v);
    }
}

// ---------------------------------------------------------------------------
// The tensor-core path: 2 to kStepMmaMaxB streams on bf16 weights.
//
// At a few streams the step's products are small matrix products, out
// (B, rows) = X (B, K)·Wᵀ, each reading W once. cuBLAS's kernels cannot
// start early and wait inside themselves, so a step built on them pays
// every launch and every weight fetch in turn. Here they run on mma.sync,
// chained like the one-stream kernels (each asks L2 for its weights while
// the kernels before it run), with their epilogues fused: the conv after
// in_proj, the residual add after out_proj. Per block: norm → in_proj +
// conv → x_proj → dt + scan + gate → out_proj + residual.
//
// k_step_mm: a block owns 16·WM rows of W and a range of K; its 8 warps are
// WM along the rows by WK = 8/WM along that range, each computing 16 rows
// for a tile of up to 8·NT streams. A cluster of KS blocks splits K between
// them. The block stages its X columns in shared memory (cp.async, up to
// kMmPiece chunks of 32 columns at a time), and each warp reads W straight
// from global memory in 16-byte loads: for a chunk, lane (g, t) loads
// columns 8t..8t+7 of rows g and g+8 of W, and of streams g, g+8, … of the
// staged X. A dot product may visit its columns in any order, so those
// loads are mma fragments as they stand: columns 8t..8t+3 feed one
// m16n8k16 step as its k pairs (2t, 2t+1) and (2t+8, 2t+9), columns
// 8t+4..8t+7 the next. Each warp then stores its partial sums straight into
// the shared memory of the cluster block that finishes those outputs; that
// block adds the KS·WK partials in a fixed order (the result does not
// depend on timing) and hands each sum to the epilogue.
//
// (A first version read X from global memory in every warp and pulled the
// partials with remote loads: L2 traffic and remote-load latency made it
// slower than cuBLAS at every B.)

static const int kMmWarps = 8;
static const int kMmMaxKS = 8;  // the largest portable cluster

__device__ __forceinline__ void mma_bf16(float *c, uint32_t a0, uint32_t a1, uint32_t a2,
                                         uint32_t a3, uint32_t b0, uint32_t b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, "
        "{%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

__device__ __forceinline__ uint32_t cluster_rank() {
    uint32_t r;
    asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(r));
    return r;
}

// cluster_sync: every thread of the cluster's blocks arrives (releasing its
// writes) and waits (acquiring theirs).
__device__ __forceinline__ void cluster_sync() {
    asm volatile("barrier.cluster.arrive.aligned;\n\tbarrier.cluster.wait.aligned;" ::: "memory");
}

// cluster_addr maps a shared-memory address of this block to the same
// address in block rank of the cluster.
__device__ __forceinline__ uint32_t cluster_addr(const void *p, uint32_t rank) {
    uint32_t a = (uint32_t)__cvta_generic_to_shared(p), r;
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(r) : "r"(a), "r"(rank));
    return r;
}


// st_cluster writes v to a shared-memory address of the cluster.
__device__ __forceinline__ void st_cluster(uint32_t addr, float v) {
    asm volatile("st.shared::cluster.f32 [%0], %1;" ::"r"(addr), "f"(v) : "memory");
}

// Columns of X a block stages in shared memory at once (in chunks of 32),
// and the bytes of a staged stream row: padded so that a warp's fragment
// loads (rows g, 16-byte columns t) fall in distinct banks.
static const int kMmPiece = 8;
static const int kMmRowBytes = kMmPiece * 32 * 2 + 64;

template <int NT, class Epi>
__global__ void __launch_bounds__(kMmWarps * 32, 2)
    k_step_mm(Epi epi, const __nv_bfloat16 *__restrict__ w, int64_t rows, int64_t K,
              const __nv_bfloat16 *__restrict__ x, int B, int WM, int KS) {
    extern __shared__ float4 sm_[];
    constexpr int NB = 8 * NT;
    char *xs = (char *)sm_;                             // [NB][kMmRowBytes]
    float *inbox = (float *)(xs + NB * kMmRowBytes);    // [KS·WK][per]
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, WK = kMmWarps / WM;
    const int wm = warp % WM, wk = warp / WM, g = lane >> 2, t = lane & 3;
    const int rank = (int)cluster_rank();
    const int BM = 16 * WM;
    const int64_t tile = blockIdx.x / KS, r0 = tile * BM + 16 * wm;
    const int s0 = blockIdx.y * NB;
    const int tot = NB * BM, per = (tot + KS - 1) / KS;
    // This block's chunks of 32 columns: [cc0, cc1).
    const int64_t chunks = (K + 31) >> 5;
    const int64_t cc0 = chunks * rank / KS, cc1 = chunks * (rank + 1) / KS;
    // Phase one of the cluster barrier: every block of the cluster has
    // started before any writes to another's shared memory (below). It
    // orders no memory (relaxed: no fence).
    asm volatile("barrier.cluster.arrive.relaxed.aligned;" ::: "memory");
    pdl_start();
    if (wk == 0 && lane < 16 && r0 + lane < rows && cc1 > cc0)
        prefetch_range(w + (r0 + lane) * K + 32 * cc0, (min(32 * cc1, K) - 32 * cc0) * 2);
    pdl_wait();

    float acc[NT][4];
#pragma unroll
    for (int j = 0; j < NT; j++) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.f;
    const bool va = r0 + g < rows, vb = r0 + g + 8 < rows;
    const __nv_bfloat16 *wa = w + (va ? r0 + g : 0) * K, *wb = w + (vb ? r0 + g + 8 : 0) * K;
    const uint4 zero = make_uint4(0, 0, 0, 0);
    for (int64_t p0 = cc0; p0 < cc1; p0 += kMmPiece) {
        const int pc = (int)min((int64_t)kMmPiece, cc1 - p0);
        __syncthreads();  // the piece before is consumed
        for (int i = threadIdx.x; i < NB * pc * 4; i += blockDim.x) {
            const int s = i / (pc * 4), q = i - s * (pc * 4);
            const int64_t col = 32 * p0 + 8 * q;
            const bool ok = s0 + s < B && col < K;
            cp_async16(xs + s * kMmRowBytes + 16 * q, ok ? x + (int64_t)(s0 + s) * K + col : x,
                       ok ? 16 : 0);
        }
        cp_async_wait();
        __syncthreads();
#pragma unroll 4
        for (int c = wk; c < pc; c += WK) {
            int64_t col = 32 * (p0 + c) + 8 * t;
            const bool vc = col < K;
            col = vc ? col : 0;  // addresses stay in bounds
            const uint4 a0 = vc && va ? ld_stream(wa + col) : zero;
            const uint4 a1 = vc && vb ? ld_stream(wb + col) : zero;
            const char *xc = xs + g * kMmRowBytes + 64 * c + 16 * t;
#pragma unroll
            for (int j = 0; j < NT; j++) {
                const uint4 xv = *(const uint4 *)(xc + 8 * j * kMmRowBytes);
                mma_bf16(acc[j], a0.x, a1.x, a0.y, a1.y, xv.x, xv.y);
                mma_bf16(acc[j], a0.z, a1.z, a0.w, a1.w, xv.z, xv.w);
            }
        }
    }
    // acc[j] holds rows g and g+8 for streams 8j+2t and 8j+2t+1: output
    // o = stream·BM + row of the tile, which block o / per of the cluster
    // finishes; it goes to that block's inbox, slot (rank·WK + wk, o % per).
    asm volatile("barrier.cluster.wait.aligned;" ::: "memory");
    float *mine = inbox + (rank * WK + wk) * per;
    const float rper = 1.f / (float)per;
#pragma unroll
    for (int j = 0; j < NT; j++) {
#pragma unroll
        for (int h = 0; h < 4; h++) {
            const int o = (8 * j + 2 * t + (h & 1)) * BM + 16 * wm + g + 8 * (h >> 1);
            // q = o / per, by a float product (o < 2^24) set right.
            int q = (int)((float)o * rper);
            q -= q * per > o;
            q += (q + 1) * per <= o;
            st_cluster(cluster_addr(mine + (o - q * per), q), acc[j][h]);
        }
    }
    cluster_sync();
    const int nsrc = KS * WK, o0 = rank * per, o1 = min(tot, o0 + per);
    const int bms = __ffs(BM) - 1;  // BM is a power of two
#pragma unroll 4
    for (int o = o0 + (int)threadIdx.x; o < o1; o += blockDim.x) {
        float v = 0.f;
#pragma unroll 8
        for (int k = 0; k < nsrc; k++) v += inbox[k * per + (o - o0)];
        const int s = o >> bms;
        const int64_t row = tile * BM + (o - s * BM);
        if (row < rows && s0 + s < B) epi(row, s0 + s, v);
    }
}

// The epilogues. in_proj: for rows e < E the conv of channel e follows, u
// to float32 and to a bf16 copy (x_proj's operand); rows from E on are z.
struct EpiIn {
    float *xz, *u, *conv;
    __nv_bfloat16 *ub;
    const float *cw, *cb;
    int64_t E;
    int K;
    __device__ __forceinline__ void operator()(int64_t r, int b, float v) const {
        if (r < E) {
            float uu = conv_step(conv + (int64_t)b * (K - 1) * E, v, cw, cb, r, E, K);
            u[(int64_t)b * E + r] = uu;
            ub[(int64_t)b * E + r] = __float2bfloat16_rn(uu);
        } else {
            xz[(int64_t)b * 2 * E + r] = v;
        }
    }
};

// out (B, ld) = the product (x_proj, the head).
struct EpiStore {
    float *out;
    int64_t ld;
    __device__ __forceinline__ void operator()(int64_t r, int b, float v) const {
        out[(int64_t)b * ld + r] = v;
    }
};

// h (B, ld) += the product (out_proj).
struct EpiAdd {
    float *h;
    int64_t ld;
    __device__ __forceinline__ void operator()(int64_t r, int b, float v) const {
        h[(int64_t)b * ld + r] += v;
    }
};

// The many-stream cuBLAS path's conv with x_proj inside it (bf16 weights):
// x_proj's sums, xdbl = u·W_xᵀ, are made where u is, and added into
// g_xacc_many in fixed point as in the one-stream step (kXRounds; a row of
// J + 1 values a stream, the last its range flag), so that the step needs
// no x_proj product and the scan, launched chained, asks for its states
// while this kernel runs. A block takes kCxChannels channels of kCxStreams
// streams. Before pdl_wait it stages its slice of W_x (J rows, padded with
// zeros to 16·MT) by cp.async, or its warps load their fragments of it
// (IT below), and it loads its channels' conv taps and states
// (the states are this layer's, written a step ago); after it, the conv of
// each (stream, channel), u to global memory as float32 and to shared
// memory as bf16. Then the sums: the 32-channel chunks by the 16-row tiles
// of W_x are shared among the warps, each an m16n8k16 product pair with
// the eight streams as columns (loaded as k_step_mm loads, channels 8t..8t+7
// feeding two steps), whose partials land in shared memory and are added
// over the chunks in a fixed order before the integer adds.
static const int kCxChannels = 128, kCxStreams = 8, kCxPer = kCxChannels * kCxStreams / 256;
static const int kCxChunks = kCxChannels / 32;
static const int kCxRow = kCxChannels * 2 + 16;  // bytes of a staged row: distinct banks
// With IT > 0 (each warp has at most IT tile-chunk pairs), a warp loads its
// W_x fragments into registers before pdl_wait instead of the block
// staging the slice: fewer steps after the wait, at IT·8 registers (with
// IT 5, 972M's pairs, this measured slower than staging).
static const int kCxRegIt = 3;

static size_t cx_smem(int J) {
    const size_t rows = (size_t)(J + 15) / 16 * 16;
    return (rows + kCxStreams) * kCxRow + (size_t)kCxChunks * rows * kCxStreams * sizeof(float);
}
// cx_reg says whether a warp's W_x fragments fit kCxRegIt pairs.
static bool cx_reg(int J) { return (J + 15) / 16 * kCxChunks <= 8 * kCxRegIt; }

template <int IT>
__global__ void __launch_bounds__(256)
    k_step_conv_x(float *u, const float *xz, float *conv, const float *cw, const float *cb,
                  const __nv_bfloat16 *wx, long long *xacc, int64_t E, int K, int64_t B, int J) {
    extern __shared__ float4 sm_[];
    STEP_T0();
    const int MT = (J + 15) / 16, lane = threadIdx.x & 31, wid = threadIdx.x >> 5;
    char *sw = (char *)sm_, *su = sw + (size_t)MT * 16 * kCxRow;
    float *part = (float *)(su + kCxStreams * kCxRow);  // [chunk][16·MT][stream]
    const int64_t e0 = (int64_t)blockIdx.x * kCxChannels, b0 = (int64_t)blockIdx.y * kCxStreams;
    const int nb = (int)min((int64_t)kCxStreams, B - b0);
    pdl_start();
    const int g = lane >> 2, t = lane & 3;
    constexpr int kIt = IT > 0 ? IT : 1;
    uint4 ar[kIt][2];
    if (IT > 0) {
#pragma unroll
        for (int k = 0; k < kIt; k++) {
            const int it = wid + 8 * k;
            ar[k][0] = ar[k][1] = make_uint4(0, 0, 0, 0);
            if (it < MT * kCxChunks) {
                const int mt = it / kCxChunks, ch = it % kCxChunks;
                const int64_t e = e0 + ch * 32 + t * 8;
                const int r0 = mt * 16 + g, r1 = r0 + 8;
                if (e < E && r0 < J) ar[k][0] = ld_stream(wx + r0 * E + e);
                if (e < E && r1 < J) ar[k][1] = ld_stream(wx + r1 * E + e);
            }
        }
    }
    // W_x's slice: 16 bytes (eight channels) a copy; zeros past J and E.
    for (int i = threadIdx.x; IT == 0 && i < MT * 16 * kCxChannels / 8; i += blockDim.x) {
        const int r = i / (kCxChannels / 8), q = i % (kCxChannels / 8);
        const int64_t e = e0 + 8 * q;
        const bool ok = r < J && e < E;
        cp_async16(sw + r * kCxRow + 16 * q, ok ? wx + r * E + e : wx, ok ? 16 : 0);
    }
    cp_async_commit();
    const int c = threadIdx.x % kCxChannels, s1 = threadIdx.x / kCxChannels;
    const int64_t e = e0 + c;
    const bool eok = e < E;
    float in[kCxPer][kConvIn];
#pragma unroll
    for (int i = 0; i < kCxPer; i++) {
        const int64_t b = b0 + s1 + i * (256 / kCxChannels);
        if (eok && b < B) conv_in(in[i], conv + b * (K - 1) * E, cw, cb, e, E, K);
    }
    pdl_wait();
    STEP_T1();
#pragma unroll
    for (int i = 0; i < kCxPer; i++) {
        const int s = s1 + i * (256 / kCxChannels);
        const int64_t b = b0 + s;
        float v = 0.f;
        if (eok && b < B) {
            v = conv_out(in[i], conv + b * (K - 1) * E, xz[b * 2 * E + e], e, E, K);
            u[b * E + e] = v;
        }
        ((__nv_bfloat16 *)(su + s * kCxRow))[c] = __float2bfloat16_rn(v);
    }
    cp_async_wait();
    __syncthreads();
#pragma unroll
    for (int k = 0; IT == 0 || k < IT; k++) {
        const int it = wid + 8 * k;
        if (it >= MT * kCxChunks) break;
        const int mt = it / kCxChunks, ch = it % kCxChunks, col = ch * 64 + t * 16;
        const uint4 a0 = IT > 0 ? ar[k % kIt][0]
                                : *(const uint4 *)(sw + (mt * 16 + g) * kCxRow + col),
                    a1 = IT > 0 ? ar[k % kIt][1]
                                : *(const uint4 *)(sw + (mt * 16 + g + 8) * kCxRow + col),
                    bv = *(const uint4 *)(su + g * kCxRow + col);
        float acc[4] = {0.f, 0.f, 0.f, 0.f};
        mma_bf16(acc, a0.x, a1.x, a0.y, a1.y, bv.x, bv.y);
        mma_bf16(acc, a0.z, a1.z, a0.w, a1.w, bv.z, bv.w);
        float *pp = part + ((size_t)ch * MT * 16 + mt * 16 + g) * kCxStreams + 2 * t;
        pp[0] = acc[0], pp[1] = acc[1];
        pp[8 * kCxStreams] = acc[2], pp[8 * kCxStreams + 1] = acc[3];
    }
    __syncthreads();
    for (int i = threadIdx.x; i < J * kCxStreams; i += blockDim.x) {
        const int r = i / kCxStreams, s = i % kCxStreams;
        if (s >= nb) continue;
        float p = 0.f;
#pragma unroll
        for (int ch = 0; ch < kCxChunks; ch++) p += part[((size_t)ch * MT * 16 + r) * kCxStreams + s];
        xacc_add(xacc + (b0 + s) * (J + 1), r, J, p);
    }
    STEP_T2(6);
}

// ---------------------------------------------------------------------------
// Launchers.

// step_geometry picks the stream tile SB (1, 2, 4 or 8: the smallest that
// holds B, at most kStepGemvMaxB, or what the shared memory allows) for
// vectors of cols values and the number of blocks along the rows.
static int step_geometry(int64_t cols, int64_t rows, int B, int *SB, dim3 *grid, size_t *smem) {
    size_t row = (size_t)((cols + 3) & ~3) * sizeof(float);
    int sb = 1;
    while (sb < 8 && sb < kStepGemvMaxB && sb < B && (size_t)(2 * sb) * row <= kStepTileBytes)
        sb *= 2;
    if ((size_t)sb * row > kStepTileBytes) {
        set_err("step: a vector of %lld values does not fit shared memory", (long long)cols);
        return 1;
    }
    int tiles = (B + sb - 1) / sb;
    int64_t want = (4 * (int64_t)g_sms + tiles - 1) / tiles;
    int64_t most = (rows + kStepThreads / 32 - 1) / (kStepThreads / 32);
    int64_t bx = want < most ? want : most;
    if (bx < 1) bx = 1;
    *SB = sb;
    *grid = dim3((unsigned)bx, (unsigned)tiles);
    *smem = (size_t)sb * row;
    return 0;
}

// launch_ex launches kernel on the library's stream with n launch
// attributes.
template <typename... KArgs, typename... Args>
static int launch_ex(const cudaLaunchAttribute *attrs, int n, void (*kernel)(KArgs...),
                     dim3 grid, dim3 block, size_t smem, Args... args) {
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = grid;
    cfg.blockDim = block;
    cfg.dynamicSmemBytes = smem;
    cfg.stream = g_stream;
    cfg.attrs = (cudaLaunchAttribute *)attrs;
    cfg.numAttrs = (unsigned)n;
    CK(cudaLaunchKernelEx(&cfg, kernel, ((KArgs)args)...));
    return 0;
}

// pdl_attr is the launch attribute of programmatic stream serialization:
// a kernel launched with it may start (and prefetch its weights) while the
// kernel before it runs; it calls pdl_wait before it reads anything that
// kernel writes.
static cudaLaunchAttribute pdl_attr() {
    cudaLaunchAttribute attr = {};
    attr.id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr.val.programmaticStreamSerializationAllowed = 1;
    return attr;
}

// launch_pdl launches kernel (kStepThreads threads a block) with pdl_attr.
template <typename... KArgs, typename... Args>
static int launch_pdl(void (*kernel)(KArgs...), dim3 grid, size_t smem, Args... args) {
    const cudaLaunchAttribute attr = pdl_attr();
    return launch_ex(&attr, 1, kernel, grid, dim3(kStepThreads), smem, args...);
}

template <typename W>
static bool aligned_rows(const W *w, int64_t cols) {
    return (uintptr_t)w % 16 == 0 && cols % Wv<W>::n == 0;
}

// Tile names a size for a kernel template (a stream tile, lanes a channel).
template <int S>
struct Tile {
    static constexpr int value = S;
};

// The GPU places a block where it finds room, and blocks launched early
// (while the kernels before still run) end up packed onto some SMs: in a
// build without what follows, cuda/step_bench found the 128 blocks of
// out_proj on about 75 SMs and x_proj's 12 on 7, so some SMs did two
// blocks' work while others idled.
// (cuda/pdl_bench: a chain of busy 128-block kernels ran 3x slower
// launched early than late, and as fast as late when each block asked for
// shared memory enough to keep it alone on its SM.) So the step's kernels
// of at most one block an SM ask for kStepSpreadSmem: more than half of an
// SM's 228 KB, and with in_proj's four blocks beside it still less than
// all of it. (Asking every kernel of the step for the largest shared-memory
// carveout as well measured slower.)
static const size_t kStepSpreadSmem = 115u << 10;

// launch_rows launches the row kernel pick(Tile<SB>{}) (a matrix-vector
// kernel of the step) with the geometry step_geometry picks for vectors of
// cols values and rows weight rows, passing it args. kRowsConv: the kernel
// stages more past its tile (k_step_in, in_smem, with xw_bytes of W_x
// slices); kRowsSpread: it asks for kStepSpreadSmem when it has at most one
// block an SM.
static const int kRowsConv = 1, kRowsSpread = 2;

// spread_smem is the shared memory to ask for for a kernel of `blocks`
// blocks that need smem each: kStepSpreadSmem where that keeps it one
// block an SM (the H100 and H200), else smem.
static size_t spread_smem(size_t smem, int64_t blocks) {
    if (blocks <= g_sms && smem < kStepSpreadSmem && kStepSpreadSmem <= g_smem_block &&
        2 * kStepSpreadSmem > g_smem_sm)
        return kStepSpreadSmem;
    return smem;
}

template <class Pick, class... Args>
static int launch_rows(Pick pick, int64_t cols, int64_t rows, int B, int flags, size_t xw_bytes,
                       Args... args) {
    int SB;
    dim3 grid;
    size_t smem;
    if (step_geometry(cols, rows, B, &SB, &grid, &smem)) return 1;
    if (flags & kRowsConv) smem += in_smem(cols, SB, xw_bytes);
    if (flags & kRowsSpread) smem = spread_smem(smem, (int64_t)grid.x * grid.y);
    auto go = [&](auto tile) -> int {
        auto kernel = pick(tile);
        if (allow_smem(kernel, smem)) return 1;
        if (launch_pdl(kernel, grid, smem, args...)) return 1;
        LAUNCHED();
        return 0;
    };
    if constexpr (kStepGemvMaxB >= 2) {
        switch (SB) {
        case 2: return go(Tile<2>{});
        case 4: return go(Tile<4>{});
        case 8: return go(Tile<8>{});
        }
    }
    return go(Tile<1>{});
}

// x_fused says whether in_proj takes x_proj's work (see kXRounds) for a
// step of these sizes, and gives W_x's staged bytes (*xw_bytes: when its
// slices are 16-byte aligned, else 0).
template <typename W>
static bool x_fused(const mb_step_args *a, const W *wx, size_t *xw_bytes) {
    *xw_bytes = 0;
    int SB;
    dim3 grid;
    size_t smem;
    const int64_t J = a->R + 2 * a->N;
    static_assert(kStepThreads == 256, "a round of in_proj's rows is eight channels");
    if (a->B != 1 || J + 1 > kXAccMax || switched_off("MAMBABYTE_CUDA_STEP_FUSE_X") ||
        step_geometry(a->D, 2 * a->E, 1, &SB, &grid, &smem) || grid.x > (unsigned)kXAccBlocks)
        return false;
    const int64_t stride = (int64_t)grid.x * (kStepThreads / 32);
    if ((a->E + stride - 1) / stride > kXRounds) return false;
    if (a->E % 8 == 0 && (uintptr_t)wx % 16 == 0) *xw_bytes = (size_t)J * 8 * sizeof(W);
    return true;
}

// k_step_in holds a row's first four vectors a lane in registers where a
// row has at most 4·32 (keeping it within its registers), eight otherwise.
// With xacc set it also makes x_proj's sums (x_fused).
template <typename W>
static int step_in(const mb_step_args *a, const W *w, long long *xacc, size_t xw_bytes) {
    auto go = [&](auto pick) {
        return launch_rows(pick, a->D, 2 * a->E, (int)a->B, kRowsConv, xw_bytes, a->xz, a->u,
                           a->conv, a->h, a->norm_w, a->in_fold, a->eps, a->rms, a->conv_w,
                           a->conv_b, w, a->D, a->E, (int)a->K, (int)a->B,
                           aligned_rows(w, a->D), xacc, (const W *)a->x_proj,
                           (int)(a->R + 2 * a->N), xw_bytes != 0);
    };
    if (a->D * (int64_t)sizeof(W) <= 4 * 32 * 16)
        return go([](auto t) { return k_step_in<W, decltype(t)::value, 4>; });
    return go([](auto t) { return k_step_in<W, decltype(t)::value, kStepPre>; });
}

template <typename W>
static int step_head(float *logits, const float *h, const float *nw, const float *nb, float eps,
                     int rms, const W *w, int64_t D, int64_t V, int B) {
    return launch_rows([](auto t) { return k_step_head<W, decltype(t)::value>; }, D, V, B, 0, 0,
                       logits, h, nw, nb, eps, rms, w, D, V, B, aligned_rows(w, D));
}

template <typename W>
static int step_x(float *xdbl, const float *u, const W *w, int64_t rows, int64_t E, int B) {
    return launch_rows([](auto t) { return k_step_x<W, decltype(t)::value>; }, E, rows, B,
                       kRowsSpread, 0, xdbl, u, w, rows, E, B, aligned_rows(w, E));
}

// At one stream, an out_proj with more rows than one block of
// kStepThreads an SM has warps (972M: 1,792 rows on 132 SMs) runs as one
// block an SM of up to kStepOutWide threads instead: a warp a row, the
// whole row in registers before the wait where it has at most kStepOutPre
// vectors a lane (972M's 3,584 bf16 values: 14). In blocks of
// kStepThreads such a kernel has more blocks than SMs; launched early they
// pile onto some SMs (cuda/step_bench: 972M's 224 blocks on 94 SMs, 11.8
// µs after the scan against 6.6 here), and a warp's later rows are read
// after the wait. MAMBABYTE_CUDA_STEP_OUT_WIDE=0 keeps the narrow blocks.
static const int kStepOutWide = 512, kStepOutPre = 16;

template <typename W>
static int step_out(float *h, const float *g, const W *w, int64_t D, int64_t E, int B,
                    long long *xacc, int J) {
    const int64_t warps = (D + g_sms - 1) / g_sms;
    if (B == 1 && warps > kStepThreads / 32 && warps <= kStepOutWide / 32 &&
        !switched_off("MAMBABYTE_CUDA_STEP_OUT_WIDE")) {
        auto kernel = k_step_out<W, 1, kStepOutPre, kStepOutWide>;
        int SB;
        dim3 grid;
        size_t smem;  // the tile of one stream's E values
        if (step_geometry(E, D, B, &SB, &grid, &smem)) return 1;
        grid = dim3((unsigned)((D + warps - 1) / warps));
        smem = spread_smem(smem, grid.x);
        if (allow_smem(kernel, smem)) return 1;
        const cudaLaunchAttribute attr = pdl_attr();
        if (launch_ex(&attr, 1, kernel, grid, dim3((unsigned)(32 * warps)), smem, h, g, w, D, E,
                      B, aligned_rows(w, E), xacc, J))
            return 1;
        LAUNCHED();
        return 0;
    }
    return launch_rows([](auto t) { return k_step_out<W, decltype(t)::value>; }, E, D, B,
                       kRowsSpread, 0, h, g, w, D, E, B, aligned_rows(w, E), xacc, J);
}

template <typename W>
static cudaDataType_t cuda_type();
template <>
cudaDataType_t cuda_type<float>() { return CUDA_R_32F; }
template <>
cudaDataType_t cuda_type<__nv_bfloat16>() { return CUDA_R_16BF; }

// out (B, ldo) = beta·out + X (B, cols)·Wᵀ, W (rows, cols), X of W's type.
template <typename W>
static int step_gemm(float *out, int64_t ldo, const W *x, const W *w, int64_t rows,
                     int64_t cols, int64_t B, float beta) {
    float alpha = 1.f;
    CKB(cublasGemmEx(g_blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)rows, (int)B, (int)cols, &alpha, w,
                     cuda_type<W>(), (int)cols, x, cuda_type<W>(), (int)cols, &beta, out,
                     CUDA_R_32F, (int)ldo, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    SYNC_DEBUG();
    return 0;
}

template <typename W>
static int step_norm_gemm(float *out, int64_t ldo, W *xw, const float *h, const float *nw,
                          const float *nb, float eps, int rms, const W *w, int64_t rows,
                          int64_t D, int64_t B, long long *xacc = nullptr, int J1 = 0) {
    size_t smem = (size_t)D * sizeof(float);
    if (smem > kStepTileBytes) {
        set_err("step: a vector of %lld values does not fit shared memory", (long long)D);
        return 1;
    }
    if (allow_smem(k_step_norm_op<W>, smem)) return 1;
    k_step_norm_op<W><<<(unsigned)B, kStepThreads, smem, g_stream>>>(xw, h, nw, nb, eps, rms, D,
                                                                      xacc, J1);
    LAUNCHED();
    return step_gemm(out, ldo, (const W *)xw, w, rows, D, B, 0.f);
}

// scan_quad_shape picks k_step_scan_quad's streams a block (*sb) and block
// size (*threads): the fewest streams, then the fewest channels, a block
// that keep the grid within one wave (four blocks an SM), so that every
// state load is issued at once while W_dt is read from L2 as few times as
// that allows. It reports false when N does not suit the kernel or W_dt's
// rows do not fit shared memory.
static bool scan_quad_shape(const mb_step_args *a, int *sb, int *threads, size_t *smem) {
    const int64_t N = a->N, P = N / 4, B = a->B, E = a->E, wave = 4 * (int64_t)g_sms;
    if (N % 4 != 0 || P > 32 || (P & (P - 1)) != 0 || (uintptr_t)a->ssm % 16 != 0 ||
        (uintptr_t)a->neg_a % 16 != 0)
        return false;
    auto blocks = [&](int64_t th, int64_t s) {
        return (E + th / P - 1) / (th / P) * ((B + s - 1) / s);
    };
    int s = 1, th = kStepThreads;
    while (s < kScanMaxSB && blocks(th, s) > wave) s *= 2;
    while (th > 64 && blocks(th / 2, s) <= wave) th /= 2;
    while (th > 64 && scan_quad_smem(a->R, P, th, s, a->wtype) > kStepTileBytes) th /= 2;
    *sb = s, *threads = th, *smem = scan_quad_smem(a->R, P, th, s, a->wtype);
    return *smem <= kStepTileBytes && (B + s - 1) / s <= 65535;
}

// scan_quad_ok says whether k_step_scan_quad can run the step's scan.
static bool scan_quad_ok(const mb_step_args *a) {
    int sb, threads;
    size_t smem;
    return scan_quad_shape(a, &sb, &threads, &smem);
}

// step_scan_quad runs k_step_scan_quad when scan_quad_ok and reports
// whether it did. chained: launched with programmatic dependent launch,
// writing the gated output only to gw. xacc: xdbl from k_step_conv_x's
// fixed-point sums.
template <typename W>
static int step_scan_quad(const mb_step_args *a, W *gw, const W *wdt, int64_t ldbc, bool chained,
                          bool *done, const long long *xacc = nullptr) {
    *done = false;
    int sb, threads;
    size_t smem;
    if (!scan_quad_shape(a, &sb, &threads, &smem)) return 0;
    const int64_t P = a->N / 4;
    const dim3 grid((unsigned)((a->E + threads / P - 1) / (threads / P)),
                    (unsigned)((a->B + sb - 1) / sb));
    auto go = [&](auto kernel) -> int {
        if (allow_smem(kernel, smem)) return 1;
        if (chained) {
            const cudaLaunchAttribute attr = pdl_attr();
            if (launch_ex(&attr, 1, kernel, grid, dim3(threads), smem, (float *)nullptr, gw,
                          a->ssm, a->xz, a->xdbl, ldbc, a->u, wdt, a->dt_bias, a->neg_a,
                          a->dskip, a->E, (int)a->R, a->B, 1, xacc))
                return 1;
        } else {
            kernel<<<grid, threads, smem, g_stream>>>(a->g, gw, a->ssm, a->xz, a->xdbl, ldbc,
                                                      a->u, wdt, a->dt_bias, a->neg_a, a->dskip,
                                                      a->E, (int)a->R, a->B, 0, xacc);
        }
        LAUNCHED();
        *done = true;
        return 0;
    };
    auto pick = [&](auto p) -> int {
        constexpr int PP = decltype(p)::value;
        switch (sb) {
        case 1: return go(k_step_scan_quad<W, PP, 1>);
        case 2: return go(k_step_scan_quad<W, PP, 2>);
        default: return go(k_step_scan_quad<W, PP, kScanMaxSB>);
        }
    };
    switch (P) {
    case 1: return pick(Tile<1>{});
    case 2: return pick(Tile<2>{});
    case 4: return pick(Tile<4>{});
    case 8: return pick(Tile<8>{});
    case 16: return pick(Tile<16>{});
    default: return pick(Tile<32>{});
    }
}

// mm_smem is k_step_mm's shared memory: the staged X and the inbox.
static size_t mm_smem(int NT, int WM, int KS) {
    const int tot = 8 * NT * 16 * WM, per = (tot + KS - 1) / KS;
    return (size_t)8 * NT * kMmRowBytes + (size_t)KS * (kMmWarps / WM) * per * sizeof(float);
}

// mm_clusters sets *n to how many clusters of ks blocks of kernel, with
// smem bytes of shared memory each, the GPU runs at once. Clusters must fit
// in one GPC, so this can be fewer than the SM count suggests (on an H100,
// 30 clusters of 8 blocks where 132 SMs hold 264 blocks); a cluster past it
// waits for a second wave. Answers are kept: the query is made once a shape.
template <typename F>
static int mm_clusters(F kernel, int ks, size_t smem, int *n) {
    struct Seen {
        const void *kernel;
        int ks;
        size_t smem;
        int n;
    };
    static Seen seen[64];
    static int nseen;
    for (int i = 0; i < nseen; i++)
        if (seen[i].kernel == (const void *)kernel && seen[i].ks == ks && seen[i].smem == smem) {
            *n = seen[i].n;
            return 0;
        }
    if (allow_smem(kernel, smem)) return 1;
    cudaLaunchAttribute attr = {};
    attr.id = cudaLaunchAttributeClusterDimension;
    attr.val.clusterDim.x = (unsigned)ks;
    attr.val.clusterDim.y = 1;
    attr.val.clusterDim.z = 1;
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = dim3((unsigned)ks);
    cfg.blockDim = dim3(kMmWarps * 32);
    cfg.dynamicSmemBytes = smem;
    cfg.attrs = &attr;
    cfg.numAttrs = 1;
    CK(cudaOccupancyMaxActiveClusters(n, (void *)kernel, &cfg));
    if (nseen < 64) seen[nseen++] = {(const void *)kernel, ks, smem, *n};
    return 0;
}

// step_mm runs k_step_mm for out = X (B, K)·Wᵀ, W (rows, K), handing each
// sum to epi. The shape of its blocks: the most rows per block (X is read
// from L2 once per block) that still give about kMmWaves blocks per SM
// with at most kMmMaxKS blocks along K and at least a chunk of 32 columns
// per warp, in clusters that all run at once. (Two blocks an SM measured
// faster than one or three.)
static const int kMmWaves = 2;
template <class Epi>
static int step_mm(Epi epi, const __nv_bfloat16 *w, int64_t rows, int64_t K,
                   const __nv_bfloat16 *x, int64_t B) {
    const int NT = B <= 8 ? 1 : B <= 16 ? 2 : B <= 32 ? 4 : 8;
    const int64_t chunks = (K + 31) / 32, ytiles = (B + 8 * NT - 1) / (8 * NT);
    if (ytiles > 65535) {
        set_err("step: %lld streams is too many", (long long)B);
        return 1;
    }
    auto go = [&](auto kernel) -> int {
        int WM = 1, KS = 1;
        int64_t tiles = 1;
        for (int wm = kMmWarps; wm >= 1; wm /= 2) {
            int64_t tl = (rows + 16 * wm - 1) / (16 * wm);
            int64_t ks = kMmWaves * g_sms / tl, most = chunks / (kMmWarps / wm);
            if (ks > kMmMaxKS) ks = kMmMaxKS;
            if (ks > most) ks = most;
            if (ks < 1) ks = 1;
            for (; ks > 1; ks--) {
                int n;
                if (mm_clusters(kernel, (int)ks, mm_smem(NT, wm, (int)ks), &n)) return 1;
                if (tl * ytiles <= n) break;
            }
            WM = wm, KS = (int)ks, tiles = tl;
            if (tl * ks >= kMmWaves * g_sms * 3 / 4) break;
        }
        if (tiles * KS > INT32_MAX) {
            set_err("step: %lld rows is too many", (long long)rows);
            return 1;
        }
        const size_t smem = mm_smem(NT, WM, KS);
        cudaLaunchAttribute attrs[2] = {pdl_attr(), {}};
        attrs[1].id = cudaLaunchAttributeClusterDimension;
        attrs[1].val.clusterDim.x = (unsigned)KS;
        attrs[1].val.clusterDim.y = 1;
        attrs[1].val.clusterDim.z = 1;
        if (allow_smem(kernel, smem)) return 1;
        if (launch_ex(attrs, 2, kernel, dim3((unsigned)(tiles * KS), (unsigned)ytiles),
                      dim3(kMmWarps * 32), smem, epi, w, rows, K, x, (int)B, WM, KS))
            return 1;
        LAUNCHED();
        return 0;
    };
    switch (NT) {
    case 1: return go(k_step_mm<1, Epi>);
    case 2: return go(k_step_mm<2, Epi>);
    case 4: return go(k_step_mm<4, Epi>);
    default: return go(k_step_mm<8, Epi>);
    }
}

// step_mma_ok says whether the tensor-core path runs a step of B streams
// with these sizes. It does for 2 to kStepMmaMaxB streams, where it is
// faster than cuBLAS (BENCHMARKS.md); MAMBABYTE_CUDA_STEP_MMA=0 turns it
// off and =all on for every B >= 2 (for tests and comparisons).
static const int64_t kStepMmaMaxB = 16;

static bool step_mma_ok(int64_t B, int64_t D, int64_t E, int wtype) {
    const char *v = getenv("MAMBABYTE_CUDA_STEP_MMA");
    if (v && strcmp(v, "0") == 0) return false;
    int64_t most = v && strcmp(v, "all") == 0 ? INT64_MAX : kStepMmaMaxB;
    return wtype == 1 && B > kStepGemvMaxB && B <= most && D % 8 == 0 && E % 8 == 0 &&
           (size_t)D * sizeof(float) <= kStepTileBytes;
}

// step_norm_pdl writes the normalised h (B, D) to xa as bf16, chained.
static int step_norm_pdl(__nv_bfloat16 *xa, const float *h, const float *nw, const float *nb,
                         float eps, int rms, int64_t D, int64_t B) {
    size_t smem = (size_t)D * sizeof(float);
    if (allow_smem(k_step_norm_op<__nv_bfloat16>, smem)) return 1;
    if (launch_pdl(k_step_norm_op<__nv_bfloat16>, dim3((unsigned)B), smem, xa, h, nw, nb, eps,
                   rms, D, (long long *)nullptr, 0))
        return 1;
    LAUNCHED();
    return 0;
}

// step_block_mma is the tensor-core path's block. Scratch: xw (bf16) holds
// the normalised h, then the scan's gated output; g (float32, B·E) holds
// the bf16 copy of u.
static int step_block_mma(const mb_step_args *a) {
    typedef __nv_bfloat16 bf;
    const int64_t B = a->B, D = a->D, E = a->E, J = a->R + 2 * a->N;
    bf *xa = (bf *)a->xw, *ub = (bf *)a->g;
    if (step_norm_pdl(xa, a->h, a->norm_w, a->norm_b, a->eps, a->rms, D, B)) return 1;
    EpiIn in = {a->xz, a->u, a->conv, ub, a->conv_w, a->conv_b, E, (int)a->K};
    if (step_mm(in, (const bf *)a->in_proj, 2 * E, D, xa, B)) return 1;
    if (step_mm(EpiStore{a->xdbl, J}, (const bf *)a->x_proj, J, E, ub, B)) return 1;
    bool done;  // always: step_block checked scan_quad_ok
    if (step_scan_quad(a, xa, (const bf *)a->dt_proj, J, true, &done)) return 1;
    return step_mm(EpiAdd{a->h, D}, (const bf *)a->out_proj, D, E, xa, B);
}

// many_x_fused says whether a step of these sizes on the cuBLAS path makes
// x_proj's sums in k_step_conv_x (bf16 weights, the quad scan, rows that
// fit g_xacc_many and shared memory, at most kXAccBlocks blocks a sum);
// MAMBABYTE_CUDA_STEP_FUSE_X=0 keeps the x_proj product.
static bool many_x_fused(const mb_step_args *a) {
    const int64_t J = a->R + 2 * a->N;
    return a->wtype == 1 && a->E % 8 == 0 && aligned16(a->x_proj) &&
           a->B * (J + 1) <= kXAccManyMax && cx_smem((int)J) <= kStepTileBytes &&
           (a->E + kCxChannels - 1) / kCxChannels <= kXAccBlocks && scan_quad_ok(a) &&
           !switched_off("MAMBABYTE_CUDA_STEP_FUSE_X");
}

// step_conv_x launches k_step_conv_x, chained (it waits for in_proj).
static int step_conv_x(const mb_step_args *a, long long *xacc) {
    const int J = (int)(a->R + 2 * a->N);
    const size_t smem = cx_smem(J);
    auto kernel = cx_reg(J) ? k_step_conv_x<kCxRegIt> : k_step_conv_x<0>;
    if (allow_smem(kernel, smem)) return 1;
    const dim3 grid((unsigned)((a->E + kCxChannels - 1) / kCxChannels),
                    (unsigned)((a->B + kCxStreams - 1) / kCxStreams));
    if (launch_pdl(kernel, grid, smem, a->u, (const float *)a->xz, a->conv,
                   (const float *)a->conv_w, (const float *)a->conv_b,
                   (const __nv_bfloat16 *)a->x_proj, xacc, a->E, (int)a->K, a->B, J))
        return 1;
    LAUNCHED();
    return 0;
}

// g_step_mma counts the steps step_block hands to step_block_mma.
static int64_t g_step_mma;

template <typename W>
static int step_block(const mb_step_args *a) {
    int64_t B = a->B, D = a->D, E = a->E, N = a->N, R = a->R;
    int64_t ldbc = R + 2 * N;
    const W *win = (const W *)a->in_proj, *wx = (const W *)a->x_proj,
            *wdt = (const W *)a->dt_proj, *wout = (const W *)a->out_proj;
    W *xw = (W *)a->xw;
    if (step_mma_ok(B, D, E, a->wtype) && scan_quad_ok(a) && aligned16(a->in_proj) &&
        aligned16(a->x_proj) && aligned16(a->out_proj) && aligned16(a->xw) && aligned16(a->g)) {
        g_step_mma++;
        return step_block_mma(a);
    }
    if (B <= kStepGemvMaxB) {
        if (!a->in_fold) {
            set_err("mb_step_block: in_fold is NULL (see mb_step_fold)");
            return 1;
        }
        size_t xw_bytes;
        long long *xacc = x_fused(a, wx, &xw_bytes) ? g_xacc : nullptr;
        if (step_in(a, win, xacc, xw_bytes)) return 1;
        if (!xacc && step_x(a->xdbl, a->u, wx, ldbc, E, (int)B)) return 1;
        int64_t threads = 32 * B * E;
        dim3 grid((unsigned)((threads + kStepThreads - 1) / kStepThreads));
        if (launch_pdl(k_step_scan<W>, grid, 0, a->g, a->ssm, a->xz, a->xdbl, ldbc, a->u, wdt,
                       a->dt_bias, a->neg_a, a->dskip, E, (int)N, (int)R, (int)B,
                       (const long long *)xacc))
            return 1;
        LAUNCHED();
        return step_out(a->h, a->g, wout, D, E, (int)B, xacc, (int)ldbc);
    }
    long long *xacc = many_x_fused(a) ? g_xacc_many : nullptr;
    if (step_norm_gemm(a->xz, 2 * E, xw, a->h, a->norm_w, a->norm_b, a->eps, a->rms, win, 2 * E,
                       D, B, xacc, (int)ldbc + 1))
        return 1;
    if (xacc) {
        bool done;  // always: many_x_fused checked scan_quad_ok
        if (step_conv_x(a, xacc) || step_scan_quad(a, xw, wdt, ldbc, true, &done, xacc)) return 1;
        return step_gemm(a->h, D, (const W *)xw, wout, D, E, B, 1.f);
    }
    const dim3 cgrid((unsigned)((E + kThreads - 1) / kThreads), (unsigned)min(B, (int64_t)65535));
    k_step_conv_op<W><<<cgrid, kThreads, 0, g_stream>>>(xw, a->u, a->xz, a->conv, a->conv_w,
                                                        a->conv_b, E, (int)a->K, B);
    LAUNCHED();
    if (step_gemm(a->xdbl, ldbc, (const W *)xw, wx, ldbc, E, B, 0.f)) return 1;
    bool done;
    if (step_scan_quad(a, xw, wdt, ldbc, false, &done)) return 1;
    if (done) return step_gemm(a->h, D, (const W *)xw, wout, D, E, B, 1.f);
    // g = r·W_dtᵀ in float32 (r is a column slice of xdbl, row stride ldbc).
    float one = 1.f, zero = 0.f;
    CKB(cublasGemmEx(g_blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)E, (int)B, (int)R, &one,
                     a->dt_proj_f32, CUDA_R_32F, (int)R, a->xdbl, CUDA_R_32F, (int)ldbc, &zero,
                     a->g, CUDA_R_32F, (int)E, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    if (N % 4 == 0)
        k_step_scan_rows<W, true><<<grid_for(B * E), kThreads, 0, g_stream>>>(
            a->g, xw, a->ssm, a->xz, a->xdbl, ldbc, a->u, a->dt_bias, a->neg_a, a->dskip, E,
            (int)N, (int)R, B);
    else
        k_step_scan_rows<W, false><<<grid_for(B * E), kThreads, 0, g_stream>>>(
            a->g, xw, a->ssm, a->xz, a->xdbl, ldbc, a->u, a->dt_bias, a->neg_a, a->dskip, E,
            (int)N, (int)R, B);
    LAUNCHED();
    return step_gemm(a->h, D, (const W *)xw, wout, D, E, B, 1.f);
}

static int step_check(const char *fn, int64_t B, int64_t D, int64_t E, int64_t N, int64_t K,
                      int64_t R, int wtype) {
    if (B < 1 || D < 1 || E < 1 || N < 1 || K < 1 || R < 1 || B > INT32_MAX / 32 / E ||
        D > INT32_MAX || E > INT32_MAX / 2 || N > 1024 || R > 65536 || K > kStepMaxK ||
        (wtype != 0 && wtype != 1)) {
        set_err("%s: sizes out of range (B=%lld D=%lld E=%lld N=%lld K=%lld R=%lld wtype=%d)",
                fn, (long long)B, (long long)D, (long long)E, (long long)N, (long long)K,
                (long long)R, wtype);
        return 1;
    }
    return 0;
}

extern "C" int64_t mb_step_mma_count(void) { return g_step_mma; }

extern "C" int mb_step_block(const mb_step_args *a) {
    ENTER();
    if (step_check(__func__, a->B, a->D, a->E, a->N, a->K, a->R, a->wtype)) return 1;
    if (a->wtype == 1) return step_block<__nv_bfloat16>(a);
    return step_block<float>(a);
}

extern "C" int mb_step_fold(float *fold, const void *w, int wtype, const float *norm_w,
                            const float *norm_b, int64_t rows, int64_t D) {
    ENTER();
    if (rows < 1 || D < 1 || rows > INT32_MAX / 32 || (wtype != 0 && wtype != 1)) {
        set_err("%s: sizes out of range (rows=%lld D=%lld wtype=%d)", __func__, (long long)rows,
                (long long)D, wtype);
        return 1;
    }
    if (!fold || !w || !norm_w) {
        set_err("%s: fold, w and norm_w must not be NULL", __func__);
        return 1;
    }
    const unsigned blocks = (unsigned)((rows * 32 + kThreads - 1) / kThreads);
    if (wtype == 1)
        k_step_fold<<<blocks, kThreads, 0, g_stream>>>(fold, (const __nv_bfloat16 *)w, norm_w,
                                                       norm_b, rows, D);
    else
        k_step_fold<<<blocks, kThreads, 0, g_stream>>>(fold, (const float *)w, norm_w, norm_b,
                                                       rows, D);
    LAUNCHED();
    return 0;
}

extern "C" int mb_step_head(float *logits, const float *h, const float *norm_w,
                            const float *norm_b, const void *head, void *xw, int64_t B,
                            int64_t D, int64_t V, float eps, int rms, int wtype) {
    ENTER();
    if (B < 1 || D < 1 || V < 1 || B > INT32_MAX / D || V > INT32_MAX || (wtype != 0 && wtype != 1)) {
        set_err("%s: sizes out of range (B=%lld D=%lld V=%lld wtype=%d)", __func__, (long long)B,
                (long long)D, (long long)V, wtype);
        return 1;
    }
    if (B <= kStepGemvMaxB) {
        if (wtype == 1)
            return step_head(logits, h, norm_w, norm_b, eps, rms, (const __nv_bfloat16 *)head, D,
                             V, (int)B);
        return step_head(logits, h, norm_w, norm_b, eps, rms, (const float *)head, D, V, (int)B);
    }
    if (step_mma_ok(B, D, D, wtype) && aligned16(head) && aligned16(xw)) {
        if (step_norm_pdl((__nv_bfloat16 *)xw, h, norm_w, norm_b, eps, rms, D, B)) return 1;
        return step_mm(EpiStore{logits, V}, (const __nv_bfloat16 *)head, V, D,
                       (const __nv_bfloat16 *)xw, B);
    }
    if (wtype == 1)
        return step_norm_gemm(logits, V, (__nv_bfloat16 *)xw, h, norm_w, norm_b, eps, rms,
                              (const __nv_bfloat16 *)head, V, D, B);
    return step_norm_gemm(logits, V, (float *)xw, h, norm_w, norm_b, eps, rms,
                          (const float *)head, V, D, B);
}

__global__ void k_to_bf16(__nv_bfloat16 *dst, const float *src, int64_t n) {
    GRID_LOOP(i, n) dst[i] = __float2bfloat16(src[i]);
}

extern "C" int mb_to_bf16(void *dst, const float *src, int64_t n) {
    ENTER();
    if (n <= 0) return 0;
    k_to_bf16<<<grid_for(n), kThreads, 0, g_stream>>>((__nv_bfloat16 *)dst, src, n);
    LAUNCHED();
    return 0;
}
