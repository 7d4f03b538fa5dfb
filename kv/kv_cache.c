/* Contiguous per-sequence KV cache (see kv_cache.h). */
#include "kv_cache.h"

#include <stdlib.h>

int64_t loom_kv_cache_bytes(int64_t n_layers, int64_t max_seq, int64_t n_kv_heads, int64_t head_dim)
{
    return n_layers * 2 * max_seq * n_kv_heads * head_dim * (int64_t)sizeof(float);
}

loom_kv_cache *loom_kv_cache_create(int64_t n_layers, int64_t max_seq, int64_t n_kv_heads,
                                    int64_t head_dim, loom_err *err)
{
    loom_kv_cache *kv = calloc(1, sizeof *kv);
    int64_t bytes = loom_kv_cache_bytes(n_layers, max_seq, n_kv_heads, head_dim);
    if (!kv || bytes <= 0) goto fail;
    kv->data = calloc(1, (size_t)bytes);
    if (!kv->data) goto fail;
    kv->n_layers = n_layers;
    kv->max_seq = max_seq;
    kv->n_kv_heads = n_kv_heads;
    kv->head_dim = head_dim;
    kv->len = 0;
    return kv;
fail:
    loom_err_set(err, LOOM_ENOMEM, "cannot allocate a KV cache of %lld bytes (%lld positions); lower --max-seq-len",
                 (long long)bytes, (long long)max_seq);
    loom_kv_cache_destroy(kv);
    return NULL;
}

void loom_kv_cache_destroy(loom_kv_cache *kv)
{
    if (!kv) return;
    free(kv->data);
    free(kv);
}
