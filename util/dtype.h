/* Element types of stored tensors and the scalar conversions between them.
 * Compute is fp32 on the CPU; weights stay in their stored type and are
 * widened on the fly with these helpers. */
#ifndef LOOM_UTIL_DTYPE_H
#define LOOM_UTIL_DTYPE_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

typedef enum loom_dtype {
    LOOM_F32 = 0,
    LOOM_F16,
    LOOM_BF16,
    LOOM_F8E4M3, /* OCP FP8 E4M3 ("E4M3FN": no infinities, max 448): KV cache only, not weights */
    LOOM_DTYPE_COUNT
} loom_dtype;

/* Bytes per element. */
size_t loom_dtype_size(loom_dtype dt);

/* "fp32" / "fp16" / "bf16" / "fp8". */
const char *loom_dtype_name(loom_dtype dt);

/* Parses a safetensors dtype string ("F32", "F16", "BF16").
 * Returns 0 and sets *out, or -1 if the name is not one loom supports. */
int loom_dtype_from_safetensors(const char *name, loom_dtype *out);

static inline float loom_bf16_to_f32(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline uint16_t loom_f32_to_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* NaN */
    u += 0x7fffu + ((u >> 16) & 1u); /* round to nearest even */
    return (uint16_t)(u >> 16);
}

static inline float loom_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t man = h & 0x3ffu;
    uint32_t u;
    if (exp == 0) {
        if (man == 0) {
            u = sign;
        } else { /* subnormal: normalise */
            int e = -1;
            do { e++; man <<= 1; } while (!(man & 0x400u));
            u = sign | ((uint32_t)(127 - 15 - e) << 23) | ((man & 0x3ffu) << 13);
        }
    } else if (exp == 31) {
        u = sign | 0x7f800000u | (man << 13);
    } else {
        u = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* Round-to-nearest-even fp32 -> fp16 (overflow to inf). */
uint16_t loom_f32_to_f16(float f);

/* OCP FP8 E4M3 (the encoding of CUDA's __nv_fp8_e4m3): 1 sign, 4 exponent
 * (bias 7), 3 mantissa bits; 0x7f/0xff are NaN, there is no infinity; the
 * largest finite value is 448, the smallest subnormal 2^-9. */
float loom_e4m3_to_f32(uint8_t v);

/* fp32 -> E4M3, round to nearest even, saturating: finite values beyond 448
 * (and infinities) become +-448, NaN becomes 0x7f (as CUDA's
 * __nv_cvt_float_to_fp8(x, __NV_SATFINITE, __NV_E4M3)). */
uint8_t loom_f32_to_e4m3(float f);

/* Rounds x through E4M3 and back (the value an FP8 KV cache stores). */
static inline float loom_round_e4m3(float x) { return loom_e4m3_to_f32(loom_f32_to_e4m3(x)); }

/* Widens n elements of type dt at src (any alignment) into dst. */
void loom_dtype_to_f32(float *dst, const void *src, loom_dtype dt, size_t n);

#endif
