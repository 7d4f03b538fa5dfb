/* CPU matmul: y = x @ W^T (+ bias) with W in its stored dtype. Blocked over W
 * rows and tokens, multithreaded with OpenMP; see matmul.c for the scheme. */
#ifndef LOOM_KERNELS_CPU_MATMUL_H
#define LOOM_KERNELS_CPU_MATMUL_H

#include <stdint.h>

#include "../../util/dtype.h"

/* y (n, out_dim) = x (n, in_dim) @ W^T (+ bias).
 * W (out_dim, in_dim) and bias (out_dim, or NULL) in dtype wt, any alignment.
 * y must not alias x. Each output element is summed in the same order
 * whatever the thread count and whatever other tokens share the call, so
 * results do not depend on either. */
void loom_cpu_matmul(float *y, const float *x, const void *w, loom_dtype wt,
                     const void *bias, int64_t n, int64_t in_dim, int64_t out_dim);

/* Test hook: 0 makes later calls use the portable C micro-kernel even where
 * the CPU has AVX2+FMA+F16C; 1 (the default) lets them use it. */
void loom_cpu_matmul_allow_simd(int allow);

#endif
