/* The CUDA ops: the GPU twins of kernels/cpu/, for fp16 and bf16 activations
 * with fp32 accumulation. Every pointer is a device pointer unless a comment
 * says otherwise; every call is asynchronous on `stream` (a cudaStream_t, NULL
 * for the default stream) and allocates nothing (scratch comes from the
 * caller), so a decode step can be captured in a CUDA graph. Each returns 0
 * (cudaSuccess) or a cudaError_t value (cudaErrorInvalidValue = 1 for bad
 * arguments). Shapes are (rows, cols), row-major.
 *
 * Paged KV layout (shared with kv/'s pool): for each layer a pool of blocks;
 * block b holds K then V for `tokens_per_block` (B) positions of every kv head:
 *   pool[b][0 = K | 1 = V][kv_head][slot in block][head_dim]
 * so one block is 2 * n_kv_heads * B * head_dim elements (act dtype, or FP8
 * E4M3: one byte each, when the kv argument says so). A
 * sequence's block table lists its blocks in position order: position p lives
 * in block table[p / B] at slot p % B. The same table serves every layer. */
#ifndef LOOM_KERNELS_CUDA_OPS_CUDA_H
#define LOOM_KERNELS_CUDA_OPS_CUDA_H

#include <stddef.h>
#include <stdint.h>

#include "../../util/dtype.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- elementwise and normalization (kernels/cuda/elementwise.cu, ...) ---- */

/* out (n, dim) act = table[ids[i], :] (table (vocab, dim) in wdt). ids on the device. */
int loom_cuda_embedding(void *out, loom_dtype act, const void *table, loom_dtype wdt,
                        const int32_t *ids, int64_t n, int64_t dim, void *stream);

/* Fused residual add + RMSNorm (TensorRT-LLM's fusion): per row,
 * residual += delta (skipped when delta is NULL), then
 * out = residual * rsqrt(mean(residual^2) + eps) * w.
 * residual, delta, out (n, dim) in act; w (dim) in wdt. The sum is rounded to
 * act once (as PyTorch does when it adds two fp16 tensors). With delta NULL,
 * residual is only read (plain RMSNorm; out may then alias it). */
int loom_cuda_add_rmsnorm(void *residual, const void *delta, void *out, loom_dtype act,
                          const void *w, loom_dtype wdt, int64_t n, int64_t dim, float eps,
                          void *stream);

/* loom_cuda_add_rmsnorm with delta (n, dim) in fp32: a tensor-parallel sum of
 * fp32 partial products. Each delta value is first rounded to act, so with
 * the exact sum the result equals loom_cuda_add_rmsnorm's on the one-GPU
 * product (rounded once, as the GEMM stores it). delta must not be NULL. */
int loom_cuda_add_rmsnorm_f32(void *residual, const float *delta, void *out, loom_dtype act,
                              const void *w, loom_dtype wdt, int64_t n, int64_t dim, float eps,
                              void *stream);

/* Rotary embedding in place on q (n, n_heads, head_dim) and k (n, n_kv_heads,
 * head_dim), Hugging Face rotate_half layout (i pairs with i + head_dim/2),
 * angle = pos[t] * inv_freq[i] computed in fp32 (inv_freq (head_dim/2) fp32 on
 * the device, already adjusted for linear/llama3 scaling). Row strides q_stride
 * and k_stride (elements) allow q and k to be column blocks of a fused QKV
 * output (n, (H + 2*KVH) * head_dim). */
int loom_cuda_rope(void *q, int64_t q_stride, void *k, int64_t k_stride, loom_dtype act,
                   const int32_t *pos, int64_t n, int64_t n_heads, int64_t n_kv_heads,
                   int64_t head_dim, const float *inv_freq, void *stream);

/* RoPE and the KV append of a decode step in one kernel: qkv (n, stride)
 * holds [q (n_heads * head_dim) | k (n_kv_heads * head_dim) | v (same)] per
 * token. q is rotated in place (as loom_cuda_rope); k is rotated and written,
 * with v, into the paged pool at slot_mapping[t] (as loom_cuda_kv_append; -1
 * skips the token's append). k in qkv is left as it was. kv: the pool's
 * element, act or LOOM_F8E4M3 (k rounded to E4M3 from its fp32 rotation). */
int loom_cuda_rope_kv_append(void *qkv, int64_t stride, loom_dtype act, loom_dtype kv, const int32_t *pos, const int32_t *slot_mapping, int64_t n,
                             int64_t n_heads, int64_t n_kv_heads, int64_t head_dim, const float *inv_freq, void *pool,
                             int64_t tokens_per_block, void *stream);

/* Gated MLP activation on the fused gate/up GEMM output:
 * gate_up (n, 2 * inter) holds [gate | up] per row; out (n, inter) =
 * silu(gate) * up, in act. out may not alias gate_up. */
int loom_cuda_silu_mul(void *out, const void *gate_up, loom_dtype act, int64_t n, int64_t inter,
                       void *stream);

/* ---- sampling (kernels/cuda/sampling.cu) ---- */

/* Per row r of logits (n_rows, vocab) fp32: repetition penalty over
 * history[r] (hist_offsets[r] .. hist_offsets[r+1] in the flat `history`,
 * applied once per distinct id: negative logits * p, positive / p), then
 * greedy (temperature[r] == 0 or top_k[r] == 1) or temperature, top-k (0 =
 * off), top-p (1 = off) and a draw with Philox seeded by (seed[r], step[r]).
 * out_ids (n_rows) int32. Parameters are per-row device arrays. scratch: at
 * least loom_cuda_sampling_scratch_bytes(n_rows, vocab) bytes. logits are
 * modified. Same (seed, step, logits) -> same id. */
int loom_cuda_sample(int32_t *out_ids, float *logits, int64_t n_rows, int64_t vocab,
                     const float *temperature, const int32_t *top_k, const float *top_p,
                     const float *rep_penalty, const int32_t *history, const int64_t *hist_offsets,
                     const uint64_t *seed, const uint64_t *step, void *scratch, void *stream);
size_t loom_cuda_sampling_scratch_bytes(int64_t n_rows, int64_t vocab);

/* ---- GEMM (kernels/cuda/gemm.c, cuBLASLt) ---- */

typedef struct loom_cuda_gemm loom_cuda_gemm; /* handle, heuristic cache, workspace */

/* Creates a cuBLASLt handle and allocates a workspace of workspace_bytes once.
 * Returns NULL on failure (message in errbuf, errcap bytes). */
loom_cuda_gemm *loom_cuda_gemm_create(size_t workspace_bytes, char *errbuf, size_t errcap);
void loom_cuda_gemm_destroy(loom_cuda_gemm *g);

/* y (n, out_dim) = x (n, in_dim) @ W^T (+ bias (out_dim)), x, W, bias and y all
 * in act (fp16 or bf16), fp32 accumulation. W is (out_dim, in_dim) row-major
 * as in Hugging Face checkpoints. The algorithm is picked by cuBLASLt's
 * heuristic once per (n, in_dim, out_dim, act, bias?, alignment) and cached.
 * Returns 0, a cudaError_t (> 0), or -(cublasStatus_t) (< 0). One handle per
 * stream: not for concurrent use. */
int loom_cuda_gemm_run(loom_cuda_gemm *g, void *y, const void *x, const void *w, const void *bias,
                       loom_dtype act, int64_t n, int64_t in_dim, int64_t out_dim, void *stream);

/* loom_cuda_gemm_run with y in fp32, not rounded to act: a tensor-parallel
 * rank's partial product, summed across ranks before it is rounded. bias (in
 * act) is added in fp32 by loom_cuda_add_bias_f32 after the GEMM (cuBLASLt's
 * bias epilogue takes no act bias with an fp32 D). Its algorithm is cached
 * apart from the act one's. */
int loom_cuda_gemm_run_f32(loom_cuda_gemm *g, float *y, const void *x, const void *w, const void *bias,
                           loom_dtype act, int64_t n, int64_t in_dim, int64_t out_dim, void *stream);

/* y (n, out) fp32 += bias (out, act) per row, in fp32 (elementwise.cu). */
int loom_cuda_add_bias_f32(float *y, const void *bias, loom_dtype act, int64_t n, int64_t out, void *stream);

/* ---- skinny GEMM for decode (kernels/cuda/gemv.cu) ---- */

/* True when loom_cuda_gemv handles this call: fp16/bf16, 1 <= n <= 8,
 * in_dim % 8 == 0, x and w 16-byte aligned. */
int loom_cuda_gemv_ok(loom_dtype act, int64_t n, int64_t in_dim, const void *x, const void *w);

/* The same product as loom_cuda_gemm_run for n <= 8 rows, as a bandwidth-bound
 * stream over W (one warp per output row). */
int loom_cuda_gemv(void *y, const void *x, const void *w, const void *bias, loom_dtype act, int64_t n, int64_t in_dim,
                   int64_t out_dim, void *stream);

/* loom_cuda_gemv with y (n, out_dim) in fp32, not rounded to act (a
 * tensor-parallel partial product, as loom_cuda_gemm_run_f32). */
int loom_cuda_gemv_f32(float *y, const void *x, const void *w, const void *bias, loom_dtype act, int64_t n, int64_t in_dim,
                       int64_t out_dim, void *stream);

/* ---- one-row decode kernels with fused prologues (kernels/cuda/gemv.cu) ----
 * For a batch of one token, what sits between two GEMVs (the residual add and
 * RMSNorm before QKV and gate/up, SiLU*mul before down) runs inside the next
 * GEMV: every thread block computes the prologue's vector into shared memory
 * (it is small against W), then streams its rows of W. The _rope and _glu
 * variants also take over the op after the GEMV. */

typedef enum {
    LOOM_GEMV_PLAIN = 0,       /* y = x @ W^T (+ bias) */
    LOOM_GEMV_ADD_RMSNORM = 1, /* r = x + delta (rounded to act); x_out = r;
                                * y = (r * rsqrt(mean(r^2) + eps) * gamma) @ W^T (+ bias),
                                * the normalized vector rounded to act first */
    LOOM_GEMV_SILU_MUL = 2,    /* x holds 2 * in_dim elements, [gate | up];
                                * y = (silu(gate) * up, rounded to act) @ W^T (+ bias) */
} loom_gemv_prologue;

typedef struct {
    loom_gemv_prologue kind;
    const void *delta; /* ADD_RMSNORM: in_dim elements added to x; NULL adds nothing. In act, or
                        * (delta_f32) in fp32, each value rounded to act before the add */
    void *x_out;       /* ADD_RMSNORM: receives r (in_dim); NULL: not stored. Must not alias x or delta */
    const void *gamma; /* ADD_RMSNORM: the norm weight (in_dim, act) */
    float eps;
    const int32_t *row; /* ADD_RMSNORM or PLAIN, device, or NULL: x is a table and its row row[0]
                         * (x + row[0] * in_dim) the input: the embedding gather of a one-token step;
                         * a negative row[0] reads zeros (as loom_cuda_embedding) */
    int delta_f32;      /* ADD_RMSNORM: delta is fp32 (a tensor-parallel sum of partial products) */
} loom_gemv_pre;

/* True when loom_cuda_gemv1 handles this call: fp16/bf16, in_dim % 8 == 0,
 * the prologue's vector fits in shared memory (in_dim * 2 bytes <= 96 KiB),
 * x and w 16-byte aligned. */
int loom_cuda_gemv1_ok(loom_dtype act, int64_t in_dim, const void *x, const void *w);

/* Sets, on the current device, the shared-memory carveout of every one-row
 * GEMV kernel (loom_cuda_gemv1 and its _f32/_partial/_rope/_glu entries) to
 * what two of them side by side need (LOOM_GEMV_BLOCKS_PER_SM blocks each),
 * for ADD_RMSNORM prologues of up to norm_in elements and the others' of up
 * to max_in. Under PDL the next kernel's blocks are placed beside the running
 * one's; left to the driver, each kernel's carveout fits only itself, and a
 * next kernel that needs more shared memory than the SM's split leaves waits
 * (a Llama-3-8B batch-1 step 8.5-10% slower on an H200; the smallest split
 * that fits is the fastest: bench/results/2026-11-22-h200-decode-s13.md).
 * Call once the model's shapes are known; 0 or a CUDA error code. */
int loom_cuda_gemv1_fit(int64_t norm_in, int64_t max_in);

/* One row: y (out_dim) = prologue(x) @ W^T (+ bias), W (out_dim, in_dim), all
 * in act, fp32 accumulation. pre NULL means LOOM_GEMV_PLAIN. y must not alias
 * x, delta or x_out. The prologue rounds as the unfused ops do (add_rmsnorm,
 * silu_mul); the dot products accumulate per lane as loom_cuda_gemv's. */
int loom_cuda_gemv1(void *y, const void *x, const void *w, const void *bias, loom_dtype act, int64_t in_dim, int64_t out_dim,
                    const loom_gemv_pre *pre, void *stream);

/* loom_cuda_gemv1 with y (out_dim) in fp32: each value is rounded to act
 * first, so y equals loom_cuda_gemv1's output cast to fp32 (lm_head's
 * logits without the cast kernel). */
int loom_cuda_gemv1_f32(float *y, const void *x, const void *w, const void *bias, loom_dtype act, int64_t in_dim, int64_t out_dim,
                        const loom_gemv_pre *pre, void *stream);

/* loom_cuda_gemv1 with y (out_dim) in fp32 and not rounded to act: a
 * tensor-parallel rank's partial product (bias, when given, added in fp32),
 * to be summed across ranks and then rounded (ADD_RMSNORM's delta_f32). */
int loom_cuda_gemv1_partial(float *y, const void *x, const void *w, const void *bias, loom_dtype act, int64_t in_dim,
                            int64_t out_dim, const loom_gemv_pre *pre, void *stream);

/* The token's RoPE and KV append, done in the QKV GEMV's epilogue. */
typedef struct {
    const int32_t *pos, *slot; /* device: the token's position and pool slot (block * B + offset; -1 skips the append) */
    const float *inv_freq;     /* device: head_dim / 2, as loom_cuda_rope's */
    void *pool;                /* the layer's paged pool (layout above) */
    int64_t n_heads, n_kv_heads, head_dim, tokens_per_block;
    loom_dtype kv;             /* LOOM_F8E4M3: an FP8 pool (K rounded once from its fp32 rotation, V from
                                * the act value, as loom_cuda_rope_kv_append's); any other value: act */
} loom_gemv_rope;

/* loom_cuda_gemv1 for one token's fused QKV projection followed by
 * loom_cuda_rope_kv_append: out_dim = (n_heads + 2 * n_kv_heads) * head_dim;
 * y gets q rotated, k and v as projected; the pool slot gets k rotated and v.
 * One warp computes both rows of each rotate_half pair. pre: NULL, PLAIN or
 * ADD_RMSNORM. Rounds as the two unfused ops do. */
int loom_cuda_gemv1_rope(void *y, const void *x, const void *w, const void *bias, loom_dtype act, int64_t in_dim,
                         const loom_gemv_pre *pre, const loom_gemv_rope *rope, void *stream);

/* loom_cuda_gemv1 for one token's fused gate/up projection followed by
 * loom_cuda_silu_mul: W is [gate (inter rows) | up (inter rows)] (2 * inter,
 * in_dim), bias (2 * inter) or NULL; y (inter) = silu(gate) * up, where gate
 * and up are first rounded to act as the GEMV's output would be. One warp
 * computes both rows of each pair. pre: NULL, PLAIN or ADD_RMSNORM. */
int loom_cuda_gemv1_glu(void *y, const void *x, const void *w, const void *bias, loom_dtype act, int64_t in_dim, int64_t inter,
                        const loom_gemv_pre *pre, void *stream);

/* ---- the whole one-token decode step as one kernel (kernels/cuda/decode_step.cu) ----
 * Batch 1 on one GPU: every layer's phases (norm + QKV GEMV + RoPE + KV
 * append, attention over the paged pool, o GEMV, norm + gate/up GEMV +
 * SiLU*mul, down GEMV), then the final norm and lm_head, run as phases of one
 * persistent grid with grid-wide barriers between them instead of kernel
 * boundaries. The GEMV phases run loom_cuda_gemv1's row code on the same
 * vectors, so their outputs are bitwise those of the fused one-kernel-per-op
 * step; attention (split over warps, merged by the last warp of each head)
 * rounds differently from loom_cuda_attention, within fp32 accumulation. */

/* One layer's weights (device, act; biases may be NULL) and its pool. */
typedef struct {
    const void *attn_norm, *mlp_norm;   /* (hidden) */
    const void *w_qkv, *b_qkv;          /* ((n_heads + 2 n_kv_heads) head_dim, hidden) */
    const void *w_o, *b_o;              /* (hidden, n_heads head_dim) */
    const void *w_gu, *b_gu;            /* ([gate | up] 2 inter, hidden) */
    const void *w_down, *b_down;        /* (hidden, inter) */
    void *pool;                         /* paged pool, as loom_cuda_attention's: (blocks, 2, n_kv_heads, B, head_dim) */
    int64_t window;                     /* sliding window (keys > position - window), 0 = none */
} loom_step_layer;

typedef struct {
    const loom_step_layer *layers;      /* device array of n_layers */
    int64_t n_layers, hidden, inter, n_heads, n_kv_heads, head_dim, tokens_per_block, vocab;
    float eps, scale;                   /* RMSNorm epsilon; attention's score scale */
    const void *embed;                  /* (vocab, hidden): layer 0 reads row token[0] (negative: zeros) */
    const void *final_norm, *lm_head;   /* (hidden), (vocab, hidden) */
    const int32_t *token, *pos, *slot;  /* device, one each: the token, its position, its pool slot (-1: no append) */
    const int32_t *block_table;         /* device: the sequence's blocks, covering positions 0..pos */
    const float *inv_freq;              /* device: head_dim / 2, as loom_cuda_rope's */
    void *x, *x2, *qkv, *att, *o_out, *h, *mlp; /* activations (act): hidden, hidden, (n_heads + 2 n_kv_heads) head_dim,
                                                 * n_heads head_dim, hidden, inter, hidden; 16-byte aligned */
    float *logits;                      /* (vocab) fp32, each value rounded to act first */
    void *scratch;                      /* loom_cuda_decode_step_scratch_bytes, zeroed once before the first step */
    size_t scratch_bytes;
    int64_t max_ctx;                    /* positions the scratch was sized for: pos < max_ctx */
} loom_step;

/* True when loom_cuda_decode_step handles these shapes: fp16/bf16; hidden
 * and inter multiples of 8; head_dim 8, 16, 32, 64, 128 or 256; n_heads a
 * multiple of n_kv_heads; each GEMV's input vector within 96 KiB. */
int loom_cuda_decode_step_ok(loom_dtype act, int64_t hidden, int64_t inter, int64_t n_heads, int64_t n_kv_heads, int64_t head_dim);

/* Scratch bytes for a step over contexts up to max_ctx (barrier, counters,
 * attention partials). */
size_t loom_cuda_decode_step_scratch_bytes(int64_t n_heads, int64_t head_dim, int64_t max_ctx);

/* Runs the step on stream. On return (stream order) logits holds the
 * token's logits, the pool of every layer its K and V at slot, x the residual
 * before the last layer's MLP output, mlp that output. Launched as a
 * cooperative grid that fits on the device at once. The caller guarantees
 * what the kernel cannot check: pos < max_ctx, token < vocab, the block table
 * covering 0..pos, every pool 16-byte aligned. A step that fails part-way
 * (a CUDA error) leaves the scratch's barrier undefined: zero it again before
 * the next. The first call on a device sets the kernel's attributes, so it
 * must not be inside a stream capture (gpu_model runs a step plainly before
 * it captures one). Slower than the fused chain on an H200; LOOM_DECODE_STEP=1
 * turns it on in a GPU model. */
int loom_cuda_decode_step(const loom_step *s, loom_dtype act, void *stream);

/* Programmatic dependent launch for the kernels that support it (loom_cuda_gemv1,
 * loom_cuda_rope_kv_append, decode attention): each may start while the kernel
 * before it on the stream finishes, and waits for it (griddepcontrol) before it
 * reads anything that kernel wrote. Process-wide; on only on devices of compute
 * capability 9.0 or newer. Returns 1 when it is on after the call. Default off. */
int loom_cuda_set_pdl(int on);
int loom_cuda_pdl_on(void);

/* Reads bytes of buf (16-byte aligned) on stream, leaving the L2 full of
 * clean lines of it: for timing a kernel on weights that come from DRAM
 * (gemm.c's algorithm tuning). buf must be at least twice the L2 size. */
int loom_cuda_l2_flush(const void *buf, size_t bytes, void *stream);

/* ---- attention over the paged KV cache (kernels/cuda/attention.cu) ---- */

/* Writes k, v (n, n_kv_heads, head_dim act; rows k_stride / v_stride
 * elements apart) into the layer's pool at slot_mapping[t] = block * B + slot
 * (one per token; -1 skips the token). kv: the pool's element type, act
 * (copied) or LOOM_F8E4M3 (rounded to nearest even, saturating at +-448, as
 * loom_f32_to_e4m3). Anything else: cudaErrorInvalidValue. */
int loom_cuda_kv_append(void *pool, const void *k, int64_t k_stride, const void *v, int64_t v_stride,
                        loom_dtype act, loom_dtype kv, const int32_t *slot_mapping, int64_t n, int64_t n_kv_heads,
                        int64_t head_dim, int64_t tokens_per_block, void *stream);

/* Causal (optionally sliding-window) attention for a batch of sequences whose
 * K/V are already in the paged pool (append first).
 * q (n_tokens, n_heads, head_dim), rows q_stride elements apart; out (n_tokens,
 * n_heads, head_dim) contiguous. Sequence s owns tokens q_start[s] ..
 * q_start[s+1]-1 (host-computed, on the device), at positions
 * ctx_len[s] - (q_start[s+1] - q_start[s]) .. ctx_len[s] - 1: every query
 * attends to keys 0..its position (and only those > position - window when
 * window > 0). block_tables (n_seqs, max_blocks) int32. Query head h reads kv
 * head h / (n_heads / n_kv_heads). head_dim 64 or 128. Scores scaled by scale.
 * Prefill-shaped batches use a flash-attention kernel; one-token-per-sequence
 * batches use a paged decode kernel (on CUDA cores, attention_decode.cu, for
 * query groups n_heads / n_kv_heads up to 8; the flash tile for larger
 * groups), split over several thread blocks per (sequence, head) with a
 * reduction of partial results (multi-block / flash-decoding) when
 * multi_block is 1, or when it is -1 (auto) and n_seqs * n_heads < SMs / 2
 * and the context (the window, when shorter) is longer than 128 tokens:
 * TensorRT-LLM's rule with its ~1024-token threshold lowered, as measured on
 * an H200 (attention.cu).
 * A prefill batch whose row tiles keep at most half the SMs busy (a short
 * chunk over a long cached prefix) splits its keys the same way when
 * multi_block is -1 and the context spans at least two splits, or always when
 * it is 1 (as far as the scratch allows; prefill never needs scratch).
 * scratch: scratch_bytes bytes for the partials, at least
 * loom_cuda_attention_scratch_bytes(n_seqs, n_heads, head_dim, max_ctx) for
 * decode (the most a launch on the current device uses); NULL turns splitting
 * off. tokens_per_block must be a power of two; out and pool 16-byte aligned;
 * max_ctx >= every ctx_len (it sizes the split). kv: the pool's element type,
 * act or LOOM_F8E4M3 (widened exactly, unit scale); q and out are act.
 * The decode kernel, launched with PDL, reads q_start, ctx_len and
 * block_tables before it waits for the kernel before it on the stream: that
 * kernel must not write them (copies from the host, as loom's step uploads,
 * are fine). */
int loom_cuda_attention(void *out, const void *q, int64_t q_stride, const void *pool, loom_dtype act, loom_dtype kv,
                        const int32_t *q_start, const int32_t *ctx_len, const int32_t *block_tables,
                        int64_t max_blocks, int64_t n_seqs, int64_t n_tokens, int64_t max_ctx,
                        int64_t n_heads, int64_t n_kv_heads, int64_t head_dim, int64_t tokens_per_block,
                        int64_t window, float scale, int multi_block, void *scratch, size_t scratch_bytes,
                        void *stream);
size_t loom_cuda_attention_scratch_bytes(int64_t n_seqs, int64_t n_heads, int64_t head_dim, int64_t max_ctx);

/* The same attention for any head_dim <= 256 (attention_generic.cu): one warp
 * per (token, head), no tensor cores; for small models the tuned kernels do
 * not cover. */
int loom_cuda_attention_generic(void *out, const void *q, int64_t q_stride, const void *pool, loom_dtype act, loom_dtype kv,
                                const int32_t *q_start, const int32_t *ctx_len, const int32_t *block_tables,
                                int64_t max_blocks, int64_t n_seqs, int64_t n_tokens, int64_t n_heads, int64_t n_kv_heads,
                                int64_t head_dim, int64_t tokens_per_block, int64_t window, float scale, void *stream);

#ifdef __cplusplus
}
#endif

#endif
