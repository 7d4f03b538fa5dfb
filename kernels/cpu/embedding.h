/* CPU embedding lookup: rows of a (vocab, dim) table in its stored dtype,
 * widened to fp32. */
#ifndef LOOM_KERNELS_CPU_EMBEDDING_H
#define LOOM_KERNELS_CPU_EMBEDDING_H

#include <stdint.h>

#include "../../util/dtype.h"

/* out (n, dim) = table[ids[i], :]; table (vocab, dim) in dtype dt, any
 * alignment. Caller guarantees 0 <= ids[i] < vocab. */
void loom_cpu_embedding(float *out, const void *table, loom_dtype dt,
                        const int32_t *ids, int64_t n, int64_t dim);

#endif
