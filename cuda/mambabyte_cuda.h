/*
 * mambabyte_cuda.h — the C ABI of libmambabyte_cuda.so, the CUDA kernels of
 * the MambaByte backend (internal/backend/cuda loads it at run time with
 * purego; no cgo).
 *
 * Glossary: B batch, T time, D d_model, E d_inner, N d_state, R dt_rank,
 * K d_conv, V vocab. Arrays are row-major float32 in device memory; "ld" is a
 * row stride in values. Every operation has the semantics of the CPU kernel
 * of the same name in internal/backend/cpu (which document shapes, the
 * pointers that may be NULL, and which outputs are overwritten and which are
 * accumulated into).
 *
 * Conventions:
 *   - Every function returns 0 on success and nonzero on failure; then
 *     mb_last_error() describes the failure. mb_init returns 2 when there is
 *     no usable CUDA driver or GPU.
 *   - Device pointers are passed as float* (or void*); host pointers are
 *     named *_host. Sizes are int64_t.
 *   - All work runs on one stream created by mb_init, in call order
 *     (kernels, cuBLAS, copies and memsets alike); functions returning host
 *     values (mb_cross_entropy, mb_sum_squares, mb_memcpy_d2h) and mb_sync
 *     wait for it. Not thread-safe: one caller at a time.
 *   - Between mb_graph_begin and mb_graph_end the work is recorded into a
 *     CUDA graph instead of run. Functions that return host values or
 *     upload from the host (the _host arguments) fail then, except that
 *     mb_embed_fwd_staged reads ids staged on the device by mb_stage_ids.
 *   - No function takes more than 15 arguments (purego's limit); wider calls
 *     take a struct by pointer.
 */
#ifndef MAMBABYTE_CUDA_H
#define MAMBABYTE_CUDA_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Set up the library on a device: selects it, creates the cuBLAS handle. A
 * second call with the same device is a no-op. sync != 0 synchronises after
 * every launch so errors are reported by the operation that caused them. */
int mb_init(int device, int sync);
/* The message of the last failure (static storage). */
const char *mb_last_error(void);
/* "name (sm_XY, S SMs, G GiB)" of the device after mb_init. */
const char *mb_device_name(void);
/* The ABI version (MB_ABI_VERSION) this library implements. */
int mb_abi_version(void);
#define MB_ABI_VERSION 16

/* Memory. mb_malloc returns 0 on failure (or bytes == 0). */
uintptr_t mb_malloc(int64_t bytes);
int mb_free(void *p);
int mb_memcpy_h2d(void *dst, const void *src_host, int64_t bytes);
int mb_memcpy_d2h(void *dst_host, const void *src, int64_t bytes);
int mb_memcpy_d2d(void *dst, const void *src, int64_t bytes);
int mb_memset(void *dst, int value, int64_t bytes);
int mb_sync(void);
/* Device memory: *free_host and *total_host bytes (cudaMemGetInfo; every
 * process on the device counts). */
int mb_mem_info(int64_t *free_host, int64_t *total_host);

/* CUDA graphs. mb_graph_begin starts recording the library's stream;
 * mb_graph_end stops and returns an executable graph in *exec_out (its
 * kernels keep the device pointers they were given: those buffers must stay
 * allocated while the graph is used). mb_graph_launch replays it on the
 * stream, asynchronously; mb_graph_free waits for the stream, then destroys
 * it. No allocation or free may happen during a capture. */
int mb_graph_begin(void);
int mb_graph_end(uintptr_t *exec_out);
int mb_graph_launch(uintptr_t exec);
int mb_graph_free(uintptr_t exec);
/* Upload n ids (at most 2^20) into the library's staging buffer, whose device
 * address never changes, in stream order: a graph launched afterwards reads
 * them through mb_embed_fwd_staged. */
int mb_stage_ids(const int32_t *ids_host, int64_t n);

/* C = alpha·op(A)·op(B) + beta·C, row-major, op(A) (m,k), op(B) (k,n),
 * C (m,n). mode 0: float32 (cublasSgemm); mode 1: bf16 tensor-core math with
 * float32 accumulation and storage (CUBLAS_COMPUTE_32F_FAST_16BF). beta == 0
 * overwrites C (NaNs in C are ignored). A·Bᵀ with m <= 8 (the decode step)
 * runs a kernel of the library's own that reads B once, in float32 in both
 * modes. In mode 1 a product with every side at least 512 runs on bf16 copies
 * of its operands, and the copy of A is kept for the next mb_gemm with the
 * same A (pointer, shape, stride) when no other mb_ call ran in between:
 * memory written by other means (NCCL) must not be such an A.
 * mode may add MB_GEMM_A16 and MB_GEMM_B16: that operand is stored in bf16
 * (lda, ldb in its elements), as the kernels with an out16-style flag write
 * GEMM operands; the product then runs on bf16 tensor cores, a float32
 * other operand on a bf16 copy. MB_GEMM_C16: C is stored in bf16 (ldc in its
 * elements), beta must be 0, and the product runs on bf16 operands as
 * with MB_GEMM_A16. */
#define MB_GEMM_BF16 1
#define MB_GEMM_A16 2
#define MB_GEMM_B16 4
#define MB_GEMM_C16 8
int mb_gemm(int transA, int transB, int64_t m, int64_t n, int64_t k, float alpha,
            const void *a, int64_t lda, const void *b, int64_t ldb, float beta,
            void *c, int64_t ldc, int mode);
/* The smallest side at which bf16-mode GEMMs run on bf16 operands (0: they
 * never do, MAMBABYTE_CUDA_GEMM_PACK=0): an operand only such GEMMs read
 * may as well be stored in bf16. */
int64_t mb_gemm_operand_min(void);

/* out (n,D) = rows ids[i] of w (V,D). */
int mb_embed_fwd(float *out, const int32_t *ids_host, const float *w, int64_t n, int64_t D);
/* mb_embed_fwd with the ids last staged by mb_stage_ids (capturable). */
int mb_embed_fwd_staged(float *out, const float *w, int64_t n, int64_t D);
/* dw (V,D) row ids[i] += dout row i. */
int mb_embed_bwd(float *dw, const float *dout, const int32_t *ids_host, int64_t n, int64_t D);

/* LayerNorm (rms 0) or RMSNorm (rms 1) of x (rows,D); mean, rstd (rows)
 * may be NULL; b unused for RMSNorm. out16: out is bf16 (a GEMM operand),
 * else float32. */
int mb_norm_fwd(void *out, float *mean, float *rstd, const float *x, const float *w,
                const float *b, int64_t rows, int64_t D, float eps, int rms, int out16);
/* dx += ..., dw += ..., db += ... (db unused for RMSNorm). copy16: also
 * round the new dx to bf16 as mb_gemm's copy of its A operand, so that the
 * next mb_gemm with A = dx (rows, D; row stride D) in bf16 mode takes it
 * instead of making one (as a second product of the same A does). */
int mb_norm_bwd(float *dx, float *dw, float *db, const float *dout, const float *x,
                const float *w, const float *mean, const float *rstd, int64_t rows,
                int64_t D, int rms, int copy16);

/* Causal depthwise conv + SiLU; xi (B,T,E) row stride ldx; prev (B,K-1,E),
 * pre and bias may be NULL. u16 (may be NULL) receives u rounded to bf16,
 * a GEMM operand (B,T,E). */
int mb_conv_fwd(float *u, void *u16, float *pre, const float *xi, int64_t ldx,
                const float *prev, const float *w, const float *bias, int64_t B, int64_t T,
                int64_t E, int64_t K);
/* Writes dxi (row stride ldx); dw (E,K) and dbias (E, may be NULL) += .
 * The gradient of u is du, plus du2 (B,T,E; may be NULL; bf16 when du2_16).
 * pre NULL: the pre-activation is recomputed from xi, prev, w and bias (the
 * forward's bias, may be NULL), which is then read; otherwise bias is not.
 * dxi16: dxi is bf16. */
int mb_conv_bwd(void *dxi, int64_t ldx, float *dw, float *dbias, const float *du,
                const void *du2, int du2_16, const float *pre, const float *xi,
                const float *prev, const float *w, const float *bias, int64_t B, int64_t T,
                int64_t E, int64_t K, int dxi16);
/* next (B,K-1,E) = last K-1 inputs after xi; prev may be NULL and may alias next. */
int mb_conv_state(float *next, const float *prev, const float *xi, int64_t ldx,
                  int64_t B, int64_t T, int64_t E, int64_t K);

/* raw += bias (in place); delta = softplus(raw) (threshold 20). */
int mb_dt_fwd(float *delta, float *raw, const float *bias, int64_t rows, int64_t E);
/* draw = ddelta·sigmoid(raw) (draw may alias ddelta); dbias += Σ_rows draw. */
int mb_dt_bwd(float *draw, float *dbias, const float *ddelta, const float *raw,
              int64_t rows, int64_t E);

/* a[i] = -exp(alog[i]) for n values. */
int mb_negexp(float *a, const float *alog, int64_t n);

/* Sizes of the selective scan; ldbc is the row stride of Bt and Ct.
 * With dt_raw != 0 the scan also does mb_dt_fwd's work: delta holds the dt
 * pre-activation r·W_dtᵀ without its bias (dt_bias, may be NULL; neither is
 * changed) and Δ = softplus(delta + dt_bias); the backward then writes the
 * gradient of that pre-activation where it writes ddelta, and adds its
 * column sums to dbias (may be NULL). With gate_z != NULL the forward also
 * does mb_gate_fwd's work: gate_out (B·T, E; bf16 when gate_out16) =
 * y·silu(z), z = gate_z with row stride ldz. With gate_z != NULL the
 * backward also does mb_gate_bwd's work: its dy is then the gradient of the
 * gated output, and it writes gate_dz (row stride ldz; bf16 when
 * gate_dz16) = dy·gate_y·silu'(z), taking dy·silu(z) as the scan's own
 * output gradient, which it does not store (gate_y is the forward's y).
 * The forward ignores gate_y and gate_dz, the backward gate_out. With
 * ddelta16 the backward writes ddelta in bf16 (a GEMM operand); the forward
 * ignores it. */
typedef struct {
    int64_t B, T, E, N, ldbc;
    int64_t dt_raw;
    const float *dt_bias;
    float *dbias;
    const float *gate_z;
    int64_t ldz;
    void *gate_out;
    int64_t gate_out16;
    const float *gate_y;
    void *gate_dz;
    int64_t gate_dz16;
    int64_t ddelta16;
} mb_scan_dims;

/* Selective scan forward (see cpu.ScanForward): y (B,T,E); s0, sT (B,E,N)
 * may be NULL and may alias; ckpt (B,ceil(T/64),E,N) may be NULL. N <= 128. */
int mb_scan_fwd(float *y, const float *u, const float *delta, const float *Bt,
                const float *Ct, const float *A, const float *Dskip, const float *s0,
                float *sT, float *ckpt, const mb_scan_dims *dims);
/* Selective scan backward (see cpu.ScanBackward): writes du, ddelta (B,T,E;
 * bf16 with dims->ddelta16) and dBt, dCt (B,T,N, row stride ldbc); dAlog
 * (E,N) and dDskip (E) += . */
int mb_scan_bwd(float *du, void *ddelta, float *dBt, float *dCt, float *dAlog,
                float *dDskip, const float *dy, const float *u, const float *delta,
                const float *Bt, const float *Ct, const float *A, const float *Dskip,
                const float *ckpt, const mb_scan_dims *dims);

/* out (rows,E) = y·silu(z), z row stride ldz; out16 as for mb_norm_fwd. */
int mb_gate_fwd(void *out, const float *y, const float *z, int64_t ldz, int64_t rows, int64_t E,
                int out16);
/* Writes dy (rows,E) and dz (row stride ldz; bf16 when dz16). */
int mb_gate_bwd(float *dy, void *dz, const float *dout, const float *y, const float *z,
                int64_t ldz, int64_t rows, int64_t E, int dz16);

/* dst[i] += src[i], i < n. */
int mb_add(float *dst, const float *src, int64_t n);

/* Softmax cross-entropy of logits (n,V) against targets (negative: row not
 * scored). *sum_host = Σ -ln p(target). dlogits (may alias logits) and nll
 * (n) may be NULL. */
int mb_cross_entropy(float *dlogits, float *nll, const float *logits,
                     const int32_t *targets_host, int64_t n, int64_t V, float scale,
                     double *sum_host);

/* *out_host = Σ x[i]² accumulated in double. */
int mb_sum_squares(const float *x, int64_t n, double *out_host);
/* x[i] *= s. */
int mb_scale(float *x, float s, int64_t n);
/* One AdamW update of n values (see cpu.AdamW). */
int mb_adamw(float *param, const float *grad, float *m, float *v, int64_t n, float lr,
             float beta1, float beta2, float eps, float wd, float bc1, float bc2);
/* mb_adamw on nruns runs of the same buffers in one launch: run r is the
 * runs[2r+1] values from offset runs[2r], with weight decay wd where
 * decay[r] is nonzero and none otherwise (host arrays, copied before the
 * call returns). */
int mb_adamw_runs(float *param, const float *grad, float *m, float *v, const int64_t *runs_host,
                  const uint8_t *decay_host, int64_t nruns, float lr, float beta1, float beta2,
                  float eps, float wd, float bc1, float bc2);

/* The fused recurrent step (step.cuh): one byte for each of B streams
 * through one residual block, h (B,D) += block(h), updating the block's
 * conv state (B,K-1,E) and SSM state (B,E,N) in place. K <= 8. The four matrices
 * are float32 (wtype 0) or bf16 (wtype 1; copies made by mb_to_bf16); the
 * other parameters are float32, neg_a being A = -exp(A_log) (E,N); norm_b
 * and conv_b may be NULL. xz (B,2E), xdbl (B,R+2N), u and g (B,E) are
 * float32 scratch; xw holds B·max(D,E) values of the weight type. in_fold
 * (2, 2E) is mb_step_fold's fold of in_proj with the norm's weight and
 * bias; one stream needs it (others may pass NULL). */
typedef struct {
    const void *in_proj, *x_proj, *dt_proj, *out_proj;
    const float *dt_proj_f32; /* dt_proj in float32 (the many-stream path when N is not 4·2^k) */
    const float *in_fold;
    const float *norm_w, *norm_b, *conv_w, *conv_b, *dt_bias, *neg_a, *dskip;
    float *h, *conv, *ssm, *xz, *xdbl, *u, *g;
    void *xw;
    int64_t B, D, E, N, K, R;
    float eps;
    int32_t rms, wtype;
} mb_step_args;
int mb_step_block(const mb_step_args *args);
/* fold (2, rows) = [W·norm_w, W·norm_b] for W (rows, D) of type wtype (0
 * float32, 1 bf16); norm_b may be NULL (zeros). Made again whenever W or
 * the norm change. */
int mb_step_fold(float *fold, const void *w, int wtype, const float *norm_w, const float *norm_b,
                 int64_t rows, int64_t D);
/* logits (B,V) = Norm(h)·headᵀ, head (V,D) of type wtype; xw scratch as
 * above. */
int mb_step_head(float *logits, const float *h, const float *norm_w, const float *norm_b,
                 const void *head, void *xw, int64_t B, int64_t D, int64_t V, float eps,
                 int rms, int wtype);
/* How many mb_step_block calls since the library was loaded took the
 * tensor-core path of 2 to 16 streams (a step recorded in a graph counts
 * once, when it is recorded); tests use it to see which path ran. */
int64_t mb_step_mma_count(void);
/* dst (n bf16 values) = src rounded to nearest even. */
int mb_to_bf16(void *dst, const float *src, int64_t n);

/* The whole decode step of one stream in one kernel (whole.cuh): every
 * residual block and the head, bf16 weights from a buffer of the layout
 * mb_whole_plan gives. mode 0 stages the weights through shared memory when
 * they fit, 1 always reads them from global memory. */
typedef struct {
    int64_t L, D, E, N, K, R, V;
    float eps;
    int32_t rms, mode;
} mb_whole_shape;
/* Byte offsets in the whole step's weight buffer. Rows are padded to Dp,
 * Ep, Jp (R+2N), Rp values, multiples of 8, and Cp, a multiple of 4. Per
 * layer, at l·layer_bytes: in_proj (2E,Dp), x_proj transposed (E,Jp),
 * dt_proj (E,Rp), out_proj (D,Ep) as bf16; chan (E,Cp) float32, per
 * channel its conv weights (K), conv bias, dt bias, Dskip and A = -exp(A_log)
 * (N); norm_w, norm_b (Dp) float32. After the layers: head (V,Dp) bf16,
 * norm_f_w, norm_f_b (Dp) float32. Padding and absent biases are zeros. */
typedef struct {
    int64_t Dp, Ep, Jp, Rp, Cp;
    int64_t layer_bytes;
    int64_t in_proj, x_proj_t, dt_proj, out_proj, chan, norm_w, norm_b;
    int64_t head, norm_f_w, norm_f_b;
    int64_t total;          /* bytes of the buffer */
    int64_t scratch_floats; /* float32 scratch mb_step_whole needs */
} mb_whole_layout;
int mb_whole_plan(const mb_whole_shape *shape, mb_whole_layout *layout);
/* dst (rows,ld), bf16 (bf16 = 1) or float32, = src[r·rs + c·cs] for
 * c < cols; dst[r·ld + c] for c >= cols is left alone. */
int mb_pack_2d(void *dst, int32_t bf16, int64_t ld, const float *src, int64_t rs, int64_t cs,
               int64_t rows, int64_t cols);
/* One byte through the model for one stream: h (D) holds its embedding on
 * entry; state is the stream's recurrent state, per layer conv (K-1,E) then
 * ssm (E,N), layers one after another; logits (V) are written. scratch
 * holds scratch_floats values for this step alone. */
int mb_step_whole(const mb_whole_shape *shape, const void *weights, float *h, float *state,
                  float *logits, float *scratch);

#ifdef __cplusplus
}
#endif

#endif /* MAMBABYTE_CUDA_H */
