/* CPU RMSNorm, Hugging Face LlamaRMSNorm semantics in fp32. */
#ifndef LOOM_KERNELS_CPU_RMSNORM_H
#define LOOM_KERNELS_CPU_RMSNORM_H

#include <stdint.h>

#include "../../util/dtype.h"

/* out (n, dim) = (x * rsqrt(mean(x^2) + eps)) * w, per row; w (dim) in dtype
 * dt, any alignment. out may alias x. */
void loom_cpu_rmsnorm(float *out, const float *x, const void *w, loom_dtype dt,
                      int64_t n, int64_t dim, float eps);

#endif
