/* The paged KV pool and per-sequence views (see kv_cache.h). A standalone
 * cache is a view with its own one-block pool, so callers that want one
 * contiguous cache per sequence keep working unchanged. */
#include "kv_cache.h"

#include <assert.h>
#include <stdint.h>
#include <stdlib.h>

int64_t loom_kv_pool_bytes(int64_t n_layers, int64_t n_blocks, int64_t tokens_per_block,
                           int64_t n_kv_heads, int64_t head_dim)
{
    const int64_t dims[] = {n_layers, 2, n_blocks, tokens_per_block, n_kv_heads, head_dim};
    int64_t bytes = (int64_t)sizeof(float);
    for (size_t i = 0; i < sizeof dims / sizeof dims[0]; i++)
        if (dims[i] < 1 || __builtin_mul_overflow(bytes, dims[i], &bytes)) return -1;
    return bytes;
}

loom_kv_pool *loom_kv_pool_create(int64_t n_layers, int64_t n_blocks, int64_t tokens_per_block,
                                  int64_t n_kv_heads, int64_t head_dim, loom_err *err)
{
    const int64_t bytes = loom_kv_pool_bytes(n_layers, n_blocks, tokens_per_block, n_kv_heads, head_dim);
    if (bytes < 0 || (uint64_t)bytes > SIZE_MAX) {
        loom_err_set(err, LOOM_EINVAL,
                     "KV pool of %lld layers x %lld blocks x %lld tokens x %lld kv heads x %lld head_dim is empty or too large",
                     (long long)n_layers, (long long)n_blocks, (long long)tokens_per_block, (long long)n_kv_heads,
                     (long long)head_dim);
        return NULL;
    }
    loom_kv_pool *p = calloc(1, sizeof *p);
    if (!p) goto fail;
    p->data = calloc(1, (size_t)bytes);
    if (!p->data) goto fail;
    p->n_layers = n_layers;
    p->n_blocks = n_blocks;
    p->tokens_per_block = tokens_per_block;
    p->n_kv_heads = n_kv_heads;
    p->head_dim = head_dim;
    return p;
fail:
    loom_err_set(err, LOOM_ENOMEM, "cannot allocate a KV pool of %lld bytes (%lld blocks of %lld tokens)",
                 (long long)bytes, (long long)n_blocks, (long long)tokens_per_block);
    loom_kv_pool_destroy(p);
    return NULL;
}

void loom_kv_pool_destroy(loom_kv_pool *p)
{
    if (!p) return;
    free(p->data);
    free(p);
}

int64_t loom_kv_cache_bytes(int64_t n_layers, int64_t max_seq, int64_t n_kv_heads, int64_t head_dim)
{
    return loom_kv_pool_bytes(n_layers, 1, max_seq, n_kv_heads, head_dim);
}

void loom_kv_cache_bind(loom_kv_cache *kv, loom_kv_pool *pool, const int32_t *table, int64_t n_table,
                        int64_t len)
{
    assert(kv && pool && !kv->own_pool);
    assert(n_table >= 0 && (table || n_table == 0));
    assert(len >= 0 && len <= n_table * pool->tokens_per_block);
    /* table entries: validated by the caller (the serving worker checks every plan), not again per step */
    kv->n_layers = pool->n_layers;
    kv->n_kv_heads = pool->n_kv_heads;
    kv->head_dim = pool->head_dim;
    kv->max_seq = n_table * pool->tokens_per_block;
    kv->len = len;
    kv->pool = pool;
    kv->table = table;
    kv->n_table = n_table;
}

loom_kv_cache *loom_kv_cache_create(int64_t n_layers, int64_t max_seq, int64_t n_kv_heads,
                                    int64_t head_dim, loom_err *err)
{
    const int64_t bytes = loom_kv_cache_bytes(n_layers, max_seq, n_kv_heads, head_dim);
    if (bytes < 0 || (uint64_t)bytes > SIZE_MAX) {
        loom_err_set(err, LOOM_EINVAL, "a KV cache of %lld positions (%lld layers, %lld kv heads x %lld) is empty or too large",
                     (long long)max_seq, (long long)n_layers, (long long)n_kv_heads, (long long)head_dim);
        return NULL;
    }
    loom_kv_cache *kv = calloc(1, sizeof *kv);
    loom_kv_pool *pool = kv ? loom_kv_pool_create(n_layers, 1, max_seq, n_kv_heads, head_dim, NULL) : NULL;
    if (!pool) goto fail;
    kv->own_table[0] = 0;
    loom_kv_cache_bind(kv, pool, kv->own_table, 1, 0);
    kv->own_pool = pool; /* after bind, which only takes non-owning structs */
    return kv;
fail:
    loom_err_set(err, LOOM_ENOMEM, "cannot allocate a KV cache of %lld bytes (%lld positions); lower --max-seq-len",
                 (long long)bytes, (long long)max_seq);
    free(kv);
    return NULL;
}

void loom_kv_cache_destroy(loom_kv_cache *kv)
{
    if (!kv) return;
    loom_kv_pool_destroy(kv->own_pool);
    free(kv);
}
