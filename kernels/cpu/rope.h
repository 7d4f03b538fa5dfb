/* CPU rotary position embedding, Hugging Face rotate_half layout. */
#ifndef LOOM_KERNELS_CPU_ROPE_H
#define LOOM_KERNELS_CPU_ROPE_H

#include <stdint.h>

/* In place on x (n, n_heads, head_dim), token i at absolute position pos[i].
 * Element d < head_dim/2 pairs with d + head_dim/2, angle pos * inv_freq[d].
 * head_dim must be even. */
void loom_cpu_rope(float *x, const int32_t *pos, int64_t n, int64_t n_heads,
                   int64_t head_dim, const float *inv_freq);

#endif
