/* The CPU KV cache, paged: one pool of fixed-size blocks per worker and, per
 * sequence, a view that maps positions to blocks through a block table (the
 * layout the coordinator's block manager hands out). A standalone cache is a
 * view over its own pool of one block of max_seq tokens, which is exactly the
 * old contiguous layout. The model reads and writes K/V only through the row
 * accessors below and hands the pool's layer bases to ops->attention_paged. */
#ifndef LOOM_KV_KV_CACHE_H
#define LOOM_KV_KV_CACHE_H

#include <stdint.h>

#include "../util/status.h"

/* One worker's physical KV pool: fixed-size blocks for its layers and kv heads. */
typedef struct loom_kv_pool {
    int64_t n_layers;
    int64_t n_blocks;
    int64_t tokens_per_block; /* B: positions per block */
    int64_t n_kv_heads;
    int64_t head_dim;
    float *data; /* (n_layers, 2, n_blocks, tokens_per_block, n_kv_heads, head_dim), one allocation */
} loom_kv_pool;

/* Allocates a zeroed pool. Every size must be >= 1. On error returns NULL and
 * fills err (the message names the bytes and the blocks). */
loom_kv_pool *loom_kv_pool_create(int64_t n_layers, int64_t n_blocks, int64_t tokens_per_block,
                                  int64_t n_kv_heads, int64_t head_dim, loom_err *err);

/* Frees; accepts NULL. Views bound to the pool must not be used afterwards. */
void loom_kv_pool_destroy(loom_kv_pool *p);

/* Bytes a pool of this shape takes; -1 if a size is < 1 or the product
 * overflows int64_t. */
int64_t loom_kv_pool_bytes(int64_t n_layers, int64_t n_blocks, int64_t tokens_per_block,
                           int64_t n_kv_heads, int64_t head_dim);

/* Floats per position (one K or V row of every kv head). */
static inline int64_t loom_kv_pool_row(const loom_kv_pool *p) { return p->n_kv_heads * p->head_dim; }

/* Floats per block of one layer's K (or V): tokens_per_block rows. */
static inline int64_t loom_kv_pool_block_stride(const loom_kv_pool *p)
{
    return p->tokens_per_block * loom_kv_pool_row(p);
}

/* Block 0 of a layer's K: (n_blocks, tokens_per_block, n_kv_heads, head_dim). */
static inline float *loom_kv_pool_k(const loom_kv_pool *p, int64_t layer)
{
    return p->data + (layer * 2 + 0) * p->n_blocks * loom_kv_pool_block_stride(p);
}

/* Block 0 of a layer's V. */
static inline float *loom_kv_pool_v(const loom_kv_pool *p, int64_t layer)
{
    return p->data + (layer * 2 + 1) * p->n_blocks * loom_kv_pool_block_stride(p);
}

/* One sequence's cache: a block table over a pool. */
typedef struct loom_kv_cache {
    int64_t n_layers;       /* = pool->n_layers */
    int64_t n_kv_heads;     /* = pool->n_kv_heads */
    int64_t head_dim;       /* = pool->head_dim */
    int64_t max_seq;        /* positions the table covers: n_table * tokens_per_block */
    int64_t len;            /* positions filled so far */
    loom_kv_pool *pool;
    const int32_t *table;   /* (n_table) block ids: positions [i*B, (i+1)*B) live in block table[i] */
    int64_t n_table;
    loom_kv_pool *own_pool; /* standalone caches own a one-block pool; NULL for views */
    int32_t own_table[1];   /* {0}: the standalone cache's table */
} loom_kv_cache;

/* A standalone cache for one sequence: its own pool of one block of max_seq
 * tokens (any max_seq >= 1). On error returns NULL and fills err (names the
 * bytes). */
loom_kv_cache *loom_kv_cache_create(int64_t n_layers, int64_t max_seq, int64_t n_kv_heads,
                                    int64_t head_dim, loom_err *err);

/* Frees a cache from loom_kv_cache_create (and its pool); accepts NULL. Not
 * for views made by loom_kv_cache_bind: their storage is the caller's. */
void loom_kv_cache_destroy(loom_kv_cache *kv);

/* Bytes a standalone cache of this shape takes (-1 as loom_kv_pool_bytes). */
int64_t loom_kv_cache_bytes(int64_t n_layers, int64_t max_seq, int64_t n_kv_heads, int64_t head_dim);

/* Makes kv a view of pool: position p lives in block table[p / B], slot p % B
 * (B = pool->tokens_per_block); max_seq becomes n_table * B and len the
 * positions already filled. kv must be zero-initialised or a previous view
 * (never a cache from loom_kv_cache_create); rebinding allocates nothing and
 * keeps no state from the previous binding. The table is borrowed, not
 * copied: it must stay valid and unchanged while kv is used. The caller has
 * validated 0 <= table[i] < pool->n_blocks (not checked again here) and
 * 0 <= len <= n_table * B (asserted). */
void loom_kv_cache_bind(loom_kv_cache *kv, loom_kv_pool *pool, const int32_t *table, int64_t n_table,
                        int64_t len);

/* Floats per position (one K or V row of every kv head). */
static inline int64_t loom_kv_stride(const loom_kv_cache *kv) { return kv->n_kv_heads * kv->head_dim; }

/* K row (n_kv_heads, head_dim) of a layer at position pos < max_seq. Rows
 * pos .. the end of pos's block are contiguous, the next block is not. */
static inline float *loom_kv_k_row(const loom_kv_cache *kv, int64_t layer, int64_t pos)
{
    const int64_t B = kv->pool->tokens_per_block;
    return loom_kv_pool_k(kv->pool, layer) + ((int64_t)kv->table[pos / B] * B + pos % B) * loom_kv_stride(kv);
}

/* V row of a layer at position pos < max_seq (as loom_kv_k_row). */
static inline float *loom_kv_v_row(const loom_kv_cache *kv, int64_t layer, int64_t pos)
{
    const int64_t B = kv->pool->tokens_per_block;
    return loom_kv_pool_v(kv->pool, layer) + ((int64_t)kv->table[pos / B] * B + pos % B) * loom_kv_stride(kv);
}

#endif
