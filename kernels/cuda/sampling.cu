/* Sampling on the GPU, one thread block per row, with worker/sampler.c's
 * semantics: repetition penalty once per distinct id, greedy = first argmax,
 * temperature, top-k keeping every tie of the k-th logit, top-p as the
 * smallest prefix (logit descending, lower id first) whose mass reaches p,
 * then a draw with Philox4x32-10 seeded by (seed, step).
 *
 * Nothing is sorted. Each token gets a 54-bit composite key, the order-
 * preserving bits of its logit above (2^22 - 1 - id), so keys are distinct
 * and descend in the CPU's sort order. Top-k, top-p and the draw are each a
 * select: the key where the count (top-k) or the probability mass (top-p, the
 * draw) summed from the top first reaches a target. Over a whole row it runs
 * in two levels: a histogram of logit buckets (64 per nat below the max, so
 * the shared-memory atomics rarely collide) finds the bucket, whose few
 * elements are compacted into shared memory and radix-selected exactly
 * (11-bit digits of the composite key). Masses are fixed-point integers
 * (exp(l - max) * 2^40), so every sum is exact and independent of thread
 * order: the same (seed, step, logits) gives the same id. When the set left
 * after top-k fits in shared memory (kCap keys), top-p and the draw run there.  */
#include <cuda_runtime.h>
#include <curand_kernel.h>

#include <cmath>
#include <cstdint>

#include "ops_cuda.h"

namespace {

constexpr int kThreads = 1024;        /* per row; the bin scan assumes 2 bins per thread */
constexpr int kBins = 2048;           /* 11-bit digits */
constexpr int kCap = 4096;            /* candidates compacted into shared memory */
constexpr int kIdBits = 22;           /* vocab <= 2^22 */
constexpr uint64_t kIdMask = (1ull << kIdBits) - 1;
constexpr float kMassScale = 1099511627776.0f; /* 2^40: vocab * 2^40 < 2^64 */

typedef unsigned long long u64;

enum { kFixed, kTopP, kDraw };

/* What a select looks for, resolved against the total weight of its set
 * once its first histogram is built. */
struct Target {
    int kind;
    u64 fixed;  /* kFixed: the target itself */
    float p;    /* kTopP: ceil(p * total), in [1, total] */
    u64 rnd;    /* kDraw: uniform 64 bits -> floor(rnd * total / 2^64) + 1 */

    __device__ u64 resolve(u64 total) const
    {
        if (kind == kTopP) {
            const u64 t = (u64)ceil((double)p * (double)total);
            return t < 1 ? 1 : t > total ? total : t;
        }
        if (kind == kDraw) return __umul64hi(rnd, total) + 1;
        return fixed;
    }
};
__device__ __forceinline__ Target fixed_target(u64 t) { return Target{kFixed, t, 1.0f, 0}; }

struct Shared {
    /* One histogram: element count and summed weight per bin. The weight is
     * split into two 32-bit words with an explicit carry, so every update is
     * a native 32-bit shared-memory atomic. */
    unsigned cnt[kBins], mlo[kBins], mhi[kBins];
    u64 scan[kThreads / 32];
    float fred[kThreads / 32];
    int ired[kThreads / 32];
    u64 sel_above, sel_w, sel_key;
    int sel_bin;
    unsigned sel_cnt, n;
};

/* Order-preserving float -> uint32 (-0 and +0 map to the same key). */
__device__ __forceinline__ uint32_t fkey(float x)
{
    if (x == 0.0f) x = 0.0f;
    const uint32_t u = __float_as_uint(x);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
__device__ __forceinline__ float funkey(uint32_t k)
{
    return __uint_as_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}
__device__ __forceinline__ u64 ckey(float x, int64_t id)
{
    return ((u64)fkey(x) << kIdBits) | (kIdMask - (u64)id);
}

/* Fixed-point probability mass of a (scaled) logit; 0 below max - 27.7 and
 * for NaN. */
__device__ __forceinline__ u64 weight_of(float l, float mx)
{
    const float e = expf(l - mx);
    return e > 0.0f ? (u64)__float2ull_rz(e * kMassScale) : 0;
}

/* First-level bucket of a logit: 64 buckets per nat below the maximum, the
 * highest values in the highest bucket (monotone in the logit, so equal
 * logits share a bucket). Bucket 0 (max - 31.98 and below) has zero mass. */
__device__ __forceinline__ int bucket_of(float l, float mx)
{
    const float d = mx - l;
    return d < 32.0f ? kBins - 1 - (int)(d * 64.0f) : 0;
}

/* ---- block reductions (blockDim.x == kThreads) ---- */

__device__ float block_max(Shared &sh, float v)
{
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    __syncthreads(); /* sh.fred may still be read by a previous call */
    if (lane == 0) sh.fred[warp] = v;
    __syncthreads();
    v = sh.fred[lane];
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/* Inclusive prefix sum over the block in thread order; sh.scan[31] is the
 * total until the next call. */
__device__ u64 block_scan(Shared &sh, u64 v)
{
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    for (int o = 1; o < 32; o <<= 1) {
        const u64 t = __shfl_up_sync(0xffffffffu, v, o);
        if (lane >= o) v += t;
    }
    __syncthreads();
    if (lane == 31) sh.scan[warp] = v;
    __syncthreads();
    if (warp == 0) {
        u64 t = sh.scan[lane];
        for (int o = 1; o < 32; o <<= 1) {
            const u64 s = __shfl_up_sync(0xffffffffu, t, o);
            if (lane >= o) t += s;
        }
        sh.scan[lane] = t;
    }
    __syncthreads();
    return warp ? v + sh.scan[warp - 1] : v;
}

__device__ u64 block_total(Shared &sh, u64 v)
{
    block_scan(sh, v);
    return sh.scan[kThreads / 32 - 1];
}

/* First index of the largest value (NaN never wins), as torch.argmax. */
__device__ int block_argmax(Shared &sh, const float *x, int64_t V)
{
    float bv = -INFINITY;
    int bi = (int)V;
    if (V % 4 == 0 && reinterpret_cast<uintptr_t>(x) % 16 == 0) {
        const float4 *x4 = reinterpret_cast<const float4 *>(x);
#pragma unroll 4
        for (int64_t j = threadIdx.x; j < V / 4; j += kThreads) {
            const float4 f = x4[j];
            const int i = (int)(4 * j);
            if (f.x > bv || (f.x == bv && i < bi)) { bv = f.x; bi = i; }
            if (f.y > bv) { bv = f.y; bi = i + 1; }
            if (f.z > bv) { bv = f.z; bi = i + 2; }
            if (f.w > bv) { bv = f.w; bi = i + 3; }
        }
    } else {
        for (int64_t j = threadIdx.x; j < V; j += kThreads) {
            const float f = x[j];
            if (f > bv || (f == bv && (int)j < bi)) { bv = f; bi = (int)j; }
        }
    }
    for (int o = 16; o > 0; o >>= 1) {
        const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
        const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
        if (ov > bv || (ov == bv && oi < bi)) { bv = ov; bi = oi; }
    }
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    __syncthreads();
    if (lane == 0) { sh.fred[warp] = bv; sh.ired[warp] = bi; }
    __syncthreads();
    bv = sh.fred[lane];
    bi = sh.ired[lane];
    for (int o = 16; o > 0; o >>= 1) {
        const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
        const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
        if (ov > bv || (ov == bv && oi < bi)) { bv = ov; bi = oi; }
    }
    return bi < V ? bi : 0;
}

/* ---- histograms ---- */

__device__ __forceinline__ void hist_clear(Shared &sh)
{
    for (int b = threadIdx.x; b < kBins; b += kThreads) { sh.cnt[b] = 0; sh.mlo[b] = 0; sh.mhi[b] = 0; }
}

__device__ __forceinline__ void hist_add(Shared &sh, int b, u64 w, bool mass)
{
    atomicAdd(&sh.cnt[b], 1u);
    if (mass) {
        const unsigned wl = (unsigned)w;
        unsigned wh = (unsigned)(w >> 32);
        const unsigned old = atomicAdd(&sh.mlo[b], wl);
        if (old + wl < old) wh++; /* this add wrapped the low word */
        if (wh) atomicAdd(&sh.mhi[b], wh);
    }
}

__device__ __forceinline__ u64 bin_weight(const Shared &sh, int b, bool mass)
{
    return mass ? ((u64)sh.mhi[b] << 32) + sh.mlo[b] : (u64)sh.cnt[b];
}

struct Pick {
    int bin;       /* -1: the target lies outside the set */
    unsigned cnt;  /* elements in the bin */
    u64 above;     /* weight of everything ranked above the bin */
    u64 w;         /* weight of the bin */
    u64 target;    /* the absolute target */
    u64 total;     /* weight of this histogram plus `above` */
};

/* After a histogram is built: walking bins from the highest down, starting
 * at weight `above`, the bin where the running weight first reaches the
 * target (resolved from the total when `resolve`). Same result in every thread. */
__device__ Pick pick_bin(Shared &sh, bool mass, u64 above, const Target &tg, bool resolve, u64 target)
{
    /* Thread t holds bins 2047-2t and 2046-2t (high bins first). */
    const int b0 = kBins - 1 - 2 * (int)threadIdx.x, b1 = b0 - 1;
    const u64 w0 = bin_weight(sh, b0, mass), w1 = bin_weight(sh, b1, mass);
    if (threadIdx.x == 0) sh.sel_bin = -1;
    const u64 incl = block_scan(sh, w0 + w1);
    const u64 total = above + sh.scan[kThreads / 32 - 1];
    if (resolve) target = tg.resolve(total);
    const u64 before = above + incl - (w0 + w1);
    if (before < target && target <= before + w0) {
        sh.sel_bin = b0; sh.sel_above = before; sh.sel_w = w0; sh.sel_cnt = sh.cnt[b0];
    } else if (before + w0 < target && target <= before + w0 + w1) {
        sh.sel_bin = b1; sh.sel_above = before + w0; sh.sel_w = w1; sh.sel_cnt = sh.cnt[b1];
    }
    __syncthreads();
    Pick pk{sh.sel_bin, sh.sel_cnt, sh.sel_above, sh.sel_w, target, total};
    __syncthreads(); /* everyone has read sel_* before anyone rewrites them */
    return pk;
}

/* The candidates of one row: either the whole row of (scaled) logits or
 * composite keys compacted in shared memory. */
struct Source {
    const float *x; /* (V) scaled logits */
    const u64 *cand;
    int64_t n;      /* V, or the number of compacted keys */
    bool compact;
    float max;      /* largest scaled logit */

    __device__ __forceinline__ void get(int64_t i, u64 *key, float *v) const
    {
        if (compact) {
            *key = cand[i];
            *v = funkey((uint32_t)(*key >> kIdBits));
        } else {
            *v = x[i];
            *key = ckey(*v, i);
        }
    }
};

/* Radix select over composite keys, 11-bit digits from the top: among the
 * source's elements with key >= lo (and, in mass mode, non-zero weight),
 * walking down from the largest key, the element at which the summed weight
 * (1 per element, or the mass) first reaches the target. Sets *key and
 * *incl (the sum including it); *total (if given) gets the set's weight.
 * Returns false when the target lies outside the set. */
__device__ bool radix_select(Shared &sh, const Source &src, u64 lo, bool mass, const Target &tg, u64 *key,
                             u64 *incl, u64 *total)
{
    u64 prefix = 0, above = 0, target = 0;
    for (int pass = 0; pass < 5; pass++) {
        const int shift = pass < 4 ? 43 - 11 * pass : 0, width = pass < 4 ? 11 : 10;
        const int hi = shift + width;
        hist_clear(sh);
        __syncthreads();
        for (int64_t i = threadIdx.x; i < src.n; i += kThreads) {
            u64 k;
            float v;
            src.get(i, &k, &v);
            if (k < lo || (hi < 54 && (k >> hi) != (prefix >> hi))) continue;
            const u64 w = mass ? weight_of(v, src.max) : 1;
            if (!w) continue;
            hist_add(sh, (int)((k >> shift) & ((1u << width) - 1)), w, mass);
        }
        __syncthreads();
        const Pick pk = pick_bin(sh, mass, above, tg, pass == 0, target);
        if (pass == 0) {
            target = pk.target;
            if (total) *total = pk.total;
        }
        if (pk.bin < 0) return false;
        prefix |= (u64)pk.bin << shift;
        above = pk.above;
        *incl = above + pk.w;
        if (pass == 4) { *key = prefix; return true; }
        if (pk.cnt == 1) {
            /* One element left in the bin: fetch its full key. */
            if (threadIdx.x == 0) sh.sel_key = prefix;
            __syncthreads();
            for (int64_t i = threadIdx.x; i < src.n; i += kThreads) {
                u64 k;
                float v;
                src.get(i, &k, &v);
                if (k < lo || (k >> shift) != (prefix >> shift)) continue;
                if (mass && !weight_of(v, src.max)) continue;
                sh.sel_key = k;
            }
            __syncthreads();
            *key = sh.sel_key;
            __syncthreads();
            return true;
        }
    }
    return false;
}

/* The same select over a whole row, in two levels: a histogram of the
 * logits' buckets (bucket_of: fine where logits are dense, so the atomics
 * rarely collide) finds the bucket holding the target; that bucket's
 * elements are compacted into shared memory and radix-selected exactly. A
 * bucket larger than kCap (thousands of equal logits) falls back to the radix
 * select over the row. In count mode a target in bucket 0 (zero mass) gives
 * key 0: every element with mass is ranked above it anyway. */
__device__ bool select_row(Shared &sh, const float *x, int64_t V, float mx, u64 *cand, u64 lo, bool mass,
                           const Target &tg, u64 *key, u64 *incl, u64 *total)
{
    hist_clear(sh);
    __syncthreads();
    unsigned zero = 0; /* count mode: elements in bucket 0, counted privately (it can hold most of a row) */
    for (int64_t i = threadIdx.x; i < V; i += kThreads) {
        const float l = x[i];
        if (lo && ckey(l, i) < lo) continue;
        const u64 w = mass ? weight_of(l, mx) : 1;
        if (!w) continue;
        const int b = bucket_of(l, mx);
        if (!mass && b == 0) {
            zero++;
            continue;
        }
        hist_add(sh, b, w, mass);
    }
    zero = __reduce_add_sync(0xffffffffu, zero);
    if (zero && threadIdx.x % 32 == 0) atomicAdd(&sh.cnt[0], zero);
    __syncthreads();
    const Pick pk = pick_bin(sh, mass, 0, tg, true, 0);
    if (total) *total = pk.total;
    if (pk.bin < 0) return false;
    if (!mass && pk.bin == 0) {
        *key = 0;
        *incl = pk.above + pk.w;
        return true;
    }
    if (pk.cnt > (unsigned)kCap) {
        const Source row{x, cand, V, false, mx};
        return radix_select(sh, row, lo, mass, fixed_target(pk.target), key, incl, nullptr);
    }
    if (threadIdx.x == 0) sh.n = 0;
    __syncthreads();
    for (int64_t i = threadIdx.x; i < V; i += kThreads) {
        const float l = x[i];
        if (bucket_of(l, mx) != pk.bin) continue;
        const u64 k = ckey(l, i);
        if (k < lo || (mass && !weight_of(l, mx))) continue;
        cand[atomicAdd(&sh.n, 1u)] = k;
    }
    __syncthreads();
    const Source bucket{x, cand, (int64_t)pk.cnt, true, mx};
    u64 in_bucket = 0;
    const bool ok = radix_select(sh, bucket, lo, mass, fixed_target(pk.target - pk.above), key, &in_bucket, nullptr);
    *incl = pk.above + in_bucket;
    return ok;
}

__global__ void __launch_bounds__(kThreads, 1)
sample_kernel(int32_t *out_ids, float *logits, int64_t V, const float *temperature, const int32_t *top_k,
              const float *top_p, const float *rep_penalty, const int32_t *history, const int64_t *hist_offsets,
              const uint64_t *seed, const uint64_t *step)
{
    __shared__ Shared sh;
    extern __shared__ u64 dyn[]; /* the penalty's bitmap, then compacted keys */

    const int row = blockIdx.x;
    const int lane = threadIdx.x % 32;
    float *x = logits + (int64_t)row * V;
    const float T = temperature ? temperature[row] : 0.0f;
    const int32_t k = top_k ? top_k[row] : 0;
    const float p = top_p ? top_p[row] : 1.0f;
    const float pen = rep_penalty ? rep_penalty[row] : 1.0f;

    /* Repetition penalty, once per distinct id: the thread that sets an id's
     * bit in the block's bitmap owns it. */
    if (pen != 1.0f && history && hist_offsets) {
        const int64_t h0 = hist_offsets[row], h1 = hist_offsets[row + 1];
        if (h1 > h0) {
            uint32_t *seen = reinterpret_cast<uint32_t *>(dyn);
            for (int64_t w = threadIdx.x; w < (V + 31) / 32; w += kThreads) seen[w] = 0;
            __syncthreads();
            for (int64_t h = h0 + threadIdx.x; h < h1; h += kThreads) {
                const int32_t t = history[h];
                if (t < 0 || t >= V) continue;
                const uint32_t bit = 1u << (t % 32);
                if (atomicOr(&seen[t / 32], bit) & bit) continue;
                const float l = x[t];
                x[t] = l < 0 ? l * pen : l / pen;
            }
            __syncthreads(); /* the block sees the penalized logits below */
        }
    }

    bool ok = T > 0.0f && k != 1; /* false: greedy */
    u64 key = 0, incl = 0, total = 0;
    if (ok) {
        /* Temperature (a true division, as the CPU does) and the row maximum. */
        float mx = -INFINITY;
        for (int64_t i = threadIdx.x; i < V; i += kThreads) {
            const float l = x[i] / T;
            x[i] = l;
            mx = fmaxf(mx, l);
        }
        mx = block_max(sh, mx); /* its barriers publish the scaled row */

        curandStatePhilox4_32_10_t rng;
        curand_init(seed ? seed[row] : 0, step ? step[row] : 0, 0, &rng);
        const uint4 bits = curand4(&rng);
        const Target draw{kDraw, 0, 1.0f, ((u64)bits.x << 32) | bits.y};
        const Target nucleus{kTopP, 0, p, 0};

        u64 lo = 0;
        int64_t n_kept = -1; /* >= 0: the kept set is compacted in dyn */
        if (k > 0 && k < V) {
            /* Top-k: the k-th key by count; every logit tying it stays. */
            ok = select_row(sh, x, V, mx, dyn, 0, false, fixed_target((u64)k), &key, &incl, nullptr);
            lo = (key >> kIdBits) << kIdBits;
            /* The kept set's mass, compacted when it fits (warp-aggregated slots). */
            if (threadIdx.x == 0) sh.n = 0;
            __syncthreads();
            u64 mass = 0;
            for (int64_t base = 0; base < V; base += kThreads) {
                const int64_t i = base + threadIdx.x;
                bool keep = false;
                u64 kk = 0;
                if (i < V) {
                    const float l = x[i];
                    kk = ckey(l, i);
                    const u64 w = kk >= lo ? weight_of(l, mx) : 0;
                    keep = w != 0;
                    mass += w;
                }
                const unsigned m = __ballot_sync(0xffffffffu, keep);
                if (m) {
                    const int leader = __ffs(m) - 1;
                    unsigned first = 0;
                    if (lane == leader) first = atomicAdd(&sh.n, (unsigned)__popc(m));
                    first = __shfl_sync(0xffffffffu, first, leader);
                    const unsigned slot = first + __popc(m & ((1u << lane) - 1));
                    if (keep && slot < (unsigned)kCap) dyn[slot] = kk;
                }
            }
            total = block_total(sh, mass); /* its barriers also settle sh.n and dyn */
            ok = ok && total > 0;
            if (sh.n <= (unsigned)kCap) n_kept = sh.n;
        }
        if (n_kept >= 0) {
            const Source kept{x, dyn, n_kept, true, mx};
            if (ok && p < 1.0f) {
                ok = radix_select(sh, kept, lo, true, nucleus, &key, &incl, nullptr);
                lo = key;
            }
            ok = ok && radix_select(sh, kept, lo, true, draw, &key, &incl, nullptr);
        } else {
            if (ok && p < 1.0f) {
                ok = select_row(sh, x, V, mx, dyn, lo, true, nucleus, &key, &incl, &total);
                lo = key;
            }
            ok = ok && select_row(sh, x, V, mx, dyn, lo, true, draw, &key, &incl, &total);
        }
    }
    if (ok) {
        if (threadIdx.x == 0) out_ids[row] = (int32_t)(kIdMask - (key & kIdMask));
    } else { /* greedy, or no mass left (infinities or NaN in the row) */
        const int id = block_argmax(sh, x, V);
        if (threadIdx.x == 0) out_ids[row] = id;
    }
}

} // namespace

extern "C" size_t loom_cuda_sampling_scratch_bytes(int64_t n_rows, int64_t vocab)
{
    (void)n_rows;
    (void)vocab;
    return 0; /* all scratch lives in shared memory */
}

extern "C" int loom_cuda_sample(int32_t *out_ids, float *logits, int64_t n_rows, int64_t vocab,
                                const float *temperature, const int32_t *top_k, const float *top_p,
                                const float *rep_penalty, const int32_t *history, const int64_t *hist_offsets,
                                const uint64_t *seed, const uint64_t *step, void *scratch, void *stream)
{
    (void)scratch;
    if (n_rows < 0 || n_rows > 0x7fffffff || vocab < 1 || vocab > (int64_t)kIdMask + 1)
        return (int)cudaErrorInvalidValue;
    if (n_rows == 0) return (int)cudaSuccess;
    if (!out_ids || !logits) return (int)cudaErrorInvalidValue;
    /* Dynamic shared memory: the compacted keys, or the penalty's bitmap if larger. */
    size_t dyn = sizeof(u64) * kCap, bitmap = sizeof(uint32_t) * (size_t)((vocab + 31) / 32);
    if (bitmap > dyn) dyn = bitmap;
    int dev = 0, optin = 0;
    cudaError_t e = cudaGetDevice(&dev);
    if (e == cudaSuccess) e = cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
    if (e != cudaSuccess) return (int)e;
    if (dyn + sizeof(Shared) + 64 > (size_t)optin) return (int)cudaErrorInvalidValue;
    e = cudaFuncSetAttribute(sample_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)dyn);
    if (e != cudaSuccess) return (int)e;
    sample_kernel<<<(unsigned)n_rows, kThreads, dyn, static_cast<cudaStream_t>(stream)>>>(
        out_ids, logits, vocab, temperature, top_k, top_p, rep_penalty, history, hist_offsets, seed, step);
    return (int)cudaGetLastError();
}
