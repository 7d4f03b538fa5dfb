/* Paged decode attention for small query groups (at most 8 query heads per
 * kv head: batch-1 and small-batch decode of MHA and GQA models), on CUDA
 * cores. One block of 4 warps takes one (key split, kv head, sequence). A key
 * row of D elements is D/8 lanes' 16-byte loads, so a warp reads 32 * 8 / D
 * keys a pass, and a tile of NP passes has every K and V load of the tile in
 * flight at once, the next tile's requested before this one is used. Each
 * lane keeps its own online softmax (running max, sum, and o over its 8 dims)
 * over the keys it read; the lanes of a warp, then the warps, merge theirs at
 * the end. Split, each block writes a partial (o normalized, log2-sum-exp)
 * for attention.cu's reduction kernel.
 *
 * Why not attention.cu's flash tile: its decode tile is 16 query rows for the
 * MMA, one of which is used at group 1, and it streams 64-key tiles through
 * shared memory in series; at batch 1 a split of one tile took 7 us for 32 KB
 * of K/V (bench/results/2026-11-21-h200-decode-s6.md). */
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <cstring>

#include <type_traits>

#include "act_convert.cuh"
#include "attention_decode.h"
#include "kv_fp8.cuh"
#include "pdl.cuh"

namespace {

constexpr int kWarps = 4, kThreads = 32 * kWarps;

/* 8 elements of T in 16 bytes -> fp32. */
template <typename T> __device__ __forceinline__ void unpack8(const uint4 &u, float f[8])
{
    typedef typename Pair<T>::type P;
    const P *h = reinterpret_cast<const P *>(&u);
#pragma unroll
    for (int k = 0; k < 4; k++) {
        const float2 v = to_f2<P>(h[k]);
        f[2 * k] = v.x;
        f[2 * k + 1] = v.y;
    }
}

template <typename T> __device__ __forceinline__ void store8(T *dst, const float f[8])
{
    T e[8];
#pragma unroll
    for (int k = 0; k < 8; k++) e[k] = from_f32<T>(f[k]);
    uint4 u;
    memcpy(&u, e, 16);
    *reinterpret_cast<uint4 *>(dst) = u;
}

/* 2^x, flushing subnormal results to 0 (as attention.cu's). */
__device__ __forceinline__ float ex2(float x)
{
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
}

/* K/V rows are read once: stream them past L1. */
__device__ __forceinline__ uint4 ld_stream(const void *p)
{
    uint4 v;
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(p));
    return v;
}

__device__ __forceinline__ uint2 ld_stream8(const void *p)
{
    uint2 v;
    asm volatile("ld.global.nc.L1::no_allocate.v2.u32 {%0,%1}, [%2];\n" : "=r"(v.x), "=r"(v.y) : "l"(p));
    return v;
}

/* A lane's 8 elements of a K or V row: 16 bytes of T, or 8 of fp8. */
template <typename T, typename KV> struct Chunk {
    static constexpr bool F8 = std::is_same<KV, kv_fp8>::value;
    typedef typename std::conditional<F8, uint2, uint4>::type type;
    static __device__ __forceinline__ type load(const KV *p)
    {
        if constexpr (F8) return ld_stream8(p);
        else return ld_stream(p);
    }
    static __device__ __forceinline__ void widen(const type &u, float f[8])
    {
        if constexpr (F8) e4m3x8_to_f32(u, f);
        else unpack8<T>(u, f);
    }
};

/* The keys split sp of a token at position pos sees: [kb, ke). Splits are
 * equal, whole multiples of 16 keys and at least min_chunk; the last takes
 * the rest. False when the split has none. */
__device__ __forceinline__ bool split_keys(const AttParams &a, int pos, int sp, int &kb, int &ke)
{
    const int lo = a.window > 0 ? max(0, pos - a.window + 1) : 0;
    kb = lo;
    ke = pos + 1;
    if (a.n_splits > 1) {
        const int per = (ke - lo + a.n_splits - 1) / a.n_splits;
        const int chunk = max(a.min_chunk, (per + 15) & ~15);
        kb = lo + sp * chunk;
        if (sp < a.n_splits - 1) ke = min(ke, kb + chunk);
    }
    return kb < ke;
}

/* grid (n_splits, n_kv_heads, n_seqs). GM: rows held per lane (>= group);
 * NP: passes a tile; KV: the pool's element, T or kv_fp8. */
template <typename T, typename KV, int D, int GM, int NP>
__global__ void __launch_bounds__(kThreads, GM == 1 ? 3 : 1) rows_kernel(AttParams a)
{
    typedef Chunk<T, KV> C;
    constexpr int LPK = D / 8;                 /* lanes per key */
    constexpr int KPW = 32 / LPK;              /* keys per warp a pass */
    constexpr int KPB = KPW * kWarps;          /* keys per block a pass */
    constexpr int KT = KPB * NP;               /* keys a tile */
    __shared__ __align__(16) float s_o[kWarps][GM][D];
    __shared__ float s_m[kWarps][GM], s_l[kWarps][GM];

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int c = lane % LPK;                  /* the lane's dims: c*8 .. c*8+7 */
    const int kslot = warp * KPW + lane / LPK; /* the lane's key in each pass */
    const int sp = blockIdx.x, g = blockIdx.y, s = blockIdx.z;
    const int G = a.group, H = a.n_heads, NS = a.n_splits;
    const KV *pool = static_cast<const KV *>(a.pool);
    const int64_t head_elems = ((int64_t)1 << a.block_shift) * D; /* one kv head in one half-block */
    const int64_t half_elems = head_elems * a.n_kv_heads;          /* the K (or V) half of a block */
    const int32_t *bt = a.block_tables + (int64_t)s * a.max_blocks;
    const int slot_mask = (1 << a.block_shift) - 1;

    /* Tile k0's key rows: pass i's key is k0 + i * KPB + kslot; keys past
     * ke read key kb instead (valid, finite) and are masked. blocks() looks
     * their pool blocks up, fetch() then requests their K and V. */
    auto key_at = [&](int k0, int i, int kb, int ke) {
        const int j = k0 + i * KPB + kslot;
        return j < ke ? j : kb;
    };
    int blk[NP];
    auto blocks = [&](int k0, int kb, int ke) {
#pragma unroll
        for (int i = 0; i < NP; i++) blk[i] = __ldg(bt + (key_at(k0, i, kb, ke) >> a.block_shift));
    };
    /* Launched with PDL: q and the new token's K/V come from the kernel
     * before; the tables (q_start, ctx_len, block tables) do not
     * (loom_cuda_attention's contract), so they and the first token's first
     * block ids are read before the wait: 0.2-0.3% faster a
     * batch-1 step of the Llama-2-7B shape on an H200 (bench/results/
     * 2026-11-21-h200-decode-s11.md). */
    const int tok0 = a.q_start[s], n_q = a.q_start[s + 1] - tok0, ctx = a.ctx_len[s];
    const bool live = n_q > 0 && n_q <= ctx;
    int kb0 = 0, ke0 = 0;
    const bool early = live && split_keys(a, ctx - n_q, sp, kb0, ke0);
    if (early) blocks(kb0, kb0, ke0);
    pdl_wait();
    if (!live) return; /* block-uniform, as every return here */

    for (int t = 0; t < n_q; t++) {
        const int64_t tok = tok0 + t;
        int kb, ke; /* this block's keys: [kb, ke) */
        if (!split_keys(a, ctx - n_q + t, sp, kb, ke)) { /* nothing visible here: an empty partial (lse -inf, o 0) */
            for (int i = tid; i < G * D; i += kThreads) {
                const int64_t row = tok * H + g * G + i / D;
                a.part_o[(row * NS + sp) * D + i % D] = 0.0f;
                if (i % D == 0) a.part_lse[row * NS + sp] = -INFINITY;
            }
            continue;
        }

        /* The group's query rows, this lane's 8 dims, in the log2 domain. */
        float q[GM][8];
#pragma unroll
        for (int r = 0; r < GM; r++) {
#pragma unroll
            for (int k = 0; k < 8; k++) q[r][k] = 0.0f;
            if (r < G) {
                const T *src = static_cast<const T *>(a.q) + tok * a.q_stride + (int64_t)(g * G + r) * D + c * 8;
                if (a.q_vec) {
                    unpack8<T>(__ldg(reinterpret_cast<const uint4 *>(src)), q[r]);
                } else {
#pragma unroll
                    for (int k = 0; k < 8; k++) q[r][k] = to_f32<T>(src[k]);
                }
#pragma unroll
                for (int k = 0; k < 8; k++) q[r][k] *= a.scale_log2;
            }
        }

        typename C::type kr[NP], vr[NP];
        auto fetch = [&](int k0) {
#pragma unroll
            for (int i = 0; i < NP; i++) {
                const KV *src = pool + (int64_t)blk[i] * 2 * half_elems + g * head_elems +
                                (int64_t)(key_at(k0, i, kb, ke) & slot_mask) * D + c * 8;
                kr[i] = C::load(src);
                vr[i] = C::load(src + half_elems);
            }
        };
        float m[GM], l[GM], o[GM][8];
#pragma unroll
        for (int r = 0; r < GM; r++) {
            m[r] = -INFINITY;
            l[r] = 0.0f;
#pragma unroll
            for (int k = 0; k < 8; k++) o[r][k] = 0.0f;
        }
        if (t > 0 || !early) blocks(kb, kb, ke); /* (the first token's: before the wait) */
        fetch(kb);
        for (int k0 = kb; k0 < ke; k0 += KT) {
            typename C::type kc[NP], vc[NP];
#pragma unroll
            for (int i = 0; i < NP; i++) {
                kc[i] = kr[i];
                vc[i] = vr[i];
            }
            if (k0 + KT < ke) { /* the next tile in flight while this one is used */
                blocks(k0 + KT, kb, ke);
                fetch(k0 + KT);
            }

            /* Scores: each lane's 8-dim dot, summed over the key's LPK lanes. */
            float sc[NP][GM];
#pragma unroll
            for (int i = 0; i < NP; i++) {
                float kf[8];
                C::widen(kc[i], kf);
#pragma unroll
                for (int r = 0; r < GM; r++) {
                    float d = 0.0f;
#pragma unroll
                    for (int k = 0; k < 8; k++) d = fmaf(q[r][k], kf[k], d);
                    sc[i][r] = d;
                }
            }
#pragma unroll
            for (int off = LPK / 2; off > 0; off >>= 1)
#pragma unroll
                for (int i = 0; i < NP; i++)
#pragma unroll
                    for (int r = 0; r < GM; r++) sc[i][r] += __shfl_xor_sync(0xffffffffu, sc[i][r], off);
#pragma unroll
            for (int i = 0; i < NP; i++)
                if (k0 + i * KPB + kslot >= ke)
#pragma unroll
                    for (int r = 0; r < GM; r++) sc[i][r] = -INFINITY;

            /* Online softmax over the lane's keys, then o += p v. */
#pragma unroll
            for (int r = 0; r < GM; r++) {
                float mx = m[r];
#pragma unroll
                for (int i = 0; i < NP; i++) mx = fmaxf(mx, sc[i][r]);
                const float base = mx == -INFINITY ? 0.0f : mx;
                const float corr = ex2(m[r] - base);
                m[r] = mx;
                l[r] *= corr;
#pragma unroll
                for (int k = 0; k < 8; k++) o[r][k] *= corr;
#pragma unroll
                for (int i = 0; i < NP; i++) {
                    sc[i][r] = ex2(sc[i][r] - base);
                    l[r] += sc[i][r];
                }
            }
#pragma unroll
            for (int i = 0; i < NP; i++) {
                float vf[8];
                C::widen(vc[i], vf);
#pragma unroll
                for (int r = 0; r < GM; r++)
#pragma unroll
                    for (int k = 0; k < 8; k++) o[r][k] = fmaf(sc[i][r], vf[k], o[r][k]);
            }
        }

        /* Merge the warp's key lanes (same dims, different keys) ... */
#pragma unroll
        for (int off = LPK; off < 32; off <<= 1)
#pragma unroll
            for (int r = 0; r < GM; r++) {
                const float mo = __shfl_xor_sync(0xffffffffu, m[r], off);
                const float mx = fmaxf(m[r], mo);
                const float base = mx == -INFINITY ? 0.0f : mx;
                const float cs = ex2(m[r] - base), co = ex2(mo - base);
                l[r] = l[r] * cs + __shfl_xor_sync(0xffffffffu, l[r], off) * co;
#pragma unroll
                for (int k = 0; k < 8; k++) o[r][k] = o[r][k] * cs + __shfl_xor_sync(0xffffffffu, o[r][k], off) * co;
                m[r] = mx;
            }
        /* ... then the warps, through shared memory. */
        if (lane < LPK) {
#pragma unroll
            for (int r = 0; r < GM; r++) {
                *reinterpret_cast<float4 *>(&s_o[warp][r][c * 8]) = make_float4(o[r][0], o[r][1], o[r][2], o[r][3]);
                *reinterpret_cast<float4 *>(&s_o[warp][r][c * 8 + 4]) = make_float4(o[r][4], o[r][5], o[r][6], o[r][7]);
                if (c == 0) {
                    s_m[warp][r] = m[r];
                    s_l[warp][r] = l[r];
                }
            }
        }
        __syncthreads();
        for (int it = tid; it < G * LPK; it += kThreads) {
            const int r = it / LPK, cc = it % LPK;
            float mx = -INFINITY;
#pragma unroll
            for (int w = 0; w < kWarps; w++) mx = fmaxf(mx, s_m[w][r]);
            const float base = mx == -INFINITY ? 0.0f : mx;
            float wt[kWarps], L = 0.0f;
#pragma unroll
            for (int w = 0; w < kWarps; w++) {
                wt[w] = ex2(s_m[w][r] - base);
                L += s_l[w][r] * wt[w];
            }
            const float inv = L > 0.0f ? 1.0f / L : 0.0f;
            float res[8];
#pragma unroll
            for (int k = 0; k < 8; k++) {
                float v = 0.0f;
#pragma unroll
                for (int w = 0; w < kWarps; w++) v = fmaf(s_o[w][r][cc * 8 + k], wt[w], v);
                res[k] = v * inv;
            }
            const int64_t row = tok * H + g * G + r;
            if (NS == 1) {
                store8<T>(static_cast<T *>(a.out) + row * D + cc * 8, res);
            } else {
                float *po = a.part_o + (row * NS + sp) * D + cc * 8;
                *reinterpret_cast<float4 *>(po) = make_float4(res[0], res[1], res[2], res[3]);
                *reinterpret_cast<float4 *>(po + 4) = make_float4(res[4], res[5], res[6], res[7]);
                if (cc == 0) a.part_lse[row * NS + sp] = L > 0.0f ? mx + log2f(L) : -INFINITY;
            }
        }
        __syncthreads(); /* s_o is reused by the next token */
    }
}

/* Launches the kernel, or (occ not NULL) only sets *occ to its resident blocks per SM. */
template <typename T, typename KV, int D, int GM, int NP> cudaError_t launch(const AttParams &a, int n_seqs, cudaStream_t st, int *occ)
{
    if (occ) return cudaOccupancyMaxActiveBlocksPerMultiprocessor(occ, rows_kernel<T, KV, D, GM, NP>, kThreads, 0);
    return pdl_launch(rows_kernel<T, KV, D, GM, NP>, dim3((unsigned)a.n_splits, (unsigned)a.n_kv_heads, (unsigned)n_seqs),
                      dim3(kThreads), 0, st, a);
}

/* Rows a lane holds (the group rounded up to 1, 2, 4, 8) and passes a tile:
 * 16 loads in flight per lane for small groups, 8 for large (registers);
 * twice the passes for fp8, whose loads are half the bytes. */
template <typename T, typename KV, int D> cudaError_t launch_d(const AttParams &a, int n_seqs, cudaStream_t st, int *occ)
{
    constexpr bool F8 = std::is_same<KV, kv_fp8>::value;
    if (a.group <= 1) return launch<T, KV, D, 1, F8 ? 12 : 8>(a, n_seqs, st, occ);
    if (a.group <= 2) return launch<T, KV, D, 2, F8 ? 16 : 8>(a, n_seqs, st, occ);
    if (a.group <= 4) return launch<T, KV, D, 4, 4>(a, n_seqs, st, occ);
    return launch<T, KV, D, 8, 4>(a, n_seqs, st, occ);
}

template <typename T> cudaError_t dispatch_kv(const AttParams &a, bool f8, int head_dim, int n_seqs, cudaStream_t st, int *occ)
{
    if (f8) return head_dim == 64 ? launch_d<T, kv_fp8, 64>(a, n_seqs, st, occ) : launch_d<T, kv_fp8, 128>(a, n_seqs, st, occ);
    return head_dim == 64 ? launch_d<T, T, 64>(a, n_seqs, st, occ) : launch_d<T, T, 128>(a, n_seqs, st, occ);
}

cudaError_t dispatch(const AttParams &a, loom_dtype act, loom_dtype kv, int head_dim, int n_seqs, cudaStream_t st, int *occ)
{
    const bool f8 = kv == LOOM_F8E4M3;
    if (act == LOOM_F16) return dispatch_kv<__half>(a, f8, head_dim, n_seqs, st, occ);
    return dispatch_kv<__nv_bfloat16>(a, f8, head_dim, n_seqs, st, occ);
}

} /* namespace */

bool att_rows_ok(int group, int head_dim)
{
    return group >= 1 && group <= ATT_ROWS_MAX_GROUP && (head_dim == 64 || head_dim == 128);
}

cudaError_t att_rows_launch(const AttParams &a, loom_dtype act, loom_dtype kv, int head_dim, int n_seqs, cudaStream_t st)
{
    if (!att_rows_ok(a.group, head_dim) || a.n_splits < 1 || (a.n_splits > 1 && (!a.part_o || !a.part_lse)) ||
        (a.min_chunk & 15))
        return cudaErrorInvalidValue;
    return dispatch(a, act, kv, head_dim, n_seqs, st, nullptr);
}

int att_rows_blocks_per_sm(loom_dtype act, loom_dtype kv, int group, int head_dim)
{
    enum { kDevices = 64, kShapes = 2 * 2 * 2 * ATT_ROWS_MAX_GROUP };
    static int cached[kDevices][kShapes];
    if (!att_rows_ok(group, head_dim)) return 1;
    int dev = 0;
    if (cudaGetDevice(&dev) != cudaSuccess || dev < 0) return 1;
    const int k = (((kv == LOOM_F8E4M3) * 2 + (act == LOOM_F16)) * 2 + (head_dim == 128)) * ATT_ROWS_MAX_GROUP + group - 1;
    if (dev < kDevices && cached[dev][k]) return cached[dev][k];
    AttParams a;
    memset(&a, 0, sizeof a);
    a.group = group;
    int occ = 0;
    if (dispatch(a, act, kv, head_dim, 0, nullptr, &occ) != cudaSuccess || occ < 1) {
        cudaGetLastError();
        occ = 1;
    }
    if (dev < kDevices) cached[dev][k] = occ;
    return occ;
}
