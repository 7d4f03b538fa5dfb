/* The one-row GEMV's device code (kernels/cuda/gemv.cu's loom_cuda_gemv1
 * and its _rope/_glu/_f32 entries), shared with the persistent decode step
 * (decode_step.cu): the arguments, the row dot product, the epilogues and the
 * prologue's residual add. Included by .cu files only. */
#ifndef LOOM_KERNELS_CUDA_GEMV1_CUH
#define LOOM_KERNELS_CUDA_GEMV1_CUH

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include "act_convert.cuh"
#include "kv_fp8.cuh"

/* ---- one row, fused prologue (loom_cuda_gemv1) ----
 * A grid of at most two blocks per SM of G1_WARPS warps; warp k of the grid
 * takes rows k, k + warps, ... Each block first builds the prologue's vector
 * in shared memory (x, x + delta normalized, or silu(gate) * up), so the
 * rows read it from there; the norm's gamma (a weight) is staged before the
 * PDL wait. W streams with G1_UNROLL 16-byte loads in flight per lane.
 * (Reading x straight from global memory in the rows instead of staging it
 * was 14% slower a step; prefetching the start of each warp's first row into
 * L2, into registers or (cp.async) into shared memory, before or after the
 * PDL wait, all measured slower on an H200: bench/results/2026-11-21-h200-
 * decode-fused.md and 2026-11-21-h200-decode-s4.md.) */
#define G1_WARPS 8
#define G1_UNROLL 8

struct Gemv1Args {
    void *y;
    const void *x, *delta, *gamma, *w, *bias;
    void *x_out;
    int in, out;
    int trigger;           /* PDL: 0 none (at exit), 1 after the wait, 2 after the rows */
    int gamma_staged;      /* ADD_RMSNORM: gamma copied to smem after the vector before the wait */
    int y_f32;             /* STORE: y is fp32: 1 each value rounded to act first, 2 not rounded (a TP partial) */
    int delta_f32;         /* ADD_RMSNORM: delta is fp32, each value rounded to act before the add */
    const int32_t *row;    /* x is a table; the input is its row row[0] (the embedding gather) */
    int items;             /* work items: out rows, or (ROPE) row pairs of q/k plus v rows */
    float eps;
    /* ROPE: the one token's position and pool slot, the pool, the shape */
    const int32_t *pos, *slot;
    const float *inv_freq;
    void *pool;
    int n_heads, n_kv_heads, head_dim, tokens_per_block;
    int64_t half_elems; /* elements of a block's K (or V) half */
    int kv_f8;          /* ROPE: the pool holds FP8 E4M3 (K rounded from its fp32 rotation, V from act), else act */
};

/* ROPE: element e of the pool gets f (fp8 pool) or rounded (act pool). */
template <typename S> __device__ __forceinline__ void pool_put(const Gemv1Args &a, int64_t e, float f, S rounded)
{
    if (a.kv_f8) static_cast<uint8_t *>(a.pool)[e] = e4m3_from_f32(f);
    else static_cast<S *>(a.pool)[e] = rounded;
}

/* Sum over the block, to every thread (blockDim.x == 32 * G1_WARPS). */
__device__ __forceinline__ float g1_block_sum(float v)
{
    __shared__ float part[G1_WARPS];
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    if (threadIdx.x % 32 == 0) part[threadIdx.x / 32] = v;
    __syncthreads();
    float t = 0.0f;
#pragma unroll
    for (int k = 0; k < G1_WARPS; k++) t += part[k];
    return t;
}

/* A pair widened to fp32 for the dot product: as to_f2, but bf16 by bit
 * placement (low element shifted up 16, high one with the low 16 bits masked
 * off; exact, as __bfloat1622float2), one instruction an element where the
 * intrinsic takes a PRMT and a shift for the high one. With the fewer
 * temporaries the bf16 row loop issues its 8 W loads of a batch together (7,
 * then 1 later, with the intrinsic, where fp16 already issued 8). Kept to the
 * GEMV: the attention kernels built with it grew 2-6 registers. */
template <typename P> __device__ __forceinline__ float2 dot_f2(const P v) { return to_f2<P>(v); }
template <> __device__ __forceinline__ float2 dot_f2<__nv_bfloat162>(const __nv_bfloat162 v)
{
    const unsigned u = *reinterpret_cast<const unsigned *>(&v);
    return make_float2(__uint_as_float(u << 16), __uint_as_float(u & 0xffff0000u));
}

/* acc += the 8 products of one 16-byte chunk of W and of x. */
template <typename P> __device__ __forceinline__ void dot_chunk(float &acc, const uint4 wv, const uint4 xv)
{
    const P *wp = reinterpret_cast<const P *>(&wv), *xp = reinterpret_cast<const P *>(&xv);
#pragma unroll
    for (int k = 0; k < 4; k++) {
        const float2 p = dot_f2<P>(wp[k]), q = dot_f2<P>(xp[k]);
        acc += p.x * q.x + p.y * q.y;
    }
}

/* The dot product of W's row wr with the staged vector xs (n8 16-byte
 * chunks), reduced over the warp (every lane gets it). */
template <typename P>
__device__ __forceinline__ float row_dot(const uint4 *__restrict__ wr, const uint4 *xs, int n8, int lane)
{
    float acc = 0.0f;
    int i = lane;
    for (; i + 32 * (G1_UNROLL - 1) < n8; i += 32 * G1_UNROLL) {
        uint4 wv[G1_UNROLL];
#pragma unroll
        for (int u = 0; u < G1_UNROLL; u++) wv[u] = __ldcs(wr + i + 32 * u);
#pragma unroll
        for (int u = 0; u < G1_UNROLL; u++) dot_chunk<P>(acc, wv[u], xs[i + 32 * u]);
    }
    /* the rest (under 32 * G1_UNROLL chunks) in batches of predicated loads
     * in flight together, not one latency per chunk (in 11008: 3 a lane) */
    constexpr int R = G1_UNROLL / 2;
    for (; i < n8; i += 32 * R) {
        uint4 wv[R];
#pragma unroll
        for (int u = 0; u < R; u++) wv[u] = i + 32 * u < n8 ? __ldcs(wr + i + 32 * u) : make_uint4(0, 0, 0, 0);
#pragma unroll
        for (int u = 0; u < R; u++)
            if (i + 32 * u < n8) dot_chunk<P>(acc, wv[u], xs[i + 32 * u]);
    }
    for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
    return acc;
}

/* Epilogues: the plain store, RoPE + KV append (loom_cuda_gemv1_rope),
 * SiLU(gate) * up (loom_cuda_gemv1_glu). */
enum { EPI_STORE = 0, EPI_ROPE = 1, EPI_GLU = 2 };

/* Work item -> W row(s). Plain: item = row. ROPE: items first cover the q
 * and k heads in rotate_half pairs (row r and r + head_dim / 2 of one head,
 * one warp computing both), then the v rows one each. GLU: item i is the
 * pair (gate row i, up row inter + i); a.out = inter. */
struct RowPair {
    int r1, r2, head, i; /* r2 < 0: a single row */
};
template <int EPI> __device__ __forceinline__ RowPair item_rows(const Gemv1Args &a, int item)
{
    if (EPI == EPI_STORE) return {item, -1, 0, 0};
    if (EPI == EPI_GLU) return {item, a.out + item, 0, item};
    const int half = a.head_dim / 2, pairs = (a.n_heads + a.n_kv_heads) * half;
    if (item < pairs) {
        const int h = item / half, i = item % half, r = h * a.head_dim + i;
        return {r, r + half, h, i};
    }
    return {pairs * 2 + (item - pairs), -1, -1, 0};
}

/* The rows: each warp takes items item0, item0 + istep, ... and runs the
 * epilogue on them, reading the staged vector xs. */
template <typename S, typename P, int EPI>
__device__ __forceinline__ void g1_rows(const Gemv1Args &a, const uint4 *xs, int item0, int istep, int lane)
{
    constexpr bool ROPE = EPI == EPI_ROPE;
    const int n8 = a.in / 8;
    const S *w = static_cast<const S *>(a.w);
    const S *bias = static_cast<const S *>(a.bias);
    S *y = static_cast<S *>(a.y);
    /* ROPE: the pool element of the token's slot in the K half of its block,
     * head 0 (-1: no slot), worked out where it is used rather than held
     * through the rows: with those two registers free the fp16 QKV kernel
     * issues all 8 W loads of a batch together (6, then 2 later, before),
     * and a batch-1 step of the Llama-2-7B shape on an H200 takes 0.6-1.1%
     * less (bench/results/2026-11-22-h200-decode-s12.md) */
    auto kdst_of = [&]() -> int64_t {
        const int32_t slot = a.slot[0];
        return slot < 0 ? -1 : (int64_t)(slot / a.tokens_per_block) * 2 * a.half_elems + (int64_t)(slot % a.tokens_per_block) * a.head_dim;
    };
    for (int item = item0; item < a.items; item += istep) {
        const RowPair rp = item_rows<EPI>(a, item);
        const float d1 = row_dot<P>(reinterpret_cast<const uint4 *>(w + (size_t)rp.r1 * a.in), xs, n8, lane);
        const S v1 = from_f32<S>(d1 + (bias ? to_f32<S>(bias[rp.r1]) : 0.0f)); /* rounded as the GEMM's output */
        if (EPI == EPI_STORE || rp.r2 < 0) {
            if (lane == 0) {
                if (EPI == EPI_STORE && a.y_f32 == 2) static_cast<float *>(a.y)[rp.r1] = d1 + (bias ? to_f32<S>(bias[rp.r1]) : 0.0f);
                else if (EPI == EPI_STORE && a.y_f32) static_cast<float *>(a.y)[rp.r1] = to_f32<S>(v1);
                else y[rp.r1] = v1;
                const int64_t kdst = ROPE && rp.head < 0 ? kdst_of() : -1;
                if (kdst >= 0) { /* a v row: into the pool's V half */
                    const int e = rp.r1 - (a.n_heads + a.n_kv_heads) * a.head_dim, h = e / a.head_dim, dd = e % a.head_dim;
                    pool_put<S>(a, kdst + a.half_elems + (int64_t)h * a.tokens_per_block * a.head_dim + dd, to_f32<S>(v1), v1);
                }
            }
            continue;
        }
        const float d2 = row_dot<P>(reinterpret_cast<const uint4 *>(w + (size_t)rp.r2 * a.in), xs, n8, lane);
        const S v2 = from_f32<S>(d2 + (bias ? to_f32<S>(bias[rp.r2]) : 0.0f));
        if (EPI == EPI_GLU) {
            if (lane == 0) {
                const float g = to_f32<S>(v1), u = to_f32<S>(v2);
                y[rp.i] = from_f32<S>(g / (1.0f + expf(-g)) * u); /* HF: act_fn(gate) * up */
            }
            continue;
        }
        if (lane == 0) {
            float sn, cs;
            sincosf(__fmul_rn((float)a.pos[0], a.inv_freq[rp.i]), &sn, &cs);
            const float f1 = to_f32<S>(v1), f2 = to_f32<S>(v2);
            const float r1 = f1 * cs - f2 * sn, r2 = f2 * cs + f1 * sn;
            const S o1 = from_f32<S>(r1), o2 = from_f32<S>(r2);
            if (rp.head < a.n_heads) { /* q: rotated in place */
                y[rp.r1] = o1;
                y[rp.r2] = o2;
            } else { /* k: as it was in y, rotated into the pool's K half */
                y[rp.r1] = v1;
                y[rp.r2] = v2;
                const int64_t kdst = kdst_of();
                if (kdst >= 0) {
                    const int64_t kd = kdst + (int64_t)(rp.head - a.n_heads) * a.tokens_per_block * a.head_dim;
                    pool_put<S>(a, kd + rp.i, r1, o1);
                    pool_put<S>(a, kd + rp.i + a.head_dim / 2, r2, o2);
                }
            }
        }
    }
}

/* x + delta, rounded to act as the residual add is (v in place); the sum of
 * squares of the result is added to ss. CG: delta is read through L2 only
 * (it was written in the same kernel, by another block). */
template <typename P, bool CG = false> __device__ __forceinline__ void add_residual(uint4 &v, const uint4 *d, int i, float &ss)
{
    P *vp = reinterpret_cast<P *>(&v);
    if (d) {
        const uint4 dv = CG ? __ldcg(d + i) : d[i];
        const P *dp = reinterpret_cast<const P *>(&dv);
#pragma unroll
        for (int k = 0; k < 4; k++) {
            const float2 f = to_f2<P>(vp[k]), e = to_f2<P>(dp[k]);
            vp[k] = pack2<P>(f.x + e.x, f.y + e.y); /* rounded once, as the residual add */
        }
    }
#pragma unroll
    for (int k = 0; k < 4; k++) {
        const float2 f = to_f2<P>(vp[k]);
        ss += f.x * f.x;
        ss += f.y * f.y;
    }
}

/* add_residual with delta in fp32 (chunk i = its floats 8i .. 8i + 7): each
 * delta value is rounded to act first (the one-GPU product as stored), then
 * added and rounded as add_residual does. */
template <typename P> __device__ __forceinline__ void add_residual_f32(uint4 &v, const float4 *d, int i, float &ss)
{
    P *vp = reinterpret_cast<P *>(&v);
    const float4 d0 = d[2 * i], d1 = d[2 * i + 1];
    const P e[4] = {pack2<P>(d0.x, d0.y), pack2<P>(d0.z, d0.w), pack2<P>(d1.x, d1.y), pack2<P>(d1.z, d1.w)};
#pragma unroll
    for (int k = 0; k < 4; k++) {
        const float2 f = to_f2<P>(vp[k]), g = to_f2<P>(e[k]);
        vp[k] = pack2<P>(f.x + g.x, f.y + g.y);
    }
    add_residual<P>(v, nullptr, i, ss);
}

/* v * r * gamma, elementwise in fp32, rounded to act (the norm's second pass). */
template <typename P> __device__ __forceinline__ uint4 norm_chunk(uint4 v, const uint4 gv, float r)
{
    P *vp = reinterpret_cast<P *>(&v);
    const P *gp = reinterpret_cast<const P *>(&gv);
#pragma unroll
    for (int k = 0; k < 4; k++) {
        const float2 f = to_f2<P>(vp[k]), e = to_f2<P>(gp[k]);
        vp[k] = pack2<P>(e.x * (f.x * r), e.y * (f.y * r));
    }
    return v;
}

/* The ADD_RMSNORM prologue, by the whole block (no trailing sync): xs =
 * RMSNorm(x + delta) * gamma in act, x_out = x + delta when not NULL (x NULL
 * reads zeros, delta NULL adds nothing; delta in fp32 when delta_f32). CG: x
 * and delta are read through L2 only (written in the same kernel by other
 * blocks; not with delta_f32). */
template <typename P, bool CG>
__device__ __forceinline__ void add_rmsnorm_into(uint4 *xs, const uint4 *x, const void *delta, const uint4 *gamma, uint4 *x_out, int in,
                                                 float eps, bool delta_f32 = false)
{
    const int n8 = in / 8;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < n8; i += blockDim.x) {
        uint4 v = x ? (CG ? __ldcg(x + i) : x[i]) : make_uint4(0, 0, 0, 0);
        if (delta && delta_f32) add_residual_f32<P>(v, static_cast<const float4 *>(delta), i, ss);
        else add_residual<P, CG>(v, static_cast<const uint4 *>(delta), i, ss);
        xs[i] = v;
        if (x_out) x_out[i] = v;
    }
    const float r = rsqrtf(g1_block_sum(ss) / (float)in + eps);
    for (int i = threadIdx.x; i < n8; i += blockDim.x) xs[i] = norm_chunk<P>(xs[i], gamma[i], r);
}

/* Blocks of G1_WARPS warps for items rows when at most max_blocks fit: when
 * the last round of rows would keep under 3/4 of the warps busy (balance),
 * as few blocks as make every round full: 11008 gate/up pairs on 2112 warps
 * are 5.2 rounds, whose sixth runs a fifth of the warps at a fraction of the
 * bandwidth; on 1840 warps they are 6 full rounds (3.68 against 3.73 ms a
 * batch-1 step on an H200). A nearly full last round costs less than the
 * warps it would take away. */
static inline int g1_blocks(int items, int max_blocks, int balance)
{
    int blocks = (items + G1_WARPS - 1) / G1_WARPS;
    if (blocks <= max_blocks) return blocks;
    blocks = max_blocks;
    const int warps = blocks * G1_WARPS, rounds = (items + warps - 1) / warps;
    if (balance && 4 * (items - (rounds - 1) * warps) < 3 * warps) blocks = (items + rounds * G1_WARPS - 1) / (rounds * G1_WARPS);
    return blocks;
}

#endif
