/* Hash maps behind the vocab and merge tables. Linear probing at load factor
 * <= 1/2; the string hash reads 8 bytes at a time because vocab lookups of
 * short pieces dominate BPE encoding time. */
#include "strmap.h"

#include <stdlib.h>
#include <string.h>

static uint64_t hash_bytes(const char *s, size_t n)
{
    uint64_t h = 0x9E3779B97F4A7C15ull ^ (n * 0xff51afd7ed558ccdull);
    while (n >= 8) {
        uint64_t k;
        memcpy(&k, s, 8);
        h = (h ^ k) * 0xbf58476d1ce4e5b9ull;
        h ^= h >> 31;
        s += 8;
        n -= 8;
    }
    uint64_t k = 0;
    memcpy(&k, s, n);
    h = (h ^ k) * 0x94d049bb133111ebull;
    h ^= h >> 29;
    h *= 0xbf58476d1ce4e5b9ull;
    h ^= h >> 32;
    return h;
}

static size_t pow2_at_least(size_t n)
{
    size_t c = 16;
    while (c < n) c *= 2;
    return c;
}

bool tk_strmap_init(tk_strmap *m, size_t expected)
{
    memset(m, 0, sizeof *m);
    size_t nslots = pow2_at_least(expected * 2 + 2);
    m->slots = calloc(nslots, sizeof *m->slots);
    if (!m->slots) return false;
    m->mask = nslots - 1;
    return true;
}

void tk_strmap_free(tk_strmap *m)
{
    free(m->ents);
    free(m->slots);
    free(m->pool);
    memset(m, 0, sizeof *m);
}

static bool strmap_grow(tk_strmap *m)
{
    size_t nslots = (m->mask + 1) * 2;
    uint32_t *slots = calloc(nslots, sizeof *slots);
    if (!slots) return false;
    for (size_t e = 0; e < m->n; e++) {
        size_t i = (size_t)m->ents[e].hash & (nslots - 1);
        while (slots[i]) i = (i + 1) & (nslots - 1);
        slots[i] = (uint32_t)(e + 1);
    }
    free(m->slots);
    m->slots = slots;
    m->mask = nslots - 1;
    return true;
}

bool tk_strmap_put(tk_strmap *m, const char *s, size_t n, int32_t val)
{
    if (n > UINT32_MAX || m->n >= UINT32_MAX - 1) return false;
    uint64_t h = hash_bytes(s, n);
    size_t i = (size_t)h & m->mask;
    for (uint32_t e; (e = m->slots[i]) != 0; i = (i + 1) & m->mask) {
        struct tk_strmap_ent *en = &m->ents[e - 1];
        if (en->hash == h && en->len == n && memcmp(m->pool + en->off, s, n) == 0) {
            en->val = val;
            return true;
        }
    }
    if ((m->n + 1) * 2 > m->mask + 1) {
        if (!strmap_grow(m)) return false;
        return tk_strmap_put(m, s, n, val);
    }
    if (m->n == m->ents_cap) {
        size_t cap = m->ents_cap ? m->ents_cap * 2 : 64;
        struct tk_strmap_ent *ents = realloc(m->ents, cap * sizeof *ents);
        if (!ents) return false;
        m->ents = ents;
        m->ents_cap = cap;
    }
    if (m->pool_cap - m->pool_len < n + 1) {
        size_t cap = m->pool_cap ? m->pool_cap : 1024;
        while (cap - m->pool_len < n + 1) cap *= 2;
        char *pool = realloc(m->pool, cap);
        if (!pool) return false;
        m->pool = pool;
        m->pool_cap = cap;
    }
    memcpy(m->pool + m->pool_len, s, n);
    m->pool[m->pool_len + n] = '\0';
    m->ents[m->n] = (struct tk_strmap_ent){.hash = h, .off = m->pool_len, .len = (uint32_t)n, .val = val};
    m->pool_len += n + 1;
    m->slots[i] = (uint32_t)(++m->n);
    return true;
}

int32_t tk_strmap_get(const tk_strmap *m, const char *s, size_t n)
{
    if (!m->slots) return -1;
    uint64_t h = hash_bytes(s, n);
    size_t i = (size_t)h & m->mask;
    for (uint32_t e; (e = m->slots[i]) != 0; i = (i + 1) & m->mask) {
        const struct tk_strmap_ent *en = &m->ents[e - 1];
        if (en->hash == h && en->len == n && memcmp(m->pool + en->off, s, n) == 0) return en->val;
    }
    return -1;
}

bool tk_pairmap_init(tk_pairmap *m, size_t expected)
{
    memset(m, 0, sizeof *m);
    size_t nslots = pow2_at_least(expected * 2 + 2);
    m->keys = malloc(nslots * sizeof *m->keys);
    m->rank = malloc(nslots * sizeof *m->rank);
    m->merged = malloc(nslots * sizeof *m->merged);
    if (!m->keys || !m->rank || !m->merged) {
        tk_pairmap_free(m);
        return false;
    }
    memset(m->keys, 0xFF, nslots * sizeof *m->keys);
    m->mask = nslots - 1;
    return true;
}

void tk_pairmap_free(tk_pairmap *m)
{
    free(m->keys);
    free(m->rank);
    free(m->merged);
    memset(m, 0, sizeof *m);
}

void tk_pairmap_put(tk_pairmap *m, int32_t a, int32_t b, uint32_t rank, int32_t merged)
{
    /* Sized by init for every merge in the file, so it never fills up. */
    uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    size_t i = (size_t)tk_pair_hash(key) & m->mask;
    while (m->keys[i] != UINT64_MAX && m->keys[i] != key) i = (i + 1) & m->mask;
    if (m->keys[i] == UINT64_MAX) m->n++;
    m->keys[i] = key;
    m->rank[i] = rank;
    m->merged[i] = merged;
}
