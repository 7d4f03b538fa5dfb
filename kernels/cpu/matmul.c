/* CPU matmul y = x @ W^T (+ bias). One task = a block of MM_TR rows of W times
 * up to MM_TB tokens; the task widens its W rows, MM_KC columns at a time, into
 * a stack tile (so fp16/bf16 conversion is paid once per MM_TB tokens, not per
 * token) and a 4-row x 3-token micro-kernel computes dot products from it.
 * Decode (n <= 3 tokens) skips the tile: the AVX2 kernel widens W in registers
 * as it streams it, so the matvec runs at memory speed. */
#include "matmul.h"

#include <assert.h>
#include <stdint.h>
#include <string.h>

#include "widen.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define MM_HAVE_X86 1
#endif

enum {
    MM_TR = 16,          /* W rows per task */
    MM_KC = 512,         /* K columns per tile chunk */
    MM_LDT = MM_KC + 16, /* tile row stride (floats); the pad breaks 4 KiB set aliasing */
    MM_TB = 64,          /* tokens per task */
    MM_MR = 4,           /* micro-kernel rows */
    MM_MT = 3,           /* micro-kernel tokens */
};
/* Below this many flops, a parallel region costs more than it saves. */
#define MM_PAR_MIN_FLOPS (1 << 18)

/* d[r*MM_MT + t] = sum_k w[r*ldw + k] * x[t*ldx + k], r < R, t < T.
 * Every (r, t) is summed in the same order whatever R and T are: 8 lanes
 * strided over k, a fixed lane tree, then the tail in order. That keeps
 * results independent of how rows and tokens are split among threads. */
static inline void mk_generic(int R, int T, const float *w, int64_t ldw,
                              const float *x, int64_t ldx, int64_t kc, float *d)
{
    for (int r = 0; r < R; r++) {
        for (int t = 0; t < T; t++) {
            const float *wr = w + r * ldw, *xt = x + t * ldx;
            float acc[8] = {0};
            int64_t k = 0;
            for (; k + 8 <= kc; k += 8)
                for (int l = 0; l < 8; l++) acc[l] += wr[k + l] * xt[k + l];
            float s = ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]));
            for (; k < kc; k++) s += wr[k] * xt[k];
            d[r * MM_MT + t] = s;
        }
    }
}

#ifdef MM_HAVE_X86
#define MM_AVX2 __attribute__((target("avx2,fma,f16c")))

MM_AVX2 static inline float hsum_avx2(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
}

/* 8 weights of dtype wt from p (any alignment), widened in registers; exact,
 * so it gives the same floats as loom_cpu_widen. */
MM_AVX2 static inline __attribute__((always_inline)) __m256
load_w8(loom_dtype wt, const unsigned char *p)
{
    if (wt == LOOM_F32) return _mm256_loadu_ps((const float *)(const void *)p);
    __m128i h = _mm_loadu_si128((const __m128i *)(const void *)p);
    if (wt == LOOM_F16) return _mm256_cvtph_ps(h);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

/* The AVX2+FMA micro-kernel, same contract as mk_generic but with W rows in
 * dtype wt, ldw elements apart, widened as they are loaded. wt, R and T are
 * constants at every call site, so the accumulators live in registers
 * (R*T + T + 1 <= 16 ymm). */
MM_AVX2 static inline __attribute__((always_inline)) void
mk_avx2(loom_dtype wt, int R, int T, const unsigned char *w, int64_t ldw,
        const float *x, int64_t ldx, int64_t kc, float *d)
{
    const int64_t esz = wt == LOOM_F32 ? 4 : 2;
    __m256 acc[MM_MR][MM_MT];
    for (int r = 0; r < R; r++)
        for (int t = 0; t < T; t++) acc[r][t] = _mm256_setzero_ps();
    int64_t k = 0;
    for (; k + 8 <= kc; k += 8) {
        __m256 xv[MM_MT];
        for (int t = 0; t < T; t++) xv[t] = _mm256_loadu_ps(x + t * ldx + k);
        for (int r = 0; r < R; r++) {
            __m256 wv = load_w8(wt, w + (r * ldw + k) * esz);
            for (int t = 0; t < T; t++) acc[r][t] = _mm256_fmadd_ps(wv, xv[t], acc[r][t]);
        }
    }
    for (int r = 0; r < R; r++) {
        for (int t = 0; t < T; t++) {
            float s = hsum_avx2(acc[r][t]);
            for (int64_t kk = k; kk < kc; kk++) s += loom_cpu_load(w, wt, r * ldw + kk) * x[t * ldx + kk];
            d[r * MM_MT + t] = s;
        }
    }
}

#define MK_CASE(W, R, T) \
    case (W) * 16 + (R) * 4 + (T): mk_avx2(W, R, T, w, ldw, x, ldx, kc, d); break;
#define MK_CASES(W) \
    MK_CASE(W, 4, 3) MK_CASE(W, 4, 2) MK_CASE(W, 4, 1) MK_CASE(W, 3, 3) MK_CASE(W, 3, 2) \
    MK_CASE(W, 3, 1) MK_CASE(W, 2, 3) MK_CASE(W, 2, 2) MK_CASE(W, 2, 1) MK_CASE(W, 1, 3) \
    MK_CASE(W, 1, 2) MK_CASE(W, 1, 1)
MM_AVX2 static void mk_avx2_any(loom_dtype wt, int R, int T, const unsigned char *w, int64_t ldw,
                                const float *x, int64_t ldx, int64_t kc, float *d)
{
    switch ((int)wt * 16 + R * 4 + T) {
    MK_CASES(LOOM_F32)
    MK_CASES(LOOM_F16)
    MK_CASES(LOOM_BF16)
    default: assert(0);
    }
}
#undef MK_CASES
#undef MK_CASE

static int simd_allowed = 1;

void loom_cpu_matmul_allow_simd(int allow) { __atomic_store_n(&simd_allowed, allow, __ATOMIC_RELAXED); }

static int have_avx2_fma_f16c(void)
{
    static int cached = -1;
    int v = __atomic_load_n(&cached, __ATOMIC_RELAXED);
    if (v < 0) {
        __builtin_cpu_init();
        v = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#ifndef __clang__ /* older clangs cannot ask; every AVX2 CPU has F16C anyway */
        v = v && __builtin_cpu_supports("f16c");
#endif
        __atomic_store_n(&cached, v, __ATOMIC_RELAXED);
    }
    return v;
}
#else
void loom_cpu_matmul_allow_simd(int allow) { (void)allow; }
#endif

typedef struct mm_args {
    float *y;
    const float *x;
    const unsigned char *w;
    loom_dtype wt;
    const void *bias;
    int64_t n, in_dim, out_dim;
    int direct; /* read fp32 W in place: always with AVX2 (unaligned loads), else if aligned */
    int avx2;   /* AVX2+FMA+F16C micro-kernel */
} mm_args;

/* Rows [r0, r0+nr) times tokens [t0, t0+nt). */
static void mm_task(const mm_args *a, int64_t r0, int64_t nr, int64_t t0, int64_t nt)
{
    float tile[MM_TR * MM_LDT]; /* this task's W rows, widened; ~33 KiB of stack */
    float b[MM_TR];
    const size_t esz = loom_dtype_size(a->wt);
    for (int64_t r = 0; r < nr; r++) b[r] = a->bias ? loom_cpu_load(a->bias, a->wt, r0 + r) : 0.0f;

    for (int64_t k0 = 0; k0 < a->in_dim; k0 += MM_KC) {
        int64_t kc = a->in_dim - k0 < MM_KC ? a->in_dim - k0 : MM_KC;
        /* Where the micro-kernel reads W: in place (fp32, or any dtype when
         * the AVX2 kernel widens in registers and there is only one token
         * group to serve), else from the widened tile. */
        const unsigned char *wp;
        loom_dtype wdt;
        int64_t ldw;
        if (a->direct || (a->avx2 && nt <= MM_MT)) {
            wp = a->w + (r0 * a->in_dim + k0) * esz;
            wdt = a->wt;
            ldw = a->in_dim;
        } else {
            for (int64_t r = 0; r < nr; r++)
                loom_cpu_widen(tile + r * MM_LDT, a->w + ((r0 + r) * a->in_dim + k0) * esz, a->wt, kc);
            wp = (const unsigned char *)tile;
            wdt = LOOM_F32;
            ldw = MM_LDT;
        }
        for (int64_t t = t0; t < t0 + nt; t += MM_MT) {
            int T = (int)(t0 + nt - t < MM_MT ? t0 + nt - t : MM_MT);
            const float *xt = a->x + t * a->in_dim + k0;
            for (int64_t r = 0; r < nr; r += MM_MR) {
                int R = (int)(nr - r < MM_MR ? nr - r : MM_MR);
                const unsigned char *wr = wp + r * ldw * (wdt == LOOM_F32 ? 4 : 2);
                float d[MM_MR * MM_MT];
#ifdef MM_HAVE_X86
                if (a->avx2)
                    mk_avx2_any(wdt, R, T, wr, ldw, xt, a->in_dim, kc, d);
                else
#endif
                    mk_generic(R, T, (const float *)(const void *)wr, ldw, xt, a->in_dim, kc, d);
                for (int i = 0; i < R; i++) {
                    for (int j = 0; j < T; j++) {
                        float *yo = &a->y[(t + j) * a->out_dim + r0 + r + i];
                        *yo = (k0 == 0 ? b[r + i] : *yo) + d[i * MM_MT + j];
                    }
                }
            }
        }
    }
    if (a->in_dim == 0)
        for (int64_t t = t0; t < t0 + nt; t++)
            for (int64_t r = 0; r < nr; r++) a->y[t * a->out_dim + r0 + r] = b[r];
}

void loom_cpu_matmul(float *y, const float *x, const void *w, loom_dtype wt,
                     const void *bias, int64_t n, int64_t in_dim, int64_t out_dim)
{
    assert(wt == LOOM_F32 || wt == LOOM_F16 || wt == LOOM_BF16);
    assert(n >= 0 && in_dim >= 0 && out_dim >= 0);
    mm_args a = {
        .y = y, .x = x, .w = w, .wt = wt, .bias = bias,
        .n = n, .in_dim = in_dim, .out_dim = out_dim,
        .direct = wt == LOOM_F32 && (uintptr_t)w % _Alignof(float) == 0,
        .avx2 = 0,
    };
#ifdef MM_HAVE_X86
    a.avx2 = __atomic_load_n(&simd_allowed, __ATOMIC_RELAXED) && have_avx2_fma_f16c();
    if (a.avx2 && wt == LOOM_F32) a.direct = 1;
#endif
    const int64_t nrb = (out_dim + MM_TR - 1) / MM_TR;
    const int64_t ntb = (n + MM_TB - 1) / MM_TB;
    const double flops = 2.0 * (double)n * (double)in_dim * (double)out_dim;

    /* dynamic: a thread that loses its core to another process does not hold up the rest */
#pragma omp parallel for collapse(2) schedule(dynamic, 1) if (flops >= MM_PAR_MIN_FLOPS)
    for (int64_t rb = 0; rb < nrb; rb++) {
        for (int64_t tb = 0; tb < ntb; tb++) {
            int64_t r0 = rb * MM_TR, t0 = tb * MM_TB;
            int64_t nr = out_dim - r0 < MM_TR ? out_dim - r0 : MM_TR;
            int64_t nt = n - t0 < MM_TB ? n - t0 : MM_TB;
            mm_task(&a, r0, nr, t0, nt);
        }
    }
}
