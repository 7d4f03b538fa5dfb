/* CPU RoPE as HF computes it: freqs = float(pos) * inv_freq in fp32, then
 * cos/sin in fp32 (emb = cat(freqs, freqs)), and
 *   q * cos + rotate_half(q) * sin,  rotate_half(q) = cat(-q2, q1). */
#include "rope.h"

#include <assert.h>
#include <math.h>

void loom_cpu_rope(float *x, const int32_t *pos, int64_t n, int64_t n_heads,
                   int64_t head_dim, const float *inv_freq)
{
    assert(head_dim % 2 == 0);
    const int64_t half = head_dim / 2;
#pragma omp parallel for schedule(static) if (n * n_heads * head_dim >= (1 << 15))
    for (int64_t i = 0; i < n; i++) {
        const float p = (float)pos[i];
        float *xt = x + i * n_heads * head_dim;
        for (int64_t d = 0; d < half; d++) {
            const float f = p * inv_freq[d];
            const float c = cosf(f), s = sinf(f);
            for (int64_t h = 0; h < n_heads; h++) { /* one angle, every head */
                float *xh = xt + h * head_dim;
                const float a = xh[d], b = xh[d + half];
                xh[d] = a * c - b * s;
                xh[d + half] = b * c + a * s;
            }
        }
    }
}
