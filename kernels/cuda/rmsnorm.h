/* CUDA RMSNorm: the GPU twin of kernels/cpu/rmsnorm.c, with the same argument
 * order; activations may be fp32, fp16 or bf16 (accumulation is fp32). */
#ifndef LOOM_KERNELS_CUDA_RMSNORM_H
#define LOOM_KERNELS_CUDA_RMSNORM_H

#include <stdint.h>

#include "../../util/dtype.h"

#ifdef __cplusplus
extern "C" {
#endif

/* out (n, dim) = (x * rsqrt(mean(x^2) + eps)) * w, per row, all device
 * pointers. x and out are in dtype act_dt, w (dim) in dtype w_dt; each pointer
 * aligned to its element size. out may alias x. Launched on `stream` (a
 * cudaStream_t; NULL for the default stream), asynchronously.
 * Returns 0 (cudaSuccess), or a cudaError_t value: cudaErrorInvalidValue
 * (1) for a bad dtype or a negative size, else the launch error. */
int loom_cuda_rmsnorm(void *out, const void *x, loom_dtype act_dt,
                      const void *w, loom_dtype w_dt,
                      int64_t n, int64_t dim, float eps, void *stream);

#ifdef __cplusplus
}
#endif

#endif
