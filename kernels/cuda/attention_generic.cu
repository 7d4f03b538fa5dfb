/* A simple attention kernel over the paged KV pool for any head_dim up to 256:
 * one warp per (query token, head), online softmax over the visible keys. It
 * is the fallback for head sizes the tuned kernels (attention.cu: 64, 128) do
 * not cover, e.g. the tiny demo and test models; the same contract as
 * loom_cuda_attention, pools of act or FP8 E4M3 elements. */
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <math.h>

#include "act_convert.cuh"
#include "kv_fp8.cuh"
#include "ops_cuda.h"

#define MAX_PER_LANE 8 /* head_dim <= 256 */

template <typename T, typename KV>
__global__ void attn_generic(T *out, const T *q, int64_t q_stride, const KV *pool, const int32_t *q_start, const int32_t *ctx_len,
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
        const KV *kb = pool + (int64_t)bt[j / B] * block_elems + ((int64_t)kvh * B + j % B) * hd;
        const KV *vb = kb + (int64_t)n_kv_heads * B * hd;
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

template <typename T, typename KV>
static cudaError_t generic_launch(void *out, const void *q, int64_t q_stride, const void *pool, const int32_t *q_start,
                                  const int32_t *ctx_len, const int32_t *block_tables, int64_t max_blocks, int64_t n_seqs,
                                  int64_t n_tokens, int64_t n_heads, int64_t n_kv_heads, int64_t head_dim, int64_t tokens_per_block,
                                  int64_t window, float scale, cudaStream_t st)
{
    attn_generic<T, KV><<<dim3((unsigned)n_tokens, (unsigned)n_heads), 32, 0, st>>>(
        (T *)out, (const T *)q, q_stride, (const KV *)pool, q_start, ctx_len, block_tables, max_blocks, (int)n_seqs, (int)n_heads,
        (int)n_kv_heads, (int)head_dim, (int)tokens_per_block, window, scale);
    return cudaGetLastError();
}

extern "C" int loom_cuda_attention_generic(void *out, const void *q, int64_t q_stride, const void *pool, loom_dtype act,
                                           loom_dtype kv, const int32_t *q_start, const int32_t *ctx_len, const int32_t *block_tables,
                                           int64_t max_blocks, int64_t n_seqs, int64_t n_tokens, int64_t n_heads, int64_t n_kv_heads,
                                           int64_t head_dim, int64_t tokens_per_block, int64_t window, float scale, void *stream)
{
    if (head_dim < 1 || head_dim > 32 * MAX_PER_LANE || n_heads % n_kv_heads || n_tokens < 1 || n_seqs < 1) return (int)cudaErrorInvalidValue;
    if ((act != LOOM_F16 && act != LOOM_BF16) || (kv != act && kv != LOOM_F8E4M3)) return (int)cudaErrorInvalidValue;
    cudaStream_t st = (cudaStream_t)stream;
    const bool f8 = kv == LOOM_F8E4M3;
#define GEN(T, KV) generic_launch<T, KV>(out, q, q_stride, pool, q_start, ctx_len, block_tables, max_blocks, n_seqs, n_tokens, n_heads, \
                                         n_kv_heads, head_dim, tokens_per_block, window, scale, st)
    cudaError_t e;
    if (act == LOOM_F16) e = f8 ? GEN(__half, kv_fp8) : GEN(__half, __half);
    else e = f8 ? GEN(__nv_bfloat16, kv_fp8) : GEN(__nv_bfloat16, __nv_bfloat16);
#undef GEN
    return (int)e;
}
