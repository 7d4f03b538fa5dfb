/* Device helpers around the CUDA ops for the GPU model (see gpu_glue.cu).
 * All pointers are device pointers; calls are asynchronous on `stream` and
 * return 0 or a cudaError_t value. */
#ifndef LOOM_WORKER_GPU_GLUE_H
#define LOOM_WORKER_GPU_GLUE_H

#include <stdint.h>

#include "../util/dtype.h"

#ifdef __cplusplus
extern "C" {
#endif

/* dst[i] = (dst_dt) src[i] for n elements. */
int loom_gpu_cast(void *dst, loom_dtype dst_dt, const void *src, loom_dtype src_dt, int64_t n, void *stream);

/* dst (n_rows, dim) = src[rows[r], :] (rows on the device). */
int loom_gpu_gather_rows(void *dst, const void *src, loom_dtype dt, const int32_t *rows, int64_t n_rows, int64_t dim,
                         void *stream);

/* Logits of a vocab-parallel lm_head: src (tp, n_rows, vl) in dt, as
 * all-gathered in TP rank order; dst (n_rows, vocab) fp32, dst[s][v] =
 * src[v / vl][s][v % vl]. */
int loom_gpu_gather_vocab(float *dst, const void *src, loom_dtype dt, int64_t tp, int64_t n_rows, int64_t vl, int64_t vocab,
                          void *stream);

/* dst[i] = offset + scale * u(seed, i), u uniform in [-1, 1): deterministic
 * random weights for benchmarks. */
int loom_gpu_fill_random(void *dst, loom_dtype dt, int64_t n, float scale, float offset, uint64_t seed, void *stream);

#ifdef __cplusplus
}
#endif

#endif
