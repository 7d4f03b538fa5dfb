/* Open-addressing hash maps for the tokenizer: byte string -> int32 (vocab,
 * added tokens) with keys copied into one pool, and (id, id) -> (rank, id)
 * for BPE merges. Built once at load, then read-only (safe to share). */
#ifndef LOOM_TOKENIZER_STRMAP_H
#define LOOM_TOKENIZER_STRMAP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct tk_strmap_ent {
    uint64_t hash;
    size_t off;    /* key offset in pool */
    uint32_t len;  /* key length in bytes */
    int32_t val;
};

typedef struct tk_strmap {
    struct tk_strmap_ent *ents; /* (n) in insertion order */
    size_t n, ents_cap;
    uint32_t *slots;            /* (mask+1) entry index + 1; 0 = empty */
    size_t mask;
    char *pool;                 /* all keys back to back */
    size_t pool_len, pool_cap;
} tk_strmap;

typedef struct tk_pairmap {
    uint64_t *keys;   /* (mask+1) a<<32|b, UINT64_MAX = empty */
    uint32_t *rank;   /* (mask+1) merge rank */
    int32_t *merged;  /* (mask+1) id of the merged token */
    size_t mask;
    size_t n;
} tk_pairmap;

/* Prepares an empty map sized for about `expected` keys. False on ENOMEM. */
bool tk_strmap_init(tk_strmap *m, size_t expected);

/* Frees; accepts a zeroed map. */
void tk_strmap_free(tk_strmap *m);

/* Inserts key -> val, overwriting an existing key (as a JSON object with a
 * duplicate key does in serde). False on ENOMEM or a key over 4 GiB. */
bool tk_strmap_put(tk_strmap *m, const char *s, size_t n, int32_t val);

/* Value for key, or -1. */
int32_t tk_strmap_get(const tk_strmap *m, const char *s, size_t n);

/* Key bytes of entry i (0 <= i < m->n). */
static inline const char *tk_strmap_key(const tk_strmap *m, size_t i) { return m->pool + m->ents[i].off; }

bool tk_pairmap_init(tk_pairmap *m, size_t expected);
void tk_pairmap_free(tk_pairmap *m);

/* Inserts (a, b) -> (rank, merged), overwriting (later merges win, as in HF). */
void tk_pairmap_put(tk_pairmap *m, int32_t a, int32_t b, uint32_t rank, int32_t merged);

/* splitmix64 finalizer: ids are small integers, so mix every bit. */
static inline uint64_t tk_pair_hash(uint64_t h)
{
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ull;
    h ^= h >> 33;
    return h;
}

/* Finds (a, b); returns false when absent. */
static inline bool tk_pairmap_get(const tk_pairmap *m, int32_t a, int32_t b, uint32_t *rank,
                                  int32_t *merged)
{
    uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    size_t i = (size_t)tk_pair_hash(key) & m->mask;
    for (;;) {
        uint64_t k = m->keys[i];
        if (k == key) {
            *rank = m->rank[i];
            *merged = m->merged[i];
            return true;
        }
        if (k == UINT64_MAX) return false;
        i = (i + 1) & m->mask;
    }
}

#endif
