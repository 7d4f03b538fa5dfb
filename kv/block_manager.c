/* The coordinator's KV block manager (see block_manager.h): per-block arrays for
 * refcounts, cache flags and an intrusive LRU list; a free stack; an open-addressing
 * index from chain hash to cached block; an open-addressing map from sequence id to
 * sequence. Everything pool-sized is allocated once at create. */
#include "block_manager.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#define NIL (-1)

typedef struct bm_seq {
    int64_t id;
    uint64_t salt;
    int32_t *table;       /* (cap) block indices; first n_blocks valid */
    uint64_t *hashes;     /* (cap) chain hash of each full block; first n_tokens/tpb valid */
    int64_t n_blocks;     /* entries in table */
    int64_t cap;          /* capacity of table and hashes */
    int64_t n_tokens;     /* tokens held */
    int64_t n_committed;  /* leading full blocks already offered to the cache */
    int32_t partial[];    /* (tokens_per_block) ids of the last, incomplete block */
} bm_seq;

struct loom_block_manager {
    int64_t n_blocks;
    int64_t tpb;          /* tokens per block */
    bool reuse;

    int32_t *refcnt;      /* (n_blocks) owners of each block */
    uint64_t *hash;       /* (n_blocks) chain hash, valid while cached[b] */
    uint8_t *cached;      /* (n_blocks) 1 if registered in the cache index */
    int32_t *lru_prev;    /* (n_blocks) LRU links, valid for unreferenced cached blocks */
    int32_t *lru_next;
    int32_t lru_head;     /* least recently used: evicted first */
    int32_t lru_tail;     /* most recently used */
    int64_t n_lru;

    int32_t *free_stack;  /* (n_blocks) free blocks; top is free_stack[n_free-1] */
    int64_t n_free;
    int64_t n_used;       /* blocks with refcnt > 0 */
    int64_t n_cached;     /* entries in the cache index */

    int32_t *cidx;        /* (cidx_cap) cache index slots: block or NIL; key hash[block] */
    int64_t cidx_cap;     /* power of two >= 2 * n_blocks, never grows */

    bm_seq **smap;        /* (smap_cap) sequence map slots, NULL when empty */
    int64_t smap_cap;     /* power of two */
    int64_t n_seqs;

    loom_block_manager_stats ctr; /* only the query/hit/eviction counters are used */
};

/* ---- hashing -------------------------------------------------------------- */

static uint64_t mix64(uint64_t x) /* splitmix64 finalizer */
{
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ULL;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebULL;
    x ^= x >> 31;
    return x;
}

/* Root of a sequence's chain: the salt (LoRA id later) seeds every hash. */
static uint64_t chain_root(uint64_t salt) { return mix64(salt ^ 0x6c6f6f6d6b762d31ULL); }

/* Hash of one full block, chained with its parent's hash, so equal hashes mean
 * (up to 2^-64 collisions) equal whole prefixes, not just equal blocks. */
static uint64_t block_hash(uint64_t parent, const int32_t *ids, int64_t tpb)
{
    uint64_t h = mix64(parent + 0x9e3779b97f4a7c15ULL);
    for (int64_t i = 0; i < tpb; i++) {
        h ^= (uint64_t)(uint32_t)ids[i];
        h *= 0x100000001b3ULL; /* FNV-1a step over whole tokens */
        h ^= h >> 29;
    }
    return mix64(h ^ (uint64_t)tpb);
}

/* ---- cache index (linear probing, backward-shift deletion) --------------- */

static int64_t cidx_find_slot(const loom_block_manager *bm, uint64_t h)
{
    int64_t mask = bm->cidx_cap - 1;
    for (int64_t i = (int64_t)(mix64(h) & (uint64_t)mask);; i = (i + 1) & mask) {
        int32_t b = bm->cidx[i];
        if (b == NIL || bm->hash[b] == h) return i;
    }
}

static int32_t cidx_lookup(const loom_block_manager *bm, uint64_t h)
{
    return bm->cidx[cidx_find_slot(bm, h)];
}

static void cidx_insert(loom_block_manager *bm, int32_t b)
{
    int64_t i = cidx_find_slot(bm, bm->hash[b]);
    bm->cidx[i] = b; /* caller checked the hash is absent; load <= 1/2 so a slot exists */
}

static void cidx_remove(loom_block_manager *bm, int32_t b)
{
    int64_t mask = bm->cidx_cap - 1;
    int64_t i = cidx_find_slot(bm, bm->hash[b]);
    bm->cidx[i] = NIL;
    for (int64_t j = (i + 1) & mask; bm->cidx[j] != NIL; j = (j + 1) & mask) {
        int64_t home = (int64_t)(mix64(bm->hash[bm->cidx[j]]) & (uint64_t)mask);
        /* Move j's entry into the hole if the hole lies on its probe path. */
        if (((j - home) & mask) >= ((j - i) & mask)) {
            bm->cidx[i] = bm->cidx[j];
            bm->cidx[j] = NIL;
            i = j;
        }
    }
}

/* ---- LRU ------------------------------------------------------------------- */

static void lru_push_tail(loom_block_manager *bm, int32_t b)
{
    bm->lru_prev[b] = bm->lru_tail;
    bm->lru_next[b] = NIL;
    if (bm->lru_tail != NIL) bm->lru_next[bm->lru_tail] = b;
    else bm->lru_head = b;
    bm->lru_tail = b;
    bm->n_lru++;
}

static void lru_unlink(loom_block_manager *bm, int32_t b)
{
    int32_t p = bm->lru_prev[b], n = bm->lru_next[b];
    if (p != NIL) bm->lru_next[p] = n;
    else bm->lru_head = n;
    if (n != NIL) bm->lru_prev[n] = p;
    else bm->lru_tail = p;
    bm->lru_prev[b] = bm->lru_next[b] = NIL;
    bm->n_lru--;
}

/* ---- sequence map ---------------------------------------------------------- */

static int64_t smap_slot(const loom_block_manager *bm, int64_t id)
{
    int64_t mask = bm->smap_cap - 1;
    for (int64_t i = (int64_t)(mix64((uint64_t)id) & (uint64_t)mask);; i = (i + 1) & mask) {
        bm_seq *s = bm->smap[i];
        if (s == NULL || s->id == id) return i;
    }
}

static bm_seq *smap_get(const loom_block_manager *bm, int64_t id)
{
    return bm->smap[smap_slot(bm, id)];
}

static loom_status smap_grow(loom_block_manager *bm, loom_err *err)
{
    int64_t cap = bm->smap_cap * 2;
    bm_seq **slots = calloc((size_t)cap, sizeof *slots);
    if (!slots)
        return loom_err_set(err, LOOM_ENOMEM, "kv: cannot grow the sequence map to %" PRId64 " slots", cap);
    bm_seq **old = bm->smap;
    int64_t old_cap = bm->smap_cap;
    bm->smap = slots;
    bm->smap_cap = cap;
    for (int64_t i = 0; i < old_cap; i++)
        if (old[i]) bm->smap[smap_slot(bm, old[i]->id)] = old[i];
    free(old);
    return LOOM_OK;
}

static void smap_remove(loom_block_manager *bm, int64_t id)
{
    int64_t mask = bm->smap_cap - 1;
    int64_t i = smap_slot(bm, id);
    bm->smap[i] = NULL;
    for (int64_t j = (i + 1) & mask; bm->smap[j] != NULL; j = (j + 1) & mask) {
        int64_t home = (int64_t)(mix64((uint64_t)bm->smap[j]->id) & (uint64_t)mask);
        if (((j - home) & mask) >= ((j - i) & mask)) {
            bm->smap[i] = bm->smap[j];
            bm->smap[j] = NULL;
            i = j;
        }
    }
    bm->n_seqs--;
}

static void seq_destroy(bm_seq *s)
{
    if (!s) return;
    free(s->table);
    free(s->hashes);
    free(s);
}

/* Makes room for n_blocks table entries; on failure nothing observable changes. */
static loom_status seq_reserve(bm_seq *s, int64_t n_blocks, loom_err *err)
{
    if (n_blocks <= s->cap) return LOOM_OK;
    int64_t cap = s->cap ? s->cap : 4;
    while (cap < n_blocks) cap *= 2;
    int32_t *t = realloc(s->table, (size_t)cap * sizeof *t);
    if (!t) goto fail;
    s->table = t;
    uint64_t *h = realloc(s->hashes, (size_t)cap * sizeof *h);
    if (!h) goto fail; /* table is bigger than cap says: harmless */
    s->hashes = h;
    s->cap = cap;
    return LOOM_OK;
fail:
    return loom_err_set(err, LOOM_ENOMEM, "kv: cannot grow the block table of sequence %" PRId64
                        " to %" PRId64 " blocks", s->id, cap);
}

/* ---- create / destroy ------------------------------------------------------ */

loom_block_manager *loom_block_manager_create(int64_t n_blocks, int64_t tokens_per_block,
                                              bool enable_reuse, loom_err *err)
{
    if (n_blocks < 1 || n_blocks > INT32_MAX / 4) {
        loom_err_set(err, LOOM_EINVAL, "kv: block count %" PRId64 " out of range [1, %d]",
                     n_blocks, INT32_MAX / 4);
        return NULL;
    }
    if (tokens_per_block < LOOM_BLOCK_MANAGER_MIN_TPB || tokens_per_block > LOOM_BLOCK_MANAGER_MAX_TPB ||
        (tokens_per_block & (tokens_per_block - 1)) != 0) {
        loom_err_set(err, LOOM_EINVAL, "kv: tokens per block %" PRId64 " is not a power of two in [%d, %d]",
                     tokens_per_block, LOOM_BLOCK_MANAGER_MIN_TPB, LOOM_BLOCK_MANAGER_MAX_TPB);
        return NULL;
    }
    loom_block_manager *bm = calloc(1, sizeof *bm);
    if (!bm) goto fail;
    bm->n_blocks = n_blocks;
    bm->tpb = tokens_per_block;
    bm->reuse = enable_reuse;
    bm->cidx_cap = 16;
    while (bm->cidx_cap < 2 * n_blocks) bm->cidx_cap *= 2;
    bm->smap_cap = 64;
    size_t nb = (size_t)n_blocks;
    bm->refcnt = calloc(nb, sizeof *bm->refcnt);
    bm->hash = calloc(nb, sizeof *bm->hash);
    bm->cached = calloc(nb, sizeof *bm->cached);
    bm->lru_prev = malloc(nb * sizeof *bm->lru_prev);
    bm->lru_next = malloc(nb * sizeof *bm->lru_next);
    bm->free_stack = malloc(nb * sizeof *bm->free_stack);
    bm->cidx = malloc((size_t)bm->cidx_cap * sizeof *bm->cidx);
    bm->smap = calloc((size_t)bm->smap_cap, sizeof *bm->smap);
    if (!bm->refcnt || !bm->hash || !bm->cached || !bm->lru_prev || !bm->lru_next ||
        !bm->free_stack || !bm->cidx || !bm->smap)
        goto fail;
    for (int64_t i = 0; i < bm->cidx_cap; i++) bm->cidx[i] = NIL;
    /* Stack so that block 0 is handed out first (readable tables in tests). */
    for (int64_t i = 0; i < n_blocks; i++) {
        bm->free_stack[i] = (int32_t)(n_blocks - 1 - i);
        bm->lru_prev[i] = bm->lru_next[i] = NIL;
    }
    bm->n_free = n_blocks;
    bm->lru_head = bm->lru_tail = NIL;
    return bm;
fail:
    loom_block_manager_destroy(bm);
    loom_err_set(err, LOOM_ENOMEM, "kv: cannot allocate a block manager for %" PRId64 " blocks", n_blocks);
    return NULL;
}

void loom_block_manager_destroy(loom_block_manager *bm)
{
    if (!bm) return;
    if (bm->smap)
        for (int64_t i = 0; i < bm->smap_cap; i++) seq_destroy(bm->smap[i]);
    free(bm->smap);
    free(bm->refcnt);
    free(bm->hash);
    free(bm->cached);
    free(bm->lru_prev);
    free(bm->lru_next);
    free(bm->free_stack);
    free(bm->cidx);
    free(bm);
}

/* ---- blocks ------------------------------------------------------------------ */

/* Takes one block for a new owner; the caller checked availability. */
static int32_t take_block(loom_block_manager *bm)
{
    int32_t b;
    if (bm->n_free > 0) {
        b = bm->free_stack[--bm->n_free];
    } else {
        b = bm->lru_head; /* least recently used cached block */
        lru_unlink(bm, b);
        cidx_remove(bm, b);
        bm->cached[b] = 0;
        bm->n_cached--;
        bm->ctr.evictions++;
    }
    bm->refcnt[b] = 1;
    bm->n_used++;
    return b;
}

static void ref_block(loom_block_manager *bm, int32_t b)
{
    if (bm->refcnt[b] == 0) { /* a cached block coming back from the LRU */
        lru_unlink(bm, b);
        bm->n_used++;
    }
    bm->refcnt[b]++;
}

static void unref_block(loom_block_manager *bm, int32_t b)
{
    if (--bm->refcnt[b] > 0) return;
    bm->n_used--;
    if (bm->cached[b]) lru_push_tail(bm, b);
    else bm->free_stack[bm->n_free++] = b;
}

/* ---- public API ---------------------------------------------------------------- */

static int64_t blocks_for(const loom_block_manager *bm, int64_t n_tokens)
{
    return (n_tokens + bm->tpb - 1) / bm->tpb;
}

bool loom_block_manager_can_admit(const loom_block_manager *bm, int64_t n_tokens, loom_err *err)
{
    if (n_tokens < 1) {
        loom_err_set(err, LOOM_EINVAL, "kv: a request needs at least one token (got %" PRId64 ")", n_tokens);
        return false;
    }
    int64_t need = blocks_for(bm, n_tokens);
    if (need > bm->n_blocks) {
        loom_err_set(err, LOOM_EINVAL,
                     "kv: request of %" PRId64 " tokens (prompt + max_new_tokens) needs %" PRId64
                     " KV blocks of %" PRId64 " tokens but the whole pool has %" PRId64
                     " (%" PRId64 " tokens); shorten the prompt or lower max_new_tokens",
                     n_tokens, need, bm->tpb, bm->n_blocks, bm->n_blocks * bm->tpb);
        return false;
    }
    return true;
}

loom_status loom_block_manager_add(loom_block_manager *bm, int64_t seq_id, uint64_t salt,
                                   int64_t reserve_tokens, loom_err *err)
{
    if (reserve_tokens < 0)
        return loom_err_set(err, LOOM_EINVAL, "kv: negative reservation %" PRId64, reserve_tokens);
    if (smap_get(bm, seq_id))
        return loom_err_set(err, LOOM_EINVAL, "kv: sequence %" PRId64 " already exists", seq_id);
    if ((bm->n_seqs + 1) * 2 > bm->smap_cap) LOOM_CHECK(smap_grow(bm, err));
    bm_seq *s = calloc(1, sizeof *s + (size_t)bm->tpb * sizeof(int32_t));
    if (!s) return loom_err_set(err, LOOM_ENOMEM, "kv: cannot allocate sequence %" PRId64, seq_id);
    s->id = seq_id;
    s->salt = salt;
    loom_status st = seq_reserve(s, blocks_for(bm, reserve_tokens), err);
    if (st != LOOM_OK) {
        seq_destroy(s);
        return st;
    }
    bm->smap[smap_slot(bm, seq_id)] = s;
    bm->n_seqs++;
    return LOOM_OK;
}

loom_status loom_block_manager_free(loom_block_manager *bm, int64_t seq_id, loom_err *err)
{
    bm_seq *s = smap_get(bm, seq_id);
    if (!s) return loom_err_set(err, LOOM_EINVAL, "kv: free of unknown sequence %" PRId64, seq_id);
    /* Last block first: the tail of a chain becomes the older LRU entry, so it is
     * evicted before the blocks it depends on (a chain is only useful from its head). */
    for (int64_t i = s->n_blocks - 1; i >= 0; i--) unref_block(bm, s->table[i]);
    smap_remove(bm, seq_id);
    seq_destroy(s);
    return LOOM_OK;
}

loom_status loom_block_manager_match_prefix(loom_block_manager *bm, int64_t seq_id,
                                            const int32_t *prompt, int64_t n,
                                            int64_t *n_cached, loom_err *err)
{
    *n_cached = 0;
    bm_seq *s = smap_get(bm, seq_id);
    if (!s) return loom_err_set(err, LOOM_EINVAL, "kv: match_prefix on unknown sequence %" PRId64, seq_id);
    if (s->n_tokens != 0)
        return loom_err_set(err, LOOM_EINVAL, "kv: match_prefix on sequence %" PRId64
                            " that already holds %" PRId64 " tokens", seq_id, s->n_tokens);
    if (n < 1 || !prompt)
        return loom_err_set(err, LOOM_EINVAL, "kv: match_prefix needs a non-empty prompt (got %" PRId64 ")", n);
    if (!bm->reuse) return LOOM_OK;
    int64_t max_blocks = (n - 1) / bm->tpb; /* leave at least one token to compute */
    LOOM_CHECK(seq_reserve(s, max_blocks + 1, err));
    bm->ctr.prefix_queries++;
    bm->ctr.prefix_query_tokens += n;
    uint64_t parent = chain_root(s->salt);
    int64_t k = 0;
    for (; k < max_blocks; k++) {
        uint64_t h = block_hash(parent, prompt + k * bm->tpb, bm->tpb);
        int32_t b = cidx_lookup(bm, h);
        if (b == NIL) break;
        ref_block(bm, b);
        s->table[k] = b;
        s->hashes[k] = h;
        parent = h;
    }
    s->n_blocks = k;
    s->n_tokens = k * bm->tpb;
    s->n_committed = k;
    *n_cached = s->n_tokens;
    if (k > 0) bm->ctr.prefix_hit_queries++;
    bm->ctr.prefix_hit_tokens += s->n_tokens;
    return LOOM_OK;
}

int64_t loom_block_manager_blocks_needed(const loom_block_manager *bm, int64_t seq_id, int64_t n_new)
{
    const bm_seq *s = smap_get(bm, seq_id);
    if (!s || n_new < 0) return -1;
    return blocks_for(bm, s->n_tokens + n_new) - s->n_blocks;
}

int64_t loom_block_manager_available(const loom_block_manager *bm)
{
    return bm->n_free + bm->n_lru;
}

loom_status loom_block_manager_append_tokens(loom_block_manager *bm, int64_t seq_id,
                                             const int32_t *ids, int64_t n, loom_err *err)
{
    bm_seq *s = smap_get(bm, seq_id);
    if (!s) return loom_err_set(err, LOOM_EINVAL, "kv: append to unknown sequence %" PRId64, seq_id);
    if (n < 0 || (n > 0 && !ids))
        return loom_err_set(err, LOOM_EINVAL, "kv: append of %" PRId64 " tokens to sequence %" PRId64, n, seq_id);
    int64_t total = blocks_for(bm, s->n_tokens + n);
    int64_t need = total - s->n_blocks;
    int64_t avail = loom_block_manager_available(bm);
    if (need > avail)
        return loom_err_set(err, LOOM_ENOMEM,
                            "kv: out of blocks: sequence %" PRId64 " needs %" PRId64
                            " more blocks for %" PRId64 " tokens, %" PRId64 " available (free %" PRId64
                            ", evictable cached %" PRId64 ") of %" PRId64,
                            seq_id, need, n, avail, bm->n_free, bm->n_lru, bm->n_blocks);
    LOOM_CHECK(seq_reserve(s, total, err));
    /* Nothing can fail from here on. */
    while (s->n_blocks < total) s->table[s->n_blocks++] = take_block(bm);
    int64_t tpb = bm->tpb;
    for (int64_t i = 0; i < n;) {
        int64_t off = s->n_tokens % tpb;
        int64_t take = tpb - off < n - i ? tpb - off : n - i;
        memcpy(s->partial + off, ids + i, (size_t)take * sizeof *ids);
        i += take;
        s->n_tokens += take;
        if (off + take == tpb) { /* a block just filled: hash it while its ids are at hand */
            int64_t k = s->n_tokens / tpb - 1;
            uint64_t parent = k > 0 ? s->hashes[k - 1] : chain_root(s->salt);
            s->hashes[k] = block_hash(parent, s->partial, tpb);
        }
    }
    return LOOM_OK;
}

loom_status loom_block_manager_commit_full_blocks(loom_block_manager *bm, int64_t seq_id,
                                                  int64_t n_computed, loom_err *err)
{
    bm_seq *s = smap_get(bm, seq_id);
    if (!s) return loom_err_set(err, LOOM_EINVAL, "kv: commit on unknown sequence %" PRId64, seq_id);
    if (n_computed < 0 || n_computed > s->n_tokens)
        return loom_err_set(err, LOOM_EINVAL, "kv: commit of %" PRId64 " computed tokens on sequence %" PRId64
                            " of %" PRId64, n_computed, seq_id, s->n_tokens);
    if (!bm->reuse) return LOOM_OK;
    int64_t full = n_computed / bm->tpb;
    for (int64_t k = s->n_committed; k < full; k++) {
        int32_t b = s->table[k];
        uint64_t h = s->hashes[k];
        if (bm->cached[b] || cidx_lookup(bm, h) != NIL) continue; /* computed twice: keep ours private */
        bm->hash[b] = h;
        bm->cached[b] = 1;
        cidx_insert(bm, b);
        bm->n_cached++;
    }
    if (full > s->n_committed) s->n_committed = full;
    return LOOM_OK;
}

loom_status loom_block_manager_table(const loom_block_manager *bm, int64_t seq_id,
                                     const int32_t **table, int64_t *n, loom_err *err)
{
    const bm_seq *s = smap_get(bm, seq_id);
    if (!s) {
        *table = NULL;
        *n = 0;
        return loom_err_set(err, LOOM_EINVAL, "kv: block table of unknown sequence %" PRId64, seq_id);
    }
    *table = s->table;
    *n = s->n_blocks;
    return LOOM_OK;
}

int64_t loom_block_manager_seq_len(const loom_block_manager *bm, int64_t seq_id)
{
    const bm_seq *s = smap_get(bm, seq_id);
    return s ? s->n_tokens : -1;
}

void loom_block_manager_stats_get(const loom_block_manager *bm, loom_block_manager_stats *out)
{
    *out = bm->ctr;
    out->n_blocks = bm->n_blocks;
    out->tokens_per_block = bm->tpb;
    out->used = bm->n_used;
    out->free = bm->n_free;
    out->cached = bm->n_lru;
    out->cached_total = bm->n_cached;
    out->n_seqs = bm->n_seqs;
}

/* ---- invariant checker ----------------------------------------------------------- */

#define CHECK_OR_FAIL(cond, ...)                                                \
    do {                                                                        \
        if (!(cond)) {                                                          \
            st = loom_err_set(err, LOOM_EINTERNAL, "kv check: " __VA_ARGS__);   \
            goto done;                                                          \
        }                                                                       \
    } while (0)

loom_status loom_block_manager_check(const loom_block_manager *bm, loom_err *err)
{
    loom_status st = LOOM_OK;
    int64_t nb = bm->n_blocks;
    int32_t *refs = calloc((size_t)nb, sizeof *refs);   /* table entries naming each block */
    uint8_t *where = calloc((size_t)nb, sizeof *where); /* 1 free list, 2 LRU */
    if (!refs || !where) {
        st = loom_err_set(err, LOOM_ENOMEM, "kv check: out of memory");
        goto done;
    }
    int64_t n_seqs = 0;
    for (int64_t i = 0; i < bm->smap_cap; i++) {
        const bm_seq *s = bm->smap[i];
        if (!s) continue;
        n_seqs++;
        CHECK_OR_FAIL(smap_get(bm, s->id) == s, "sequence %" PRId64 " not reachable in the map", s->id);
        CHECK_OR_FAIL(s->n_blocks == blocks_for(bm, s->n_tokens) && s->n_blocks <= s->cap,
                      "sequence %" PRId64 " holds %" PRId64 " blocks for %" PRId64 " tokens (cap %" PRId64 ")",
                      s->id, s->n_blocks, s->n_tokens, s->cap);
        CHECK_OR_FAIL(s->n_committed >= 0 && s->n_committed <= s->n_tokens / bm->tpb,
                      "sequence %" PRId64 " committed %" PRId64 " of %" PRId64 " full blocks",
                      s->id, s->n_committed, s->n_tokens / bm->tpb);
        for (int64_t k = 0; k < s->n_blocks; k++) {
            int32_t b = s->table[k];
            CHECK_OR_FAIL(b >= 0 && b < nb, "sequence %" PRId64 " entry %" PRId64 " = %d out of range",
                          s->id, k, b);
            refs[b]++;
            /* A partial last block is written by its owner: it must not be shared. */
            if (k == s->n_blocks - 1 && s->n_tokens % bm->tpb != 0)
                CHECK_OR_FAIL(bm->refcnt[b] == 1 && !bm->cached[b],
                              "partial block %d of sequence %" PRId64 " is shared or cached", b, s->id);
            if (bm->cached[b] && k < s->n_committed)
                CHECK_OR_FAIL(bm->hash[b] == s->hashes[k], "cached block %d of sequence %" PRId64
                              " has a foreign hash", b, s->id);
        }
    }
    CHECK_OR_FAIL(n_seqs == bm->n_seqs, "%" PRId64 " sequences in the map, counter says %" PRId64,
                  n_seqs, bm->n_seqs);
    CHECK_OR_FAIL(bm->n_free >= 0 && bm->n_free <= nb, "free count %" PRId64, bm->n_free);
    for (int64_t i = 0; i < bm->n_free; i++) {
        int32_t b = bm->free_stack[i];
        CHECK_OR_FAIL(b >= 0 && b < nb, "free list entry %d out of range", b);
        CHECK_OR_FAIL(where[b] == 0, "block %d twice in the free list", b);
        where[b] = 1;
        CHECK_OR_FAIL(bm->refcnt[b] == 0 && !bm->cached[b], "free block %d has refcount %d cached %d",
                      b, bm->refcnt[b], bm->cached[b]);
    }
    int64_t n_lru = 0;
    int32_t prev = NIL;
    for (int32_t b = bm->lru_head; b != NIL; b = bm->lru_next[b]) {
        CHECK_OR_FAIL(b >= 0 && b < nb, "LRU entry %d out of range", b);
        CHECK_OR_FAIL(where[b] == 0, "block %d in the LRU twice or also free", b);
        CHECK_OR_FAIL(bm->lru_prev[b] == prev, "LRU back link of block %d broken", b);
        where[b] = 2;
        CHECK_OR_FAIL(bm->refcnt[b] == 0 && bm->cached[b], "LRU block %d has refcount %d cached %d",
                      b, bm->refcnt[b], bm->cached[b]);
        prev = b;
        n_lru++;
    }
    CHECK_OR_FAIL(prev == bm->lru_tail, "LRU tail mismatch");
    CHECK_OR_FAIL(n_lru == bm->n_lru, "%" PRId64 " blocks in the LRU, counter says %" PRId64, n_lru, bm->n_lru);
    int64_t n_used = 0, n_cached = 0;
    for (int32_t b = 0; b < nb; b++) {
        CHECK_OR_FAIL(bm->refcnt[b] == refs[b], "block %d refcount %d but %d tables hold it",
                      b, bm->refcnt[b], refs[b]);
        if (refs[b] > 0) {
            n_used++;
            CHECK_OR_FAIL(where[b] == 0, "block %d is owned and also in a free list/LRU", b);
        } else {
            CHECK_OR_FAIL(where[b] != 0, "block %d is lost: no owner, not free, not in the LRU", b);
        }
        if (bm->cached[b]) {
            n_cached++;
            CHECK_OR_FAIL(cidx_lookup(bm, bm->hash[b]) == b, "cached block %d not found in the index", b);
        }
    }
    int64_t idx_entries = 0;
    for (int64_t i = 0; i < bm->cidx_cap; i++) {
        int32_t b = bm->cidx[i];
        if (b == NIL) continue;
        idx_entries++;
        CHECK_OR_FAIL(b >= 0 && b < nb && bm->cached[b], "index slot %" PRId64 " names uncached block %d", i, b);
    }
    CHECK_OR_FAIL(n_used == bm->n_used, "%" PRId64 " used blocks, counter says %" PRId64, n_used, bm->n_used);
    CHECK_OR_FAIL(n_cached == bm->n_cached && idx_entries == n_cached,
                  "%" PRId64 " cached flags, %" PRId64 " index entries, counter %" PRId64,
                  n_cached, idx_entries, bm->n_cached);
    CHECK_OR_FAIL(bm->n_used + bm->n_free + bm->n_lru == nb,
                  "used %" PRId64 " + free %" PRId64 " + cached %" PRId64 " != %" PRId64,
                  bm->n_used, bm->n_free, bm->n_lru, nb);
    CHECK_OR_FAIL(bm->reuse || bm->n_cached == 0, "blocks cached with reuse disabled");
done:
    free(refs);
    free(where);
    return st;
}
