/* What the elementwise, sampling and fused CUDA op tests share besides
 * cuda_test.h: the failure count, a seeded xorshift generator (rnd in
 * [-1, 1), rndu in [0, n)), one verdict line per check, and NaN-poisoning of
 * device buffers. Header-only: each test is its own program and seeds rng. */
#ifndef LOOM_TESTS_OPS_OP_CHECK_H
#define LOOM_TESTS_OPS_OP_CHECK_H

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>

#include "cuda_test.h"

static int failures;

static uint64_t rng;
static inline float rnd(void) /* uniform in [-1, 1) */
{
    rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
    return (float)(uint32_t)(rng >> 32) / 4294967296.0f * 2.0f - 1.0f;
}
static inline uint32_t rndu(uint32_t n) { rnd(); return (uint32_t)((rng >> 32) % n); }

/* Prints "ok" or "FAIL" and the message; counts a failure. */
static inline void verdict(int ok, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static inline void verdict(int ok, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    printf("%s ", ok ? "ok  " : "FAIL");
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
    fflush(stdout);
    failures += !ok;
}

static inline void poison(void *d, size_t bytes) { CUDA_CHECK(cudaMemset(d, 0xff, bytes)); } /* NaN in fp32, fp16 and bf16 */

#endif
