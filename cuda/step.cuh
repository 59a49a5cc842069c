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
// Kernels 1, 2 and 4 (and the head) are matrix-vector products by rows of
// a weight: each block first loads the vectors of a tile of streams into shared memory (normalising them in kernel 1, which costs
// less than a trip through global memory and a launch), then each warp
// takes rows of the weight, reads them with 16-byte loads, four in flight
// per lane, and dots them with every stream of the tile. The scan takes a
// warp per channel and issues all its loads before the first sum. For more
// than kStepGemvMaxB streams the matrix products go to cuBLAS instead, on
// operands of the weight's type that small kernels build. The kernels of
// the step are launched with programmatic dependent launch: each starts
// while the one before runs, asks L2 for its weights, and only then waits
// for the activations it needs.
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
    __device__ static __forceinline__ float one(const float *p) { return __ldg(p); }
};

template <>
struct Wv<__nv_bfloat16> {
    static constexpr int n = 8;
    __device__ static __forceinline__ void load(const __nv_bfloat16 *p, float *o) {
        unpack(__ldg((const uint4 *)p), o);
    }
    // unpack widens 8 bf16 values (16 bytes) to float.
    __device__ static __forceinline__ void unpack(uint4 v, float *o) {
        uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
        for (int i = 0; i < 4; i++) {
            o[2 * i] = __uint_as_float(w[i] << 16);
            o[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
        }
    }
    __device__ static __forceinline__ float one(const __nv_bfloat16 *p) {
        return __bfloat162float(*p);
    }
};

// Operand stores for the cuBLAS path (a float32 value as the weight's type)
// use kernels.cu's put.

// row_dot adds to acc[s] (per lane; the caller sums across the warp) the dot
// product of weight row w (cols values) with vector s of the tile xs (SB
// rows of stride ldx, a multiple of 4, zero past cols). vec: the row is
// 16-byte aligned and cols a multiple of Wv<W>::n.
template <typename W, int SB>
__device__ __forceinline__ void row_dot(const W *__restrict__ w, int64_t cols, bool vec,
                                        const float *xs, int ldx, float *acc, int lane) {
    constexpr int VW = Wv<W>::n;
    int64_t c0 = 0;
    if (vec) {
        int64_t nv = cols / VW;
        for (int64_t p = lane; p < nv; p += 4 * 32) {
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
#pragma unroll
                for (int s = 0; s < SB; s++) {
                    const float4 *x4 = (const float4 *)(xs + s * ldx + (p + 32 * q) * VW);
#pragma unroll
                    for (int i = 0; i < VW / 4; i++) {
                        float4 xv = x4[i];
                        acc[s] += wv[q][4 * i] * xv.x + wv[q][4 * i + 1] * xv.y +
                                  wv[q][4 * i + 2] * xv.z + wv[q][4 * i + 3] * xv.w;
                    }
                }
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
// epilogues run side by side).
template <typename W, int SB, class Store>
__device__ __forceinline__ void tile_rows(const W *w, int64_t rows, int64_t cols, bool vec,
                                          const float *xs, int ldx, int nb, Store store) {
    int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
    for (int64_t r = (int64_t)blockIdx.x * nw + wid; r < rows; r += (int64_t)gridDim.x * nw) {
        float acc[SB];
#pragma unroll
        for (int s = 0; s < SB; s++) acc[s] = 0.f;
        row_dot<W, SB>(w + r * cols, cols, vec, xs, ldx, acc, lane);
#pragma unroll
        for (int s = 0; s < SB; s++) {
            acc[s] = warp_sum(acc[s]);
            if (lane == s && s < nb) store(r, s, acc[s]);
        }
    }
}

// Programmatic dependent launch (sm_90): kernels of the step are launched
// so that the next one may start before this one ends (launch_pdl).
// pdl_start lets it; pdl_wait blocks until the kernels before have
// finished and their writes are visible. Before pdl_wait a kernel may
// only read what no kernel of the step writes: the weights.
__device__ __forceinline__ void pdl_start() { asm volatile("griddepcontrol.launch_dependents;"); }
__device__ __forceinline__ void pdl_wait() { asm volatile("griddepcontrol.wait;" ::: "memory"); }

// prefetch_rows asks L2 for the rows of w (rows, cols) that this warp will
// read in tile_rows, so they stream from memory while the kernels before
// run.
template <typename W>
__device__ __forceinline__ void prefetch_rows(const W *w, int64_t rows, int64_t cols) {
    int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
    int64_t bytes = cols * (int64_t)sizeof(W);
    for (int64_t r = (int64_t)blockIdx.x * nw + wid; r < rows; r += (int64_t)gridDim.x * nw) {
        const char *row = (const char *)(w + r * cols);
        for (int64_t off = (int64_t)lane * 128; off < bytes; off += 32 * 128)
            asm volatile("prefetch.global.L2 [%0];" ::"l"(row + off));
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
// caller owns channel e of the stream. K <= kStepMaxK: the taps are loaded
// together, then stored shifted.
static const int kStepMaxK = 8;

__device__ __forceinline__ float conv_step(float *st, float x, const float *cw, const float *cb,
                                           int64_t e, int64_t E, int K) {
    float v[kStepMaxK], w[kStepMaxK];
#pragma unroll
    for (int k = 0; k < kStepMaxK; k++) {
        v[k] = k < K - 1 ? st[(int64_t)k * E + e] : 0.f;
        w[k] = k < K ? cw[e * K + k] : 0.f;
    }
    float acc = cb ? cb[e] : 0.f;
#pragma unroll
    for (int k = 0; k < kStepMaxK; k++) {
        if (k < K - 1) acc += w[k] * v[k];
        if (k == K - 1) acc += w[k] * x;
    }
#pragma unroll
    for (int k = 1; k < kStepMaxK; k++)
        if (k < K - 1) st[(int64_t)(k - 1) * E + e] = v[k];
    if (K > 1) st[(int64_t)(K - 2) * E + e] = x;
    return silu_(acc);
}

// begin_rows is the start of a matrix-vector kernel of the step over rows
// of w (rows, cols): it lets the next kernel launch, asks L2 for its rows,
// waits for the kernels before, and loads the block's tile of vectors from
// x (B, cols) into shared memory. It returns the tile (row stride *ldx),
// the tile's first stream *s0 and its number of streams *nb.
template <typename W, int SB>
__device__ __forceinline__ float *begin_rows(const W *w, int64_t rows, const float *x,
                                             int64_t cols, int B, int *ldx, int *s0, int *nb) {
    extern __shared__ float4 sm_[];
    float *xs = (float *)sm_;
    *ldx = (int)((cols + 3) & ~3);
    *s0 = blockIdx.y * SB, *nb = min(SB, B - *s0);
    pdl_start();
    prefetch_rows(w, rows, cols);
    pdl_wait();
    load_tile<SB>(xs, *ldx, x + (int64_t)*s0 * cols, cols, *nb);
    __syncthreads();
    return xs;
}

// 1. [xi, z] = Norm(h)·W_inᵀ, W_in (2E, D); for each channel e < E the conv
// follows at once: u = silu(conv(state, xi)), the conv state shifted. z
// goes to xz (B, 2E) (its first E columns are left alone).
template <typename W, int SB>
__global__ void __launch_bounds__(kStepThreads, 4)
    k_step_in(float *xz, float *u, float *conv, const float *h, const float *nw, const float *nb,
              float eps, int rms, const float *cw, const float *cb, const W *w, int64_t D,
              int64_t E, int K, int B, bool vec) {
    int ldx, s0, nb_;
    float *xs = begin_rows<W, SB>(w, 2 * E, h, D, B, &ldx, &s0, &nb_);
    norm_tile<SB>(xs, ldx, nb_, nw, nb, D, eps, rms);
    __syncthreads();
    tile_rows<W, SB>(w, 2 * E, D, vec, xs, ldx, nb_, [&](int64_t r, int s, float v) {
        int64_t b = s0 + s;
        if (r < E)
            u[b * E + r] = conv_step(conv + b * (K - 1) * E, v, cw, cb, r, E, K);
        else
            xz[b * 2 * E + r] = v;
    });
}

// The head: logits (B, V) = Norm(h)·W_headᵀ.
template <typename W, int SB>
__global__ void __launch_bounds__(kStepThreads, 4)
    k_step_head(float *logits, const float *h, const float *nw, const float *nb, float eps,
                int rms, const W *w, int64_t D, int64_t V, int B, bool vec) {
    int ldx, s0, nb_;
    float *xs = begin_rows<W, SB>(w, V, h, D, B, &ldx, &s0, &nb_);
    norm_tile<SB>(xs, ldx, nb_, nw, nb, D, eps, rms);
    __syncthreads();
    tile_rows<W, SB>(w, V, D, vec, xs, ldx, nb_, [&](int64_t r, int s, float v) {
        logits[(int64_t)(s0 + s) * V + r] = v;
    });
}

// 2. xdbl (B, R+2N) = u·W_xᵀ, W_x (R+2N, E).
template <typename W, int SB>
__global__ void __launch_bounds__(kStepThreads, 4)
    k_step_x(float *xdbl, const float *u, const W *w, int64_t rows, int64_t E, int B, bool vec) {
    int ldx, s0, nb_;
    float *xs = begin_rows<W, SB>(w, rows, u, E, B, &ldx, &s0, &nb_);
    tile_rows<W, SB>(w, rows, E, vec, xs, ldx, nb_, [&](int64_t r, int s, float v) {
        xdbl[(int64_t)(s0 + s) * rows + r] = v;
    });
}

// 4. h (B,D) += g·W_outᵀ, W_out (D, E).
template <typename W, int SB>
__global__ void __launch_bounds__(kStepThreads, 4)
    k_step_out(float *h, const float *g, const W *w, int64_t D, int64_t E, int B, bool vec) {
    int ldx, s0, nb_;
    float *xs = begin_rows<W, SB>(w, D, g, E, B, &ldx, &s0, &nb_);
    tile_rows<W, SB>(w, D, E, vec, xs, ldx, nb_, [&](int64_t r, int s, float v) {
        h[(int64_t)(s0 + s) * D + r] += v;
    });
}

// 3. The scan step, a warp per channel (b, e): the lanes split the dt rank
// terms and the states, every load issued before the sums that need them.
template <typename W>
__global__ void __launch_bounds__(kStepThreads)
    k_step_scan(float *g, float *ssm, const float *xz, const float *xdbl, int64_t ldbc,
                const float *u, const W *wdt, const float *dtb, const float *A,
                const float *dskip, int64_t E, int N, int R, int B) {
    int64_t idx = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    int lane = threadIdx.x & 31;
    pdl_start();
    if (idx >= (int64_t)B * E) return;  // the whole warp leaves together
    int b = (int)(idx / E);
    int64_t e = idx - (int64_t)b * E;
    const W *wr = wdt + e * R;
    for (int64_t off = (int64_t)lane * 128; off < (int64_t)R * (int64_t)sizeof(W); off += 32 * 128)
        asm volatile("prefetch.global.L2 [%0];" ::"l"((const char *)wr + off));
    pdl_wait();
    const float *xr = xdbl + (int64_t)b * ldbc;
    float *s = ssm + idx * N;
    const float *a = A + e * N;
    float uu = u[idx], zz = xz[(int64_t)b * 2 * E + E + e];
    float raw = 0.f;
    for (int r = lane; r < R; r += 32) raw += Wv<W>::one(wr + r) * xr[r];
    // States n = lane + 32j; most models have N <= 32 (one per lane).
    float sv = 0.f, av = 0.f, bv = 0.f, cv = 0.f;
    if (lane < N) sv = s[lane], av = a[lane], bv = xr[R + lane], cv = xr[R + N + lane];
    raw = warp_sum(raw);
    float delta = softplus_(raw + (dtb ? dtb[e] : 0.f));
    float du = delta * uu;
    float yp = 0.f;
    if (lane < N) {
        float v = expf(delta * av) * sv + du * bv;
        s[lane] = v;
        yp = cv * v;
    }
    for (int n = lane + 32; n < N; n += 32) {
        float v = expf(delta * a[n]) * s[n] + du * xr[R + n];
        s[n] = v;
        yp += xr[R + N + n] * v;
    }
    yp = warp_sum(yp);
    if (lane != 0) return;
    float y = yp + dskip[e] * uu;
    float out = y * silu_(zz);
    g[idx] = out;
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

// The scan step of the cuBLAS path for N = 4·P (P a power of two up to 32):
// P lanes per channel (b, e), each holding four consecutive states, that
// also split the channel's dt_proj product r·W_dtᵀ as the one-stream kernel
// does, so that product needs no GEMM launch of its own. Lanes past the
// last channel compute channel 0 again and store nothing, so that every
// shuffle sees a whole warp.
template <typename W, int P>
__global__ void __launch_bounds__(kThreads)
    k_step_scan_quad(float *__restrict__ g, W *__restrict__ gw, float *__restrict__ ssm,
                     const float *__restrict__ xz, const float *__restrict__ xdbl, int64_t ldbc,
                     const float *__restrict__ u, const W *__restrict__ wdt,
                     const float *__restrict__ dtb, const float *__restrict__ A,
                     const float *__restrict__ dskip, int64_t E, int R, int64_t B) {
    constexpr int N = 4 * P;
    const int64_t t = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    const bool ok = t / P < B * E;
    const int64_t i = ok ? t / P : 0;  // the channel b·E + e
    const int l = threadIdx.x % P;
    const int64_t b = i / E, e = i - b * E;
    const float *xr = xdbl + b * ldbc;
    const W *wr = wdt + e * R;
    float raw = 0.f;
    for (int r = l; r < R; r += P) raw += Wv<W>::one(wr + r) * xr[r];
#pragma unroll
    for (int o = 1; o < P; o <<= 1) raw += __shfl_xor_sync(0xffffffffu, raw, o);
    const float delta = softplus_(raw + (dtb ? dtb[e] : 0.f));
    const float uu = u[i], du = delta * uu;
    float *s = ssm + i * N + 4 * l;
    float4 sv = *(const float4 *)s;
    const float4 av = __ldg((const float4 *)(A + e * N + 4 * l));
    const float *bt = xr + R + 4 * l, *ct = bt + N;
    sv.x = expf(delta * av.x) * sv.x + du * bt[0];
    sv.y = expf(delta * av.y) * sv.y + du * bt[1];
    sv.z = expf(delta * av.z) * sv.z + du * bt[2];
    sv.w = expf(delta * av.w) * sv.w + du * bt[3];
    if (ok) *(float4 *)s = sv;
    float y = ct[0] * sv.x + ct[1] * sv.y + ct[2] * sv.z + ct[3] * sv.w;
#pragma unroll
    for (int o = 1; o < P; o <<= 1) y += __shfl_xor_sync(0xffffffffu, y, o);
    if (ok && l == 0) {
        float out = (y + dskip[e] * uu) * silu_(xz[b * 2 * E + E + e]);
        g[i] = out;
        put(gw + i, out);
    }
}

// step_scan_quad runs k_step_scan_quad when N suits it and reports whether
// it did.
template <typename W>
static int step_scan_quad(const mb_step_args *a, W *xw, const W *wdt, int64_t ldbc, bool *done) {
    int64_t N = a->N, P = N / 4;
    *done = false;
    if (N % 4 != 0 || P > 32 || (P & (P - 1)) != 0 || ((uintptr_t)a->ssm % 16) != 0 ||
        ((uintptr_t)a->neg_a % 16) != 0)
        return 0;
    int64_t threads = a->B * a->E * P;
    dim3 grid((unsigned)((threads + kThreads - 1) / kThreads));
    auto go = [&](auto kernel) -> int {
        kernel<<<grid, kThreads, 0, g_stream>>>(a->g, xw, a->ssm, a->xz, a->xdbl, ldbc, a->u, wdt,
                                                 a->dt_bias, a->neg_a, a->dskip, a->E, (int)a->R,
                                                 a->B);
        LAUNCHED();
        *done = true;
        return 0;
    };
    switch (P) {
    case 1: return go(k_step_scan_quad<W, 1>);
    case 2: return go(k_step_scan_quad<W, 2>);
    case 4: return go(k_step_scan_quad<W, 4>);
    case 8: return go(k_step_scan_quad<W, 8>);
    case 16: return go(k_step_scan_quad<W, 16>);
    default: return go(k_step_scan_quad<W, 32>);
    }
}

// The cuBLAS path's operand builders: one block per stream.
template <typename W>
__global__ void k_step_norm_op(W *xw, const float *h, const float *nw, const float *nb,
                               float eps, int rms, int64_t D) {
    extern __shared__ float4 sm_[];
    float *xs = (float *)sm_;
    int b = blockIdx.x;
    int ldx = (int)((D + 3) & ~3);
    load_tile<1>(xs, ldx, h + (int64_t)b * D, D, 1);
    __syncthreads();
    norm_tile<1>(xs, ldx, 1, nw, nb, D, eps, rms);
    __syncthreads();
    for (int64_t c = threadIdx.x; c < D; c += blockDim.x) put(xw + (int64_t)b * D + c, xs[c]);
}

// u = silu(conv(state, xi)) from the in_proj output xz, the state shifted;
// u also to xw in the weight type.
template <typename W>
__global__ void k_step_conv_op(W *xw, float *u, const float *xz, float *conv, const float *cw,
                               const float *cb, int64_t E, int K, int64_t B) {
    GRID_LOOP(i, B * E) {
        int64_t b = i / E, e = i - b * E;
        float v = conv_step(conv + b * (K - 1) * E, xz[b * 2 * E + e], cw, cb, e, E, K);
        u[i] = v;
        put(xw + i, v);
    }
}

// ---------------------------------------------------------------------------
// Launchers.

static int g_step_sms = 0;

// step_geometry picks the stream tile SB (1, 2, 4 or 8: the smallest that
// holds B, at most kStepGemvMaxB, or what the shared memory allows) for
// vectors of cols values and the number of blocks along the rows.
static int step_geometry(int64_t cols, int64_t rows, int B, int *SB, dim3 *grid, size_t *smem) {
    if (!g_step_sms) CK(cudaDeviceGetAttribute(&g_step_sms, cudaDevAttrMultiProcessorCount, g_device));
    size_t row = (size_t)((cols + 3) & ~3) * sizeof(float);
    int sb = 1;
    while (sb < 8 && sb < kStepGemvMaxB && sb < B && (size_t)(2 * sb) * row <= kStepTileBytes)
        sb *= 2;
    if ((size_t)sb * row > kStepTileBytes) {
        set_err("step: a vector of %lld values does not fit shared memory", (long long)cols);
        return 1;
    }
    int tiles = (B + sb - 1) / sb;
    int64_t want = (4 * (int64_t)g_step_sms + tiles - 1) / tiles;
    int64_t most = (rows + kStepThreads / 32 - 1) / (kStepThreads / 32);
    int64_t bx = want < most ? want : most;
    if (bx < 1) bx = 1;
    *SB = sb;
    *grid = dim3((unsigned)bx, (unsigned)tiles);
    *smem = (size_t)sb * row;
    return 0;
}

// launch_ex launches kernel on the library's stream with one launch
// attribute.
template <typename... KArgs, typename... Args>
static int launch_ex(cudaLaunchAttribute attr, void (*kernel)(KArgs...), dim3 grid, dim3 block,
                     size_t smem, Args... args) {
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = grid;
    cfg.blockDim = block;
    cfg.dynamicSmemBytes = smem;
    cfg.stream = g_stream;
    cfg.attrs = &attr;
    cfg.numAttrs = 1;
    CK(cudaLaunchKernelEx(&cfg, kernel, ((KArgs)args)...));
    return 0;
}

// launch_pdl launches kernel with programmatic stream serialization, so
// that it may start (and prefetch its weights) while the kernel before it
// runs; the kernel calls pdl_wait before it reads anything that kernel
// writes.
template <typename... KArgs, typename... Args>
static int launch_pdl(void (*kernel)(KArgs...), dim3 grid, size_t smem, Args... args) {
    cudaLaunchAttribute attr = {};
    attr.id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr.val.programmaticStreamSerializationAllowed = 1;
    return launch_ex(attr, kernel, grid, dim3(kStepThreads), smem, args...);
}

template <typename W>
static bool aligned_rows(const W *w, int64_t cols) {
    return (uintptr_t)w % 16 == 0 && cols % Wv<W>::n == 0;
}

// Tile names a stream tile size for a kernel template.
template <int S>
struct Tile {
    static constexpr int value = S;
};

// launch_rows launches the row kernel pick(Tile<SB>{}) (a matrix-vector
// kernel of the step) with the geometry step_geometry picks for vectors of
// cols values and rows weight rows, passing it args.
template <class Pick, class... Args>
static int launch_rows(Pick pick, int64_t cols, int64_t rows, int B, Args... args) {
    int SB;
    dim3 grid;
    size_t smem;
    if (step_geometry(cols, rows, B, &SB, &grid, &smem)) return 1;
    auto go = [&](auto tile) -> int {
        auto kernel = pick(tile);
        if (allow_smem(kernel, smem)) return 1;
        if (launch_pdl(kernel, grid, smem, args...)) return 1;
        LAUNCHED();
        return 0;
    };
    switch (SB) {
    case 1: return go(Tile<1>{});
    case 2: return go(Tile<2>{});
    case 4: return go(Tile<4>{});
    default: return go(Tile<8>{});
    }
}

template <typename W>
static int step_in(const mb_step_args *a, const W *w) {
    return launch_rows([](auto t) { return k_step_in<W, decltype(t)::value>; }, a->D, 2 * a->E,
                       (int)a->B, a->xz, a->u, a->conv, a->h, a->norm_w, a->norm_b, a->eps,
                       a->rms, a->conv_w, a->conv_b, w, a->D, a->E, (int)a->K, (int)a->B,
                       aligned_rows(w, a->D));
}

template <typename W>
static int step_head(float *logits, const float *h, const float *nw, const float *nb, float eps,
                     int rms, const W *w, int64_t D, int64_t V, int B) {
    return launch_rows([](auto t) { return k_step_head<W, decltype(t)::value>; }, D, V, B,
                       logits, h, nw, nb, eps, rms, w, D, V, B, aligned_rows(w, D));
}

template <typename W>
static int step_x(float *xdbl, const float *u, const W *w, int64_t rows, int64_t E, int B) {
    return launch_rows([](auto t) { return k_step_x<W, decltype(t)::value>; }, E, rows, B, xdbl,
                       u, w, rows, E, B, aligned_rows(w, E));
}

template <typename W>
static int step_out(float *h, const float *g, const W *w, int64_t D, int64_t E, int B) {
    return launch_rows([](auto t) { return k_step_out<W, decltype(t)::value>; }, E, D, B, h, g,
                       w, D, E, B, aligned_rows(w, E));
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
                          int64_t D, int64_t B) {
    size_t smem = (size_t)D * sizeof(float);
    if (smem > kStepTileBytes) {
        set_err("step: a vector of %lld values does not fit shared memory", (long long)D);
        return 1;
    }
    if (allow_smem(k_step_norm_op<W>, smem)) return 1;
    k_step_norm_op<W><<<(unsigned)B, kStepThreads, smem, g_stream>>>(xw, h, nw, nb, eps, rms, D);
    LAUNCHED();
    return step_gemm(out, ldo, (const W *)xw, w, rows, D, B, 0.f);
}

template <typename W>
static int step_block(const mb_step_args *a) {
    int64_t B = a->B, D = a->D, E = a->E, N = a->N, R = a->R;
    int64_t ldbc = R + 2 * N;
    const W *win = (const W *)a->in_proj, *wx = (const W *)a->x_proj,
            *wdt = (const W *)a->dt_proj, *wout = (const W *)a->out_proj;
    W *xw = (W *)a->xw;
    if (B <= kStepGemvMaxB) {
        if (step_in(a, win)) return 1;
        if (step_x(a->xdbl, a->u, wx, ldbc, E, (int)B)) return 1;
        int64_t threads = 32 * B * E;
        dim3 grid((unsigned)((threads + kStepThreads - 1) / kStepThreads));
        if (launch_pdl(k_step_scan<W>, grid, 0, a->g, a->ssm, a->xz, a->xdbl, ldbc,
                       a->u, wdt, a->dt_bias, a->neg_a, a->dskip, E, (int)N, (int)R, (int)B))
            return 1;
        LAUNCHED();
        return step_out(a->h, a->g, wout, D, E, (int)B);
    }
    if (step_norm_gemm(a->xz, 2 * E, xw, a->h, a->norm_w, a->norm_b, a->eps, a->rms, win, 2 * E,
                       D, B))
        return 1;
    k_step_conv_op<W><<<grid_for(B * E), kThreads, 0, g_stream>>>(xw, a->u, a->xz, a->conv,
                                                                  a->conv_w, a->conv_b, E,
                                                                  (int)a->K, B);
    LAUNCHED();
    if (step_gemm(a->xdbl, ldbc, (const W *)xw, wx, ldbc, E, B, 0.f)) return 1;
    bool done;
    if (step_scan_quad(a, xw, wdt, ldbc, &done)) return 1;
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

extern "C" int mb_step_block(const mb_step_args *a) {
    ENTER();
    if (step_check(__func__, a->B, a->D, a->E, a->N, a->K, a->R, a->wtype)) return 1;
    if (a->wtype == 1) return step_block<__nv_bfloat16>(a);
    return step_block<float>(a);
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
