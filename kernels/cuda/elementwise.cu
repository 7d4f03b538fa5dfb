/* CUDA elementwise ops around the GEMMs: embedding lookup, residual add fused
 * with RMSNorm, RoPE in place on Q/K, and SiLU(gate)*up on the fused gate/up
 * output. All are memory-bound: each moves 8 elements per 16-byte access when
 * widths and addresses allow (one element at a time otherwise), computes in
 * fp32 and rounds once on store. Semantics follow kernels/cpu/ (see ops_cuda.h). */
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "act_convert.cuh"
#include "kv_fp8.cuh"
#include "ops_cuda.h"
#include "pdl.cuh"

namespace {

constexpr int kMaxThreads = 1024;

/* v rounded to T and widened back: the value a store of v as T keeps. */
template <typename T> __device__ __forceinline__ float round_to(float v) { return to_f32(from_f32<T>(v)); }

/* 8 consecutive elements <-> 8 floats, in 16-byte (two for fp32) accesses. */
__device__ __forceinline__ void load8(const float *p, float *f)
{
    float4 a = reinterpret_cast<const float4 *>(p)[0], b = reinterpret_cast<const float4 *>(p)[1];
    f[0] = a.x; f[1] = a.y; f[2] = a.z; f[3] = a.w; f[4] = b.x; f[5] = b.y; f[6] = b.z; f[7] = b.w;
}
__device__ __forceinline__ void load8(const __half *p, float *f)
{
    uint4 u = *reinterpret_cast<const uint4 *>(p);
    const __half2 *h = reinterpret_cast<const __half2 *>(&u);
#pragma unroll
    for (int i = 0; i < 4; i++) {
        float2 t = __half22float2(h[i]);
        f[2 * i] = t.x; f[2 * i + 1] = t.y;
    }
}
__device__ __forceinline__ void load8(const __nv_bfloat16 *p, float *f)
{
    uint4 u = *reinterpret_cast<const uint4 *>(p);
    const __nv_bfloat162 *h = reinterpret_cast<const __nv_bfloat162 *>(&u);
#pragma unroll
    for (int i = 0; i < 4; i++) {
        float2 t = __bfloat1622float2(h[i]);
        f[2 * i] = t.x; f[2 * i + 1] = t.y;
    }
}
__device__ __forceinline__ void store8(float *p, const float *f)
{
    reinterpret_cast<float4 *>(p)[0] = make_float4(f[0], f[1], f[2], f[3]);
    reinterpret_cast<float4 *>(p)[1] = make_float4(f[4], f[5], f[6], f[7]);
}
__device__ __forceinline__ void store8(__half *p, const float *f)
{
    uint4 u;
    __half2 *h = reinterpret_cast<__half2 *>(&u);
#pragma unroll
    for (int i = 0; i < 4; i++) h[i] = __floats2half2_rn(f[2 * i], f[2 * i + 1]);
    *reinterpret_cast<uint4 *>(p) = u;
}
__device__ __forceinline__ void store8(__nv_bfloat16 *p, const float *f)
{
    uint4 u;
    __nv_bfloat162 *h = reinterpret_cast<__nv_bfloat162 *>(&u);
#pragma unroll
    for (int i = 0; i < 4; i++) h[i] = __floats2bfloat162_rn(f[2 * i], f[2 * i + 1]);
    *reinterpret_cast<uint4 *>(p) = u;
}

/* 8 fp32 -> 8 FP8 E4M3 (the KV cache's fp8 elements): 8 bytes. */
__device__ __forceinline__ void store8(kv_fp8 *p, const float *f)
{
    *reinterpret_cast<uint2 *>(p) = e4m3x8_from_f32(f);
}
__device__ __forceinline__ void store1(kv_fp8 *p, float f) { p->__x = e4m3_from_f32(f); }
template <typename T> __device__ __forceinline__ void store1(T *p, float f) { p[0] = from_f32<T>(f); }

/* V (8 or 1) consecutive elements at p <-> V floats. */
template <int V, typename T> __device__ __forceinline__ void loadv(const T *p, float *f)
{
    if constexpr (V == 8) load8(p, f);
    else f[0] = to_f32(p[0]);
}
template <int V, typename T> __device__ __forceinline__ void storev(T *p, const float *f)
{
    if constexpr (V == 8) store8(p, f);
    else store1(p, f[0]);
}

bool aligned16(const void *p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

__device__ __forceinline__ float warp_sum(float v)
{
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

/* Sum over the block (blockDim.x a multiple of 32), returned to every thread;
 * its barriers also order every earlier global access of the block. */
__device__ __forceinline__ float block_sum(float v)
{
    __shared__ float partial[kMaxThreads / 32];
    __shared__ float total;
    v = warp_sum(v);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    if (warp == 0) {
        float t = lane < (int)(blockDim.x / 32) ? partial[lane] : 0.0f;
        t = warp_sum(t);
        if (lane == 0) total = t;
    }
    __syncthreads();
    return total;
}

/* Threads for a row of `lanes` work items: a power of two in [32, 1024];
 * short rows get fewer, long rows enough loads in flight. */
int row_threads(int64_t lanes)
{
    int threads = 32;
    while (threads < kMaxThreads && threads < lanes) threads *= 2;
    if (threads > 256 && lanes < 4 * 256) threads = 256;
    return threads;
}

/* ---- embedding ---------------------------------------------------------- */

/* grid (n), one token's row per block. A negative id (a caller bug) gives a
 * zero row instead of a read before the table. */
template <typename TA, typename TW, int V>
__global__ void embedding_kernel(TA *out, const TW *table, const int32_t *ids, int64_t dim)
{
    const int64_t id = ids[blockIdx.x];
    const TW *src = table + id * dim;
    TA *dst = out + (int64_t)blockIdx.x * dim;
    for (int64_t j = (int64_t)V * threadIdx.x; j < dim; j += (int64_t)V * blockDim.x) {
        float f[V];
        if (id >= 0) {
            loadv<V>(src + j, f);
        } else {
#pragma unroll
            for (int i = 0; i < V; i++) f[i] = 0.0f;
        }
        storev<V>(dst + j, f);
    }
}

template <typename TA, typename TW>
cudaError_t embedding_launch(void *out, const void *table, const int32_t *ids, int64_t n, int64_t dim,
                             cudaStream_t s)
{
    const bool vec = dim % 8 == 0 && aligned16(out) && aligned16(table);
    const int threads = row_threads(vec ? dim / 8 : dim);
    TA *o = static_cast<TA *>(out);
    const TW *t = static_cast<const TW *>(table);
    if (vec) embedding_kernel<TA, TW, 8><<<(unsigned)n, threads, 0, s>>>(o, t, ids, dim);
    else embedding_kernel<TA, TW, 1><<<(unsigned)n, threads, 0, s>>>(o, t, ids, dim);
    return cudaGetLastError();
}

/* ---- residual add + RMSNorm --------------------------------------------- */

/* residual[j..j+V) += delta (rounded to TA and stored back) when delta is
 * given; f gets the (rounded) new residual. A delta in fp32 (TD float, a TP
 * sum) is rounded to TA first, as the one-GPU GEMM stores its output. */
template <typename TA, typename TD, int V>
__device__ __forceinline__ void add_residual(TA *res, const TD *del, int64_t j, float *f)
{
    loadv<V>(res + j, f);
    if (del) {
        float d[V];
        loadv<V>(del + j, d);
#pragma unroll
        for (int i = 0; i < V; i++) {
            if constexpr (!std::is_same<TD, TA>::value) d[i] = round_to<TA>(d[i]); /* an fp32 TP sum: as one GPU stores it */
            f[i] = round_to<TA>(f[i] + d[i]);
        }
        storev<V>(res + j, f);
    }
}

/* grid (n), one row per block. The first CACHE strides of the row stay in
 * registers between the sum of squares and the scaling; any rest is re-read
 * (each thread re-reads only what it wrote itself). */
template <typename TA, typename TW, typename TD, int V, int CACHE>
__global__ void add_rmsnorm_kernel(TA *residual, const TD *delta, TA *out, const TW *w, int64_t dim,
                                   float eps)
{
    const int64_t off = (int64_t)blockIdx.x * dim;
    TA *res = residual + off;
    const TD *del = delta ? delta + off : nullptr;
    TA *o = out + off;
    const int64_t stride = (int64_t)V * blockDim.x, j0 = (int64_t)V * threadIdx.x;

    float cache[CACHE][V];
    float ss = 0.0f;
#pragma unroll
    for (int c = 0; c < CACHE; c++) {
        const int64_t j = j0 + c * stride;
        if (j < dim) {
            add_residual<TA, TD, V>(res, del, j, cache[c]);
#pragma unroll
            for (int i = 0; i < V; i++) ss += cache[c][i] * cache[c][i];
        }
    }
    for (int64_t j = j0 + CACHE * stride; j < dim; j += stride) {
        float f[V];
        add_residual<TA, TD, V>(res, del, j, f);
#pragma unroll
        for (int i = 0; i < V; i++) ss += f[i] * f[i];
    }
    const float r = rsqrtf(block_sum(ss) / (float)dim + eps);
#pragma unroll
    for (int c = 0; c < CACHE; c++) {
        const int64_t j = j0 + c * stride;
        if (j < dim) {
            float g[V];
            loadv<V>(w + j, g);
#pragma unroll
            for (int i = 0; i < V; i++) cache[c][i] = g[i] * (cache[c][i] * r);
            storev<V>(o + j, cache[c]);
        }
    }
    for (int64_t j = j0 + CACHE * stride; j < dim; j += stride) {
        float f[V], g[V];
        loadv<V>(res + j, f);
        loadv<V>(w + j, g);
#pragma unroll
        for (int i = 0; i < V; i++) f[i] = g[i] * (f[i] * r);
        storev<V>(o + j, f);
    }
}

template <typename TA, typename TW, typename TD = TA>
cudaError_t add_rmsnorm_launch(void *residual, const void *delta, void *out, const void *w, int64_t n,
                               int64_t dim, float eps, cudaStream_t s)
{
    const bool vec = dim % 8 == 0 && aligned16(residual) && (!delta || aligned16(delta)) &&
                     aligned16(out) && aligned16(w);
    const int threads = row_threads(vec ? dim / 8 : dim);
    TA *r = static_cast<TA *>(residual);
    const TD *d = static_cast<const TD *>(delta);
    TA *o = static_cast<TA *>(out);
    const TW *g = static_cast<const TW *>(w);
    if (vec) add_rmsnorm_kernel<TA, TW, TD, 8, 4><<<(unsigned)n, threads, 0, s>>>(r, d, o, g, dim, eps);
    else add_rmsnorm_kernel<TA, TW, TD, 1, 8><<<(unsigned)n, threads, 0, s>>>(r, d, o, g, dim, eps);
    return cudaGetLastError();
}

/* ---- RoPE ----------------------------------------------------------------- */

/* Rotates V rotate_half pairs (src[i], src[i + half]) by the angles whose
 * cosines and sines are cs, sn; stores them at dst (which may be src). */
template <typename TA, int V, typename TD = TA>
__device__ __forceinline__ void rotate_chunk(const TA *src, TD *dst, int64_t half, const float *cs, const float *sn)
{
    float a[V], b[V];
    loadv<V>(src, a);
    loadv<V>(src + half, b);
#pragma unroll
    for (int i = 0; i < V; i++) {
        const float ai = a[i], bi = b[i];
        a[i] = ai * cs[i] - bi * sn[i];
        b[i] = bi * cs[i] + ai * sn[i];
    }
    storev<V>(dst, a);
    storev<V>(dst + half, b);
}

/* grid (n), one token per block. Thread = (chunk c of V pairs, head lane):
 * it computes its V angles once (fp32 pos * inv_freq, then accurate
 * sincosf, as HF does) and rotates that chunk in every q and k head of the
 * token, stepping over heads by the number of head lanes. */
template <typename TA, int V>
__global__ void rope_kernel(TA *q, int64_t q_stride, TA *k, int64_t k_stride, const int32_t *pos,
                            int64_t n_heads, int64_t n_kv_heads, int64_t head_dim, const float *inv_freq)
{
    const int64_t half = head_dim / 2;
    const int chunks = (int)(half / V);
    const int c = threadIdx.x % chunks, lane = threadIdx.x / chunks, lanes = blockDim.x / chunks;
    if (lane >= lanes) return;
    const float p = (float)pos[blockIdx.x];
    float cs[V], sn[V];
#pragma unroll
    for (int i = 0; i < V; i++) sincosf(__fmul_rn(p, inv_freq[c * V + i]), &sn[i], &cs[i]);

    TA *qt = q + (int64_t)blockIdx.x * q_stride;
    TA *kt = k ? k + (int64_t)blockIdx.x * k_stride : nullptr;
    for (int64_t h = lane; h < n_heads + n_kv_heads; h += lanes) {
        TA *x = (h < n_heads ? qt + h * head_dim : kt + (h - n_heads) * head_dim) + (int64_t)c * V;
        rotate_chunk<TA, V>(x, x, half, cs, sn);
    }
}

/* Threads of a RoPE block: `chunks` per head times as many heads as fit in
 * 256 (at least one); 0 when one head's chunks exceed a block. */
int rope_threads(int64_t chunks, int64_t heads)
{
    if (chunks > kMaxThreads) return 0;
    int64_t cap = 256 / chunks;
    if (cap < 1) cap = 1;
    return (int)(chunks * (heads < cap ? heads : cap));
}

template <typename TA>
cudaError_t rope_launch(void *q, int64_t q_stride, void *k, int64_t k_stride, const int32_t *pos, int64_t n,
                        int64_t n_heads, int64_t n_kv_heads, int64_t head_dim, const float *inv_freq,
                        cudaStream_t s)
{
    const int64_t half = head_dim / 2, es = sizeof(TA);
    const bool vec = half % 8 == 0 && aligned16(q) && (q_stride * es) % 16 == 0 &&
                     (!k || (aligned16(k) && (k_stride * es) % 16 == 0));
    const int threads = rope_threads(vec ? half / 8 : half, n_heads + n_kv_heads);
    if (!threads) return cudaErrorInvalidValue;
    TA *qq = static_cast<TA *>(q), *kk = static_cast<TA *>(k);
    if (vec)
        rope_kernel<TA, 8><<<(unsigned)n, threads, 0, s>>>(qq, q_stride, kk, k_stride, pos, n_heads, n_kv_heads,
                                                          head_dim, inv_freq);
    else
        rope_kernel<TA, 1><<<(unsigned)n, threads, 0, s>>>(qq, q_stride, kk, k_stride, pos, n_heads, n_kv_heads,
                                                          head_dim, inv_freq);
    return cudaGetLastError();
}

/* ---- RoPE + KV append (one decode kernel) --------------------------------- */

/* grid (n), one token per block, threads as rope_kernel's plus a copy of v:
 * q heads rotate in place; k heads are read from the row and written rotated
 * straight into the token's pool slot, v is copied there. KV is the pool's
 * element: TA, or kv_fp8 (the rotated k rounded from fp32 once). */
template <typename TA, int V, typename KV>
__global__ void rope_append_kernel(TA *qkv, int64_t stride, const int32_t *pos, const int32_t *slots, int64_t n_heads,
                                   int64_t n_kv_heads, int64_t head_dim, const float *inv_freq, KV *pool,
                                   int64_t tokens_per_block)
{
    pdl_wait();
    const int64_t half = head_dim / 2, B = tokens_per_block;
    const int chunks = (int)(half / V);
    const int c = threadIdx.x % chunks, lane = threadIdx.x / chunks, lanes = blockDim.x / chunks;
    TA *row = qkv + (int64_t)blockIdx.x * stride;
    const int32_t slot = slots[blockIdx.x];
    const int64_t half_elems = B * head_dim * n_kv_heads;
    KV *kdst = slot >= 0 ? pool + (slot / B) * 2 * half_elems + (slot % B) * head_dim : nullptr;
    if (lane < lanes) {
        const float p = (float)pos[blockIdx.x];
        float cs[V], sn[V];
#pragma unroll
        for (int i = 0; i < V; i++) sincosf(__fmul_rn(p, inv_freq[c * V + i]), &sn[i], &cs[i]);
        for (int64_t h = lane; h < n_heads + n_kv_heads; h += lanes) {
            const TA *src = row + h * head_dim + (int64_t)c * V; /* k heads follow the q heads in the row */
            if (h < n_heads) rotate_chunk<TA, V>(src, row + h * head_dim + (int64_t)c * V, half, cs, sn);
            else if (kdst) rotate_chunk<TA, V, KV>(src, kdst + (h - n_heads) * B * head_dim + (int64_t)c * V, half, cs, sn);
        }
    }
    if (!kdst) return;
    const TA *v = row + (n_heads + n_kv_heads) * head_dim;
    KV *vdst = kdst + half_elems;
    for (int64_t e = (int64_t)threadIdx.x * V; e < n_kv_heads * head_dim; e += (int64_t)blockDim.x * V) {
        const int64_t h = e / head_dim, d = e % head_dim; /* V divides head_dim */
        float f[V];
        loadv<V>(v + e, f);
        storev<V>(vdst + h * B * head_dim + d, f);
    }
}

template <typename TA, typename KV>
cudaError_t rope_append_launch(void *qkv, int64_t stride, const int32_t *pos, const int32_t *slots, int64_t n, int64_t n_heads,
                               int64_t n_kv_heads, int64_t head_dim, const float *inv_freq, void *pool, int64_t B, cudaStream_t s)
{
    const int64_t half = head_dim / 2, es = sizeof(TA);
    const bool vec = half % 8 == 0 && aligned16(qkv) && aligned16(pool) && (stride * es) % 16 == 0;
    const int threads = rope_threads(vec ? half / 8 : half, n_heads + n_kv_heads);
    if (!threads) return cudaErrorInvalidValue;
    TA *q = static_cast<TA *>(qkv);
    KV *pl = static_cast<KV *>(pool);
    if (vec)
        return pdl_launch(rope_append_kernel<TA, 8, KV>, dim3((unsigned)n), dim3(threads), 0, s, q, stride, pos, slots, n_heads, n_kv_heads,
                          head_dim, inv_freq, pl, B);
    return pdl_launch(rope_append_kernel<TA, 1, KV>, dim3((unsigned)n), dim3(threads), 0, s, q, stride, pos, slots, n_heads, n_kv_heads,
                      head_dim, inv_freq, pl, B);
}

/* ---- SiLU(gate) * up ------------------------------------------------------ */

/* grid (column blocks, row groups): rows step by gridDim.y so any n fits. */
template <typename TA, int V>
__global__ void silu_mul_kernel(TA *out, const TA *gate_up, int64_t n, int64_t inter)
{
    const int64_t chunks = inter / V;
    for (int64_t row = blockIdx.y; row < n; row += gridDim.y) {
        const TA *g = gate_up + row * 2 * inter;
        TA *o = out + row * inter;
        for (int64_t c = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; c < chunks;
             c += (int64_t)gridDim.x * blockDim.x) {
            float a[V], b[V];
            loadv<V>(g + c * V, a);
            loadv<V>(g + inter + c * V, b);
#pragma unroll
            for (int i = 0; i < V; i++) a[i] = a[i] / (1.0f + expf(-a[i])) * b[i]; /* HF: act_fn(gate) * up */
            storev<V>(o + c * V, a);
        }
    }
}

template <typename TA>
cudaError_t silu_mul_launch(void *out, const void *gate_up, int64_t n, int64_t inter, cudaStream_t s)
{
    const bool vec = inter % 8 == 0 && aligned16(out) && aligned16(gate_up);
    const int64_t chunks = vec ? inter / 8 : inter;
    const int threads = chunks >= 256 ? 256 : (int)((chunks + 31) / 32 * 32);
    int64_t gx = (chunks + threads - 1) / threads;
    if (gx > 65535) gx = 65535;
    const int64_t gy = n < 65535 ? n : 65535;
    const dim3 grid((unsigned)gx, (unsigned)gy);
    TA *o = static_cast<TA *>(out);
    const TA *gu = static_cast<const TA *>(gate_up);
    if (vec) silu_mul_kernel<TA, 8><<<grid, threads, 0, s>>>(o, gu, n, inter);
    else silu_mul_kernel<TA, 1><<<grid, threads, 0, s>>>(o, gu, n, inter);
    return cudaGetLastError();
}

/* act x weight dtype dispatch. */
template <template <typename, typename> class F, typename... Args>
cudaError_t dispatch2(loom_dtype act, loom_dtype wdt, Args... args)
{
    switch (act) {
    case LOOM_F32:
        switch (wdt) {
        case LOOM_F32: return F<float, float>::run(args...);
        case LOOM_F16: return F<float, __half>::run(args...);
        case LOOM_BF16: return F<float, __nv_bfloat16>::run(args...);
        default: return cudaErrorInvalidValue;
        }
    case LOOM_F16:
        switch (wdt) {
        case LOOM_F32: return F<__half, float>::run(args...);
        case LOOM_F16: return F<__half, __half>::run(args...);
        case LOOM_BF16: return F<__half, __nv_bfloat16>::run(args...);
        default: return cudaErrorInvalidValue;
        }
    case LOOM_BF16:
        switch (wdt) {
        case LOOM_F32: return F<__nv_bfloat16, float>::run(args...);
        case LOOM_F16: return F<__nv_bfloat16, __half>::run(args...);
        case LOOM_BF16: return F<__nv_bfloat16, __nv_bfloat16>::run(args...);
        default: return cudaErrorInvalidValue;
        }
    default: return cudaErrorInvalidValue;
    }
}

template <typename TA, typename TW> struct EmbeddingF {
    static cudaError_t run(void *out, const void *table, const int32_t *ids, int64_t n, int64_t dim, cudaStream_t s)
    {
        return embedding_launch<TA, TW>(out, table, ids, n, dim, s);
    }
};
template <typename TA, typename TW> struct AddRmsnormF {
    static cudaError_t run(void *residual, const void *delta, void *out, const void *w, int64_t n, int64_t dim,
                           float eps, cudaStream_t s)
    {
        return add_rmsnorm_launch<TA, TW>(residual, delta, out, w, n, dim, eps, s);
    }
};
template <typename TA, typename TW> struct AddRmsnormF32F {
    static cudaError_t run(void *residual, const void *delta, void *out, const void *w, int64_t n, int64_t dim,
                           float eps, cudaStream_t s)
    {
        return add_rmsnorm_launch<TA, TW, float>(residual, delta, out, w, n, dim, eps, s);
    }
};

} // namespace

extern "C" int loom_cuda_embedding(void *out, loom_dtype act, const void *table, loom_dtype wdt,
                                   const int32_t *ids, int64_t n, int64_t dim, void *stream)
{
    if (n < 0 || dim < 0 || n > 0x7fffffff) return (int)cudaErrorInvalidValue;
    if (n == 0 || dim == 0) return (int)cudaSuccess;
    if (!out || !table || !ids) return (int)cudaErrorInvalidValue;
    return (int)dispatch2<EmbeddingF>(act, wdt, out, table, ids, n, dim, static_cast<cudaStream_t>(stream));
}

extern "C" int loom_cuda_add_rmsnorm(void *residual, const void *delta, void *out, loom_dtype act,
                                     const void *w, loom_dtype wdt, int64_t n, int64_t dim, float eps,
                                     void *stream)
{
    if (n < 0 || dim < 0 || n > 0x7fffffff) return (int)cudaErrorInvalidValue;
    if (n == 0 || dim == 0) return (int)cudaSuccess;
    if (!residual || !out || !w) return (int)cudaErrorInvalidValue;
    return (int)dispatch2<AddRmsnormF>(act, wdt, residual, delta, out, w, n, dim, eps,
                                       static_cast<cudaStream_t>(stream));
}

extern "C" int loom_cuda_add_rmsnorm_f32(void *residual, const float *delta, void *out, loom_dtype act,
                                         const void *w, loom_dtype wdt, int64_t n, int64_t dim, float eps,
                                         void *stream)
{
    if (n < 0 || dim < 0 || n > 0x7fffffff) return (int)cudaErrorInvalidValue;
    if (n == 0 || dim == 0) return (int)cudaSuccess;
    if (!residual || !delta || !out || !w) return (int)cudaErrorInvalidValue;
    return (int)dispatch2<AddRmsnormF32F>(act, wdt, residual, delta, out, w, n, dim, eps,
                                          static_cast<cudaStream_t>(stream));
}

extern "C" int loom_cuda_rope(void *q, int64_t q_stride, void *k, int64_t k_stride, loom_dtype act,
                              const int32_t *pos, int64_t n, int64_t n_heads, int64_t n_kv_heads,
                              int64_t head_dim, const float *inv_freq, void *stream)
{
    if (n < 0 || n > 0x7fffffff || n_heads < 0 || n_kv_heads < 0 || head_dim <= 0 || head_dim % 2)
        return (int)cudaErrorInvalidValue;
    if (n == 0 || n_heads + n_kv_heads == 0) return (int)cudaSuccess;
    if ((n_heads && (!q || q_stride < n_heads * head_dim)) ||
        (n_kv_heads && (!k || k_stride < n_kv_heads * head_dim)) || !pos || !inv_freq)
        return (int)cudaErrorInvalidValue;
    if (!n_kv_heads) k = nullptr;
    cudaStream_t s = static_cast<cudaStream_t>(stream);
    switch (act) {
    case LOOM_F32: return (int)rope_launch<float>(q, q_stride, k, k_stride, pos, n, n_heads, n_kv_heads, head_dim, inv_freq, s);
    case LOOM_F16: return (int)rope_launch<__half>(q, q_stride, k, k_stride, pos, n, n_heads, n_kv_heads, head_dim, inv_freq, s);
    case LOOM_BF16: return (int)rope_launch<__nv_bfloat16>(q, q_stride, k, k_stride, pos, n, n_heads, n_kv_heads, head_dim, inv_freq, s);
    default: return (int)cudaErrorInvalidValue;
    }
}

extern "C" int loom_cuda_rope_kv_append(void *qkv, int64_t stride, loom_dtype act, loom_dtype kv, const int32_t *pos,
                                        const int32_t *slot_mapping, int64_t n, int64_t n_heads, int64_t n_kv_heads, int64_t head_dim,
                                        const float *inv_freq, void *pool, int64_t tokens_per_block, void *stream)
{
    if (n < 0 || n > 0x7fffffff || n_heads < 1 || n_kv_heads < 1 || head_dim <= 0 || head_dim % 2 || tokens_per_block < 1)
        return (int)cudaErrorInvalidValue;
    if (kv != act && kv != LOOM_F8E4M3) return (int)cudaErrorInvalidValue;
    if (n == 0) return (int)cudaSuccess;
    if (!qkv || !pos || !slot_mapping || !inv_freq || !pool || stride < (n_heads + 2 * n_kv_heads) * head_dim)
        return (int)cudaErrorInvalidValue;
    cudaStream_t s = static_cast<cudaStream_t>(stream);
    const bool f8 = kv == LOOM_F8E4M3;
#define RA(TA, KV) rope_append_launch<TA, KV>(qkv, stride, pos, slot_mapping, n, n_heads, n_kv_heads, head_dim, inv_freq, pool, \
                                              tokens_per_block, s)
    switch (act) {
    case LOOM_F16: return (int)(f8 ? RA(__half, kv_fp8) : RA(__half, __half));
    case LOOM_BF16: return (int)(f8 ? RA(__nv_bfloat16, kv_fp8) : RA(__nv_bfloat16, __nv_bfloat16));
    default: return (int)cudaErrorInvalidValue;
    }
#undef RA
}

extern "C" int loom_cuda_silu_mul(void *out, const void *gate_up, loom_dtype act, int64_t n, int64_t inter,
                                  void *stream)
{
    if (n < 0 || inter < 0) return (int)cudaErrorInvalidValue;
    if (n == 0 || inter == 0) return (int)cudaSuccess;
    if (!out || !gate_up) return (int)cudaErrorInvalidValue;
    cudaStream_t s = static_cast<cudaStream_t>(stream);
    switch (act) {
    case LOOM_F32: return (int)silu_mul_launch<float>(out, gate_up, n, inter, s);
    case LOOM_F16: return (int)silu_mul_launch<__half>(out, gate_up, n, inter, s);
    case LOOM_BF16: return (int)silu_mul_launch<__nv_bfloat16>(out, gate_up, n, inter, s);
    default: return (int)cudaErrorInvalidValue;
    }
}

/* ---- bias into an fp32 product (loom_cuda_gemm_run_f32's epilogue) ---- */

namespace {
template <typename TA> __global__ void add_bias_f32_kernel(float *y, const TA *bias, int64_t n, int64_t out)
{
    const int64_t total = n * out;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x)
        y[i] += to_f32(bias[i % out]);
}
} // namespace

extern "C" int loom_cuda_add_bias_f32(float *y, const void *bias, loom_dtype act, int64_t n, int64_t out, void *stream)
{
    if (n < 0 || out < 0 || (act != LOOM_F16 && act != LOOM_BF16)) return (int)cudaErrorInvalidValue;
    if (n == 0 || out == 0) return (int)cudaSuccess;
    if (!y || !bias) return (int)cudaErrorInvalidValue;
    const int64_t total = n * out, threads = 256;
    const unsigned blocks = (unsigned)(total / threads + 1 < 4096 ? total / threads + 1 : 4096);
    cudaStream_t s = static_cast<cudaStream_t>(stream);
    if (act == LOOM_F16) add_bias_f32_kernel<__half><<<blocks, threads, 0, s>>>(y, static_cast<const __half *>(bias), n, out);
    else add_bias_f32_kernel<__nv_bfloat16><<<blocks, threads, 0, s>>>(y, static_cast<const __nv_bfloat16 *>(bias), n, out);
    return (int)cudaGetLastError();
}
