/* The KV cache of one sequence, contiguous for now: per layer a
 * (max_seq, n_kv_heads, head_dim) block for K and one for V. The model reads
 * and writes it only through these accessors, so the paged pool (serving
 * issue) can take over behind the same calls. */
#ifndef LOOM_KV_KV_CACHE_H
#define LOOM_KV_KV_CACHE_H

#include <stdint.h>

#include "../util/status.h"

typedef struct loom_kv_cache {
    int64_t n_layers;
    int64_t max_seq;    /* positions the cache can hold */
    int64_t n_kv_heads;
    int64_t head_dim;
    int64_t len;        /* positions filled so far */
    float *data;        /* (n_layers, 2, max_seq, n_kv_heads, head_dim), one allocation */
} loom_kv_cache;

/* Allocates a cache. On error returns NULL and fills err (names the bytes). */
loom_kv_cache *loom_kv_cache_create(int64_t n_layers, int64_t max_seq, int64_t n_kv_heads,
                                    int64_t head_dim, loom_err *err);

/* Frees; accepts NULL. */
void loom_kv_cache_destroy(loom_kv_cache *kv);

/* Bytes a cache of this shape takes. */
int64_t loom_kv_cache_bytes(int64_t n_layers, int64_t max_seq, int64_t n_kv_heads, int64_t head_dim);

/* Row stride (floats) between consecutive positions. */
static inline int64_t loom_kv_stride(const loom_kv_cache *kv) { return kv->n_kv_heads * kv->head_dim; }

/* K rows of a layer, starting at position pos: (max_seq - pos, n_kv_heads, head_dim). */
static inline float *loom_kv_k(const loom_kv_cache *kv, int64_t layer, int64_t pos)
{
    return kv->data + ((layer * 2 + 0) * kv->max_seq + pos) * loom_kv_stride(kv);
}

/* V rows of a layer, starting at position pos. */
static inline float *loom_kv_v(const loom_kv_cache *kv, int64_t layer, int64_t pos)
{
    return kv->data + ((layer * 2 + 1) * kv->max_seq + pos) * loom_kv_stride(kv);
}

#endif
