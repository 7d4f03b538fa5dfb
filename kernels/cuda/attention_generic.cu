/* A simple attention kernel over the paged KV pool for any head_dim up to 256:
 * one warp per (query token, head), online softmax over the visible keys. It
 * is the fallback for head sizes the tuned kernels (attention.cu: 64, 128) do
 * not cover, e.g. the tiny demo and test models; the same contract as
 * loom_cuda_attention. */
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <math.h>

#include "act_convert.cuh"
#include "ops_cuda.h"

#define MAX_PER_LANE 8 /* head_dim <= 256 */


template <typename T>
__global__ void attn_generic(T *out, const T *q, int64_t q_stride, const T *pool, const int32_t *q_start, const int32_t *ctx_len,
                             const int32_t *block_tables, int64_t max_blocks, int n_seqs, int n_heads, int n_kv_heads, int hd, int B,
                             int64_t window, float scale)
{
    const int t = blockIdx.x, h = blockIdx.y, lane = threadIdx.x;
    int lo = 0, hi = n_seqs - 1; /* the sequence owning token t */
    while (lo < hi) {
        int mid = (lo + hi + 1) / 2;
        if (q_start[mid] <= t) lo = mid;
        else hi = mid - 1;
    }
    const int s = lo;
    const int n_new = q_start[s + 1] - q_start[s];
    const int64_t pos = (int64_t)ctx_len[s] - n_new + (t - q_start[s]);
    const int kvh = h / (n_heads / n_kv_heads);
    const int per = (hd + 31) / 32;
    float qv[MAX_PER_LANE], acc[MAX_PER_LANE];
    for (int i = 0; i < per; i++) {
        int d = lane + 32 * i;
        qv[i] = d < hd ? to_f32(q[(int64_t)t * q_stride + (int64_t)h * hd + d]) * scale : 0.0f;
        acc[i] = 0.0f;
    }
    float mx = -INFINITY, sum = 0.0f;
    int64_t j0 = window > 0 && pos - window + 1 > 0 ? pos - window + 1 : 0;
    const int32_t *bt = block_tables + (int64_t)s * max_blocks;
    const int64_t block_elems = (int64_t)2 * n_kv_heads * B * hd;
    for (int64_t j = j0; j <= pos; j++) {
        const T *kb = pool + (int64_t)bt[j / B] * block_elems + ((int64_t)kvh * B + j % B) * hd;
        const T *vb = kb + (int64_t)n_kv_heads * B * hd;
        float dot = 0.0f;
        for (int i = 0; i < per; i++) {
            int d = lane + 32 * i;
            if (d < hd) dot += qv[i] * to_f32(kb[d]);
        }
        for (int o = 16; o > 0; o >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, o);
        float nm = fmaxf(mx, dot), c = __expf(mx - nm), p = __expf(dot - nm);
        sum = sum * c + p;
        for (int i = 0; i < per; i++) {
            int d = lane + 32 * i;
            acc[i] = acc[i] * c + (d < hd ? p * to_f32(vb[d]) : 0.0f);
        }
        mx = nm;
    }
    for (int i = 0; i < per; i++) {
        int d = lane + 32 * i;
        if (d < hd) out[((int64_t)t * n_heads + h) * hd + d] = from_f32<T>(acc[i] / sum);
    }
}

extern "C" int loom_cuda_attention_generic(void *out, const void *q, int64_t q_stride, const void *pool, loom_dtype act,
                                           const int32_t *q_start, const int32_t *ctx_len, const int32_t *block_tables,
                                           int64_t max_blocks, int64_t n_seqs, int64_t n_tokens, int64_t n_heads, int64_t n_kv_heads,
                                           int64_t head_dim, int64_t tokens_per_block, int64_t window, float scale, void *stream)
{
    if (head_dim < 1 || head_dim > 32 * MAX_PER_LANE || n_heads % n_kv_heads || n_tokens < 1 || n_seqs < 1) return (int)cudaErrorInvalidValue;
    dim3 grid((unsigned)n_tokens, (unsigned)n_heads);
    cudaStream_t st = (cudaStream_t)stream;
    if (act == LOOM_F16)
        attn_generic<__half><<<grid, 32, 0, st>>>((__half *)out, (const __half *)q, q_stride, (const __half *)pool, q_start, ctx_len,
                                                  block_tables, max_blocks, (int)n_seqs, (int)n_heads, (int)n_kv_heads, (int)head_dim,
                                                  (int)tokens_per_block, window, scale);
    else if (act == LOOM_BF16)
        attn_generic<__nv_bfloat16><<<grid, 32, 0, st>>>((__nv_bfloat16 *)out, (const __nv_bfloat16 *)q, q_stride, (const __nv_bfloat16 *)pool,
                                                         q_start, ctx_len, block_tables, max_blocks, (int)n_seqs, (int)n_heads, (int)n_kv_heads,
                                                         (int)head_dim, (int)tokens_per_block, window, scale);
    else
        return (int)cudaErrorInvalidValue;
    return (int)cudaGetLastError();
}
