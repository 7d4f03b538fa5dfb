/* BPE model: loading vocab/merges from tokenizer.json and encoding a word.
 * merge_word/merge_all mirror tokenizers/src/models/bpe/{model,word}.rs so
 * ties, unknown characters and byte fallback come out exactly as in HF. */
#include "bpe.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "utf8.h"

struct tk_bpe_sym {
    int32_t id;
    int32_t prev, next; /* neighbour indices, -1 at the ends */
    uint32_t len;       /* bytes of the word covered; 0 = merged away */
};

struct tk_bpe_merge {
    uint32_t rank;
    uint32_t pos;       /* index of the left symbol */
    int32_t merged;     /* id the pair merges into */
};

#define TK_BPE_CACHE_SLOTS 16384 /* power of two; filled to at most half */
#define TK_BPE_CACHE_MAX_WORD 48 /* longer words are not cached */
#define TK_BPE_CACHE_AFTER 256   /* short texts skip the cache (and its allocation) */

struct tk_bpe_cached {
    uint64_t hash;
    uint32_t key_off, key_len; /* in cache_keys; key_len 0 = empty slot */
    uint32_t ids_off, n_ids;   /* in cache_ids */
};

/* ---- loading ------------------------------------------------------------ */

static char *dup_json_string(json_t *v, size_t *len)
{
    size_t n = json_string_length(v);
    char *p = malloc(n + 1);
    if (p) {
        memcpy(p, json_string_value(v), n);
        p[n] = '\0';
        *len = n;
    }
    return p;
}

static loom_status opt_string(json_t *model, const char *key, char **out, size_t *len, loom_err *err)
{
    json_t *v = json_object_get(model, key);
    *out = NULL;
    *len = 0;
    if (!v || json_is_null(v)) return LOOM_OK;
    if (!json_is_string(v)) return loom_err_set(err, LOOM_EINVAL, "model.%s must be a string or null", key);
    *out = dup_json_string(v, len);
    return *out ? LOOM_OK : loom_err_set(err, LOOM_ENOMEM, "out of memory loading model");
}

static loom_status opt_bool(json_t *model, const char *key, bool *out, loom_err *err)
{
    json_t *v = json_object_get(model, key);
    *out = false;
    if (!v || json_is_null(v)) return LOOM_OK;
    if (!json_is_boolean(v)) return loom_err_set(err, LOOM_EINVAL, "model.%s must be a boolean", key);
    *out = json_is_true(v);
    return LOOM_OK;
}

static loom_status load_vocab(json_t *vocab, tk_bpe *m, loom_err *err)
{
    if (!json_is_object(vocab)) return loom_err_set(err, LOOM_EINVAL, "model.vocab must be an object");
    if (!tk_strmap_init(&m->vocab, json_object_size(vocab)))
        return loom_err_set(err, LOOM_ENOMEM, "out of memory loading vocab");
    const char *key;
    json_t *val;
    m->max_id = -1;
    json_object_foreach(vocab, key, val) {
        if (!json_is_integer(val) || json_integer_value(val) < 0 || json_integer_value(val) >= TK_MAX_ID)
            return loom_err_set(err, LOOM_EINVAL, "model.vocab[\"%.100s\"] must be an id in [0, %d)", key,
                                TK_MAX_ID);
        int32_t id = (int32_t)json_integer_value(val);
        /* jansson keys are NUL-terminated; a key with an embedded NUL is cut
         * short here, which only matters for vocab entries no text can produce. */
        if (!tk_strmap_put(&m->vocab, key, strlen(key), id))
            return loom_err_set(err, LOOM_ENOMEM, "out of memory loading vocab");
        if (id > m->max_id) m->max_id = id;
    }
    return LOOM_OK;
}

static loom_status load_merges(json_t *merges, tk_bpe *m, loom_err *err)
{
    if (!json_is_array(merges)) return loom_err_set(err, LOOM_EINVAL, "model.merges must be an array");
    size_t n = json_array_size(merges);
    if (!tk_pairmap_init(&m->merges, n)) return loom_err_set(err, LOOM_ENOMEM, "out of memory loading merges");
    tk_buf joined = {0};
    loom_status st = LOOM_OK;
    for (size_t i = 0; i < n; i++) {
        json_t *e = json_array_get(merges, i);
        const char *a, *b;
        size_t alen, blen;
        if (json_is_string(e)) {
            /* legacy "a b": exactly one space */
            a = json_string_value(e);
            size_t len = json_string_length(e);
            const char *sp = memchr(a, ' ', len);
            if (!sp || memchr(sp + 1, ' ', len - (size_t)(sp + 1 - a))) {
                st = loom_err_set(err, LOOM_EINVAL, "model.merges[%zu] \"%.100s\" is not \"left right\"", i, a);
                goto out;
            }
            alen = (size_t)(sp - a);
            b = sp + 1;
            blen = len - alen - 1;
        } else if (json_is_array(e) && json_array_size(e) == 2 && json_is_string(json_array_get(e, 0)) &&
                   json_is_string(json_array_get(e, 1))) {
            a = json_string_value(json_array_get(e, 0));
            alen = json_string_length(json_array_get(e, 0));
            b = json_string_value(json_array_get(e, 1));
            blen = json_string_length(json_array_get(e, 1));
        } else {
            st = loom_err_set(err, LOOM_EINVAL, "model.merges[%zu] must be \"a b\" or [\"a\", \"b\"]", i);
            goto out;
        }
        int32_t ia = tk_strmap_get(&m->vocab, a, alen), ib = tk_strmap_get(&m->vocab, b, blen);
        if (ia < 0 || ib < 0) {
            st = loom_err_set(err, LOOM_EINVAL, "model.merges[%zu]: token \"%.*s\" is not in the vocab", i,
                              (int)(ia < 0 ? (alen > 100 ? 100 : alen) : (blen > 100 ? 100 : blen)),
                              ia < 0 ? a : b);
            goto out;
        }
        if (blen < m->prefix_len) {
            st = loom_err_set(err, LOOM_EINVAL, "model.merges[%zu]: right token shorter than the subword prefix", i);
            goto out;
        }
        joined.len = 0;
        if (!tk_buf_append(&joined, a, alen) || !tk_buf_append(&joined, b + m->prefix_len, blen - m->prefix_len)) {
            st = loom_err_set(err, LOOM_ENOMEM, "out of memory loading merges");
            goto out;
        }
        int32_t merged = tk_strmap_get(&m->vocab, joined.p, joined.len);
        if (merged < 0) {
            st = loom_err_set(err, LOOM_EINVAL, "model.merges[%zu]: merged token \"%.*s\" is not in the vocab", i,
                              (int)(joined.len > 100 ? 100 : joined.len), joined.p);
            goto out;
        }
        tk_pairmap_put(&m->merges, ia, ib, (uint32_t)i, merged);
    }
out:
    tk_buf_free(&joined);
    return st;
}

loom_status tk_bpe_load(json_t *model, tk_bpe *m, loom_err *err)
{
    memset(m, 0, sizeof *m);
    m->max_id = -1;
    if (!json_is_object(model)) return loom_err_set(err, LOOM_EINVAL, "\"model\" must be an object");
    json_t *type = json_object_get(model, "type");
    if (type && !json_is_string(type)) return loom_err_set(err, LOOM_EINVAL, "model.type must be a string");
    if (type && strcmp(json_string_value(type), "BPE") != 0)
        return loom_err_set(err, LOOM_EUNSUPPORTED, "unsupported model type %s in tokenizer.json",
                            json_string_value(type));
    if (!type && !json_object_get(model, "merges"))
        return loom_err_set(err, LOOM_EUNSUPPORTED, "model without \"type\" is not BPE (no merges)");
    json_t *dropout = json_object_get(model, "dropout");
    if (dropout && !json_is_null(dropout) && !(json_is_number(dropout) && json_number_value(dropout) == 0.0))
        return loom_err_set(err, LOOM_EUNSUPPORTED, "BPE dropout is not supported (model.dropout must be null)");

    loom_status st;
    LOOM_CHECK_GOTO(st, opt_string(model, "unk_token", &m->unk_token, &m->unk_len, err), fail);
    LOOM_CHECK_GOTO(st, opt_string(model, "continuing_subword_prefix", &m->prefix, &m->prefix_len, err), fail);
    LOOM_CHECK_GOTO(st, opt_string(model, "end_of_word_suffix", &m->suffix, &m->suffix_len, err), fail);
    LOOM_CHECK_GOTO(st, opt_bool(model, "fuse_unk", &m->fuse_unk, err), fail);
    LOOM_CHECK_GOTO(st, opt_bool(model, "byte_fallback", &m->byte_fallback, err), fail);
    LOOM_CHECK_GOTO(st, opt_bool(model, "ignore_merges", &m->ignore_merges, err), fail);
    LOOM_CHECK_GOTO(st, load_vocab(json_object_get(model, "vocab"), m, err), fail);
    LOOM_CHECK_GOTO(st, load_merges(json_object_get(model, "merges"), m, err), fail);
    for (int b = 0; b < 256; b++) {
        char name[8];
        snprintf(name, sizeof name, "<0x%02X>", b);
        m->byte_ids[b] = tk_strmap_get(&m->vocab, name, 6);
    }
    /* one- and two-byte characters skip the hash (all of byte-level BPE's alphabet) */
    for (uint32_t cp = 0; cp < 2048; cp++) {
        char u[4];
        size_t ul = tk_utf8_encode(cp, u);
        m->char_ids[cp] = tk_strmap_get(&m->vocab, u, ul);
    }
    return LOOM_OK;
fail:
    tk_bpe_free(m);
    return st;
}

void tk_bpe_free(tk_bpe *m)
{
    tk_strmap_free(&m->vocab);
    tk_pairmap_free(&m->merges);
    free(m->unk_token);
    free(m->prefix);
    free(m->suffix);
    memset(m, 0, sizeof *m);
    m->max_id = -1;
}

void tk_bpe_scratch_free(tk_bpe_scratch *sc)
{
    free(sc->sym);
    free(sc->heap);
    tk_buf_free(&sc->tmp);
    free(sc->cache);
    tk_buf_free(&sc->cache_keys);
    tk_ivec_free(&sc->cache_ids);
    memset(sc, 0, sizeof *sc);
}

/* ---- encoding ----------------------------------------------------------- */

static inline bool merge_less(const struct tk_bpe_merge *a, const struct tk_bpe_merge *b)
{
    return a->rank != b->rank ? a->rank < b->rank : a->pos < b->pos;
}

static void heap_push(struct tk_bpe_merge *h, size_t *n, struct tk_bpe_merge x)
{
    size_t i = (*n)++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!merge_less(&x, &h[p])) break;
        h[i] = h[p];
        i = p;
    }
    h[i] = x;
}

static struct tk_bpe_merge heap_pop(struct tk_bpe_merge *h, size_t *n)
{
    struct tk_bpe_merge top = h[0], x = h[--(*n)];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= *n) break;
        if (c + 1 < *n && merge_less(&h[c + 1], &h[c])) c++;
        if (!merge_less(&h[c], &x)) break;
        h[i] = h[c];
        i = c;
    }
    if (*n > 0) h[i] = x;
    return top;
}

static bool add_sym(tk_bpe_scratch *sc, size_t *nsym, int32_t id, uint32_t len)
{
    if (*nsym == sc->sym_cap) {
        size_t cap = sc->sym_cap ? sc->sym_cap * 2 : 64;
        struct tk_bpe_sym *v = realloc(sc->sym, cap * sizeof *v);
        if (!v) return false;
        sc->sym = v;
        sc->sym_cap = cap;
    }
    size_t i = (*nsym)++;
    sc->sym[i] = (struct tk_bpe_sym){id, (int32_t)i - 1, -1, len};
    if (i > 0) sc->sym[i - 1].next = (int32_t)i;
    return true;
}

/* model.rs merge_word: one symbol per character (with unk / byte fallback). */
static loom_status split_chars(const tk_bpe *m, const char *w, size_t n, tk_bpe_scratch *sc, size_t *nsym,
                               loom_err *err)
{
    bool have_unk = false;
    int32_t unk_id = -1;
    uint32_t unk_len = 0;
    for (size_t i = 0; i < n;) {
        size_t cl = tk_utf8_len((unsigned char)w[i]);
        const char *s = w + i;
        size_t slen = cl;
        bool is_first = i == 0, is_last = i + cl >= n;
        if ((m->prefix_len && !is_first) || (m->suffix_len && is_last)) {
            sc->tmp.len = 0;
            if ((!is_first && !tk_buf_append(&sc->tmp, m->prefix, m->prefix_len)) ||
                !tk_buf_append(&sc->tmp, w + i, cl) ||
                (is_last && !tk_buf_append(&sc->tmp, m->suffix, m->suffix_len)))
                return loom_err_set(err, LOOM_ENOMEM, "out of memory encoding");
            s = sc->tmp.p;
            slen = sc->tmp.len;
        }
        int32_t id;
        if (slen == 1) id = m->char_ids[(unsigned char)s[0]];
        else if (slen == 2 && cl == 2) id = m->char_ids[((s[0] & 0x1F) << 6) | (s[1] & 0x3F)];
        else id = tk_strmap_get(&m->vocab, s, slen);
        if (id >= 0) {
            if (have_unk && !add_sym(sc, nsym, unk_id, unk_len)) goto nomem;
            have_unk = false;
            if (!add_sym(sc, nsym, id, (uint32_t)cl)) goto nomem;
        } else {
            bool done = false;
            if (m->byte_fallback) {
                bool all = true;
                for (size_t k = 0; k < slen; k++) all = all && m->byte_ids[(unsigned char)s[k]] >= 0;
                if (all) {
                    for (size_t k = 0; k < slen; k++)
                        if (!add_sym(sc, nsym, m->byte_ids[(unsigned char)s[k]], 1)) goto nomem;
                    done = true;
                }
            }
            if (!done && m->unk_token) {
                int32_t uid = tk_strmap_get(&m->vocab, m->unk_token, m->unk_len);
                if (uid < 0)
                    return loom_err_set(err, LOOM_EINVAL, "unk_token \"%s\" is not in the vocab", m->unk_token);
                if (have_unk && m->fuse_unk) {
                    unk_len += (uint32_t)cl;
                } else {
                    if (have_unk && !add_sym(sc, nsym, unk_id, unk_len)) goto nomem;
                    have_unk = true;
                    unk_id = uid;
                    unk_len = (uint32_t)cl;
                }
            }
            /* no byte fallback and no unk token: the character is dropped, as in HF */
        }
        i += cl;
    }
    if (have_unk && !add_sym(sc, nsym, unk_id, unk_len)) goto nomem;
    return LOOM_OK;
nomem:
    return loom_err_set(err, LOOM_ENOMEM, "out of memory encoding");
}

static uint64_t word_hash(const char *s, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a: words here are short */
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 0x100000001b3ull;
    return h ^ (h >> 29);
}

/* Cache slot for word w: the matching entry, or the empty slot to fill. */
static struct tk_bpe_cached *cache_slot(tk_bpe_scratch *sc, const char *w, size_t n, uint64_t h)
{
    size_t i = (size_t)h & (TK_BPE_CACHE_SLOTS - 1);
    for (;; i = (i + 1) & (TK_BPE_CACHE_SLOTS - 1)) {
        struct tk_bpe_cached *c = &sc->cache[i];
        if (c->key_len == 0) return c;
        if (c->hash == h && c->key_len == n && memcmp(sc->cache_keys.p + c->key_off, w, n) == 0) return c;
    }
}

static loom_status merge_word(const tk_bpe *m, const char *w, size_t n, tk_bpe_scratch *sc, tk_ivec *out,
                              loom_err *err);

loom_status tk_bpe_encode(const tk_bpe *m, const char *w, size_t n, tk_bpe_scratch *sc, tk_ivec *out,
                          loom_err *err)
{
    if (n == 0) return LOOM_OK;
    if (m->ignore_merges) {
        int32_t id = tk_strmap_get(&m->vocab, w, n);
        if (id >= 0) {
            if (!tk_ivec_push(out, id)) return loom_err_set(err, LOOM_ENOMEM, "out of memory encoding");
            return LOOM_OK;
        }
    }
    if (n > TK_BPE_CACHE_MAX_WORD || ++sc->words <= TK_BPE_CACHE_AFTER) return merge_word(m, w, n, sc, out, err);
    if (!sc->cache && !(sc->cache = calloc(TK_BPE_CACHE_SLOTS, sizeof *sc->cache)))
        return loom_err_set(err, LOOM_ENOMEM, "out of memory encoding");
    uint64_t h = word_hash(w, n);
    struct tk_bpe_cached *c = cache_slot(sc, w, n, h);
    if (c->key_len) {
        if (!tk_ivec_reserve(out, c->n_ids)) return loom_err_set(err, LOOM_ENOMEM, "out of memory encoding");
        memcpy(out->p + out->len, sc->cache_ids.p + c->ids_off, c->n_ids * sizeof(int32_t));
        out->len += c->n_ids;
        return LOOM_OK;
    }
    size_t first = out->len;
    LOOM_CHECK(merge_word(m, w, n, sc, out, err));
    if (sc->cache_used < TK_BPE_CACHE_SLOTS / 2 && sc->cache_keys.len + n < UINT32_MAX &&
        sc->cache_ids.len + (out->len - first) < UINT32_MAX) {
        size_t k = out->len - first;
        if (tk_buf_append(&sc->cache_keys, w, n) && tk_ivec_reserve(&sc->cache_ids, k)) {
            memcpy(sc->cache_ids.p + sc->cache_ids.len, out->p + first, k * sizeof(int32_t));
            *c = (struct tk_bpe_cached){h, (uint32_t)(sc->cache_keys.len - n), (uint32_t)n,
                                        (uint32_t)sc->cache_ids.len, (uint32_t)k};
            sc->cache_ids.len += k;
            sc->cache_used++;
        }
    }
    return LOOM_OK;
}

/* model.rs merge_word + word.rs merge_all. */
static loom_status merge_word(const tk_bpe *m, const char *w, size_t n, tk_bpe_scratch *sc, tk_ivec *out,
                              loom_err *err)
{
    size_t nsym = 0;
    LOOM_CHECK(split_chars(m, w, n, sc, &nsym, err));
    struct tk_bpe_sym *sym = sc->sym;

    /* word.rs merge_all: a min-heap on (rank, pos); stale entries are
     * recognised by re-looking up the pair and comparing the merged id. */
    if (nsym > 1) {
        if (sc->heap_cap < 2 * nsym) {
            struct tk_bpe_merge *h = realloc(sc->heap, 2 * nsym * sizeof *h);
            if (!h) return loom_err_set(err, LOOM_ENOMEM, "out of memory encoding");
            sc->heap = h;
            sc->heap_cap = 2 * nsym;
        }
        struct tk_bpe_merge *heap = sc->heap;
        size_t hn = 0;
        for (size_t i = 0; i + 1 < nsym; i++) {
            uint32_t rank;
            int32_t merged;
            if (tk_pairmap_get(&m->merges, sym[i].id, sym[i + 1].id, &rank, &merged))
                heap_push(heap, &hn, (struct tk_bpe_merge){rank, (uint32_t)i, merged});
        }
        while (hn > 0) {
            struct tk_bpe_merge top = heap_pop(heap, &hn);
            struct tk_bpe_sym *cur = &sym[top.pos];
            if (cur->len == 0 || cur->next < 0) continue;
            struct tk_bpe_sym right = sym[cur->next];
            uint32_t rank;
            int32_t merged;
            if (!tk_pairmap_get(&m->merges, cur->id, right.id, &rank, &merged) || merged != top.merged) continue;
            sym[cur->next].len = 0;
            cur->id = top.merged;
            cur->len += right.len;
            cur->next = right.next;
            if (right.next >= 0) sym[right.next].prev = (int32_t)top.pos;
            /* Each merge removes a symbol and pushes at most two entries, so
             * the heap never holds more than 2 * nsym. */
            if (cur->prev >= 0 &&
                tk_pairmap_get(&m->merges, sym[cur->prev].id, cur->id, &rank, &merged))
                heap_push(heap, &hn, (struct tk_bpe_merge){rank, (uint32_t)cur->prev, merged});
            if (cur->next >= 0 && tk_pairmap_get(&m->merges, cur->id, sym[cur->next].id, &rank, &merged))
                heap_push(heap, &hn, (struct tk_bpe_merge){rank, top.pos, merged});
        }
    }
    if (!tk_ivec_reserve(out, nsym)) return loom_err_set(err, LOOM_ENOMEM, "out of memory encoding");
    for (size_t i = 0; i < nsym; i++)
        if (sym[i].len != 0) out->p[out->len++] = sym[i].id;
    return LOOM_OK;
}
