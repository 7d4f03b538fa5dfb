/* CPU elementwise ops. Memory-bound; threads only above a size where the
 * parallel region pays for itself. */
#include "elementwise.h"

#include <math.h>

#define EW_PAR_MIN (1 << 17)

void loom_cpu_swiglu(float *out, const float *gate, const float *up, int64_t n)
{
    /* no simd: expf has no vector form without -ffast-math */
#pragma omp parallel for schedule(static) if (n >= EW_PAR_MIN)
    for (int64_t i = 0; i < n; i++) {
        const float g = gate[i];
        out[i] = g / (1.0f + expf(-g)) * up[i]; /* HF: act_fn(gate) * up */
    }
}

void loom_cpu_add(float *y, const float *x, int64_t n)
{
#pragma omp parallel for simd schedule(static) if (n >= EW_PAR_MIN)
    for (int64_t i = 0; i < n; i++) y[i] += x[i];
}
