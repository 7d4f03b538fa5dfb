/* fp16/bf16 -> fp32 widening that the compiler can vectorize: the fp16 path
 * is branch-free (rebias by a power-of-two multiply, patch inf/NaN with a
 * select) or F16C's vcvtph2ps where the CPU has it; AVX2 clones are picked
 * at load time. */
#include "widen.h"

#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__linux__)
#define WIDEN_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define WIDEN_CLONES
#endif

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define WIDEN_F16C 1

/* Same values as widen_f16 (NaN payloads aside: F16C quiets signalling NaNs). */
__attribute__((target("avx,f16c"))) static void widen_f16_f16c(float *restrict dst,
                                                              const unsigned char *restrict p,
                                                              int64_t n)
{
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(const void *)(p + 2 * i))));
    for (; i < n; i++) {
        uint16_t h;
        memcpy(&h, p + 2 * i, 2);
        dst[i] = loom_f16_to_f32(h);
    }
}

static int have_f16c(void)
{
    static int cached = -1;
    int v = __atomic_load_n(&cached, __ATOMIC_RELAXED);
    if (v < 0) {
        __builtin_cpu_init();
#ifdef __clang__ /* older clangs cannot ask for f16c; every AVX2 CPU has it */
        v = __builtin_cpu_supports("avx2");
#else
        v = __builtin_cpu_supports("avx") && __builtin_cpu_supports("f16c");
#endif
        __atomic_store_n(&cached, v, __ATOMIC_RELAXED);
    }
    return v;
}
#endif

WIDEN_CLONES
static void widen_f16(float *restrict dst, const unsigned char *restrict p, int64_t n)
{
    for (int64_t i = 0; i < n; i++) {
        uint16_t h;
        memcpy(&h, p + 2 * i, 2);
        uint32_t em = (uint32_t)(h & 0x7fffu) << 13; /* exponent+mantissa, fp32 place */
        float f;
        memcpy(&f, &em, 4);
        f *= 0x1p112f; /* rebias 15 -> 127; exact, also for subnormals */
        uint32_t u;
        memcpy(&u, &f, 4);
        uint32_t special = 0u - (uint32_t)((h & 0x7c00u) == 0x7c00u); /* inf/NaN: all ones */
        u = (u & ~special) | ((em | 0x7f800000u) & special);
        u |= (uint32_t)(h & 0x8000u) << 16;
        memcpy(&dst[i], &u, 4);
    }
}

WIDEN_CLONES
static void widen_bf16(float *restrict dst, const unsigned char *restrict p, int64_t n)
{
    for (int64_t i = 0; i < n; i++) {
        uint16_t h;
        memcpy(&h, p + 2 * i, 2);
        uint32_t u = (uint32_t)h << 16;
        memcpy(&dst[i], &u, 4);
    }
}

void loom_cpu_widen(float *restrict dst, const void *restrict src, loom_dtype dt, int64_t n)
{
    switch (dt) {
    case LOOM_F32: memcpy(dst, src, (size_t)n * 4); break;
    case LOOM_F16:
#ifdef WIDEN_F16C
        if (have_f16c()) {
            widen_f16_f16c(dst, src, n);
            break;
        }
#endif
        widen_f16(dst, src, n);
        break;
    case LOOM_BF16: widen_bf16(dst, src, n); break;
    default: break;
    }
}
