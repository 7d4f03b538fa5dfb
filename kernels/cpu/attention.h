/* CPU attention: causal, optionally sliding-window, GQA/MQA, one sequence,
 * online softmax (no scratch beyond the stack), over a paged KV cache or a
 * contiguous one (a single block). */
#ifndef LOOM_KERNELS_CPU_ATTENTION_H
#define LOOM_KERNELS_CPU_ATTENTION_H

#include <stdint.h>

/* Largest head_dim the CPU kernel takes (its accumulators live on the stack). */
#define LOOM_CPU_ATTN_MAX_HEAD_DIM 512

/* q (n_q, n_heads, head_dim) at absolute positions q_pos[n_q];
 * k, v (kv_len, n_kv_heads, head_dim), rows kv_stride floats apart;
 * out (n_q, n_heads, head_dim).
 * Query head h reads kv head h / (n_heads / n_kv_heads). The query at
 * position p sees keys j <= p and, if window > 0, j > p - window; softmax of
 * (q . k) * scale. Requires n_heads % n_kv_heads == 0, 0 <= q_pos[i] < kv_len,
 * head_dim <= LOOM_CPU_ATTN_MAX_HEAD_DIM, kv_stride >= n_kv_heads * head_dim.
 * out must not alias q, k or v. */
void loom_cpu_attention(float *out, const float *q, const float *k, const float *v,
                        const int32_t *q_pos, int64_t n_q, int64_t kv_len,
                        int64_t kv_stride, int64_t n_heads, int64_t n_kv_heads,
                        int64_t head_dim, int64_t window, float scale);

/* The same over paged K/V: the row of position j (n_kv_heads, head_dim) lives
 * at k + table[j / tokens_per_block] * block_stride
 *        + (j % tokens_per_block) * row_stride   (v likewise),
 * strides in floats. Requires tokens_per_block >= 1, row_stride >=
 * n_kv_heads * head_dim, table[0 .. (kv_len-1) / tokens_per_block] valid
 * block ids; otherwise as loom_cpu_attention, and bitwise equal to it on
 * the same rows whatever the block size and table. */
void loom_cpu_attention_paged(float *out, const float *q, const float *k, const float *v,
                              const int32_t *q_pos, int64_t n_q, int64_t kv_len,
                              const int32_t *table, int64_t tokens_per_block, int64_t block_stride,
                              int64_t row_stride, int64_t n_heads, int64_t n_kv_heads,
                              int64_t head_dim, int64_t window, float scale);

#endif
