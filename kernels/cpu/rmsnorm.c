/* CPU RMSNorm. Matches HF LlamaRMSNorm in fp32:
 *   variance = x.pow(2).mean(-1); x = x * rsqrt(variance + eps); weight * x
 * The sum of squares is vectorized (8+ lanes), close to torch's cascade sum. */
#include "rmsnorm.h"

#include <math.h>

#include "widen.h"

enum { RMS_CHUNK = 256 }; /* weights widened this many at a time, on the stack */

void loom_cpu_rmsnorm(float *out, const float *x, const void *w, loom_dtype dt,
                      int64_t n, int64_t dim, float eps)
{
#pragma omp parallel for schedule(static) if (n * dim >= (1 << 16))
    for (int64_t i = 0; i < n; i++) {
        const float *xr = x + i * dim;
        float *yr = out + i * dim;
        float ss = 0.0f;
#pragma omp simd reduction(+ : ss)
        for (int64_t j = 0; j < dim; j++) ss += xr[j] * xr[j];
        const float r = 1.0f / sqrtf(ss / (float)dim + eps);
        const unsigned char *wb = w;
        for (int64_t j0 = 0; j0 < dim; j0 += RMS_CHUNK) {
            float wf[RMS_CHUNK];
            int64_t m = dim - j0 < RMS_CHUNK ? dim - j0 : RMS_CHUNK;
            loom_cpu_widen(wf, wb + (size_t)j0 * loom_dtype_size(dt), dt, m);
#pragma omp simd
            for (int64_t j = 0; j < m; j++) yr[j0 + j] = wf[j] * (xr[j0 + j] * r);
        }
    }
}
