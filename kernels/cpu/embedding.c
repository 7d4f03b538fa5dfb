/* CPU embedding lookup: each token's row is widened straight from the stored
 * table; threads only for prefill-sized batches. */
#include "embedding.h"

#include <assert.h>

#include "widen.h"

void loom_cpu_embedding(float *out, const void *table, loom_dtype dt,
                        const int32_t *ids, int64_t n, int64_t dim)
{
    const unsigned char *t = table;
    const size_t row_bytes = loom_dtype_size(dt) * (size_t)dim;
#pragma omp parallel for schedule(static) if (n * dim >= (1 << 16))
    for (int64_t i = 0; i < n; i++) {
        assert(ids[i] >= 0);
        loom_cpu_widen(out + i * dim, t + (size_t)ids[i] * row_bytes, dt, dim);
    }
}
