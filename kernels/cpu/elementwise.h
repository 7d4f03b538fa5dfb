/* CPU elementwise ops: the SwiGLU gate and the residual add. */
#ifndef LOOM_KERNELS_CPU_ELEMENTWISE_H
#define LOOM_KERNELS_CPU_ELEMENTWISE_H

#include <stdint.h>

/* out (n) = silu(gate) * up, silu(x) = x / (1 + exp(-x)). out may alias gate
 * or up. */
void loom_cpu_swiglu(float *out, const float *gate, const float *up, int64_t n);

/* y (n) += x (n). */
void loom_cpu_add(float *y, const float *x, int64_t n);

#endif
