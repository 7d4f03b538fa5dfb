/* Attention over the paged KV cache. kv_append scatters new K/V rows into the
 * pool; one flash-attention tile routine (mma.sync m16n8k16 on fp16/bf16, fp32
 * online softmax, K/V tiles of 64 keys streamed from the pool by cp.async into
 * a two-stage shared-memory ring) serves prefill, and decode when a query
 * group is over 8 heads; decode of smaller groups (MHA, most GQA) runs
 * attention_decode.cu's kernel on CUDA cores, whose one-row groups do not
 * waste 15 of the MMA's 16 rows.
 *
 * A tile's rows are (token, query head) pairs of one kv-head group, token
 * major (FlashInfer's packing for GQA), so every K/V tile read is shared by the
 * group's query heads. Prefill tiles are 64 rows, one warp per 16 rows
 * (FlashAttention-2's split). Decode tiles are 16 rows (the group of one
 * token) and the 4 warps split each key tile instead, merged at the end.
 * Multi-block decode (flash-decoding, TensorRT-LLM's multi-block mode) splits
 * a sequence's visible keys over several blocks that write (o, log2-sum-exp)
 * partials to scratch; a second kernel reduces them. A short prefill chunk
 * over a long cached prefix (KV reuse, chunked prefill) has the same problem
 * as decode, too few row tiles to fill the machine, and gets the same split:
 * 32 new tokens on 1,024 cached ones are 32 blocks of a 132-SM H200 unsplit. */
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <cstring>

#include <type_traits>

#include "attention_decode.h"
#include "kv_fp8.cuh"
#include "ops_cuda.h"
#include "pdl.cuh"

namespace {

constexpr int kThreads = 128;          /* 4 warps per block, every kernel */
constexpr int kBN = 64;                /* keys per K/V tile */
constexpr int kPad = 8;                /* elements of padding per smem row: ldmatrix without bank conflicts */
constexpr int kSplitMinKeys = 128;     /* fewest keys a split prefill gets */
/* Multi-block decode. The auto rule is TensorRT-LLM's (sequences x heads
 * under half the SMs) with a much shorter context: a split pays from 2 tiles
 * of keys on. Measured on an H200, Llama-2-7B shape, batch 1 (bench/results/
 * 2026-11-21-h200-decode-s6.md): unsplit, a 384-key decode took 16 us a
 * layer, a 64-key tile in series after another; split, 7 us plus 1.2 for the
 * reduction. 4 blocks per SM matched 3 and beat 6, 8 and the former 1024. */
constexpr int kDecodeSplitMinKeys = 64;     /* fewest keys a split gets: one tile */
constexpr int kDecodeSplitMinCtx = 128;     /* auto: split only longer contexts (at 16/112 splitting lost 1%) */
constexpr int kDecodeSplitBlocksPerSM = 4;  /* blocks to aim for per launch, per SM */
constexpr int kSplitForced = 4;        /* multi_block = 1: at least this many splits when the context allows */
constexpr int kSplitBlocksPerSM = 2;   /* split prefill: blocks to aim for per SM (two fit: 87 KB smem each at d128) */
constexpr int kMaxDevices = 64;

/* ---- element types ---- */

template <typename T> struct Elem;
template <> struct Elem<__half> {
    static __device__ __forceinline__ uint32_t pack(float a, float b)
    {
        __half2 h = __floats2half2_rn(a, b);
        uint32_t u;
        memcpy(&u, &h, 4);
        return u;
    }
    static __device__ __forceinline__ float to_f32(__half v) { return __half2float(v); }
    static __device__ __forceinline__ void mma(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1)
    {
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
                     "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                     : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    }
};
template <> struct Elem<__nv_bfloat16> {
    static __device__ __forceinline__ uint32_t pack(float a, float b)
    {
        __nv_bfloat162 h = __floats2bfloat162_rn(a, b);
        uint32_t u;
        memcpy(&u, &h, 4);
        return u;
    }
    static __device__ __forceinline__ float to_f32(__nv_bfloat16 v) { return __bfloat162float(v); }
    static __device__ __forceinline__ void mma(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1)
    {
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
                     "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                     : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    }
};

/* ---- shared-memory and async-copy primitives ---- */

__device__ __forceinline__ uint32_t smem_addr(const void *p)
{
    return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void ldsm_x4(uint32_t r[4], const void *p)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(p)));
}

__device__ __forceinline__ void ldsm_x4_t(uint32_t r[4], const void *p)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(p)));
}

/* 16 bytes global -> shared; bytes = 0 writes zeros and reads nothing. */
__device__ __forceinline__ void cp_async16(void *dst, const void *src, int bytes)
{
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src),
                 "r"(bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N> __device__ __forceinline__ void cp_async_wait()
{
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

/* 2^x, flushing subnormal results to 0 (probabilities that small do not count). */
__device__ __forceinline__ float ex2(float x)
{
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
}

__device__ __forceinline__ float quad_max(float v)
{
    v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
    return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}
__device__ __forceinline__ float quad_sum(float v)
{
    v += __shfl_xor_sync(0xffffffffu, v, 1);
    return v + __shfl_xor_sync(0xffffffffu, v, 2);
}

/* ---- the tile routine ---- */

/* Block shape: WM x WN warps; warp (wm, wn) owns rows wm*WR .. +WR-1 of the
 * tile (MT m16 tiles) and keys wn*KW .. +KW-1 of each BN-key K/V tile. KV is
 * the pool's element: T, whose tiles cp.async streams into a two-stage ring
 * the MMAs read, or kv_fp8, whose tiles stream into a two-stage ring of
 * bytes, each widened to T in one compute tile before it is used. */
template <typename T, int D, int WM, int WN, int MT, int BN, typename KV = T> struct Shape {
    static_assert(WM * WN * 32 == kThreads, "4 warps");
    static_assert(WN == 1 || MT == 1, "warps that split keys own one m16 tile");
    static constexpr int WR = 16 * MT;       /* rows per warp */
    static constexpr int M = WR * WM;        /* rows per tile */
    static constexpr int LD = D + kPad;      /* smem row stride, elements */
    static constexpr int KW = BN / WN;       /* keys per warp per tile */
    static constexpr int NT = KW / 8;        /* 8-key score tiles per warp */
    static constexpr int KS = KW / 16;       /* 16-key steps of P.V */
    static constexpr int DK = D / 16;        /* 16-dim steps of Q.K */
    static constexpr int DT = D / 8;         /* 8-dim output tiles */
    static constexpr int CPR = D / 8;        /* 16-byte chunks per row */
    static constexpr bool QREG = MT == 1;    /* Q fragments stay in registers; else re-read per tile */
    static constexpr size_t q_bytes = (size_t)M * LD * sizeof(T);
    static constexpr bool F8 = std::is_same<KV, kv_fp8>::value;
    static constexpr int CPR8 = D / 16;      /* 16-byte chunks per fp8 row */
    static constexpr size_t tile_bytes = 2 /* K, V */ * (size_t)BN * LD * sizeof(T);
    static constexpr size_t stage8_bytes = 2 /* K, V */ * (size_t)BN * D; /* fp8 rows, unpadded */
    static constexpr size_t kv_bytes = F8 ? tile_bytes + 2 * stage8_bytes : 2 /* stages */ * tile_bytes;
    static constexpr size_t merge_bytes = WN > 1 ? (size_t)WN * 16 * (D + 2) * sizeof(float) : 0;
    static constexpr size_t smem = q_bytes + (kv_bytes > merge_bytes ? kv_bytes : merge_bytes);
    static_assert(NT % 2 == 0 && KS >= 1, "whole 16-key steps per warp");
    static_assert((kThreads / CPR) <= BN && BN % (kThreads / CPR) == 0, "whole loader passes");
    static_assert((kThreads / CPR8) <= BN && BN % (kThreads / CPR8) == 0, "whole fp8 loader passes");
};

/* Where row results go: the final output, or a partial (o, lse) for split sp. */
template <int D> __device__ __forceinline__ float *part_row(const AttParams &p, int64_t tok, int head, int sp)
{
    return p.part_o + (((int64_t)tok * p.n_heads + head) * p.n_splits + sp) * D;
}
__device__ __forceinline__ float *lse_at(const AttParams &p, int64_t tok, int head, int sp)
{
    return p.part_lse + ((int64_t)tok * p.n_heads + head) * p.n_splits + sp;
}

/* Attention for row tile rt of sequence s, kv head g, split sp (0 when not
 * split). Block-uniform early returns only. */
template <typename T, int D, int WM, int WN, int MT, int BN, typename KV>
__device__ void attend_tile(const AttParams &p, int s, int g, int rt, int sp, unsigned char *smem)
{
    using S = Shape<T, D, WM, WN, MT, BN, KV>;
    T *sq = reinterpret_cast<T *>(smem);
    T *skv = reinterpret_cast<T *>(smem + S::q_bytes);
    unsigned char *s8 = smem + S::q_bytes + S::tile_bytes; /* fp8: the byte ring (after the one compute tile) */
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int wm = warp / WN, wn = warp % WN;
    const int G = p.group;
    const int tok0 = p.q_start[s];
    const int n_q = p.q_start[s + 1] - tok0;
    const int ctx = p.ctx_len[s];
    const int rows = n_q * G;
    const int r0 = rt * S::M;
    if (r0 >= rows || n_q > ctx) return;
    const int pos0 = ctx - n_q; /* position of the sequence's first new token */
    const int min_p = pos0 + r0 / G;
    const int max_p = pos0 + min(rows - 1, r0 + S::M - 1) / G;
    const int lo = p.window > 0 ? max(0, min_p - p.window + 1) : 0;
    int kb = lo, ke = max_p + 1; /* keys this block visits: [kb, ke) */
    if (p.part_o) {
        /* chunk 0 (decode): this sequence's keys in equal whole tiles over the
         * splits, so a graph captured for the longest context still spreads a
         * short one over all its splits */
        const int chunk = p.chunk > 0 ? p.chunk : max(BN, (((ke - lo + p.n_splits - 1) / p.n_splits + BN - 1) / BN) * BN);
        kb = lo + sp * chunk;
        if (sp < p.n_splits - 1) ke = min(ke, kb + chunk); /* the last split takes any rest */
        if (kb >= ke) { /* nothing visible in this split: an empty partial (lse -inf, o 0) */
            for (int i = tid; i < S::M * D; i += kThreads) {
                const int R = r0 + i / D;
                if (R >= rows) continue;
                const int64_t tok = tok0 + R / G;
                const int head = g * G + R % G;
                part_row<D>(p, tok, head, sp)[i % D] = 0.0f;
                if (i % D == 0) *lse_at(p, tok, head, sp) = -INFINITY;
            }
            return;
        }
    }

    /* K/V tile loader: key j of the tile comes from block table[j / B], slot j % B. */
    const T *pool = static_cast<const T *>(p.pool);
    const int64_t head_elems = ((int64_t)1 << p.block_shift) * D; /* one kv head in one half-block */
    const int64_t half_elems = head_elems * p.n_kv_heads;          /* the K (or V) half of a block */
    const int32_t *bt = p.block_tables + (int64_t)s * p.max_blocks;
    const int slot_mask = (1 << p.block_shift) - 1;
    const unsigned char *pool8 = static_cast<const unsigned char *>(p.pool);
    auto load_tile8 = [&](int k0, int stage) {
        unsigned char *sk = s8 + (size_t)stage * S::stage8_bytes;
        unsigned char *sv = sk + BN * D;
        constexpr int RPP = kThreads / S::CPR8;
        const int c = tid % S::CPR8;
#pragma unroll
        for (int pass = 0; pass < BN / RPP; ++pass) {
            const int r = pass * RPP + tid / S::CPR8;
            const int j = k0 + r;
            const unsigned char *src = pool8;
            int bytes = 0;
            if (j >= kb && j < ke) {
                const int blk = __ldg(bt + (j >> p.block_shift));
                src = pool8 + (int64_t)blk * 2 * half_elems + g * head_elems + (int64_t)(j & slot_mask) * D + c * 16;
                bytes = 16;
            }
            cp_async16(sk + r * D + c * 16, src, bytes);
            cp_async16(sv + r * D + c * 16, bytes ? src + half_elems : pool8, bytes);
        }
    };
    /* fp8: widens byte stage `stage` into the compute tile (8 elements a step). */
    auto widen_tile8 = [&](int stage) {
        const unsigned char *src = s8 + (size_t)stage * S::stage8_bytes;
        for (int i = tid; i < 2 * BN * (D / 8); i += kThreads) {
            const int r = i / (D / 8), c = i % (D / 8); /* r: K rows 0..BN-1, then V rows */
            float f[8];
            e4m3x8_to_f32(*reinterpret_cast<const uint2 *>(src + (size_t)r * D + c * 8), f);
            uint4 u;
            u.x = Elem<T>::pack(f[0], f[1]);
            u.y = Elem<T>::pack(f[2], f[3]);
            u.z = Elem<T>::pack(f[4], f[5]);
            u.w = Elem<T>::pack(f[6], f[7]);
            *reinterpret_cast<uint4 *>(skv + (size_t)r * S::LD + c * 8) = u;
        }
    };
    auto load_tile = [&](int k0, int stage) {
        if constexpr (S::F8) {
            load_tile8(k0, stage);
            return;
        }
        T *sk = skv + (size_t)stage * 2 * BN * S::LD;
        T *sv = sk + BN * S::LD;
        constexpr int RPP = kThreads / S::CPR; /* rows per pass */
        const int c = tid % S::CPR;
#pragma unroll
        for (int pass = 0; pass < BN / RPP; ++pass) {
            const int r = pass * RPP + tid / S::CPR;
            const int j = k0 + r;
            const T *src = pool;
            int bytes = 0;
            if (j >= kb && j < ke) {
                const int blk = __ldg(bt + (j >> p.block_shift));
                src = pool + (int64_t)blk * 2 * half_elems + g * head_elems + (int64_t)(j & slot_mask) * D + c * 8;
                bytes = 16;
            }
            cp_async16(sk + r * S::LD + c * 8, src, bytes);
            cp_async16(sv + r * S::LD + c * 8, bytes ? src + half_elems : pool, bytes);
        }
    };
    load_tile(kb, 0);
    cp_async_commit();

    /* Q tile -> smem (zero rows past the sequence). */
    {
        const T *q = static_cast<const T *>(p.q);
        for (int i = tid; i < S::M * S::CPR; i += kThreads) {
            const int r = i / S::CPR, c = i % S::CPR, R = r0 + r;
            uint4 v = make_uint4(0, 0, 0, 0);
            if (R < rows) {
                const int t = R / G, gh = R - t * G;
                const T *src = q + (int64_t)(tok0 + t) * p.q_stride + (int64_t)(g * G + gh) * D + c * 8;
                if (p.q_vec) {
                    v = __ldg(reinterpret_cast<const uint4 *>(src));
                } else {
                    T e[8];
#pragma unroll
                    for (int k = 0; k < 8; k++) e[k] = src[k];
                    memcpy(&v, e, 16);
                }
            }
            *reinterpret_cast<uint4 *>(sq + r * S::LD + c * 8) = v;
        }
    }
    __syncthreads();
    /* A fragment of m-tile mt, dims kk*16 .. +15. */
    auto q_frag = [&](uint32_t r[4], int mt, int kk) {
        ldsm_x4(r, sq + (wm * S::WR + mt * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * S::LD + kk * 16 +
                       (lane >> 4) * 8);
    };
    uint32_t qreg[S::QREG ? S::DK : 1][4];
    if constexpr (S::QREG) {
#pragma unroll
        for (int kk = 0; kk < S::DK; kk++) q_frag(qreg[kk], 0, kk);
    }

    /* This thread's rows: lane/4 and lane/4 + 8 of each of the warp's m-tiles. */
    int pos[MT][2]; /* -1: padding row, sees nothing */
    int pmin = INT32_MAX, pmax = -1;
#pragma unroll
    for (int mt = 0; mt < MT; mt++)
#pragma unroll
        for (int h = 0; h < 2; h++) {
            const int R = r0 + wm * S::WR + mt * 16 + (lane >> 2) + h * 8;
            pos[mt][h] = R < rows ? pos0 + R / G : -1;
            pmin = min(pmin, pos[mt][h]);
            pmax = max(pmax, pos[mt][h]);
        }
    const int win = p.window;

    float acc[MT][S::DT][4];
    float m[MT][2], l[MT][2];
#pragma unroll
    for (int mt = 0; mt < MT; mt++) {
#pragma unroll
        for (int i = 0; i < S::DT; i++) acc[mt][i][0] = acc[mt][i][1] = acc[mt][i][2] = acc[mt][i][3] = 0.0f;
        m[mt][0] = m[mt][1] = -INFINITY;
        l[mt][0] = l[mt][1] = 0.0f;
    }

    const int n_tiles = (ke - kb + BN - 1) / BN;
    for (int it = 0; it < n_tiles; ++it) {
        const int k0 = kb + it * BN;
        if (it + 1 < n_tiles) load_tile(k0 + BN, (it + 1) & 1);
        cp_async_commit();
        cp_async_wait<1>();
        __syncthreads();
        if constexpr (S::F8) {
            widen_tile8(it & 1);
            __syncthreads();
        }
        const T *sk = S::F8 ? skv : skv + (size_t)(it & 1) * 2 * BN * S::LD;
        const T *sv = sk + BN * S::LD;

        /* S = Q K^T for the warp's rows x KW keys; each K fragment serves MT m-tiles. */
        float sc[MT][S::NT][4];
#pragma unroll
        for (int mt = 0; mt < MT; mt++)
#pragma unroll
            for (int i = 0; i < S::NT; i++) sc[mt][i][0] = sc[mt][i][1] = sc[mt][i][2] = sc[mt][i][3] = 0.0f;
#pragma unroll
        for (int kk = 0; kk < S::DK; kk++) {
            uint32_t qa[MT][4];
            if constexpr (S::QREG) {
#pragma unroll
                for (int i = 0; i < 4; i++) qa[0][i] = qreg[kk][i];
            } else {
#pragma unroll
                for (int mt = 0; mt < MT; mt++) q_frag(qa[mt], mt, kk);
            }
#pragma unroll
            for (int np = 0; np < S::NT / 2; np++) {
                uint32_t b[4];
                ldsm_x4(b, sk + (wn * S::KW + np * 16 + (lane & 7) + (lane >> 4) * 8) * S::LD + kk * 16 +
                               ((lane >> 3) & 1) * 8);
#pragma unroll
                for (int mt = 0; mt < MT; mt++) {
                    Elem<T>::mma(sc[mt][2 * np], qa[mt], b[0], b[1]);
                    Elem<T>::mma(sc[mt][2 * np + 1], qa[mt], b[2], b[3]);
                }
            }
        }

        /* Scale into the log2 domain; mask only where a tile crosses the
         * diagonal, the window's edge, the split's end or padding rows. */
        const int kw0 = k0 + wn * S::KW;
        const bool need = __any_sync(0xffffffffu, kw0 + S::KW - 1 > pmin || kw0 + S::KW > ke ||
                                                      (win > 0 && kw0 <= pmax - win));
#pragma unroll
        for (int mt = 0; mt < MT; mt++)
#pragma unroll
            for (int nt = 0; nt < S::NT; nt++)
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    float v = sc[mt][nt][e] * p.scale_log2;
                    if (need) {
                        const int j = kw0 + nt * 8 + (lane & 3) * 2 + (e & 1);
                        const int pr = pos[mt][e >> 1];
                        if (j > pr || j >= ke || (win > 0 && j <= pr - win)) v = -INFINITY;
                    }
                    sc[mt][nt][e] = v;
                }

        /* Online softmax: running max m, running (per-thread partial) sum l. */
#pragma unroll
        for (int mt = 0; mt < MT; mt++) {
            float mx0 = m[mt][0], mx1 = m[mt][1];
#pragma unroll
            for (int nt = 0; nt < S::NT; nt++) {
                mx0 = fmaxf(mx0, fmaxf(sc[mt][nt][0], sc[mt][nt][1]));
                mx1 = fmaxf(mx1, fmaxf(sc[mt][nt][2], sc[mt][nt][3]));
            }
            mx0 = quad_max(mx0);
            mx1 = quad_max(mx1);
            const float base0 = mx0 == -INFINITY ? 0.0f : mx0; /* a row with nothing visible yet */
            const float base1 = mx1 == -INFINITY ? 0.0f : mx1;
            const float corr0 = ex2(m[mt][0] - base0), corr1 = ex2(m[mt][1] - base1);
            m[mt][0] = mx0;
            m[mt][1] = mx1;
            float sum0 = 0.0f, sum1 = 0.0f;
#pragma unroll
            for (int nt = 0; nt < S::NT; nt++) {
                sc[mt][nt][0] = ex2(sc[mt][nt][0] - base0);
                sc[mt][nt][1] = ex2(sc[mt][nt][1] - base0);
                sc[mt][nt][2] = ex2(sc[mt][nt][2] - base1);
                sc[mt][nt][3] = ex2(sc[mt][nt][3] - base1);
                sum0 += sc[mt][nt][0] + sc[mt][nt][1];
                sum1 += sc[mt][nt][2] + sc[mt][nt][3];
            }
            l[mt][0] = l[mt][0] * corr0 + sum0;
            l[mt][1] = l[mt][1] * corr1 + sum1;
#pragma unroll
            for (int i = 0; i < S::DT; i++) {
                acc[mt][i][0] *= corr0;
                acc[mt][i][1] *= corr0;
                acc[mt][i][2] *= corr1;
                acc[mt][i][3] *= corr1;
            }
        }

        /* O += P V: the score accumulators are already P's A-fragment layout. */
#pragma unroll
        for (int ks = 0; ks < S::KS; ks++) {
            uint32_t a[MT][4];
#pragma unroll
            for (int mt = 0; mt < MT; mt++) {
                a[mt][0] = Elem<T>::pack(sc[mt][2 * ks][0], sc[mt][2 * ks][1]);
                a[mt][1] = Elem<T>::pack(sc[mt][2 * ks][2], sc[mt][2 * ks][3]);
                a[mt][2] = Elem<T>::pack(sc[mt][2 * ks + 1][0], sc[mt][2 * ks + 1][1]);
                a[mt][3] = Elem<T>::pack(sc[mt][2 * ks + 1][2], sc[mt][2 * ks + 1][3]);
            }
#pragma unroll
            for (int dp = 0; dp < D / 16; dp++) {
                uint32_t b[4];
                ldsm_x4_t(b, sv + (wn * S::KW + ks * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * S::LD + dp * 16 +
                                 (lane >> 4) * 8);
#pragma unroll
                for (int mt = 0; mt < MT; mt++) {
                    Elem<T>::mma(acc[mt][2 * dp], a[mt], b[0], b[1]);
                    Elem<T>::mma(acc[mt][2 * dp + 1], a[mt], b[2], b[3]);
                }
            }
        }
        __syncthreads(); /* the stage is refilled next iteration */
    }
    cp_async_wait<0>();
#pragma unroll
    for (int mt = 0; mt < MT; mt++) {
        l[mt][0] = quad_sum(l[mt][0]);
        l[mt][1] = quad_sum(l[mt][1]);
    }

    T *out = static_cast<T *>(p.out);
    if constexpr (WN == 1) {
        /* Each warp owns whole rows: write straight from the fragments. */
        const int d0 = (lane & 3) * 2;
#pragma unroll
        for (int mt = 0; mt < MT; mt++)
#pragma unroll
            for (int h = 0; h < 2; h++) {
                const int R = r0 + wm * S::WR + mt * 16 + (lane >> 2) + h * 8;
                if (R >= rows) continue;
                const float lr = l[mt][h];
                const float inv = lr > 0.0f ? 1.0f / lr : 0.0f;
                const int64_t tok = tok0 + R / G;
                const int head = g * G + R % G;
                if (p.part_o) {
                    float *po = part_row<D>(p, tok, head, sp);
#pragma unroll
                    for (int i = 0; i < S::DT; i++)
                        *reinterpret_cast<float2 *>(po + i * 8 + d0) =
                            make_float2(acc[mt][i][2 * h] * inv, acc[mt][i][2 * h + 1] * inv);
                    if ((lane & 3) == 0) *lse_at(p, tok, head, sp) = lr > 0.0f ? m[mt][h] + log2f(lr) : -INFINITY;
                } else {
                    T *o = out + (tok * p.n_heads + head) * D;
#pragma unroll
                    for (int i = 0; i < S::DT; i++)
                        *reinterpret_cast<uint32_t *>(o + i * 8 + d0) =
                            Elem<T>::pack(acc[mt][i][2 * h] * inv, acc[mt][i][2 * h + 1] * inv);
                }
            }
    } else {
        /* Warps hold partial results over different keys of the same 16
         * rows: stage (m, l, acc) in smem (the K/V ring is free) and merge. */
        __syncthreads();
        float *mo = reinterpret_cast<float *>(skv);  /* [WN][16][D] */
        float *mm = mo + WN * 16 * D;                 /* [WN][16] */
        float *ml = mm + WN * 16;                     /* [WN][16] */
        const int ra = lane >> 2, d0 = (lane & 3) * 2;
#pragma unroll
        for (int i = 0; i < S::DT; i++) {
            *reinterpret_cast<float2 *>(mo + (wn * 16 + ra) * D + i * 8 + d0) = make_float2(acc[0][i][0], acc[0][i][1]);
            *reinterpret_cast<float2 *>(mo + (wn * 16 + ra + 8) * D + i * 8 + d0) =
                make_float2(acc[0][i][2], acc[0][i][3]);
        }
        if ((lane & 3) == 0) {
            mm[wn * 16 + ra] = m[0][0];
            mm[wn * 16 + ra + 8] = m[0][1];
            ml[wn * 16 + ra] = l[0][0];
            ml[wn * 16 + ra + 8] = l[0][1];
        }
        __syncthreads();
        constexpr int TPR = kThreads / 16; /* threads per row */
        constexpr int DPT = D / TPR;        /* dims per thread (multiple of 8) */
        const int r = tid / TPR, dd = (tid % TPR) * DPT, R = r0 + r;
        if (R < rows) {
            float mx = -INFINITY;
#pragma unroll
            for (int w = 0; w < WN; w++) mx = fmaxf(mx, mm[w * 16 + r]);
            const float base = mx == -INFINITY ? 0.0f : mx;
            float wgt[WN], L = 0.0f;
#pragma unroll
            for (int w = 0; w < WN; w++) {
                wgt[w] = exp2f(mm[w * 16 + r] - base);
                L += ml[w * 16 + r] * wgt[w];
            }
            const float inv = L > 0.0f ? 1.0f / L : 0.0f;
            const int64_t tok = tok0 + R / G;
            const int head = g * G + R % G;
            float o[DPT];
#pragma unroll
            for (int k = 0; k < DPT; k++) {
                float v = 0.0f;
#pragma unroll
                for (int w = 0; w < WN; w++) v += mo[(w * 16 + r) * D + dd + k] * wgt[w];
                o[k] = v * inv;
            }
            if (p.part_o) {
                float *po = part_row<D>(p, tok, head, sp) + dd;
#pragma unroll
                for (int k = 0; k < DPT; k += 4)
                    *reinterpret_cast<float4 *>(po + k) = make_float4(o[k], o[k + 1], o[k + 2], o[k + 3]);
                if (dd == 0) *lse_at(p, tok, head, sp) = L > 0.0f ? base + log2f(L) : -INFINITY;
            } else {
                T *dst = out + (tok * p.n_heads + head) * D + dd;
#pragma unroll
                for (int k = 0; k < DPT; k += 8) {
                    uint4 u;
                    u.x = Elem<T>::pack(o[k], o[k + 1]);
                    u.y = Elem<T>::pack(o[k + 2], o[k + 3]);
                    u.z = Elem<T>::pack(o[k + 4], o[k + 5]);
                    u.w = Elem<T>::pack(o[k + 6], o[k + 7]);
                    *reinterpret_cast<uint4 *>(dst + k) = u;
                }
            }
        }
    }
}

/* ---- kernels ---- */

/* Prefill: 4 warps over the rows, MT m16 tiles per warp (FlashAttention-2's
 * split); BN keys per tile. Decode: one m16 tile, 4 warps split the keys. */
constexpr int kDecodeWM = 1, kDecodeWN = 4, kDecodeMT = 1;
constexpr int kDecodeRows = 16 * kDecodeWM * kDecodeMT;

/* grid (>= total row tiles, n_kv_heads, n_splits). Block x maps to (sequence,
 * tile) through a prefix sum of each sequence's tile count, done by warp 0;
 * the tiles of a sequence run longest (latest positions) first. z is the key
 * split (0 when not split). */
template <typename T, int D, int MT, int BN, typename KV>
__global__ void __launch_bounds__(kThreads) prefill_kernel(AttParams p)
{
    constexpr int kRows = Shape<T, D, 4, 1, MT, BN>::M;
    extern __shared__ __align__(16) unsigned char smem[];
    __shared__ int sh_seq, sh_tile;
    const int b = blockIdx.x;
    if (threadIdx.x < 32) {
        const int lane = threadIdx.x;
        int found = -1, tile = 0, base = 0;
        for (int s0 = 0; s0 < p.n_seqs && found < 0; s0 += 32) {
            const int s = s0 + lane;
            int t = 0;
            if (s < p.n_seqs) t = ((p.q_start[s + 1] - p.q_start[s]) * p.group + kRows - 1) / kRows;
            int inc = t;
#pragma unroll
            for (int o = 1; o < 32; o <<= 1) {
                const int y = __shfl_up_sync(0xffffffffu, inc, o);
                if (lane >= o) inc += y;
            }
            const int excl = base + inc - t;
            const unsigned hit = __ballot_sync(0xffffffffu, b >= excl && b < excl + t);
            if (hit) {
                const int l = __ffs(hit) - 1;
                found = s0 + l;
                const int e = __shfl_sync(0xffffffffu, excl, l), n = __shfl_sync(0xffffffffu, t, l);
                tile = n - 1 - (b - e);
            }
            base += __shfl_sync(0xffffffffu, inc, 31);
        }
        if (lane == 0) {
            sh_seq = found;
            sh_tile = tile;
        }
    }
    __syncthreads();
    if (sh_seq < 0) return;
    attend_tile<T, D, 4, 1, MT, BN, KV>(p, sh_seq, blockIdx.y, sh_tile, blockIdx.z, smem);
}

/* grid (n_splits, n_kv_heads * rt_grid, n_seqs). A sequence with more than
 * one token (not a decode batch, but allowed) loops over its extra row tiles. */
template <typename T, int D, typename KV>
__global__ void __launch_bounds__(kThreads) decode_kernel(AttParams p)
{
    extern __shared__ __align__(16) unsigned char smem[];
    /* Launched with PDL in a decode step: q and the pool come from the kernel
     * before. No early trigger: letting the next kernel launch right after the
     * wait made batch-1 steps 12% slower on an H200 (bench/results/
     * 2026-11-21-h200-decode-fused.md); it launches when this grid exits.
     * Requesting the cached keys' first tile before the wait measured slower
     * too (3.70 against 3.67 ms a step, 2026-11-21-h200-decode-s6.md). */
    pdl_wait();
    const int s = blockIdx.z;
    const int g = blockIdx.y / p.rt_grid, rt0 = blockIdx.y % p.rt_grid;
    const int rows = (p.q_start[s + 1] - p.q_start[s]) * p.group;
    const int n_rt = (rows + kDecodeRows - 1) / kDecodeRows;
    for (int rt = rt0; rt < n_rt; rt += p.rt_grid) {
        attend_tile<T, D, kDecodeWM, kDecodeWN, kDecodeMT, kBN, KV>(p, s, g, rt, blockIdx.x, smem);
        __syncthreads();
    }
}

/* One block per (token, head) row: out = sum_i w_i o_i / sum_i w_i with
 * w_i = 2^(lse_i - max lse). Each of kReduceWarps warps takes every
 * kReduceWarps-th split (a lane owns D/32 dims), so many partial rows are in
 * flight at once; smem sums the warps. Empty splits (lse -inf, o 0) weigh 0. */
constexpr int kReduceWarps = 8, kReducePre = 2;
template <typename T, int D>
__global__ void __launch_bounds__(kReduceWarps * 32)
    reduce_kernel(T *out, const float *part_o, const float *part_lse, int n_splits)
{
    constexpr int V = D / 32; /* dims per lane */
    pdl_wait();
    __shared__ float s_max[kReduceWarps], s_sum[kReduceWarps];
    __shared__ float s_acc[kReduceWarps][D];
    const int64_t row = blockIdx.x;
    const float *lse = part_lse + row * n_splits;
    const float *po = part_o + row * n_splits * D;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    /* Each warp's first kReducePre splits (o and lse) are requested with the
     * max pass, not after it: one round trip to L2 instead of two when the
     * splits are few. */
    float pre_o[kReducePre][V], pre_l[kReducePre];
#pragma unroll
    for (int j = 0; j < kReducePre; j++) {
        const int i = warp + j * kReduceWarps;
        pre_l[j] = i < n_splits ? lse[i] : -INFINITY;
#pragma unroll
        for (int k = 0; k < V; k++) pre_o[j][k] = i < n_splits ? po[(int64_t)i * D + lane * V + k] : 0.0f;
    }
    float mx = -INFINITY;
    for (int i = tid; i < n_splits; i += kReduceWarps * 32) mx = fmaxf(mx, lse[i]);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
    if (lane == 0) s_max[warp] = mx;
    __syncthreads();
    mx = s_max[0];
#pragma unroll
    for (int w = 1; w < kReduceWarps; w++) mx = fmaxf(mx, s_max[w]);
    const float base = mx == -INFINITY ? 0.0f : mx;
    float acc[V], L = 0.0f;
#pragma unroll
    for (int k = 0; k < V; k++) acc[k] = 0.0f;
#pragma unroll
    for (int j = 0; j < kReducePre; j++) {
        const float w = exp2f(pre_l[j] - base);
        if (w > 0.0f) {
            L += w;
#pragma unroll
            for (int k = 0; k < V; k++) acc[k] += w * pre_o[j][k];
        }
    }
#pragma unroll 4
    for (int i = warp + kReducePre * kReduceWarps; i < n_splits; i += kReduceWarps) {
        const float w = exp2f(lse[i] - base);
        if (w > 0.0f) {
            const float *src = po + (int64_t)i * D + lane * V;
            L += w;
#pragma unroll
            for (int k = 0; k < V; k++) acc[k] += w * src[k];
        }
    }
#pragma unroll
    for (int k = 0; k < V; k++) s_acc[warp][lane * V + k] = acc[k];
    if (lane == 0) s_sum[warp] = L;
    __syncthreads();
    for (int d = tid; d < D; d += kReduceWarps * 32) {
        float o = 0.0f, sum = 0.0f;
#pragma unroll
        for (int w = 0; w < kReduceWarps; w++) {
            o += s_acc[w][d];
            sum += s_sum[w];
        }
        out[row * D + d] = static_cast<T>(sum > 0.0f ? o / sum : 0.0f);
    }
}

/* One thread per 8-element chunk of one token's K or V row of one kv head.
 * KV is T, or kv_fp8: the row rounded to E4M3 (8 bytes a chunk). */
template <typename T, typename KV>
__global__ void kv_append_kernel(KV *pool, const T *k, int64_t k_stride, const T *v, int64_t v_stride,
                                 const int32_t *slots, int64_t n, int n_kv_heads, int head_dim,
                                 int64_t tokens_per_block, int vec)
{
    constexpr bool F8 = std::is_same<KV, kv_fp8>::value;
    const int cpr = (head_dim + 7) / 8;
    const int64_t total = n * n_kv_heads * cpr * 2;
    const int64_t half_elems = tokens_per_block * head_dim * n_kv_heads;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
        const int c = (int)(i % cpr);
        int64_t rest = i / cpr;
        const int h = (int)(rest % n_kv_heads);
        rest /= n_kv_heads;
        const int which = (int)(rest & 1); /* 0 = K, 1 = V */
        const int64_t t = rest >> 1;
        const int32_t slot = slots[t];
        if (slot < 0) continue;
        const int64_t blk = slot / tokens_per_block, in_blk = slot % tokens_per_block;
        KV *dst = pool + blk * 2 * half_elems + which * half_elems + (h * tokens_per_block + in_blk) * head_dim + c * 8;
        const T *src = which ? v + t * v_stride : k + t * k_stride;
        src += (int64_t)h * head_dim + c * 8;
        if constexpr (F8) {
            if (vec) {
                float f[8];
                const uint4 u = *reinterpret_cast<const uint4 *>(src);
                const T *e = reinterpret_cast<const T *>(&u);
#pragma unroll
                for (int j = 0; j < 8; j++) f[j] = Elem<T>::to_f32(e[j]);
                *reinterpret_cast<uint2 *>(dst) = e4m3x8_from_f32(f);
            } else {
                const int m = min(8, head_dim - c * 8);
                for (int e = 0; e < m; e++) reinterpret_cast<uint8_t *>(dst)[e] = e4m3_from_f32(Elem<T>::to_f32(src[e]));
            }
        } else if (vec) {
            *reinterpret_cast<uint4 *>(dst) = *reinterpret_cast<const uint4 *>(src);
        } else {
            const int m = min(8, head_dim - c * 8);
            for (int e = 0; e < m; e++) dst[e] = src[e];
        }
    }
}

/* ---- host side ---- */

int sm_count()
{
    static int cached[kMaxDevices];
    int dev = 0;
    if (cudaGetDevice(&dev) != cudaSuccess || dev < 0) return 0;
    if (dev < kMaxDevices && cached[dev]) return cached[dev];
    int n = 0;
    if (cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess) return 0;
    if (dev < kMaxDevices) cached[dev] = n;
    return n;
}

/* Raises a kernel's dynamic shared-memory limit once per device. */
template <typename K> cudaError_t allow_smem(K kernel, size_t bytes, bool *done)
{
    int dev = 0;
    cudaError_t e = cudaGetDevice(&dev);
    if (e != cudaSuccess) return e;
    if (dev >= 0 && dev < kMaxDevices && done[dev]) return cudaSuccess;
    e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes);
    if (e == cudaSuccess && dev >= 0 && dev < kMaxDevices) done[dev] = true;
    return e;
}

int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

/* Largest split count any decode launch with these sizes may use (the
 * scratch bound): splits never exceed ceil(max_ctx / kDecodeSplitMinKeys),
 * nor ceil(kDecodeSplitBlocksPerSM * SMs / n_seqs) except in forced mode's
 * kSplitForced. */
int64_t max_splits(int64_t n_seqs, int64_t max_ctx)
{
    const int64_t by_ctx = cdiv(max_ctx > 0 ? max_ctx : 1, kDecodeSplitMinKeys);
    const int64_t sms = sm_count() > 0 ? sm_count() : 132;
    int64_t s = cdiv(kDecodeSplitBlocksPerSM * sms, n_seqs > 0 ? n_seqs : 1);
    if (s < kSplitForced) s = kSplitForced;
    return s < by_ctx ? s : by_ctx;
}

/* Scratch bytes for `rows` (token, head) rows split `splits` ways: the lse
 * array (256-byte aligned), then the fp32 partial outputs. */
size_t split_bytes(int64_t rows, int64_t splits, int64_t D)
{
    const size_t lse = ((size_t)rows * splits * sizeof(float) + 255) & ~(size_t)255;
    return lse + (size_t)rows * splits * D * sizeof(float);
}

/* Prefill tiles: 64 rows (a warp per m16 tile) x 64 keys. Measured on an
 * H200 (2048 tokens, 32 heads, d128, causal): 119 TFLOP/s; 128-row tiles
 * with two m16 tiles per warp ran slower (103 TFLOP/s with 64-key tiles,
 * 106 with 32): at d128 their fragments need more than 255 registers and
 * spill. */
constexpr int kPrefillMT = 1, kPrefillBN = 64;
constexpr int kPrefillRows = 16 * 4 * kPrefillMT;

/* Rows x splits a split prefill launch may use at most (the scratch it wants):
 * it splits only when its row tiles fill at most half the SMs, and then into
 * at most ceil(kSplitBlocksPerSM * SMs / blocks) parts, so rows * splits <=
 * kPrefillRows * (kSplitBlocksPerSM * SMs + SMs / 2 + blocks). */
int64_t prefill_split_rows(int64_t max_ctx)
{
    const int64_t sms = sm_count() > 0 ? sm_count() : 132;
    const int64_t r = kPrefillRows * (kSplitBlocksPerSM * sms + sms);
    const int64_t by_ctx = kPrefillRows * (sms / 2 + 1) * cdiv(max_ctx > 0 ? max_ctx : 1, kSplitMinKeys);
    return r < by_ctx ? r : by_ctx;
}

/* Picks the key split: at most `want` splits of whole kBN-key tiles over span
 * keys, no more than the scratch holds for `rows` rows; sets p's split fields
 * (n_splits 1 and no partials when it does not split). Returns the splits. */
int64_t choose_split(AttParams &p, int64_t want, int64_t span, int64_t rows, int D, void *scratch, size_t scratch_bytes)
{
    if (span < 1) span = 1;
    int64_t splits = want < 1 ? 1 : want;
    while (splits > 1 && (!scratch || split_bytes(rows, splits, D) > scratch_bytes)) splits--;
    int64_t chunk = cdiv(cdiv(span, splits), kBN) * kBN;
    splits = cdiv(span, chunk); /* never more than before */
    if (splits <= 1) {
        p.part_o = nullptr;
        p.part_lse = nullptr;
        p.n_splits = 1;
        p.chunk = 0;
        return 1;
    }
    p.n_splits = (int)splits;
    p.chunk = (int)chunk;
    const size_t lse_bytes = ((size_t)rows * splits * sizeof(float) + 255) & ~(size_t)255;
    p.part_lse = static_cast<float *>(scratch);
    p.part_o = reinterpret_cast<float *>(static_cast<unsigned char *>(scratch) + lse_bytes);
    return splits;
}

template <typename T, int D> cudaError_t launch_reduce(const AttParams &p, int64_t n_tokens, cudaStream_t st)
{
    return pdl_launch(reduce_kernel<T, D>, dim3((unsigned)(n_tokens * p.n_heads)), dim3(kReduceWarps * 32), 0, st, static_cast<T *>(p.out),
                      (const float *)p.part_o, (const float *)p.part_lse, (int)p.n_splits);
}

/* Prefill-shaped batches. Their row tiles alone fill the machine unless the
 * chunk is short; then (multi_block auto) the keys are split like decode's
 * when the tiles would keep at most half the SMs busy over at least two
 * kSplitMinKeys-key parts, or always as far as scratch allows (multi_block 1). */
template <typename T, int D, int MT, int BN, typename KV>
cudaError_t launch_prefill(AttParams p, int64_t n_tokens, int64_t max_ctx, int multi, void *scratch, size_t scratch_bytes,
                           cudaStream_t st)
{
    using S = Shape<T, D, 4, 1, MT, BN, KV>;
    static bool done[kMaxDevices];
    cudaError_t e = allow_smem(prefill_kernel<T, D, MT, BN, KV>, S::smem, done);
    if (e != cudaSuccess) return e;
    const int64_t tiles = cdiv(n_tokens * p.group, S::M) + p.n_seqs;
    if (tiles > INT32_MAX) return cudaErrorInvalidValue;
    const int64_t span = p.window > 0 && p.window < max_ctx ? p.window : max_ctx;
    const int64_t blocks = cdiv(n_tokens * p.group, S::M) * p.n_kv_heads; /* blocks with rows, at least */
    const int64_t sms = sm_count() > 0 ? sm_count() : 1;
    const int64_t by_ctx = cdiv(span > 0 ? span : 1, kSplitMinKeys);
    int64_t want = 1;
    if (multi == 1 || (multi < 0 && 2 * blocks <= sms && by_ctx >= 2)) {
        want = cdiv(kSplitBlocksPerSM * sms, blocks);
        if (want > by_ctx) want = by_ctx;
        if (multi == 1 && want < kSplitForced) want = by_ctx < kSplitForced ? by_ctx : kSplitForced;
    }
    const int64_t splits = choose_split(p, want, span, n_tokens * p.n_heads, D, scratch, scratch_bytes);
    prefill_kernel<T, D, MT, BN, KV><<<dim3((unsigned)tiles, p.n_kv_heads, (unsigned)splits), kThreads, S::smem, st>>>(p);
    e = cudaGetLastError();
    if (e != cudaSuccess || splits == 1) return e;
    return launch_reduce<T, D>(p, n_tokens, st);
}

/* A decode batch's key split, set in p (choose_split): none unless forced
 * (multi 1) or, in auto mode (-1), sequences x heads are under half the SMs
 * and the visible context is over kDecodeSplitMinCtx; then `want` splits
 * (the launcher's fill target), at most one per kDecodeSplitMinKeys keys and,
 * forced, at least kSplitForced. Each sequence splits its own keys (chunk
 * 0). Returns the splits, or 0 when a forced split has no room in scratch. */
int64_t decode_split(AttParams &p, int multi, int64_t want, int64_t n_tokens, int64_t max_ctx, int D, void *scratch,
                     size_t scratch_bytes)
{
    const int64_t span = p.window > 0 && p.window < max_ctx ? p.window : max_ctx;
    const int64_t rows = n_tokens * p.n_heads;
    if (multi < 0) multi = scratch && (int64_t)p.n_seqs * p.n_heads < sm_count() / 2 && span > kDecodeSplitMinCtx;
    if (multi && !scratch) return 0;
    int64_t splits = 1;
    if (multi) {
        const int64_t by_ctx = cdiv(span > 0 ? span : 1, kDecodeSplitMinKeys);
        splits = want < 1 ? 1 : want > by_ctx ? by_ctx : want;
        if (multi == 1 && splits < kSplitForced) splits = by_ctx < kSplitForced ? by_ctx : kSplitForced;
        if (multi == 1 && split_bytes(rows, splits, D) > scratch_bytes) return 0;
    }
    splits = choose_split(p, splits, span, rows, D, scratch, scratch_bytes);
    p.chunk = 0;
    return splits;
}

/* Decode batches of query groups up to ATT_ROWS_MAX_GROUP: attention_decode.cu's
 * kernel, its splits filling one wave of resident blocks (at most
 * kDecodeSplitBlocksPerSM per SM, the scratch bound), merged by the reduction
 * kernel. Measured on an H200, Llama-2-7B shape, batch 1 (bench/results/
 * 2026-11-21-h200-decode-s7.md): one wave beat 4 blocks per SM (two waves at
 * 3 resident) by 1.8% a step at 2048/256; merging the partials in the last
 * split to finish (an arrival counter) was 1% slower than the reduction
 * kernel; a 32- or 16-key minimum changed nothing. */
template <typename T, int D>
cudaError_t launch_rows(AttParams p, loom_dtype act, loom_dtype kv, int64_t n_tokens, int64_t max_ctx, int multi, void *scratch,
                        size_t scratch_bytes, cudaStream_t st)
{
    const int64_t sms = sm_count() > 0 ? sm_count() : 132;
    int64_t per_sm = att_rows_blocks_per_sm(act, kv, p.group, D);
    if (per_sm > kDecodeSplitBlocksPerSM) per_sm = kDecodeSplitBlocksPerSM;
    const int64_t want = per_sm * sms / ((int64_t)p.n_seqs * p.n_kv_heads); /* one wave */
    const int64_t splits = decode_split(p, multi, want, n_tokens, max_ctx, D, scratch, scratch_bytes);
    if (splits == 0) return cudaErrorInvalidValue;
    p.min_chunk = kDecodeSplitMinKeys;
    cudaError_t e = att_rows_launch(p, act, kv, D, p.n_seqs, st);
    if (e != cudaSuccess || splits == 1) return e;
    return launch_reduce<T, D>(p, n_tokens, st);
}

/* Decode batches of larger groups: the flash tile, enough splits to fill the
 * machine at kDecodeSplitBlocksPerSM blocks per SM. */
template <typename T, int D, typename KV>
cudaError_t launch_tile_decode(AttParams p, int64_t n_tokens, int64_t max_ctx, int multi, void *scratch, size_t scratch_bytes,
                               cudaStream_t st)
{
    using S = Shape<T, D, kDecodeWM, kDecodeWN, kDecodeMT, kBN, KV>;
    static bool done[kMaxDevices];
    cudaError_t e = allow_smem(decode_kernel<T, D, KV>, S::smem, done);
    if (e != cudaSuccess) return e;
    p.rt_grid = (int)cdiv(p.group, kDecodeRows);
    const int64_t sms = sm_count() > 0 ? sm_count() : 132;
    const int64_t want = cdiv(kDecodeSplitBlocksPerSM * sms, (int64_t)p.n_seqs * p.n_kv_heads * p.rt_grid);
    const int64_t splits = decode_split(p, multi, want, n_tokens, max_ctx, D, scratch, scratch_bytes);
    if (splits == 0) return cudaErrorInvalidValue;
    e = pdl_launch(decode_kernel<T, D, KV>, dim3((unsigned)splits, p.n_kv_heads * p.rt_grid, p.n_seqs), dim3(kThreads), S::smem, st, p);
    if (e != cudaSuccess || splits == 1) return e;
    return launch_reduce<T, D>(p, n_tokens, st);
}

template <typename T, int D, typename KV>
cudaError_t launch(AttParams p, loom_dtype act, loom_dtype kv, int64_t n_tokens, int64_t max_ctx, int multi, void *scratch,
                   size_t scratch_bytes, cudaStream_t st)
{
    p.part_o = nullptr;
    p.part_lse = nullptr;
    p.n_splits = 1;
    p.chunk = 0;
    if (n_tokens != p.n_seqs)
        return launch_prefill<T, D, kPrefillMT, kPrefillBN, KV>(p, n_tokens, max_ctx, multi, scratch, scratch_bytes, st);
    if (att_rows_ok(p.group, D)) return launch_rows<T, D>(p, act, kv, n_tokens, max_ctx, multi, scratch, scratch_bytes, st);
    return launch_tile_decode<T, D, KV>(p, n_tokens, max_ctx, multi, scratch, scratch_bytes, st);
}

bool aligned16(const void *p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

} /* namespace */

template <typename T, typename KV>
cudaError_t kv_append_launch(void *pool, const void *k, int64_t k_stride, const void *v, int64_t v_stride, const int32_t *slots,
                             int64_t n, int64_t n_kv_heads, int64_t head_dim, int64_t tokens_per_block, int vec, cudaStream_t st)
{
    const int64_t total = n * n_kv_heads * ((head_dim + 7) / 8) * 2;
    const int threads = 256;
    const int64_t blocks = cdiv(total, threads) < 65536 ? cdiv(total, threads) : 65536;
    kv_append_kernel<T, KV><<<(unsigned)blocks, threads, 0, st>>>(static_cast<KV *>(pool), static_cast<const T *>(k), k_stride,
                                                                 static_cast<const T *>(v), v_stride, slots, n, (int)n_kv_heads,
                                                                 (int)head_dim, tokens_per_block, vec);
    return cudaGetLastError();
}

extern "C" int loom_cuda_kv_append(void *pool, const void *k, int64_t k_stride, const void *v, int64_t v_stride,
                                   loom_dtype act, loom_dtype kv, const int32_t *slot_mapping, int64_t n, int64_t n_kv_heads,
                                   int64_t head_dim, int64_t tokens_per_block, void *stream)
{
    if (n < 0 || n_kv_heads <= 0 || head_dim <= 0 || tokens_per_block <= 0 || n_kv_heads > INT32_MAX ||
        head_dim > INT32_MAX || (act != LOOM_F16 && act != LOOM_BF16) || (kv != act && kv != LOOM_F8E4M3))
        return cudaErrorInvalidValue;
    if (n == 0) return cudaSuccess;
    if (!pool || !k || !v || !slot_mapping || k_stride < n_kv_heads * head_dim || v_stride < n_kv_heads * head_dim)
        return cudaErrorInvalidValue;
    const int vec = head_dim % 8 == 0 && k_stride % 8 == 0 && v_stride % 8 == 0 && aligned16(pool) &&
                    aligned16(k) && aligned16(v);
    cudaStream_t st = static_cast<cudaStream_t>(stream);
    const bool f8 = kv == LOOM_F8E4M3;
    if (act == LOOM_F16)
        return f8 ? kv_append_launch<__half, kv_fp8>(pool, k, k_stride, v, v_stride, slot_mapping, n, n_kv_heads, head_dim, tokens_per_block, vec, st)
                  : kv_append_launch<__half, __half>(pool, k, k_stride, v, v_stride, slot_mapping, n, n_kv_heads, head_dim, tokens_per_block, vec, st);
    return f8 ? kv_append_launch<__nv_bfloat16, kv_fp8>(pool, k, k_stride, v, v_stride, slot_mapping, n, n_kv_heads, head_dim, tokens_per_block, vec, st)
              : kv_append_launch<__nv_bfloat16, __nv_bfloat16>(pool, k, k_stride, v, v_stride, slot_mapping, n, n_kv_heads, head_dim,
                                                               tokens_per_block, vec, st);
}

extern "C" int loom_cuda_attention(void *out, const void *q, int64_t q_stride, const void *pool, loom_dtype act,
                                   loom_dtype kv, const int32_t *q_start, const int32_t *ctx_len, const int32_t *block_tables,
                                   int64_t max_blocks, int64_t n_seqs, int64_t n_tokens, int64_t max_ctx,
                                   int64_t n_heads, int64_t n_kv_heads, int64_t head_dim, int64_t tokens_per_block,
                                   int64_t window, float scale, int multi_block, void *scratch, size_t scratch_bytes,
                                   void *stream)
{
    if ((act != LOOM_F16 && act != LOOM_BF16) || (kv != act && kv != LOOM_F8E4M3)) return cudaErrorInvalidValue;
    if (head_dim != 64 && head_dim != 128) return cudaErrorInvalidValue;
    if (n_heads <= 0 || n_kv_heads <= 0 || n_heads % n_kv_heads || n_heads > 65535 || n_seqs <= 0 ||
        n_seqs > 65535 || n_tokens < 0 || n_tokens > INT32_MAX || max_ctx < 0 || max_ctx > INT32_MAX ||
        window < 0 || max_blocks <= 0 || multi_block < -1 || multi_block > 1)
        return cudaErrorInvalidValue;
    if (tokens_per_block <= 0 || tokens_per_block > (1 << 20) || (tokens_per_block & (tokens_per_block - 1)))
        return cudaErrorInvalidValue;
    if (n_tokens == 0) return cudaSuccess;
    if (!out || !q || !pool || !q_start || !ctx_len || !block_tables || q_stride < n_heads * head_dim ||
        !aligned16(out) || !aligned16(pool))
        return cudaErrorInvalidValue;

    AttParams p;
    memset(&p, 0, sizeof p);
    p.out = out;
    p.q = q;
    p.pool = pool;
    p.q_start = q_start;
    p.ctx_len = ctx_len;
    p.block_tables = block_tables;
    p.q_stride = q_stride;
    p.max_blocks = max_blocks;
    p.n_seqs = (int)n_seqs;
    p.n_heads = (int)n_heads;
    p.n_kv_heads = (int)n_kv_heads;
    p.group = (int)(n_heads / n_kv_heads);
    int shift = 0;
    while ((int64_t)1 << shift < tokens_per_block) shift++;
    p.block_shift = shift;
    p.window = window > INT32_MAX ? 0 : (int)window; /* a window past any int32 context is no window */
    p.q_vec = aligned16(q) && q_stride % 8 == 0;
    p.scale_log2 = scale * 1.4426950408889634f;
    cudaStream_t st = static_cast<cudaStream_t>(stream);
    cudaError_t e;
#define LAUNCH(T, D, KV) launch<T, D, KV>(p, act, kv, n_tokens, max_ctx, multi_block, scratch, scratch_bytes, st)
    const bool f8 = kv == LOOM_F8E4M3;
    if (act == LOOM_F16)
        e = head_dim == 64 ? (f8 ? LAUNCH(__half, 64, kv_fp8) : LAUNCH(__half, 64, __half))
                           : (f8 ? LAUNCH(__half, 128, kv_fp8) : LAUNCH(__half, 128, __half));
    else
        e = head_dim == 64 ? (f8 ? LAUNCH(__nv_bfloat16, 64, kv_fp8) : LAUNCH(__nv_bfloat16, 64, __nv_bfloat16))
                           : (f8 ? LAUNCH(__nv_bfloat16, 128, kv_fp8) : LAUNCH(__nv_bfloat16, 128, __nv_bfloat16));
#undef LAUNCH
    return (int)e;
}

extern "C" size_t loom_cuda_attention_scratch_bytes(int64_t n_seqs, int64_t n_heads, int64_t head_dim,
                                                    int64_t max_ctx)
{
    if (n_seqs <= 0 || n_heads <= 0 || head_dim <= 0) return 0;
    const size_t decode = split_bytes(n_seqs * n_heads, max_splits(n_seqs, max_ctx), head_dim);
    const size_t prefill = split_bytes(prefill_split_rows(max_ctx), 1, head_dim);
    return decode > prefill ? decode : prefill;
}
