/* What the fused and one-kernel-step CUDA op tests share besides
 * op_check.h: fp16/bf16 values as uint16_t to and from float, and the
 * relative L2 distance of two act vectors with their bitwise difference
 * count. Header-only. */
#ifndef LOOM_TESTS_OPS_ACT_CHECK_H
#define LOOM_TESTS_OPS_ACT_CHECK_H

#include <math.h>
#include <stdint.h>

#include "../../util/dtype.h"

static inline uint16_t to_act(float f, loom_dtype dt) { return dt == LOOM_F16 ? loom_f32_to_f16(f) : loom_f32_to_bf16(f); }
static inline float from_act(uint16_t h, loom_dtype dt) { return dt == LOOM_F16 ? loom_f16_to_f32(h) : loom_bf16_to_f32(h); }

/* ‖got − ref‖ / ‖ref‖ over n act values (‖got − ref‖ when ref is 0);
 * *n_diff: how many differ bitwise. */
static inline double rel_l2_act(const uint16_t *got, const uint16_t *ref, loom_dtype dt, int64_t n, int64_t *n_diff)
{
    double num = 0, den = 0;
    int64_t diff = 0;
    for (int64_t i = 0; i < n; i++) {
        const double r = from_act(ref[i], dt), d = (double)from_act(got[i], dt) - r;
        num += d * d;
        den += r * r;
        diff += got[i] != ref[i];
    }
    *n_diff = diff;
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

#endif
