/* Element type names, sizes and bulk conversion to fp32. */
#include "dtype.h"

#include <math.h>

size_t loom_dtype_size(loom_dtype dt)
{
    switch (dt) {
    case LOOM_F32: return 4;
    case LOOM_F16: return 2;
    case LOOM_BF16: return 2;
    case LOOM_F8E4M3: return 1;
    default: return 0;
    }
}

const char *loom_dtype_name(loom_dtype dt)
{
    switch (dt) {
    case LOOM_F32: return "fp32";
    case LOOM_F16: return "fp16";
    case LOOM_BF16: return "bf16";
    case LOOM_F8E4M3: return "fp8";
    default: return "?";
    }
}

int loom_dtype_from_safetensors(const char *name, loom_dtype *out)
{
    if (!strcmp(name, "F32")) { *out = LOOM_F32; return 0; }
    if (!strcmp(name, "F16")) { *out = LOOM_F16; return 0; }
    if (!strcmp(name, "BF16")) { *out = LOOM_BF16; return 0; }
    return -1;
}

uint16_t loom_f32_to_f16(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    uint32_t sign = (u >> 16) & 0x8000u;
    uint32_t absu = u & 0x7fffffffu;
    if (absu > 0x7f800000u) return (uint16_t)(sign | 0x7e00u);  /* NaN */
    if (absu >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u); /* overflow -> inf */
    if (absu < 0x38800000u) {                                   /* subnormal or zero */
        if (absu < 0x33000000u) return (uint16_t)sign;
        uint32_t e = absu >> 23;
        uint32_t man = (absu & 0x7fffffu) | 0x800000u;
        uint32_t shift = 126 - e; /* value / 2^-24 = man * 2^(e - 126) */
        uint32_t r = man >> shift;
        uint32_t rem = man & ((1u << shift) - 1u);
        uint32_t half = 1u << (shift - 1);
        if (rem > half || (rem == half && (r & 1u))) r++;
        return (uint16_t)(sign | r);
    }
    uint32_t r = absu - 0x38000000u; /* rebias exponent 127 -> 15 */
    uint32_t mant_low = r & 0x1fffu;
    r >>= 13;
    if (mant_low > 0x1000u || (mant_low == 0x1000u && (r & 1u))) r++;
    return (uint16_t)(sign | r);
}

float loom_e4m3_to_f32(uint8_t v)
{
    const int sign = v >> 7, exp = (v >> 3) & 0xf, man = v & 7;
    float f;
    if (exp == 0xf && man == 7) return NAN;
    if (exp == 0) f = ldexpf((float)man, -9);              /* subnormal: man * 2^-9 */
    else f = ldexpf((float)(8 + man), exp - 7 - 3);        /* (1 + man/8) * 2^(exp-7) */
    return sign ? -f : f;
}

uint8_t loom_f32_to_e4m3(float f)
{
    if (isnan(f)) return 0x7f;
    const uint8_t sign = signbit(f) ? 0x80 : 0;
    float a = fabsf(f);
    if (a >= 448.0f) return sign | 0x7e; /* saturate (infinities too) */
    /* the spacing of representable values around a: 2^(e-3) for a in
     * [2^e, 2^(e+1)), e >= -6; 2^-9 below 2^-6 (subnormals) */
    int e;
    frexpf(a, &e); /* a = m * 2^e, m in [0.5, 1): a in [2^(e-1), 2^e) */
    int ex = e - 1;
    if (ex < -6) ex = -6;
    const float q = ldexpf(a, 3 - ex);  /* a in units of the spacing: exact */
    float r = rintf(q);                  /* nearest, ties to even (default mode) */
    /* r in [0, 16]; r == 16 carries into the next binade */
    int n = (int)r;
    int E = ex + 7;                      /* biased exponent of the binade */
    if (a < 0x1p-6f) {                   /* subnormal binade: n in [0, 8] */
        if (n == 8) return sign | (1 << 3); /* rounds up to the smallest normal */
        return sign | (uint8_t)n;
    }
    if (n == 16) { n = 8; E++; }
    if (E > 15 || (E == 15 && n - 8 == 7)) return sign | 0x7e; /* past 448: saturate */
    return sign | (uint8_t)(E << 3) | (uint8_t)(n - 8);
}

void loom_dtype_to_f32(float *dst, const void *src, loom_dtype dt, size_t n)
{
    const unsigned char *p = src;
    switch (dt) {
    case LOOM_F32:
        memcpy(dst, src, n * 4);
        break;
    case LOOM_F16:
        for (size_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, p + 2 * i, 2);
            dst[i] = loom_f16_to_f32(h);
        }
        break;
    case LOOM_BF16:
        for (size_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, p + 2 * i, 2);
            dst[i] = loom_bf16_to_f32(h);
        }
        break;
    case LOOM_F8E4M3:
        for (size_t i = 0; i < n; i++) dst[i] = loom_e4m3_to_f32(p[i]);
        break;
    default:
        break;
    }
}
