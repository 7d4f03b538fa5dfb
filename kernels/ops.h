/* The op table: every numeric operation the model code calls, one function
 * pointer each, filled by a backend (kernels/cpu/ now, kernels/cuda/ next).
 * Model code calls through this table and never #ifdefs on the backend.
 *
 * Conventions: activations are fp32, row-major, contiguous. Weights are in
 * their stored dtype (fp32/fp16/bf16) at any alignment and are widened on the
 * fly; accumulation is fp32. Shapes are given in comments as (rows, cols).
 * Sizes are int64_t. No op allocates memory. */
#ifndef LOOM_KERNELS_OPS_H
#define LOOM_KERNELS_OPS_H

#include <stdint.h>

#include "../util/dtype.h"

typedef struct loom_ops {
    const char *name; /* "cpu", "cuda" */

    /* out (n, dim) = table[ids[i], :], table (vocab, dim) in dtype dt.
     * Caller guarantees 0 <= ids[i] < vocab. */
    void (*embedding)(float *out, const void *table, loom_dtype dt,
                      const int32_t *ids, int64_t n, int64_t dim);

    /* out (n, dim) = x / sqrt(mean(x^2) + eps) * w.  w (dim) in dtype dt.
     * out may alias x. */
    void (*rmsnorm)(float *out, const float *x, const void *w, loom_dtype dt,
                    int64_t n, int64_t dim, float eps);

    /* y (n, out_dim) = x (n, in_dim) @ W^T (+ bias), W (out_dim, in_dim) in
     * dtype wt, bias (out_dim) in dtype wt or NULL. y must not alias x.
     * Blocked and multithreaded on the CPU, where a row of y does not depend
     * on the thread count or on the other rows of x (bitwise). */
    void (*matmul)(float *y, const float *x, const void *w, loom_dtype wt,
                   const void *bias, int64_t n, int64_t in_dim, int64_t out_dim);

    /* Rotary embedding in place, Hugging Face "rotate_half" layout: element i
     * pairs with i + head_dim/2.
     * x (n, n_heads, head_dim) at absolute positions pos[n];
     * inv_freq (head_dim/2): the per-pair frequencies, already adjusted for
     * the model's rope scaling (linear, llama3 ...). */
    void (*rope)(float *x, const int32_t *pos, int64_t n, int64_t n_heads,
                 int64_t head_dim, const float *inv_freq);

    /* Causal (optionally sliding-window) attention for one sequence.
     * q   (n_q, n_heads, head_dim): queries at absolute positions q_pos[n_q];
     * k,v (kv_len, n_kv_heads, head_dim): the sequence's cached keys/values for
     *     positions 0..kv_len-1, rows kv_stride floats apart
     *     (kv_stride >= n_kv_heads*head_dim);
     * out (n_q, n_heads, head_dim).
     * Query head h reads kv head h / (n_heads / n_kv_heads) (GQA/MQA).
     * Query at position p sees keys j with j <= p and, if window > 0,
     * j > p - window. Scores are scaled by `scale`. q_pos[i] < kv_len.
     * head_dim <= 512 (the CPU kernel keeps its accumulators on the stack);
     * out must not alias q, k or v. */
    void (*attention)(float *out, const float *q, const float *k, const float *v,
                      const int32_t *q_pos, int64_t n_q, int64_t kv_len,
                      int64_t kv_stride, int64_t n_heads, int64_t n_kv_heads,
                      int64_t head_dim, int64_t window, float scale);

    /* The same attention over a paged KV cache (kv/kv_cache.h): the K row
     * (n_kv_heads, head_dim) of position j lives at
     *   k + table[j / tokens_per_block] * block_stride
     *     + (j % tokens_per_block) * row_stride
     * and the V row at the same offset from v (strides in floats,
     * row_stride >= n_kv_heads*head_dim, tokens_per_block >= 1); table holds
     * the block ids of positions 0..kv_len-1 in order. On the CPU the
     * result does not depend on tokens_per_block, the table or the strides
     * (bitwise): a paged cache gives exactly what a contiguous one gives. */
    void (*attention_paged)(float *out, const float *q, const float *k, const float *v,
                            const int32_t *q_pos, int64_t n_q, int64_t kv_len,
                            const int32_t *table, int64_t tokens_per_block, int64_t block_stride,
                            int64_t row_stride, int64_t n_heads, int64_t n_kv_heads,
                            int64_t head_dim, int64_t window, float scale);

    /* out (n) = silu(gate) * up;  silu(x) = x / (1 + exp(-x)). out may alias gate. */
    void (*swiglu)(float *out, const float *gate, const float *up, int64_t n);

    /* y (n) += x (n): the residual add. */
    void (*add)(float *y, const float *x, int64_t n);
} loom_ops;

/* The CPU backend (fp32 reference; the oracle for every other backend).
 * Thread count follows OMP_NUM_THREADS / the number of cores. */
const loom_ops *loom_ops_cpu(void);

#endif
