/* Unit test of the FP8 E4M3 conversions in util/dtype.c against the OCP FP8
 * spec (E4M3: bias 7, no infinities, S.1111.111 NaN, max 448) rather than
 * against our own outputs: every code's value from the spec's formula, named
 * codes, round trips, ties to even at every midpoint, saturation, underflow,
 * and encode = brute-force nearest (ties to the even mantissa) over all fp16
 * inputs and a sweep of fp32 ones. */
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "util/dtype.h"
#include "../common/expect.h"

/* The spec's value of code c in double, by its own formula (no ldexp). */
static double spec_value(unsigned c)
{
    const unsigned s = c >> 7, e = (c >> 3) & 0xf, m = c & 7;
    double p = 1; /* 2^(e - 7), or 2^-6 for subnormals */
    for (int i = 0; i < (e ? (int)e : 1); i++) p *= 2;
    p /= 128;
    const double v = e ? (1 + m / 8.0) * p : (m / 8.0) * p;
    return s ? -v : v;
}

static int is_nan_code(unsigned c) { return (c & 0x7f) == 0x7f; }

static double spec[256]; /* spec_value of every code (NaN codes unused) */

static float f32_bits(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static uint32_t bits_f32(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

/* The finite code of x's sign nearest to x (finite), ties to the even
 * mantissa: brute force over the 127 finite codes of that sign. */
static unsigned nearest_code(float x)
{
    const unsigned sign = signbit(x) ? 0x80 : 0;
    unsigned best = sign;
    double best_d = INFINITY;
    for (unsigned m = 0; m <= 0x7e; m++) {
        const unsigned c = sign | m;
        const double d = fabs((double)x - spec[c]);
        if (d < best_d || (d == best_d && (c & 1) == 0)) best = c, best_d = d;
    }
    return best;
}

static void test_decode(void)
{
    for (unsigned c = 0; c < 256; c++) {
        const float f = loom_e4m3_to_f32((uint8_t)c);
        if (is_nan_code(c)) {
            EXPECT(isnan(f), "0x%02x decodes to NaN (got %g)", c, f);
            continue;
        }
        EXPECT((double)f == spec_value(c), "0x%02x decodes to %.9g (spec %.9g)", c, f, spec_value(c));
        EXPECT(!signbit(f) == !(c & 0x80), "0x%02x: the sign bit", c);
    }
    const struct { uint8_t c; float v; } named[] = {
        {0x00, 0.0f},    {0x01, 0x1p-9f}, {0x07, 0x1.cp-7f}, /* min subnormal, max subnormal 0.875 * 2^-6 */
        {0x08, 0x1p-6f}, {0x38, 1.0f},    {0x40, 2.0f},      /* min normal */
        {0x77, 240.0f},  {0x78, 256.0f},  {0x7d, 416.0f},    {0x7e, 448.0f}, /* max normal */
        {0xb8, -1.0f},   {0xfe, -448.0f}, {0x81, -0x1p-9f},
    };
    for (size_t i = 0; i < sizeof named / sizeof named[0]; i++)
        EXPECT(loom_e4m3_to_f32(named[i].c) == named[i].v, "0x%02x is %g (got %g)", named[i].c, named[i].v, loom_e4m3_to_f32(named[i].c));
    EXPECT(isnan(loom_e4m3_to_f32(0x7f)) && isnan(loom_e4m3_to_f32(0xff)), "0x7f and 0xff are NaN");
    EXPECT(loom_e4m3_to_f32(0x80) == 0.0f && signbit(loom_e4m3_to_f32(0x80)), "0x80 is -0");
    EXPECT(!signbit(loom_e4m3_to_f32(0x00)), "0x00 is +0");
    for (unsigned c = 1; c <= 0x7e; c++)
        EXPECT(loom_e4m3_to_f32((uint8_t)c) > loom_e4m3_to_f32((uint8_t)(c - 1)), "codes increase: 0x%02x", c);
    float out[3];
    const uint8_t src[3] = {0x38, 0xfe, 0x01};
    loom_dtype_to_f32(out, src, LOOM_F8E4M3, 3);
    EXPECT(out[0] == 1.0f && out[1] == -448.0f && out[2] == 0x1p-9f, "bulk widen of fp8");
    EXPECT(loom_dtype_size(LOOM_F8E4M3) == 1 && !strcmp(loom_dtype_name(LOOM_F8E4M3), "fp8"), "fp8 size and name");
}

static void test_round_trip(void)
{
    for (unsigned c = 0; c < 256; c++) {
        if (is_nan_code(c)) continue;
        const float f = loom_e4m3_to_f32((uint8_t)c);
        EXPECT(loom_f32_to_e4m3(f) == c, "0x%02x -> %g -> 0x%02x", c, f, loom_f32_to_e4m3(f));
        EXPECT(loom_round_e4m3(f) == f && !signbit(loom_round_e4m3(f)) == !signbit(f), "round_e4m3 keeps 0x%02x", c);
    }
    EXPECT(loom_f32_to_e4m3(0.0f) == 0x00, "+0 encodes to 0x00");
    EXPECT(loom_f32_to_e4m3(-0.0f) == 0x80, "-0 encodes to 0x80 (sign kept, as CUDA's cvt)");
    EXPECT(signbit(loom_round_e4m3(-0.0f)) && loom_round_e4m3(-0.0f) == 0.0f, "-0 rounds to -0");
}

static void test_midpoints(void)
{
    /* between adjacent finite codes c, c+1 of each sign: the midpoint goes to
     * the even code (mantissa LSB = code LSB), one fp32 ulp off it to the near side */
    for (unsigned sign = 0; sign <= 0x80; sign += 0x80)
        for (unsigned m = 0; m < 0x7e; m++) {
            const unsigned lo = sign | m, hi = sign | (m + 1);
            const float a = loom_e4m3_to_f32((uint8_t)lo), b = loom_e4m3_to_f32((uint8_t)hi);
            const float mid = (float)(((double)a + (double)b) / 2);
            EXPECT((double)mid == ((double)a + (double)b) / 2, "midpoint 0x%02x/0x%02x exact in fp32", lo, hi);
            const unsigned even = (lo & 1) ? hi : lo;
            EXPECT(loom_f32_to_e4m3(mid) == even, "midpoint %.9g of 0x%02x/0x%02x -> 0x%02x (got 0x%02x)", mid, lo, hi, even,
                   loom_f32_to_e4m3(mid));
            const float toward_hi = nextafterf(mid, b), toward_lo = nextafterf(mid, a);
            EXPECT(loom_f32_to_e4m3(toward_hi) == hi, "%.9g just past the midpoint -> 0x%02x (got 0x%02x)", toward_hi, hi, loom_f32_to_e4m3(toward_hi));
            EXPECT(loom_f32_to_e4m3(toward_lo) == lo, "%.9g just short of the midpoint -> 0x%02x (got 0x%02x)", toward_lo, lo,
                   loom_f32_to_e4m3(toward_lo));
        }
    EXPECT(loom_f32_to_e4m3(0x1p-10f) == 0x00 && loom_f32_to_e4m3(-0x1p-10f) == 0x80, "2^-10 (half the smallest subnormal) ties to 0");
    EXPECT(loom_f32_to_e4m3(0x1.8p-9f) == 0x02, "1.5 * 2^-9 ties to 2 * 2^-9");
    EXPECT(loom_f32_to_e4m3(0x1.ep-7f) == 0x08, "7.5 * 2^-9 (largest subnormal / smallest normal) ties to the normal");
    EXPECT(loom_f32_to_e4m3(1.0625f) == 0x38 && loom_f32_to_e4m3(1.1875f) == 0x3a, "ties at 1 + 1/16 and 1 + 3/16 go to even");
    EXPECT(loom_f32_to_e4m3(432.0f) == 0x7e, "432 (between 416 and 448) ties to 448");
}

static void test_saturation_underflow(void)
{
    const float big[] = {448.0f, nextafterf(448.0f, INFINITY), 449.0f, 463.99f, 464.0f, 465.0f, 480.0f, 1e6f, FLT_MAX, INFINITY};
    for (size_t i = 0; i < sizeof big / sizeof big[0]; i++) {
        EXPECT(loom_f32_to_e4m3(big[i]) == 0x7e, "%g saturates to 0x7e (got 0x%02x)", big[i], loom_f32_to_e4m3(big[i]));
        EXPECT(loom_f32_to_e4m3(-big[i]) == 0xfe, "%g saturates to 0xfe (got 0x%02x)", -big[i], loom_f32_to_e4m3(-big[i]));
    }
    const float tiny[] = {0x1p-10f, nextafterf(0x1p-10f, 0.0f), 0x1p-11f, 0x1p-20f, 1e-30f, FLT_MIN, 0x1p-149f};
    for (size_t i = 0; i < sizeof tiny / sizeof tiny[0]; i++) {
        EXPECT(loom_f32_to_e4m3(tiny[i]) == 0x00, "%g (<= 2^-10) goes to +0 (got 0x%02x)", tiny[i], loom_f32_to_e4m3(tiny[i]));
        EXPECT(loom_f32_to_e4m3(-tiny[i]) == 0x80, "%g goes to -0 (got 0x%02x)", -tiny[i], loom_f32_to_e4m3(-tiny[i]));
    }
    EXPECT(loom_f32_to_e4m3(nextafterf(0x1p-10f, 1.0f)) == 0x01, "just above 2^-10 -> the smallest subnormal");
    EXPECT(loom_f32_to_e4m3(NAN) == 0x7f && loom_f32_to_e4m3(-NAN) == 0x7f, "NaN -> 0x7f (either sign, as CUDA's canonical NaN)");
    EXPECT(isnan(loom_round_e4m3(NAN)), "NaN rounds to NaN");
}

/* Encode equals the brute-force nearest code for x (finite or not). */
static int encode_ok(float x, unsigned *want)
{
    if (isnan(x)) *want = 0x7f;
    else if (isinf(x)) *want = x > 0 ? 0x7e : 0xfe;
    else *want = nearest_code(x);
    return loom_f32_to_e4m3(x) == *want;
}

static void test_exhaustive_f16(void)
{
    int bad = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        const float x = loom_f16_to_f32((uint16_t)h);
        unsigned want;
        if (!encode_ok(x, &want) && bad++ < 10)
            EXPECT(0, "fp16 0x%04x = %.9g -> 0x%02x, nearest is 0x%02x", h, x, loom_f32_to_e4m3(x), want);
    }
    EXPECT(bad == 0, "every fp16 input encodes to its nearest E4M3 code (%d did not)", bad);
}

/* fp32 inputs: every 251st bit pattern (both signs, NaN and inf included),
 * checked against a nearest-code search by bisection over the sorted codes. */
static void test_sweep_f32(void)
{
    float pos[127]; /* values of codes 0x00..0x7e, increasing */
    for (unsigned c = 0; c <= 0x7e; c++) pos[c] = (float)spec[c];
    int bad = 0;
    long n = 0;
    for (uint64_t u = 0; u < (1ull << 32); u += 251, n++) {
        const float x = f32_bits((uint32_t)u);
        const uint8_t got = loom_f32_to_e4m3(x);
        unsigned want;
        const float a = fabsf(x);
        if (isnan(x)) want = 0x7f;
        else if (a >= 448.0f) want = 0x7e;
        else {
            unsigned lo = 0, hi = 0x7e; /* pos[lo] <= a < pos[hi] */
            while (hi - lo > 1) {
                const unsigned mid = (lo + hi) / 2;
                if (pos[mid] <= a) lo = mid;
                else hi = mid;
            }
            const double dl = (double)a - pos[lo], dh = (double)pos[hi] - a;
            want = dl < dh ? lo : dh < dl ? hi : (lo & 1) ? hi : lo;
        }
        if (!isnan(x) && signbit(x)) want |= 0x80;
        if (got != want && bad++ < 10) EXPECT(0, "fp32 0x%08x = %.9g -> 0x%02x, nearest is 0x%02x", bits_f32(x), x, got, want);
    }
    EXPECT(bad == 0, "%ld swept fp32 inputs encode to their nearest code (%d did not)", n, bad);
}

int main(void)
{
    for (unsigned c = 0; c < 256; c++) spec[c] = spec_value(c);
    test_decode();
    test_round_trip();
    test_midpoints();
    test_saturation_underflow();
    test_exhaustive_f16();
    test_sweep_f32();
    printf("%d checks, %s\n", checks, failures ? "FAIL" : "ok");
    return failures ? 1 : 0;
}
