// whole.cuh — the whole decode step of one stream (every residual block and
// the head) as one kernel. It is part of kernels.cu's translation unit
// (included at its end, after step.cuh, whose helpers it uses).
//
// At batch 1 a step reads every weight once and does almost no arithmetic,
// so its time is the time the weights take to stream from memory plus the
// chain of dependent work between them. Launched per operation, the chain
// costs a launch and a ramp-up per kernel, and a kernel cannot start reading
// its weights before the one before it ends. Here one block runs on each
// SM for the whole step. Each block owns a fixed slice of every matrix: the
// rows of in_proj, x_proj (transposed), dt_proj of a range of channels, and
// a range of out_proj's rows. Since the weights never depend on the
// activations, a block copies its slices of layer l+2 into shared memory
// (the Hopper bulk copy engine, completion on an mbarrier) while it
// computes layer l, so memory streams weights all the time and the
// arithmetic reads shared memory. The block's recurrent states of layer
// l+2 come the same way (in every mode: memory latency under the weight
// stream is microseconds). Blocks meet at three grid-wide barriers
// per layer, where the data one block needs from the others is complete:
//
//   A. Norm(h) (every block, from the whole h); [xi, z] for the block's
//      channels; u = silu(conv(state, xi)); the block's partial sums of
//      x_proj over its channels, to a slot of its own          — barrier
//   B. r, Bt, Ct = the sum of every block's partial (a fixed order, so the
//      result does not depend on timing); for each channel Δ, the state
//      update and g = y·silu(z)                                 — barrier
//   C. h[d] += g·W_out[d]ᵀ for the block's rows                — barrier
//
// and the head after the last layer (each block a range of logits). When
// two layers' slices do not fit in shared memory (the 972M model), the
// blocks read their slices from global memory instead, after asking L2 for
// the next layer's at the start of each layer.
//
// The weights live in one buffer of the layout mb_whole_plan gives: bf16
// matrices with rows padded to a multiple of 8 values (16 bytes) by zeros,
// x_proj transposed so a channel's column is a row, and float32 copies of
// the layer's small parameters.
//
// Status: correct (the fused-step tests run it in both modes) but slower
// than the four kernels per block of step.cuh: 353M at 1.16 ms a step
// against 0.93 ms on an H100. whole_bench.cu (make -C cuda whole_bench)
// times each phase: most of the eleven cost 1.5-3 µs, barriers
// included, where a few hundred ns of work was expected. It is off unless
// MAMBABYTE_CUDA_WHOLE=1 (or =global).

#ifndef WHOLE_THREADS
#define WHOLE_THREADS 512
#endif
static const int kWholeThreads = WHOLE_THREADS;

// WHOLE_TIMING builds (development only) record, for block 0, the global
// timer and the SM's clock at the phase boundaries of each layer in
// g_whole_times and g_whole_clocks. WHOLE_THREADS sets the block size.
#ifdef WHOLE_TIMING
__device__ unsigned long long g_whole_times[4096 * 16];
__device__ unsigned long long g_whole_clocks[4096 * 16];
#define WT(l, k)                                                                       \
    do {                                                                               \
        if (blockIdx.x == 0 && threadIdx.x == 0) {                                     \
            unsigned long long t_;                                                     \
            asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t_));                     \
            g_whole_times[(l) * 16 + (k)] = t_;                                        \
            g_whole_clocks[(l) * 16 + (k)] = clock64();                                \
        }                                                                              \
    } while (0)
#else
#define WT(l, k) \
    do {         \
    } while (0)
#endif

static int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// Bulk copies and mbarriers (sm_90).
__device__ __forceinline__ uint32_t smem_u32(const void *p) {
    return (uint32_t)__cvta_generic_to_shared(p);
}

__device__ __forceinline__ void mbar_init(uint64_t *bar, uint32_t count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(smem_u32(bar)), "r"(count));
}

__device__ __forceinline__ void mbar_expect(uint64_t *bar, uint32_t bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(smem_u32(bar)),
                 "r"(bytes)
                 : "memory");
}

__device__ __forceinline__ void mbar_wait(uint64_t *bar, uint32_t parity) {
    uint32_t done = 0;
    while (!done) {
        asm volatile(
            "{ .reg .pred p; mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2; "
            "selp.u32 %0, 1, 0, p; }"
            : "=r"(done)
            : "r"(smem_u32(bar)), "r"(parity)
            : "memory");
    }
}

__device__ __forceinline__ void bulk_copy(void *dst, const void *src, uint32_t bytes,
                                          uint64_t *bar) {
    asm volatile(
        "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, "
        "[%3];" ::"r"(smem_u32(dst)),
        "l"(src), "r"(bytes), "r"(smem_u32(bar))
        : "memory");
}

__device__ __forceinline__ void bulk_prefetch(const void *src, uint32_t bytes) {
    if (bytes) asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(src), "r"(bytes));
}

// grid_sync is a barrier of all the kernel's blocks (all resident: the
// launch is cooperative). bar counts arrivals over the whole launch; the
// k-th barrier waits for k·gridDim.x of them. Writes before it, to global
// memory, are seen after it by loads that bypass L1 (__ldcg).
__device__ __forceinline__ void grid_sync(unsigned *bar, unsigned *k) {
    __syncthreads();
    unsigned target = ++*k * gridDim.x;
    if (threadIdx.x == 0) {
        __threadfence();
        atomicAdd(bar, 1u);
        unsigned seen;
        do {
            asm volatile("ld.relaxed.gpu.global.u32 %0, [%1];" : "=r"(seen) : "l"(bar) : "memory");
        } while (seen < target);
        __threadfence();
    }
    __syncthreads();
}

// block_norm sets xn (Dp values, zero past D) to Norm(h) for the D values
// of h in global memory. The statistics are one pass over the values less
// the first (LayerNorm), which keeps the variance accurate.
__device__ void block_norm(float *xn, const float *h, int D, int Dp, const float *w,
                           const float *b, float eps, int rms, float *red) {
    int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
    float k = rms ? 0.f : __ldcg(h);
    float s1 = 0.f, s2 = 0.f;
#pragma unroll 4
    for (int i = threadIdx.x; i < Dp; i += blockDim.x) {
        float x = i < D ? __ldcg(h + i) : 0.f;
        xn[i] = x;
        float d = i < D ? x - k : 0.f;
        s1 += d, s2 += d * d;
    }
    s1 = warp_sum(s1), s2 = warp_sum(s2);
    if (lane == 0) red[2 * wid] = s1, red[2 * wid + 1] = s2;
    __syncthreads();
    s1 = 0.f, s2 = 0.f;
    for (int i = 0; i < nw; i++) s1 += red[2 * i], s2 += red[2 * i + 1];
    double m1 = (double)s1 / D, var = rms ? (double)s2 / D : (double)s2 / D - m1 * m1;
    float mu = rms ? 0.f : (float)(k + m1);
    float rs = (float)(1.0 / sqrt((var > 0 ? var : 0.0) + (double)eps));
    for (int i = threadIdx.x; i < D; i += blockDim.x)
        xn[i] = rms ? xn[i] * rs * w[i] : (xn[i] - mu) * rs * w[i] + b[i];
    __syncthreads();
}

// dot8 adds to acc the dot product of 8 bf16 values (one 16-byte load) with
// 8 floats of x.
__device__ __forceinline__ float dot8(uint4 v, const float *x, float acc) {
    float wv[8];
    Wv<__nv_bfloat16>::unpack(v, wv);
    float4 x0 = *(const float4 *)x, x1 = *(const float4 *)(x + 4);
    acc += wv[0] * x0.x + wv[1] * x0.y;
    acc += wv[2] * x0.z + wv[3] * x0.w;
    acc += wv[4] * x1.x + wv[5] * x1.y;
    acc += wv[6] * x1.z + wv[7] * x1.w;
    return acc;
}

// bf reads one bf16 value (shared or global memory) as float.
__device__ __forceinline__ float bf(const __nv_bfloat16 *p) { return Wv<__nv_bfloat16>::one(p); }

// rows_dot computes, for the nrows rows row(r) (bf16, ld values, ld a
// multiple of 8, in shared or global memory), the dot product with x (ld
// floats in shared memory) and hands it to store(r, value). Rows are spread
// over the block's warps; when there are fewer rows than warps, each row is
// split over several warps whose sums meet in red (a float per warp). All
// threads of the block call it.
template <class Row, class Store>
__device__ __forceinline__ void rows_dot(Row row, int nrows, int ld, const float *x, float *red,
                                         Store store) {
    int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
    if (nrows <= 0) return;
    int parts = nrows >= nw ? 1 : nw / nrows;
    int rstep = nw / parts, part = wid % parts, n8 = ld / 8;
    if (wid < parts * rstep) {
        for (int r = wid / parts; r < nrows; r += rstep) {
            const __nv_bfloat16 *w = row(r);
            float acc = 0.f;
            for (int c = part * 32 + lane; c < n8; c += 4 * parts * 32) {
                uint4 v[4];
#pragma unroll
                for (int q = 0; q < 4; q++) {
                    int cq = c + q * parts * 32;
                    if (cq < n8) v[q] = *(const uint4 *)(w + cq * 8);
                }
#pragma unroll
                for (int q = 0; q < 4; q++) {
                    int cq = c + q * parts * 32;
                    if (cq < n8) acc = dot8(v[q], x + cq * 8, acc);
                }
            }
            acc = warp_sum(acc);
            if (lane == 0) {
                if (parts == 1)
                    store(r, acc);
                else
                    red[r * parts + part] = acc;
            }
        }
    }
    if (parts > 1) {
        __syncthreads();
        if ((int)threadIdx.x < nrows) {
            float s = 0.f;
            for (int p = 0; p < parts; p++) s += red[threadIdx.x * parts + p];
            store((int)threadIdx.x, s);
        }
        __syncthreads();
    }
}

// The kernel's arguments: the shape, the layout, where shared memory holds
// what.
struct WholeArgs {
    const char *w;
    mb_whole_layout lay;
    int L, D, E, N, K, R, V, J;
    int Dp, Ep, Jp, Rp, Cp;
    float eps;
    int rms;
    float *h, *state, *logits, *part, *g;
    unsigned *bar;
    int64_t lstride;  // floats of state per layer
    int cmax, rmax;   // most channels, out_proj rows of a block
    int staged;       // weight slices through shared memory
    // Byte offsets of a slot's pieces, and of the slots, in shared memory.
    int s_in, s_x, s_dt, s_out, s_chan, s_norm, slot_bytes, slots_at, act_at;
    // A slot's copies of the states, first in the slot: K-1 rows of csw
    // floats (conv) from byte 0, then the SSM state from byte s_ssm.
    int csw, s_ssm;
};

// StateAt is where a block's states of one layer lie: in global memory,
// and in a slot, where they start off floats into the copied range (the
// copies start on a 16-byte boundary before them).
struct StateAt {
    float *conv, *ssm;
};

__device__ __forceinline__ StateAt state_at(const WholeArgs &p, int l) {
    StateAt st;
    st.conv = p.state + (int64_t)l * p.lstride;
    st.ssm = st.conv + (int64_t)(p.K - 1) * p.E;
    return st;
}

__device__ __forceinline__ const float *align16(const float *q) {
    return (const float *)((uintptr_t)q & ~(uintptr_t)15);
}

__device__ __forceinline__ int misalign(const float *q) { return (int)(((uintptr_t)q & 15) / 4); }

// Slices is where a block reads its slices of one layer: xi rows then z
// rows (ld Dp), x_proj columns (ld Jp), dt_proj rows (ld Rp), out_proj rows
// (ld Ep), its channels' records (Cp floats: conv weights (K), conv bias,
// dt bias, Dskip, A (N)), and the norm's weight and bias (D each, the bias
// Dp values after the weight).
struct Slices {
    const __nv_bfloat16 *xi, *z, *xt, *dt, *out;
    const float *chan, *nw;
};

// Owned ranges of block b: channels [c0, c1), out_proj rows [r0, r1).
__device__ __forceinline__ void owned(const WholeArgs &p, int *c0, int *c1, int *r0, int *r1) {
    int64_t b = blockIdx.x, G = gridDim.x;
    *c0 = (int)(b * p.E / G), *c1 = (int)((b + 1) * p.E / G);
    *r0 = (int)(b * p.D / G), *r1 = (int)((b + 1) * p.D / G);
}

__device__ __forceinline__ Slices global_slices(const WholeArgs &p, int l, int c0, int r0) {
    const char *b = p.w + (int64_t)l * p.lay.layer_bytes;
    const __nv_bfloat16 *in = (const __nv_bfloat16 *)(b + p.lay.in_proj);
    Slices s;
    s.xi = in + (int64_t)c0 * p.Dp;
    s.z = in + ((int64_t)p.E + c0) * p.Dp;
    s.xt = (const __nv_bfloat16 *)(b + p.lay.x_proj_t) + (int64_t)c0 * p.Jp;
    s.dt = (const __nv_bfloat16 *)(b + p.lay.dt_proj) + (int64_t)c0 * p.Rp;
    s.out = (const __nv_bfloat16 *)(b + p.lay.out_proj) + (int64_t)r0 * p.Ep;
    s.chan = (const float *)(b + p.lay.chan) + (int64_t)c0 * p.Cp;
    s.nw = (const float *)(b + p.lay.norm_w);
    return s;
}

__device__ __forceinline__ Slices slot_slices(const WholeArgs &p, char *smem, int slot) {
    char *s0 = smem + p.slots_at + slot * p.slot_bytes;
    Slices s;
    s.xi = (const __nv_bfloat16 *)(s0 + p.s_in);
    s.z = s.xi + (int64_t)p.cmax * p.Dp;
    s.xt = (const __nv_bfloat16 *)(s0 + p.s_x);
    s.dt = (const __nv_bfloat16 *)(s0 + p.s_dt);
    s.out = (const __nv_bfloat16 *)(s0 + p.s_out);
    s.chan = (const float *)(s0 + p.s_chan);
    s.nw = (const float *)(s0 + p.s_norm);
    return s;
}

// Bytes of each piece of a block's slices of one layer.
struct SliceBytes {
    uint32_t in, x, dt, out, chan, norm;
};

__device__ __forceinline__ SliceBytes slice_bytes(const WholeArgs &p, int nc, int nr) {
    SliceBytes b;
    b.in = (uint32_t)nc * p.Dp * 2, b.x = (uint32_t)nc * p.Jp * 2;
    b.dt = (uint32_t)nc * p.Rp * 2, b.out = (uint32_t)nr * p.Ep * 2;
    b.chan = (uint32_t)nc * p.Cp * 4, b.norm = (uint32_t)p.Dp * 8;
    return b;
}

// fetch (one thread) starts the copies of the block's states of layer l,
// and when staged its slices of the weights, into slot slot; bars[slot]
// completes when they have landed.
__device__ void fetch(const WholeArgs &p, char *smem, uint64_t *bars, int l, int slot) {
    int c0, c1, r0, r1;
    owned(p, &c0, &c1, &r0, &r1);
    int nc = c1 - c0;
    uint64_t *bar = &bars[slot];
    char *s0 = smem + p.slots_at + slot * p.slot_bytes;
    StateAt st = state_at(p, l);
    // The ranges of the states: rows k < K-1 of the conv state, then (k =
    // K-1) the SSM state, each widened to 16-byte boundaries as bulk
    // copies need.
    auto range = [&](int k, const float **a, void **dst) -> uint32_t {
        const float *from = k < p.K - 1 ? st.conv + (int64_t)k * p.E + c0 : st.ssm + (int64_t)c0 * p.N;
        const float *to = k < p.K - 1 ? st.conv + (int64_t)k * p.E + c1 : st.ssm + (int64_t)c1 * p.N;
        *a = align16(from);
        *dst = s0 + (k < p.K - 1 ? (int64_t)k * p.csw * 4 : p.s_ssm);
        return (uint32_t)((align16(to + 3) - *a) * 4);
    };
    const float *a;
    void *d;
    uint32_t total = 0;
    if (nc)
        for (int k = 0; k < p.K; k++) total += range(k, &a, &d);
    SliceBytes nb = slice_bytes(p, nc, r1 - r0);
    Slices g, s;
    if (p.staged) {
        g = global_slices(p, l, c0, r0), s = slot_slices(p, smem, slot);
        total += 2 * nb.in + nb.x + nb.dt + nb.out + nb.chan + nb.norm;
    }
    asm volatile("fence.proxy.async.shared::cta;" ::: "memory");
    mbar_expect(bar, total);
    if (nc)
        for (int k = 0; k < p.K; k++) {
            uint32_t len = range(k, &a, &d);
            if (len) bulk_copy(d, a, len, bar);
        }
    if (!p.staged) return;
    if (nc) {
        bulk_copy((void *)s.xi, g.xi, nb.in, bar);
        bulk_copy((void *)s.z, g.z, nb.in, bar);
        bulk_copy((void *)s.xt, g.xt, nb.x, bar);
        bulk_copy((void *)s.dt, g.dt, nb.dt, bar);
        bulk_copy((void *)s.chan, g.chan, nb.chan, bar);
    }
    if (nb.out) bulk_copy((void *)s.out, g.out, nb.out, bar);
    bulk_copy((void *)s.nw, g.nw, nb.norm, bar);
}

// prefetch (one thread) asks L2 for layer l's slices.
__device__ void prefetch(const WholeArgs &p, int l) {
    int c0, c1, r0, r1;
    owned(p, &c0, &c1, &r0, &r1);
    SliceBytes n = slice_bytes(p, c1 - c0, r1 - r0);
    Slices g = global_slices(p, l, c0, r0);
    bulk_prefetch(g.xi, n.in);
    bulk_prefetch(g.z, n.in);
    bulk_prefetch(g.xt, n.x);
    bulk_prefetch(g.dt, n.dt);
    bulk_prefetch(g.out, n.out);
    bulk_prefetch(g.chan, n.chan);
    bulk_prefetch(g.nw, n.norm);
}

__global__ void __launch_bounds__(kWholeThreads, 1)
    k_step_whole(const __grid_constant__ WholeArgs p) {
    extern __shared__ __align__(128) char smem[];
    uint64_t *bars = (uint64_t *)smem;
    float *red = (float *)(smem + p.act_at);  // 4·max(threads, Jp)
    float *xn = red + 4 * (p.Jp > (int)blockDim.x ? p.Jp : (int)blockDim.x);  // Dp: Norm(h)
    float *gv = xn + p.Dp;                 // Ep: g
    float *xdbl = gv + p.Ep;               // Jp: r, Bt, Ct
    float *u = xdbl + p.Jp;                // cmax: xi, then u
    float *z = u + p.cmax;                 // cmax
    float *hown = z + p.cmax;              // rmax: the block's rows of h
    int tid = threadIdx.x, lane = tid & 31, wid = tid >> 5, nw = blockDim.x >> 5;
    int c0, c1, r0, r1;
    owned(p, &c0, &c1, &r0, &r1);
    int nc = c1 - c0, nr = r1 - r0;
    unsigned nbar = 0;
    const int E = p.E, N = p.N, R = p.R, K = p.K, Cp = p.Cp;

    if (tid == 0) {
        mbar_init(&bars[0], 1);
        mbar_init(&bars[1], 1);
        asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    }
    __syncthreads();
    if (tid == 0) {
        if (!p.staged) prefetch(p, 0);
        fetch(p, smem, bars, 0, 0);
        if (p.L > 1) fetch(p, smem, bars, 1, 1);
    }
    for (int r = tid; r < nr; r += blockDim.x) hown[r] = p.h[r0 + r];

    for (int l = 0; l < p.L; l++) {
        StateAt st = state_at(p, l);
        float *conv = st.conv, *ssm = st.ssm;
        Slices s;
        if (p.staged) {
            s = slot_slices(p, smem, l & 1);
        } else {
            s = global_slices(p, l, c0, r0);
            if (tid == 0 && l + 1 < p.L) prefetch(p, l + 1);
        }
        if (tid == 0 && l + 1 == p.L) {
            // The head's rows next.
            int64_t b = blockIdx.x, G = gridDim.x;
            int v0 = (int)(b * p.V / G), v1 = (int)((b + 1) * p.V / G);
            bulk_prefetch(p.w + p.lay.head + (int64_t)v0 * p.Dp * 2, (uint32_t)(v1 - v0) * p.Dp * 2);
            bulk_prefetch(p.w + p.lay.norm_f_w, (uint32_t)p.Dp * 8);
        }
        // The block's states in the slot (see fetch).
        const float *slot = (const float *)(smem + p.slots_at + (l & 1) * p.slot_bytes);
        const float *ss = slot + p.s_ssm / 4 + misalign(ssm + (int64_t)c0 * N);
        int csw = p.csw;

        // A. Norm(h); [xi, z]; u; partial x_proj.
        WT(l, 0);
        mbar_wait(&bars[l & 1], (l >> 1) & 1);
        WT(l, 1);
        block_norm(xn, p.h, p.D, p.Dp, s.nw, s.nw + p.Dp, p.eps, p.rms, red);
        WT(l, 2);
        rows_dot([&](int r) { return r < nc ? s.xi + (int64_t)r * p.Dp : s.z + (int64_t)(r - nc) * p.Dp; },
                 2 * nc, p.Dp, xn, red, [&](int r, float v) {
                     if (r < nc)
                         u[r] = v;  // xi for now
                     else
                         z[r - nc] = v;
                 });
        __syncthreads();
        WT(l, 3);
        // u = silu(conv(state, xi)), the state shifted.
        for (int c = tid; c < nc; c += blockDim.x) {
            const float *rec = s.chan + (int64_t)c * Cp;
            float x = u[c], acc = rec[K];
            // Each row of the conv state was copied from the 16-byte
            // boundary before its first channel.
            float v[kStepMaxK];
#pragma unroll
            for (int k = 0; k < kStepMaxK; k++) {
                if (k < K - 1) {
                    const float *row = conv + (int64_t)k * E + c0;
                    v[k] = (slot + k * csw + misalign(row))[c];
                    acc += rec[k] * v[k];
                }
            }
            acc += rec[K - 1] * x;
#pragma unroll
            for (int k = 0; k + 1 < kStepMaxK; k++)
                if (k + 1 < K - 1) conv[(int64_t)k * E + c0 + c] = v[k + 1];
            if (K > 1) conv[(int64_t)(K - 2) * E + c0 + c] = x;
            u[c] = silu_(acc);
        }
        __syncthreads();
        for (int j = tid; j < p.Jp; j += blockDim.x) {
            float acc = 0.f;
            if (j < p.J)
                for (int c = 0; c < nc; c++) acc += bf(s.xt + (int64_t)c * p.Jp + j) * u[c];
            __stcg(p.part + (int64_t)blockIdx.x * p.Jp + j, acc);
        }
        WT(l, 4);
        grid_sync(p.bar, &nbar);
        WT(l, 5);

        // B. xdbl = Σ partials, in a fixed order; the scan of the block's
        // channels.
        {
            int q4 = p.Jp / 4, groups = q4 < (int)blockDim.x ? (int)blockDim.x / q4 : 1;
            for (int t = tid; t < groups * q4; t += blockDim.x) {
                int j4 = t % q4, grp = t / q4;
                float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll 8
                for (int b = grp; b < (int)gridDim.x; b += groups) {
                    float4 v = __ldcg((const float4 *)(p.part + (int64_t)b * p.Jp) + j4);
                    acc.x += v.x, acc.y += v.y, acc.z += v.z, acc.w += v.w;
                }
                ((float4 *)red)[t] = acc;
            }
            __syncthreads();
            for (int j = tid; j < p.Jp; j += blockDim.x) {
                float acc = 0.f;
                for (int grp = 0; grp < groups; grp++) acc += red[grp * p.Jp + j];
                xdbl[j] = acc;
            }
            __syncthreads();
        }
        WT(l, 6);
        for (int c = wid; c < nc; c += nw) {
            int e = c0 + c;
            const float *rec = s.chan + (int64_t)c * Cp;
            float raw = 0.f;
            for (int r = lane; r < R; r += 32) raw += bf(s.dt + (int64_t)c * p.Rp + r) * xdbl[r];
            raw = warp_sum(raw);
            float delta = softplus_(raw + rec[K + 1]);
            float uu = u[c], du = delta * uu;
            float yp = 0.f;
            for (int n = lane; n < N; n += 32) {
                float v = expf(delta * rec[K + 3 + n]) * ss[c * N + n] + du * xdbl[R + n];
                ssm[(int64_t)e * N + n] = v;
                yp += xdbl[R + N + n] * v;
            }
            yp = warp_sum(yp);
            if (lane == 0) __stcg(p.g + e, (yp + rec[K + 2] * uu) * silu_(z[c]));
        }
        WT(l, 7);
        grid_sync(p.bar, &nbar);
        WT(l, 8);

        // C. h += g·W_outᵀ for the block's rows.
        for (int i = tid; i < p.Ep / 4; i += blockDim.x)
            ((float4 *)gv)[i] = __ldcg((const float4 *)p.g + i);
        __syncthreads();
        WT(l, 9);
        rows_dot([&](int r) { return s.out + (int64_t)r * p.Ep; }, nr, p.Ep, gv, red,
                 [&](int r, float v) {
                     hown[r] += v;
                     __stcg(p.h + r0 + r, hown[r]);
                 });
        __syncthreads();
        if (tid == 0 && l + 2 < p.L) fetch(p, smem, bars, l + 2, l & 1);
        WT(l, 10);
        grid_sync(p.bar, &nbar);
        WT(l, 11);
    }

    // The head: logits for the block's range of the vocabulary.
    int64_t b = blockIdx.x, G = gridDim.x;
    int v0 = (int)(b * p.V / G), v1 = (int)((b + 1) * p.V / G);
    const float *nf = (const float *)(p.w + p.lay.norm_f_w);
    block_norm(xn, p.h, p.D, p.Dp, nf, nf + p.Dp, p.eps, p.rms, red);
    const __nv_bfloat16 *head = (const __nv_bfloat16 *)(p.w + p.lay.head);
    rows_dot([&](int r) { return head + (int64_t)(v0 + r) * p.Dp; }, v1 - v0, p.Dp, xn, red,
             [&](int r, float v) { p.logits[v0 + r] = v; });
}

// ---------------------------------------------------------------------------
// Host side.

static int g_whole_sms = 0;

extern "C" int mb_whole_plan(const mb_whole_shape *s, mb_whole_layout *o) {
    ENTER();
    if (s->L < 1 || s->D < 1 || s->E < 1 || s->N < 1 || s->K < 1 || s->R < 1 || s->V < 1 ||
        s->L > (1 << 20) || s->D > (1 << 20) || s->E > (1 << 20) || s->N > 1024 ||
        s->K > kStepMaxK || s->R > 65536 || s->V > (1 << 24)) {
        set_err("%s: sizes out of range (L=%lld D=%lld E=%lld N=%lld K=%lld R=%lld V=%lld)",
                __func__, (long long)s->L, (long long)s->D, (long long)s->E, (long long)s->N,
                (long long)s->K, (long long)s->R, (long long)s->V);
        return 1;
    }
    if (!g_whole_sms)
        CK(cudaDeviceGetAttribute(&g_whole_sms, cudaDevAttrMultiProcessorCount, g_device));
    mb_whole_layout l = {};
    l.Dp = round_up(s->D, 8), l.Ep = round_up(s->E, 8), l.Jp = round_up(s->R + 2 * s->N, 8);
    l.Rp = round_up(s->R, 8), l.Cp = round_up(s->K + 3 + s->N, 4);
    int64_t off = 0;
    auto sec = [&](int64_t bytes) {
        int64_t at = off;
        off += round_up(bytes, 16);
        return at;
    };
    l.in_proj = sec(2 * s->E * l.Dp * 2);
    l.x_proj_t = sec(s->E * l.Jp * 2);
    l.dt_proj = sec(s->E * l.Rp * 2);
    l.out_proj = sec(s->D * l.Ep * 2);
    l.chan = sec(s->E * l.Cp * 4);
    l.norm_w = sec(l.Dp * 4);
    l.norm_b = sec(l.Dp * 4);
    l.layer_bytes = off;
    off = s->L * l.layer_bytes;
    l.head = sec(s->V * l.Dp * 2);
    l.norm_f_w = sec(l.Dp * 4);
    l.norm_f_b = sec(l.Dp * 4);
    l.total = off;
    l.scratch_floats = (int64_t)g_whole_sms * l.Jp + l.Ep + 4;
    *o = l;
    return 0;
}

// dst (rows, ld) = src[r·rs + c·cs] for c < cols, as bf16 or float32.
template <typename T>
__global__ void k_pack_2d(T *dst, int64_t ld, const float *src, int64_t rs, int64_t cs,
                          int64_t rows, int64_t cols) {
    GRID_LOOP(i, rows * cols) {
        int64_t r = i / cols, c = i - r * cols;
        float v = src[r * rs + c * cs];
        if constexpr (sizeof(T) == 2)
            dst[r * ld + c] = __float2bfloat16(v);
        else
            dst[r * ld + c] = v;
    }
}

extern "C" int mb_pack_2d(void *dst, int32_t bf16, int64_t ld, const float *src, int64_t rs,
                          int64_t cs, int64_t rows, int64_t cols) {
    ENTER();
    if (rows < 0 || cols < 0 || ld < cols || (bf16 != 0 && bf16 != 1)) {
        set_err("%s: sizes out of range (rows=%lld cols=%lld ld=%lld bf16=%d)", __func__,
                (long long)rows, (long long)cols, (long long)ld, bf16);
        return 1;
    }
    int64_t n = rows * cols;
    if (n == 0) return 0;
    // One-off conversions when the weights change: a grid loop is enough.
    if (bf16)
        k_pack_2d<<<grid_for(n), kThreads, 0, g_stream>>>((__nv_bfloat16 *)dst, ld, src, rs, cs,
                                                          rows, cols);
    else
        k_pack_2d<<<grid_for(n), kThreads, 0, g_stream>>>((float *)dst, ld, src, rs, cs, rows,
                                                          cols);
    LAUNCHED();
    return 0;
}

extern "C" int mb_step_whole(const mb_whole_shape *s, const void *weights, float *h,
                             float *state, float *logits, float *scratch) {
    ENTER();
    mb_whole_layout lay;
    if (mb_whole_plan(s, &lay)) return 1;
    int G = g_whole_sms;
    WholeArgs p = {};
    p.w = (const char *)weights;
    p.lay = lay;
    p.L = (int)s->L, p.D = (int)s->D, p.E = (int)s->E, p.N = (int)s->N, p.K = (int)s->K;
    p.R = (int)s->R, p.V = (int)s->V, p.J = (int)(s->R + 2 * s->N);
    p.Dp = (int)lay.Dp, p.Ep = (int)lay.Ep, p.Jp = (int)lay.Jp, p.Rp = (int)lay.Rp;
    p.Cp = (int)lay.Cp;
    p.eps = s->eps, p.rms = s->rms;
    p.h = h, p.state = state, p.logits = logits;
    p.part = scratch, p.g = scratch + (int64_t)G * lay.Jp;
    p.bar = (unsigned *)(p.g + lay.Ep);
    p.lstride = (s->K - 1) * s->E + s->E * s->N;
    p.cmax = (int)((s->E + G - 1) / G), p.rmax = (int)((s->D + G - 1) / G);
    // Shared memory: two mbarriers, then (staged) two slots of weight
    // slices, then the activations.
    // A slot: the states (each copied range may start up to 3 floats
    // early and end up to 3 late), then when staged the weight slices.
    p.csw = (int)round_up(p.cmax + 8, 4);
    p.s_ssm = (int)((int64_t)(p.K - 1) * p.csw * 4);
    int64_t states = p.s_ssm + round_up((int64_t)p.cmax * p.N + 8, 4) * 4;
    int64_t in = 2 * (int64_t)p.cmax * p.Dp * 2, x = (int64_t)p.cmax * p.Jp * 2,
            dt = (int64_t)p.cmax * p.Rp * 2, out = (int64_t)p.rmax * p.Ep * 2,
            chan = (int64_t)p.cmax * p.Cp * 4, norm = (int64_t)p.Dp * 8;
    p.s_in = (int)states, p.s_x = (int)(states + in), p.s_dt = p.s_x + (int)x;
    p.s_out = p.s_dt + (int)dt, p.s_chan = p.s_out + (int)out, p.s_norm = p.s_chan + (int)chan;
    int64_t slot = round_up(states + in + x + dt + out + chan + norm, 128);
    int64_t act = (4 * (int64_t)(p.Jp > kWholeThreads ? p.Jp : kWholeThreads) + p.Dp + p.Ep +
                   p.Jp + 2 * p.cmax + p.rmax) * 4;
    int optin = 0;
    CK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, g_device));
    p.staged = s->mode == 0 && 128 + 2 * slot + act <= optin;
    if (!p.staged) slot = round_up(states, 128);
    p.slots_at = 128;
    p.slot_bytes = (int)slot;
    p.act_at = 128 + 2 * p.slot_bytes;
    size_t smem = (size_t)(p.act_at + act);
    if ((int64_t)smem > optin) {
        set_err("%s: %zu bytes of shared memory needed, %d available", __func__, smem, optin);
        return 1;
    }
    if (allow_smem(k_step_whole, smem)) return 1;
    CK(cudaMemsetAsync(p.bar, 0, sizeof(unsigned), g_stream));
    cudaLaunchAttribute attr = {};
    attr.id = cudaLaunchAttributeCooperative;
    attr.val.cooperative = 1;
    if (launch_ex(&attr, 1, k_step_whole, dim3((unsigned)G), dim3(kWholeThreads), smem, p)) return 1;
    LAUNCHED();
    return 0;
}
