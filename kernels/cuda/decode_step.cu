/* One token's whole decode step as one persistent kernel (batch 1, one GPU;
 * ops_cuda.h: loom_cuda_decode_step). The fused step launches five kernels a
 * layer, and each boundary costs the GPU ~2.75 us of ramp-up and tail with
 * the bandwidth idle (bench/results/2026-11-21-h200-decode-s4.md). Here one
 * grid that fits on the device at once runs every phase of every layer:
 *
 *   A  add + RMSNorm, QKV GEMV, RoPE, KV append    (gemv1's rows, EPI_ROPE)
 *   B  attention over the paged pool: (head, split) items, one warp each,
 *      the last warp of a head merging the splits
 *   C  o GEMV
 *   D  add + RMSNorm, gate/up GEMV, SiLU*mul       (EPI_GLU)
 *   E  down GEMV
 *   ... then add + RMSNorm and lm_head (fp32 logits)
 *
 * with a grid-wide barrier between phases. Each layer first prefetches its
 * K/V into L2 (LOOM_STEP_PREFETCH=1, default); at 2 a warp also prefetches
 * the first lines of the W rows it reads after each barrier (slower).
 * Data written during the kernel by other blocks is read through L2
 * (__ldcg), never through L1, which is not coherent.
 *
 * Measured on an H200 (bench/results/2026-11-21-h200-decode-s5.md), it is
 * slower than the fused kernel chain, so it is off by default
 * (LOOM_DECODE_STEP=1 turns it on): 4.13 against 3.71 ms a batch-1 step of
 * the Llama-2-7B shape. Per layer the GEMV phases take about what the
 * kernels do (the barrier and each phase's ramp cost what a boundary did),
 * and attention, a chain of dependent loads (query, keys, values, partials,
 * merge) each near DRAM latency, takes 12 us against ~4-6 in the chain. */
#include "../../util/gpu_env.h"
#include "gemv1.cuh"
#include "ops_cuda.h"

#include <math.h>
#include <string.h>

#define DS_KEYS 32        /* keys per chunk: one per lane */

struct StepParams {
    loom_step s;
    int blocks_qkv, blocks_o, blocks_gu, blocks_down, blocks_lm; /* active blocks per GEMV phase */
    int prefetch;                                                /* into L2: 0 nothing, 1 each layer's K/V, 2 also W's first lines */
    int max_splits;                                              /* attention partials per head in the scratch */
};

/* ---- grid barrier: arrival counter and generation, self-resetting ---- */
__device__ __forceinline__ unsigned ld_acquire(const unsigned *p)
{
    unsigned v;
    asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
    return v;
}

__device__ __forceinline__ void grid_barrier(unsigned *bar)
{
    __syncthreads();
    if (threadIdx.x == 0) {
        const unsigned gen = ld_acquire(bar + 1); /* before arriving: the last arrival bumps it */
        __threadfence();
        if (atomicAdd(bar, 1u) == gridDim.x - 1) {
            atomicExch(bar, 0u);
            __threadfence();
            atomicAdd(bar + 1, 1u);
        } else {
            while (ld_acquire(bar + 1) == gen) {
            }
        }
        __threadfence();
    }
    __syncthreads();
}

__device__ __forceinline__ void prefetch_l2(const void *p) { asm volatile("prefetch.global.L2 [%0];" ::"l"(p)); }

/* Prefetches the first 4 KiB of the W rows of this warp's first item of a
 * GEMV phase (LOOM_STEP_PREFETCH=2). */
template <int EPI> __device__ __forceinline__ void prefetch_rows(const Gemv1Args &g, int item0, int lane)
{
    const size_t rb = (size_t)g.in * 2;
    const char *w = static_cast<const char *>(g.w);
    if (item0 < g.items) {
        const RowPair rp = item_rows<EPI>(g, item0);
        const size_t end = rb < 4096 ? rb : 4096;
        for (size_t o = (size_t)lane * 128; o < end; o += 32 * 128) {
            prefetch_l2(w + (size_t)rp.r1 * rb + o);
            if (rp.r2 >= 0) prefetch_l2(w + (size_t)rp.r2 * rb + o);
        }
    }
}

/* Layer L's K and V of keys j0 .. pos - 1 into L2, spread over every thread
 * of the grid: the pool's addresses are known before the layer starts, so
 * attention's loads hit L2 instead of waiting on DRAM one after another. A
 * pool block is 2 n_kv_heads segments (K heads, then V heads) of B rows. */
__device__ __forceinline__ void prefetch_kv(const loom_step &s, const loom_step_layer &L, int j0)
{
    const int pos = s.pos[0], B = (int)s.tokens_per_block, nkv = (int)s.n_kv_heads;
    if (pos <= j0) return;
    const int64_t seg = (int64_t)B * s.head_dim * 2, lines = (seg + 127) / 128;
    const int b0 = j0 / B, b1 = (pos - 1) / B;
    const int64_t n = (int64_t)(b1 - b0 + 1) * 2 * nkv * lines;
    const char *pool = static_cast<const char *>(L.pool);
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        const int64_t ln = i % lines, r = i / lines, sg = r % (2 * nkv), bi = b0 + r / (2 * nkv);
        prefetch_l2(pool + ((int64_t)s.block_table[bi] * 2 * nkv + sg) * seg + ln * 128);
    }
}

/* The first key a layer's attention reads (a sliding window starts later). */
__device__ __forceinline__ int first_key(int pos, int64_t window) { return window > 0 && pos - window + 1 > 0 ? (int)(pos - window + 1) : 0; }

/* ---- the GEMV phases' vectors, built in shared memory by every active block ---- */

/* xs = x (n8 chunks; x NULL: zeros). */
__device__ __forceinline__ void stage_plain(uint4 *xs, const uint4 *x, int n8)
{
    for (int i = threadIdx.x; i < n8; i += blockDim.x) xs[i] = x ? __ldcg(x + i) : make_uint4(0, 0, 0, 0);
    __syncthreads();
}

/* xs = RMSNorm(x + delta) * gamma, x_out = x + delta: gemv1_kernel's
 * ADD_RMSNORM prologue, through L2. */
template <typename P>
__device__ __forceinline__ void stage_norm(uint4 *xs, const uint4 *x, const uint4 *delta, const uint4 *gamma, uint4 *x_out, int in, float eps)
{
    add_rmsnorm_into<P, true>(xs, x, delta, gamma, x_out, in, eps);
    __syncthreads();
}

/* ---- attention: one warp per (head, split) ---- */

template <typename S> __device__ __forceinline__ S ldcg_s(const S *p);
template <> __device__ __forceinline__ __half ldcg_s<__half>(const __half *p)
{
    return __ushort_as_half(__ldcg(reinterpret_cast<const unsigned short *>(p)));
}
template <> __device__ __forceinline__ __nv_bfloat16 ldcg_s<__nv_bfloat16>(const __nv_bfloat16 *p)
{
    return __ushort_as_bfloat16(__ldcg(reinterpret_cast<const unsigned short *>(p)));
}

/* One (head, split) item: keys ja .. jb-1 of head h against its query (qs:
 * fp32, scaled by scale * log2 e, in this warp's shared memory), in chunks
 * of 32 keys. Scores: one key a lane, its R 16-byte pieces in flight at
 * once. Values: warp load u covers keys u * (32 / R) + lane / R, piece
 * lane % R of each, so a chunk's values are R loads a lane, all in flight;
 * the lanes of one piece are summed at the end. With one split the output
 * goes straight to att; else the partial (max, sum, unnormalized output;
 * base-2 exponents) goes to the scratch and the last warp of the head to
 * finish merges the head's splits. R = head_dim / 8 divides 32. */
template <typename S, typename P, int R>
__device__ void attend_item(const StepParams &p, const S *pool, int h, int split, int n_split, int ja, int jb, const float *qs, int lane,
                            unsigned *cnt, float *pm, float *pl, float *po)
{
    constexpr int hd = 8 * R, KPL = 32 / R, RB = R < 16 ? R : 16; /* keys per warp load; pieces per batch of loads */
    const unsigned full = 0xffffffffu;
    const loom_step &s = p.s;
    const int B = (int)s.tokens_per_block, nkv = (int)s.n_kv_heads;
    const int kvh = h / ((int)s.n_heads / nkv);
    const int64_t half = (int64_t)nkv * B * hd, block_elems = 2 * half;
    const int piece = lane % R, kq = lane / R;
    float m = -INFINITY, l = 0.0f, acc[8];
#pragma unroll
    for (int i = 0; i < 8; i++) acc[i] = 0.0f;
    for (int c = ja; c < jb; c += DS_KEYS) {
        const int j = c + lane;
        const bool valid = j < jb;
        int64_t off = 0;
        float sc = -INFINITY;
        if (valid) { /* this lane's key: written before this phase, first read here, so L1 holds no stale copy */
            off = (int64_t)s.block_table[j / B] * block_elems + ((int64_t)kvh * B + j % B) * hd;
            const uint4 *k = reinterpret_cast<const uint4 *>(pool + off);
            float dot = 0.0f;
#pragma unroll
            for (int u0 = 0; u0 < R; u0 += RB) {
                uint4 kv[RB];
#pragma unroll
                for (int u = 0; u < RB; u++) kv[u] = k[u0 + u];
#pragma unroll
                for (int u = 0; u < RB; u++) {
                    const P *kp = reinterpret_cast<const P *>(&kv[u]);
                    const float *q = qs + 8 * (u0 + u);
#pragma unroll
                    for (int t = 0; t < 4; t++) {
                        const float2 f = to_f2<P>(kp[t]);
                        dot += f.x * q[2 * t] + f.y * q[2 * t + 1];
                    }
                }
            }
            sc = dot;
        }
        float cmax = sc;
        for (int o = 16; o > 0; o >>= 1) cmax = fmaxf(cmax, __shfl_xor_sync(full, cmax, o));
        const float nm = fmaxf(m, cmax); /* finite: lane 0's key is valid */
        const float pr = valid ? exp2f(sc - nm) : 0.0f;
        float csum = pr;
        for (int o = 16; o > 0; o >>= 1) csum += __shfl_xor_sync(full, csum, o);
        const float corr = exp2f(m - nm); /* 0 on the first chunk */
        l = l * corr + csum;
#pragma unroll
        for (int i = 0; i < 8; i++) acc[i] *= corr;
        m = nm;
        const int n = jb - c < DS_KEYS ? jb - c : DS_KEYS;
#pragma unroll
        for (int u0 = 0; u0 < R; u0 += RB) {
            uint4 vv[RB];
#pragma unroll
            for (int u = 0; u < RB; u++) {
                const int t = (u0 + u) * KPL + kq;
                const int64_t ot = __shfl_sync(full, off, t);
                vv[u] = t < n ? reinterpret_cast<const uint4 *>(pool + ot + half)[piece] : make_uint4(0, 0, 0, 0);
            }
#pragma unroll
            for (int u = 0; u < RB; u++) {
                const float pt = __shfl_sync(full, pr, (u0 + u) * KPL + kq);
                const P *vp = reinterpret_cast<const P *>(&vv[u]);
#pragma unroll
                for (int t = 0; t < 4; t++) {
                    const float2 f = to_f2<P>(vp[t]);
                    acc[2 * t] += pt * f.x;
                    acc[2 * t + 1] += pt * f.y;
                }
            }
        }
    }
#pragma unroll
    for (int o = R; o < 32; o <<= 1)
#pragma unroll
        for (int i = 0; i < 8; i++) acc[i] += __shfl_xor_sync(full, acc[i], o);
    /* lanes 0 .. R-1 hold dims 8 lane .. 8 lane + 7 */
    S *att = static_cast<S *>(s.att) + (int64_t)h * hd + 8 * piece;
    if (n_split == 1) {
        if (lane < R) {
            uint4 o;
            P *op = reinterpret_cast<P *>(&o);
#pragma unroll
            for (int t = 0; t < 4; t++) op[t] = pack2<P>(acc[2 * t] / l, acc[2 * t + 1] / l);
            *reinterpret_cast<uint4 *>(att) = o;
        }
        return;
    }
    const int item = h * n_split + split;
    if (lane < R) {
        float4 *d = reinterpret_cast<float4 *>(po + (int64_t)item * hd + 8 * piece);
        d[0] = make_float4(acc[0], acc[1], acc[2], acc[3]);
        d[1] = make_float4(acc[4], acc[5], acc[6], acc[7]);
    }
    if (lane == 0) {
        pm[item] = m;
        pl[item] = l;
    }
    __threadfence();
    __syncwarp();
    unsigned arrived = 0;
    if (lane == 0) arrived = atomicAdd(cnt + h, 1u);
    arrived = __shfl_sync(full, arrived, 0);
    if (arrived != (unsigned)n_split - 1) return;
    __threadfence(); /* the last of the head: merge */
    const float *hm = pm + h * n_split, *hl = pl + h * n_split;
    float mx = -INFINITY;
    for (int sp = lane; sp < n_split; sp += 32) mx = fmaxf(mx, __ldcg(hm + sp));
    for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(full, mx, o));
    float sum = 0.0f;
    for (int sp = lane; sp < n_split; sp += 32) sum += exp2f(__ldcg(hm + sp) - mx) * __ldcg(hl + sp);
    for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(full, sum, o);
    float out[8];
#pragma unroll
    for (int i = 0; i < 8; i++) out[i] = 0.0f;
    if (lane < R) {
        const float *hp = po + (int64_t)h * n_split * hd + 8 * piece;
        for (int sp0 = 0; sp0 < n_split; sp0 += 8) { /* eight splits' loads in flight */
            float w[8];
            float4 a[8], b[8];
#pragma unroll
            for (int u = 0; u < 8; u++) {
                const int sp = sp0 + u;
                w[u] = sp < n_split ? exp2f(__ldcg(hm + sp) - mx) : 0.0f;
                a[u] = sp < n_split ? __ldcg(reinterpret_cast<const float4 *>(hp + (int64_t)sp * hd)) : make_float4(0, 0, 0, 0);
                b[u] = sp < n_split ? __ldcg(reinterpret_cast<const float4 *>(hp + (int64_t)sp * hd) + 1) : make_float4(0, 0, 0, 0);
            }
#pragma unroll
            for (int u = 0; u < 8; u++) {
                out[0] += w[u] * a[u].x;
                out[1] += w[u] * a[u].y;
                out[2] += w[u] * a[u].z;
                out[3] += w[u] * a[u].w;
                out[4] += w[u] * b[u].x;
                out[5] += w[u] * b[u].y;
                out[6] += w[u] * b[u].z;
                out[7] += w[u] * b[u].w;
            }
        }
        uint4 o;
        P *op = reinterpret_cast<P *>(&o);
#pragma unroll
        for (int t = 0; t < 4; t++) op[t] = pack2<P>(out[2 * t] / sum, out[2 * t + 1] / sum);
        *reinterpret_cast<uint4 *>(att) = o;
    }
    if (lane == 0) atomicExch(cnt + h, 0u); /* for the next layer, past a barrier */
}

/* Keys j0 .. pos of every head, split so that the (head, split) items fit
 * in one round of the grid's warps, each split a multiple of 32 keys. */
template <typename S, typename P>
__device__ void attention_phase(const StepParams &p, const loom_step_layer &L, float *qs_all, int nwarps, int warp, int lane)
{
    const loom_step &s = p.s;
    const int hd = (int)s.head_dim, nh = (int)s.n_heads;
    const int pos = s.pos[0];
    const int j0 = first_key(pos, L.window);
    const int keys = pos - j0 + 1;
    int chunks = (int)(((int64_t)keys * nh + (int64_t)DS_KEYS * nwarps - 1) / ((int64_t)DS_KEYS * nwarps));
    if (chunks < 1) chunks = 1;
    int kps = DS_KEYS * chunks, n_split = (keys + kps - 1) / kps;
    if (n_split > p.max_splits) { /* a context past the scratch's size: fewer, longer splits */
        kps = (keys + p.max_splits - 1) / p.max_splits;
        kps = (kps + DS_KEYS - 1) / DS_KEYS * DS_KEYS;
        n_split = (keys + kps - 1) / kps;
    }
    unsigned *bar_and_cnt = static_cast<unsigned *>(s.scratch);
    unsigned *cnt = bar_and_cnt + 32; /* after the barrier's line */
    float *pm = reinterpret_cast<float *>(cnt + ((nh + 31) / 32) * 32);
    float *pl = pm + (int64_t)nh * p.max_splits;
    float *po = pl + (int64_t)nh * p.max_splits;
    float *qs = qs_all + warp * hd;
    const S *pool = static_cast<const S *>(L.pool);
    const float qscale = s.scale * 1.4426950408889634f; /* scores in base 2 */
    /* item k to warp k / grid of block k % grid: the items spread over the
     * SMs (attention 12.0 against 16.4 us a layer at 128/256 on an H200) */
    for (int item = warp * gridDim.x + blockIdx.x; item < nh * n_split; item += nwarps) {
        const int h = item / n_split, split = item % n_split;
        const S *q = static_cast<const S *>(s.qkv) + (int64_t)h * hd;
        for (int d = lane; d < hd; d += 32) qs[d] = to_f32<S>(ldcg_s(q + d)) * qscale; /* q: written in phase A */
        __syncwarp();
        const int ja = j0 + split * kps, jb = ja + kps < pos + 1 ? ja + kps : pos + 1;
        switch (hd) {
        case 8: attend_item<S, P, 1>(p, pool, h, split, n_split, ja, jb, qs, lane, cnt, pm, pl, po); break;
        case 16: attend_item<S, P, 2>(p, pool, h, split, n_split, ja, jb, qs, lane, cnt, pm, pl, po); break;
        case 32: attend_item<S, P, 4>(p, pool, h, split, n_split, ja, jb, qs, lane, cnt, pm, pl, po); break;
        case 64: attend_item<S, P, 8>(p, pool, h, split, n_split, ja, jb, qs, lane, cnt, pm, pl, po); break;
        case 128: attend_item<S, P, 16>(p, pool, h, split, n_split, ja, jb, qs, lane, cnt, pm, pl, po); break;
        default: attend_item<S, P, 32>(p, pool, h, split, n_split, ja, jb, qs, lane, cnt, pm, pl, po); break; /* 256 */
        }
        __syncwarp();
    }
}

/* ---- the phases' GEMV arguments ---- */

__device__ __forceinline__ Gemv1Args gemv_args(void *y, const void *w, const void *bias, int64_t in, int64_t out)
{
    Gemv1Args g = {};
    g.y = y;
    g.w = w;
    g.bias = bias;
    g.in = (int)in;
    g.out = g.items = (int)out;
    return g;
}

__device__ __forceinline__ Gemv1Args args_qkv(const loom_step &s, const loom_step_layer &L)
{
    const int64_t nh = s.n_heads, nkv = s.n_kv_heads, hd = s.head_dim;
    Gemv1Args g = gemv_args(s.qkv, L.w_qkv, L.b_qkv, s.hidden, (nh + 2 * nkv) * hd);
    g.items = (int)((nh + nkv) * (hd / 2) + nkv * hd); /* rotate_half pairs of q and k, then the v rows */
    g.pos = s.pos;
    g.slot = s.slot;
    g.inv_freq = s.inv_freq;
    g.pool = L.pool;
    g.n_heads = (int)nh;
    g.n_kv_heads = (int)nkv;
    g.head_dim = (int)hd;
    g.tokens_per_block = (int)s.tokens_per_block;
    g.half_elems = s.tokens_per_block * hd * nkv;
    return g;
}

__device__ __forceinline__ Gemv1Args args_o(const loom_step &s, const loom_step_layer &L)
{
    return gemv_args(s.o_out, L.w_o, L.b_o, s.n_heads * s.head_dim, s.hidden);
}
__device__ __forceinline__ Gemv1Args args_gu(const loom_step &s, const loom_step_layer &L)
{
    return gemv_args(s.h, L.w_gu, L.b_gu, s.hidden, s.inter); /* items: the (gate, up) pairs */
}
__device__ __forceinline__ Gemv1Args args_down(const loom_step &s, const loom_step_layer &L)
{
    return gemv_args(s.mlp, L.w_down, L.b_down, s.inter, s.hidden);
}
__device__ __forceinline__ Gemv1Args args_lm(const loom_step &s)
{
    Gemv1Args g = gemv_args(s.logits, s.lm_head, nullptr, s.hidden, s.vocab);
    g.y_f32 = 1;
    return g;
}

/* ---- the kernel ---- */

template <typename S, typename P>
__global__ void __launch_bounds__(32 * G1_WARPS, 2) decode_step_kernel(const __grid_constant__ StepParams p)
{
    extern __shared__ uint4 xs[]; /* a GEMV phase's vector; attention: each warp's query */
    const loom_step &s = p.s;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int gwarp = blockIdx.x * G1_WARPS + warp, nwarps = gridDim.x * G1_WARPS;
    unsigned *bar = static_cast<unsigned *>(s.scratch);
    const int H = (int)s.hidden, I = (int)s.inter, QD = (int)(s.n_heads * s.head_dim);
    const bool first = blockIdx.x == 0; /* writes the residual */
    const int pf = p.prefetch;
    for (int l = 0; l < (int)s.n_layers; l++) {
        const loom_step_layer &L = s.layers[l];
        if (pf) prefetch_kv(s, L, first_key(s.pos[0], L.window));
        if (blockIdx.x < p.blocks_qkv) { /* A: add + norm, QKV, RoPE, KV append */
            const uint4 *x = static_cast<const uint4 *>(s.x);
            if (l == 0) { /* the embedding gather; a negative id reads zeros */
                const int32_t id = s.token[0];
                x = id >= 0 ? static_cast<const uint4 *>(s.embed) + (int64_t)id * (H / 8) : nullptr;
            }
            stage_norm<P>(xs, x, l ? static_cast<const uint4 *>(s.mlp) : nullptr, static_cast<const uint4 *>(L.attn_norm),
                          first ? static_cast<uint4 *>(s.x2) : nullptr, H, s.eps);
            g1_rows<S, P, EPI_ROPE>(args_qkv(s, L), xs, gwarp, p.blocks_qkv * G1_WARPS, lane);
        }
        if (pf > 1 && blockIdx.x < p.blocks_o) prefetch_rows<EPI_STORE>(args_o(s, L), gwarp, lane);
        grid_barrier(bar);
        attention_phase<S, P>(p, L, reinterpret_cast<float *>(xs), nwarps, warp, lane); /* B */
        grid_barrier(bar);
        if (blockIdx.x < p.blocks_o) { /* C: o */
            stage_plain(xs, static_cast<const uint4 *>(s.att), QD / 8);
            g1_rows<S, P, EPI_STORE>(args_o(s, L), xs, gwarp, p.blocks_o * G1_WARPS, lane);
        }
        if (pf > 1 && blockIdx.x < p.blocks_gu) prefetch_rows<EPI_GLU>(args_gu(s, L), gwarp, lane);
        grid_barrier(bar);
        if (blockIdx.x < p.blocks_gu) { /* D: add + norm, gate/up, SiLU*mul */
            stage_norm<P>(xs, static_cast<const uint4 *>(s.x2), static_cast<const uint4 *>(s.o_out), static_cast<const uint4 *>(L.mlp_norm),
                          first ? static_cast<uint4 *>(s.x) : nullptr, H, s.eps);
            g1_rows<S, P, EPI_GLU>(args_gu(s, L), xs, gwarp, p.blocks_gu * G1_WARPS, lane);
        }
        if (pf > 1 && blockIdx.x < p.blocks_down) prefetch_rows<EPI_STORE>(args_down(s, L), gwarp, lane);
        grid_barrier(bar);
        if (blockIdx.x < p.blocks_down) { /* E: down */
            stage_plain(xs, static_cast<const uint4 *>(s.h), I / 8);
            g1_rows<S, P, EPI_STORE>(args_down(s, L), xs, gwarp, p.blocks_down * G1_WARPS, lane);
        }
        if (pf > 1) {
            if (l + 1 < (int)s.n_layers) {
                if (blockIdx.x < p.blocks_qkv) prefetch_rows<EPI_ROPE>(args_qkv(s, s.layers[l + 1]), gwarp, lane);
            } else if (blockIdx.x < p.blocks_lm) {
                prefetch_rows<EPI_STORE>(args_lm(s), gwarp, lane);
            }
        }
        grid_barrier(bar);
    }
    if (blockIdx.x < p.blocks_lm) { /* the final norm and lm_head */
        stage_norm<P>(xs, static_cast<const uint4 *>(s.x), static_cast<const uint4 *>(s.mlp), static_cast<const uint4 *>(s.final_norm), nullptr,
                      H, s.eps);
        g1_rows<S, P, EPI_STORE>(args_lm(s), xs, gwarp, p.blocks_lm * G1_WARPS, lane);
    }
}

/* ---- host side ---- */

#define DS_MAX_SMEM (96 << 10)
#define DS_MAX_DEVICES 16

static int64_t max_splits(int64_t max_ctx) { return max_ctx < DS_KEYS ? 1 : (max_ctx + DS_KEYS - 1) / DS_KEYS; }

extern "C" size_t loom_cuda_decode_step_scratch_bytes(int64_t n_heads, int64_t head_dim, int64_t max_ctx)
{
    const int64_t ms = max_splits(max_ctx);
    return sizeof(unsigned) * (size_t)(32 + (n_heads + 31) / 32 * 32) + sizeof(float) * (size_t)(n_heads * ms * (2 + head_dim));
}

/* Elements of the largest GEMV input vector (the shared memory it takes, times 2). */
static int64_t largest_in(int64_t hidden, int64_t inter, int64_t qd)
{
    const int64_t a = hidden > inter ? hidden : inter;
    return a > qd ? a : qd;
}

extern "C" int loom_cuda_decode_step_ok(loom_dtype act, int64_t hidden, int64_t inter, int64_t n_heads, int64_t n_kv_heads, int64_t head_dim)
{
    if ((act != LOOM_F16 && act != LOOM_BF16) || hidden < 8 || inter < 8 || head_dim < 8 || n_heads < 1 || n_kv_heads < 1) return 0;
    if (hidden % 8 || inter % 8 || n_heads % n_kv_heads) return 0;
    if (head_dim != 8 && head_dim != 16 && head_dim != 32 && head_dim != 64 && head_dim != 128 && head_dim != 256) return 0;
    return n_heads * head_dim < (1 << 24) && largest_in(hidden, inter, n_heads * head_dim) * 2 <= DS_MAX_SMEM;
}

/* Shared memory of a step: the largest GEMV input vector, or every warp's query in fp32. */
static size_t step_smem(const loom_step *s)
{
    const size_t vec = (size_t)largest_in(s->hidden, s->inter, s->n_heads * s->head_dim) * 2,
                 q = (size_t)G1_WARPS * (size_t)s->head_dim * sizeof(float);
    return vec > q ? vec : q;
}

template <typename S, typename P> static int launch_step(const loom_step *s, cudaStream_t st)
{
    static int sms_of[DS_MAX_DEVICES];
    int dev = 0, sms = 0;
    cudaError_t e = cudaGetDevice(&dev);
    if (e != cudaSuccess) return (int)e;
    if (dev < 0 || dev >= DS_MAX_DEVICES) return (int)cudaErrorInvalidDevice;
    if (!sms_of[dev]) { /* once per device: the SM count and the raised shared-memory limit */
        if ((e = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev)) != cudaSuccess) return (int)e;
        if ((e = cudaFuncSetAttribute(decode_step_kernel<__half, __half2>, cudaFuncAttributeMaxDynamicSharedMemorySize, DS_MAX_SMEM)) != cudaSuccess ||
            (e = cudaFuncSetAttribute(decode_step_kernel<__nv_bfloat16, __nv_bfloat162>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      DS_MAX_SMEM)) != cudaSuccess)
            return (int)e;
        sms_of[dev] = sms;
    }
    sms = sms_of[dev];
    /* blocks that fit on an SM, for the last shared-memory size asked on this device */
    static size_t occ_smem[DS_MAX_DEVICES];
    static int occ_of[DS_MAX_DEVICES];
    const size_t smem = step_smem(s);
    if (!occ_of[dev] || occ_smem[dev] != smem) {
        int occ = 0;
        if ((e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&occ, decode_step_kernel<S, P>, 32 * G1_WARPS, smem)) != cudaSuccess) return (int)e;
        if (occ < 1) return (int)cudaErrorLaunchOutOfResources;
        occ_of[dev] = occ;
        occ_smem[dev] = smem;
    }
    /* read once: the same blocks per SM and row balance as loom_cuda_gemv1
     * (gemv.cu), and what to prefetch */
    static int bps_env = -1, balance = -1, prefetch = -1;
    if (bps_env < 0) {
        bps_env = loom_gpu_env_int("LOOM_GEMV_BLOCKS_PER_SM");
        balance = loom_gpu_env_int("LOOM_GEMV_BALANCE");
        prefetch = loom_gpu_env_int("LOOM_STEP_PREFETCH");
    }
    const int grid = (bps_env < occ_of[dev] ? bps_env : occ_of[dev]) * sms;
    StepParams p;
    memset(&p, 0, sizeof p);
    p.s = *s;
    const int64_t nh = s->n_heads, nkv = s->n_kv_heads, hd = s->head_dim;
    p.blocks_qkv = g1_blocks((int)((nh + nkv) * (hd / 2) + nkv * hd), grid, balance);
    p.blocks_o = g1_blocks((int)s->hidden, grid, balance);
    p.blocks_gu = g1_blocks((int)s->inter, grid, balance);
    p.blocks_down = g1_blocks((int)s->hidden, grid, balance);
    p.blocks_lm = g1_blocks((int)s->vocab, grid, balance);
    p.prefetch = prefetch;
    p.max_splits = (int)max_splits(s->max_ctx);
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeCooperative; /* every block resident at once, or the launch fails */
    attr[0].val.cooperative = 1;
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = dim3((unsigned)grid);
    cfg.blockDim = dim3(32 * G1_WARPS);
    cfg.dynamicSmemBytes = smem;
    cfg.stream = st;
    cfg.attrs = attr;
    cfg.numAttrs = 1;
    return (int)cudaLaunchKernelEx(&cfg, decode_step_kernel<S, P>, p);
}

extern "C" int loom_cuda_decode_step(const loom_step *s, loom_dtype act, void *stream)
{
    if (!s || !s->layers || s->n_layers < 1 || s->n_layers > (1 << 20) || s->vocab < 1 || s->vocab > (1 << 30) || s->tokens_per_block < 1 ||
        s->tokens_per_block > (1 << 20) || s->max_ctx < 1 || s->max_ctx > (1 << 30) ||
        !loom_cuda_decode_step_ok(act, s->hidden, s->inter, s->n_heads, s->n_kv_heads, s->head_dim))
        return (int)cudaErrorInvalidValue;
    if (!s->embed || !s->final_norm || !s->lm_head || !s->token || !s->pos || !s->slot || !s->block_table || !s->inv_freq || !s->logits ||
        !s->scratch || s->scratch_bytes < loom_cuda_decode_step_scratch_bytes(s->n_heads, s->head_dim, s->max_ctx))
        return (int)cudaErrorInvalidValue;
    const void *aligned[] = {s->embed, s->final_norm, s->lm_head, s->x, s->x2, s->qkv, s->att, s->o_out, s->h, s->mlp};
    for (const void *a : aligned)
        if (!a || ((uintptr_t)a & 15)) return (int)cudaErrorInvalidValue;
    cudaStream_t st = (cudaStream_t)stream;
    if (act == LOOM_F16) return launch_step<__half, __half2>(s, st);
    return launch_step<__nv_bfloat16, __nv_bfloat162>(s, st);
}
