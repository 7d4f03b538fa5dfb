/* Added-token matching (tokenizers/src/tokenizer/added_vocabulary.rs
 * find_matches). HF uses an Aho-Corasick automaton in leftmost-longest mode;
 * with tens to hundreds of tokens a first-byte bucket scan is as good. */
#include "added.h"

#include <stdlib.h>
#include <string.h>

#include "utf8.h"

static void matcher_free(struct tk_matcher *mt)
{
    for (size_t i = 0; i < mt->n; i++) free(mt->pat[i]);
    free(mt->pat);
    free(mt->pat_len);
    free(mt->tok);
    free(mt->bucket);
    memset(mt, 0, sizeof *mt);
}

void tk_added_free(tk_added *a)
{
    for (size_t i = 0; i < a->n; i++) {
        if (a->v[i].text != a->v[i].content) free(a->v[i].text);
        free(a->v[i].content);
    }
    free(a->v);
    matcher_free(&a->raw);
    matcher_free(&a->norm);
    memset(a, 0, sizeof *a);
}

struct pat_ref {
    char *p;
    size_t len, tok, order;
};

static int cmp_pat(const void *x, const void *y)
{
    const struct pat_ref *a = x, *b = y;
    unsigned char ca = (unsigned char)a->p[0], cb = (unsigned char)b->p[0];
    if (ca != cb) return ca < cb ? -1 : 1;
    if (a->len != b->len) return a->len > b->len ? -1 : 1; /* longest first */
    return a->order < b->order ? -1 : a->order > b->order;  /* then file order */
}

/* Builds a matcher over the tokens with normalized == want_norm. */
static loom_status build_matcher(tk_added *a, bool want_norm, const tk_normalizer *norm, struct tk_matcher *mt,
                                 loom_err *err)
{
    struct pat_ref *refs = calloc(a->n ? a->n : 1, sizeof *refs);
    tk_buf out = {0}, tmp = {0};
    tk_match m = {0};
    loom_status st = LOOM_OK;
    size_t k = 0;
    if (!refs) return loom_err_set(err, LOOM_ENOMEM, "out of memory loading added tokens");
    if (want_norm) LOOM_CHECK_GOTO(st, tk_match_init(&m, err), done);
    for (size_t i = 0; i < a->n; i++) {
        struct tk_added_token *t = &a->v[i];
        if (t->normalized != want_norm) continue;
        const char *p = t->content;
        size_t len = t->len;
        if (want_norm) {
            LOOM_CHECK_GOTO(st, tk_normalize(norm, &m, t->content, t->len, &out, &tmp, err), done);
            p = out.p ? out.p : "";
            len = out.len;
            /* HF's id_to_token gives the normalized form for these */
            t->text = malloc(len + 1);
            if (!t->text) {
                st = loom_err_set(err, LOOM_ENOMEM, "out of memory loading added tokens");
                goto done;
            }
            memcpy(t->text, p, len);
            t->text[len] = '\0';
            t->text_len = len;
        }
        if (len == 0) continue;
        refs[k].p = malloc(len);
        if (!refs[k].p) {
            st = loom_err_set(err, LOOM_ENOMEM, "out of memory loading added tokens");
            goto done;
        }
        memcpy(refs[k].p, p, len);
        refs[k].len = len;
        refs[k].tok = i;
        refs[k].order = i;
        k++;
    }
    qsort(refs, k, sizeof *refs, cmp_pat);
    mt->pat = calloc(k ? k : 1, sizeof *mt->pat);
    mt->pat_len = calloc(k ? k : 1, sizeof *mt->pat_len);
    mt->tok = calloc(k ? k : 1, sizeof *mt->tok);
    mt->bucket = calloc(257, sizeof *mt->bucket);
    if (!mt->pat || !mt->pat_len || !mt->tok || !mt->bucket) {
        st = loom_err_set(err, LOOM_ENOMEM, "out of memory loading added tokens");
        goto done;
    }
    for (size_t i = 0; i < k; i++) {
        mt->pat[i] = refs[i].p;
        mt->pat_len[i] = refs[i].len;
        mt->tok[i] = refs[i].tok;
        refs[i].p = NULL;
    }
    mt->n = k;
    /* bucket[b] = first pattern whose first byte is >= b */
    for (int b = 0, i = 0; b <= 256; b++) {
        while ((size_t)i < k && (unsigned char)mt->pat[i][0] < b) i++;
        mt->bucket[b] = (uint32_t)i;
    }
done:
    for (size_t i = 0; i < k; i++) free(refs[i].p);
    free(refs);
    tk_buf_free(&out);
    tk_buf_free(&tmp);
    tk_match_free(&m);
    return st;
}

static loom_status get_flag(json_t *t, const char *key, bool dflt, bool *out, size_t idx, loom_err *err)
{
    json_t *v = json_object_get(t, key);
    if (!v || json_is_null(v)) {
        *out = dflt;
        return LOOM_OK;
    }
    if (!json_is_boolean(v))
        return loom_err_set(err, LOOM_EINVAL, "added_tokens[%zu].%s must be a boolean", idx, key);
    *out = json_is_true(v);
    return LOOM_OK;
}

loom_status tk_added_parse(json_t *arr, const tk_normalizer *norm, tk_added *out, loom_err *err)
{
    memset(out, 0, sizeof *out);
    if (!arr || json_is_null(arr)) arr = NULL;
    else if (!json_is_array(arr)) return loom_err_set(err, LOOM_EINVAL, "\"added_tokens\" must be an array");
    size_t n = arr ? json_array_size(arr) : 0;
    loom_status st = LOOM_OK;
    out->v = calloc(n ? n : 1, sizeof *out->v);
    if (!out->v) return loom_err_set(err, LOOM_ENOMEM, "out of memory loading added tokens");
    for (size_t i = 0; i < n; i++) {
        json_t *t = json_array_get(arr, i);
        json_t *content = json_object_get(t, "content"), *id = json_object_get(t, "id");
        if (!json_is_object(t) || !json_is_string(content) || !json_is_integer(id) || json_integer_value(id) < 0 ||
            json_integer_value(id) >= (1 << 24)) {
            st = loom_err_set(err, LOOM_EINVAL, "added_tokens[%zu] needs a string \"content\" and an integer \"id\"", i);
            goto fail;
        }
        struct tk_added_token *tk = &out->v[out->n];
        bool special = false;
        LOOM_CHECK_GOTO(st, get_flag(t, "special", false, &special, i, err), fail);
        tk->special = special;
        LOOM_CHECK_GOTO(st, get_flag(t, "single_word", false, &tk->single_word, i, err), fail);
        LOOM_CHECK_GOTO(st, get_flag(t, "lstrip", false, &tk->lstrip, i, err), fail);
        LOOM_CHECK_GOTO(st, get_flag(t, "rstrip", false, &tk->rstrip, i, err), fail);
        LOOM_CHECK_GOTO(st, get_flag(t, "normalized", !special, &tk->normalized, i, err), fail);
        tk->len = json_string_length(content);
        tk->id = (int32_t)json_integer_value(id);
        tk->content = malloc(tk->len + 1);
        if (!tk->content) {
            st = loom_err_set(err, LOOM_ENOMEM, "out of memory loading added tokens");
            goto fail;
        }
        memcpy(tk->content, json_string_value(content), tk->len);
        tk->content[tk->len] = '\0';
        tk->text = tk->content;
        tk->text_len = tk->len;
        out->n++;
    }
    LOOM_CHECK_GOTO(st, build_matcher(out, false, norm, &out->raw, err), fail);
    LOOM_CHECK_GOTO(st, build_matcher(out, true, norm, &out->norm, err), fail);
    return LOOM_OK;
fail:
    tk_added_free(out);
    return st;
}

static bool splits_push(tk_splits *o, size_t off, size_t len, int32_t id)
{
    if (len == 0) return true;
    if (o->n == o->cap) {
        size_t cap = o->cap ? o->cap * 2 : 16;
        struct tk_split *v = realloc(o->v, cap * sizeof *v);
        if (!v) return false;
        o->v = v;
        o->cap = cap;
    }
    o->v[o->n++] = (struct tk_split){off, len, id};
    return true;
}

/* Leftmost-longest match at or after pos: returns pattern index or -1. */
static long find_next(const struct tk_matcher *mt, const char *s, size_t n, size_t pos, size_t *at)
{
    for (size_t i = pos; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        for (uint32_t p = mt->bucket[c]; p < mt->bucket[c + 1]; p++) {
            if (mt->pat_len[p] <= n - i && memcmp(s + i, mt->pat[p], mt->pat_len[p]) == 0) {
                *at = i;
                return (long)p;
            }
        }
    }
    return -1;
}

static bool ends_with_word(const char *s, size_t n)
{
    if (n == 0) return false;
    uint32_t cp;
    tk_utf8_decode(s + tk_utf8_last(s, n), &cp);
    return tk_is_word(cp);
}

static bool starts_with_word(const char *s, size_t n)
{
    if (n == 0) return false;
    uint32_t cp;
    tk_utf8_decode(s, &cp);
    return tk_is_word(cp);
}

loom_status tk_added_split(const tk_added *a, bool normalized_set, const char *s, size_t n, tk_splits *out,
                           loom_err *err)
{
    const struct tk_matcher *mt = normalized_set ? &a->norm : &a->raw;
    out->n = 0;
    size_t start_offset = 0, pos = 0, at;
    long p;
    while (mt->n > 0 && (p = find_next(mt, s, n, pos, &at)) >= 0) {
        const struct tk_added_token *t = &a->v[mt->tok[p]];
        size_t start = at, stop = at + mt->pat_len[p];
        pos = stop; /* the automaton resumes after the raw match */
        if (t->single_word) {
            bool start_space = start == 0 || !ends_with_word(s, start);
            bool stop_space = stop == n || !starts_with_word(s + stop, n - stop);
            if (!start_space || !stop_space) continue;
        }
        if (t->lstrip) {
            size_t ns = start;
            while (ns > 0) {
                size_t prev = tk_utf8_last(s, ns);
                uint32_t cp;
                tk_utf8_decode(s + prev, &cp);
                if (!tk_is_space(cp)) break;
                ns = prev;
            }
            start = ns > start_offset ? ns : start_offset;
        }
        if (t->rstrip) {
            while (stop < n) {
                uint32_t cp;
                size_t cl = tk_utf8_decode(s + stop, &cp);
                if (!tk_is_space(cp)) break;
                stop += cl;
            }
        }
        if (start_offset < start && !splits_push(out, start_offset, start - start_offset, -1)) goto nomem;
        if (!splits_push(out, start, stop - start, t->id)) goto nomem;
        start_offset = stop;
        if (pos < stop) pos = stop;
    }
    if (start_offset < n && !splits_push(out, start_offset, n - start_offset, -1)) goto nomem;
    return LOOM_OK;
nomem:
    return loom_err_set(err, LOOM_ENOMEM, "out of memory splitting added tokens");
}
