/* Bulk widening of stored weights (fp32/fp16/bf16, any alignment) to fp32,
 * written so the compiler vectorizes it; every CPU op that reads weights goes
 * through here so the conversion is exact and identical everywhere. */
#ifndef LOOM_KERNELS_CPU_WIDEN_H
#define LOOM_KERNELS_CPU_WIDEN_H

#include <stdint.h>

#include "../../util/dtype.h"

/* dst (n) = src (n) widened from dt. src may sit at any byte address; dst is
 * fp32-aligned. Bit-identical to loom_f16_to_f32 / loom_bf16_to_f32 (as long
 * as the FPU is not in flush-to-zero mode: fp16 subnormals go through a
 * multiply). */
void loom_cpu_widen(float *restrict dst, const void *restrict src, loom_dtype dt, int64_t n);

/* Element i of a dt array at any alignment, widened (scalar; for biases). */
static inline float loom_cpu_load(const void *src, loom_dtype dt, int64_t i)
{
    const unsigned char *p = src;
    if (dt == LOOM_F32) {
        float f;
        memcpy(&f, p + 4 * i, 4);
        return f;
    }
    uint16_t h;
    memcpy(&h, p + 2 * i, 2);
    return dt == LOOM_F16 ? loom_f16_to_f32(h) : loom_bf16_to_f32(h);
}

#endif
