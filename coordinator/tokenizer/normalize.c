/* Normalizers. A Sequence is flattened into one list of steps at load; each
 * step rewrites the whole string (ping-ponging between two buffers). NFC and
 * friends skip pure-ASCII input, which they would leave unchanged. */
#include "normalize.h"

#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

enum norm_kind { NORM_UNICODE, NORM_PREPEND, NORM_REPLACE };

struct norm_step {
    enum norm_kind kind;
    int utf8proc_opts;  /* NORM_UNICODE: UTF8PROC_* flags */
    char *str;          /* PREPEND: text to prepend; REPLACE: literal pattern */
    size_t str_len;
    char *content;      /* REPLACE: replacement */
    size_t content_len;
    tk_regex *re;       /* REPLACE with a Regex pattern, else NULL */
};

struct tk_normalizer {
    struct norm_step *steps;
    size_t n, cap;
};

void tk_normalizer_free(tk_normalizer *n)
{
    if (!n) return;
    for (size_t i = 0; i < n->n; i++) {
        free(n->steps[i].str);
        free(n->steps[i].content);
        tk_regex_free(n->steps[i].re);
    }
    free(n->steps);
    free(n);
}

static char *dup_bytes(const char *s, size_t n)
{
    char *p = malloc(n + 1);
    if (p) {
        memcpy(p, s, n);
        p[n] = '\0';
    }
    return p;
}

static loom_status get_string(json_t *obj, const char *key, const char *what, const char **s,
                              size_t *n, loom_err *err)
{
    json_t *v = json_object_get(obj, key);
    if (!json_is_string(v))
        return loom_err_set(err, LOOM_EINVAL, "normalizer %s: field \"%s\" must be a string", what, key);
    *s = json_string_value(v);
    *n = json_string_length(v);
    return LOOM_OK;
}

static loom_status add_step(tk_normalizer *n, struct norm_step st, loom_err *err)
{
    if (n->n == n->cap) {
        size_t cap = n->cap ? n->cap * 2 : 4;
        struct norm_step *v = realloc(n->steps, cap * sizeof *v);
        if (!v) {
            free(st.str);
            free(st.content);
            tk_regex_free(st.re);
            return loom_err_set(err, LOOM_ENOMEM, "out of memory parsing normalizer");
        }
        n->steps = v;
        n->cap = cap;
    }
    n->steps[n->n++] = st;
    return LOOM_OK;
}

static loom_status parse_into(tk_normalizer *n, json_t *j, int depth, loom_err *err)
{
    if (depth > 16) return loom_err_set(err, LOOM_EINVAL, "normalizer Sequence nested too deeply");
    if (!json_is_object(j)) return loom_err_set(err, LOOM_EINVAL, "normalizer must be an object or null");
    const char *type = json_string_value(json_object_get(j, "type"));
    if (!type) return loom_err_set(err, LOOM_EINVAL, "normalizer without a string \"type\"");
    struct norm_step st = {0};
    if (strcmp(type, "Sequence") == 0) {
        json_t *arr = json_object_get(j, "normalizers");
        if (!json_is_array(arr))
            return loom_err_set(err, LOOM_EINVAL, "normalizer Sequence: \"normalizers\" must be an array");
        size_t i;
        json_t *child;
        json_array_foreach(arr, i, child) LOOM_CHECK(parse_into(n, child, depth + 1, err));
        return LOOM_OK;
    }
    if (strcmp(type, "NFC") == 0) {
        st.kind = NORM_UNICODE;
        st.utf8proc_opts = UTF8PROC_STABLE | UTF8PROC_COMPOSE;
    } else if (strcmp(type, "NFD") == 0) {
        st.kind = NORM_UNICODE;
        st.utf8proc_opts = UTF8PROC_STABLE | UTF8PROC_DECOMPOSE;
    } else if (strcmp(type, "NFKC") == 0) {
        st.kind = NORM_UNICODE;
        st.utf8proc_opts = UTF8PROC_STABLE | UTF8PROC_COMPOSE | UTF8PROC_COMPAT;
    } else if (strcmp(type, "NFKD") == 0) {
        st.kind = NORM_UNICODE;
        st.utf8proc_opts = UTF8PROC_STABLE | UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT;
    } else if (strcmp(type, "Prepend") == 0) {
        const char *s = NULL;
        size_t len = 0;
        LOOM_CHECK(get_string(j, "prepend", "Prepend", &s, &len, err));
        st.kind = NORM_PREPEND;
        st.str = dup_bytes(s, len);
        st.str_len = len;
        if (!st.str) return loom_err_set(err, LOOM_ENOMEM, "out of memory parsing normalizer");
    } else if (strcmp(type, "Replace") == 0) {
        const char *c = NULL, *p;
        size_t clen = 0, plen;
        LOOM_CHECK(get_string(j, "content", "Replace", &c, &clen, err));
        json_t *pat = json_object_get(j, "pattern");
        json_t *ps = json_object_get(pat, "String"), *pr = json_object_get(pat, "Regex");
        st.kind = NORM_REPLACE;
        if (json_is_string(ps)) {
            p = json_string_value(ps);
            plen = json_string_length(ps);
            if (plen == 0)
                return loom_err_set(err, LOOM_EINVAL, "normalizer Replace: empty pattern");
            st.str = dup_bytes(p, plen);
            st.str_len = plen;
            if (!st.str) return loom_err_set(err, LOOM_ENOMEM, "out of memory parsing normalizer");
        } else if (json_is_string(pr)) {
            LOOM_CHECK(tk_regex_compile(json_string_value(pr), json_string_length(pr), false, &st.re, err));
        } else {
            return loom_err_set(err, LOOM_EINVAL,
                                "normalizer Replace: \"pattern\" must be {\"String\": ...} or {\"Regex\": ...}");
        }
        st.content = dup_bytes(c, clen);
        st.content_len = clen;
        if (!st.content) {
            free(st.str);
            tk_regex_free(st.re);
            return loom_err_set(err, LOOM_ENOMEM, "out of memory parsing normalizer");
        }
    } else {
        return loom_err_set(err, LOOM_EUNSUPPORTED, "unsupported normalizer type %s in tokenizer.json", type);
    }
    return add_step(n, st, err);
}

loom_status tk_normalizer_parse(json_t *j, tk_normalizer **out, loom_err *err)
{
    *out = NULL;
    if (!j || json_is_null(j)) return LOOM_OK;
    tk_normalizer *n = calloc(1, sizeof *n);
    if (!n) return loom_err_set(err, LOOM_ENOMEM, "out of memory parsing normalizer");
    loom_status st = parse_into(n, j, 0, err);
    if (st != LOOM_OK) {
        tk_normalizer_free(n);
        return st;
    }
    *out = n;
    return LOOM_OK;
}

static bool all_ascii(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] >= 0x80) return false;
    return true;
}

/* Applies one step: src[0..n) -> dst (cleared first). */
static loom_status apply(const struct norm_step *st, tk_match *m, const char *src, size_t n, tk_buf *dst,
                         loom_err *err)
{
    dst->len = 0;
    switch (st->kind) {
    case NORM_UNICODE: {
        if (all_ascii(src, n)) {
            if (!tk_buf_append(dst, src, n)) goto nomem;
            return LOOM_OK;
        }
        utf8proc_uint8_t *out = NULL;
        utf8proc_ssize_t r = utf8proc_map((const utf8proc_uint8_t *)src, (utf8proc_ssize_t)n, &out,
                                          (utf8proc_option_t)st->utf8proc_opts);
        if (r < 0) {
            free(out);
            return loom_err_set(err, LOOM_EINVAL, "unicode normalization failed: %s",
                                utf8proc_errmsg(r));
        }
        bool ok = tk_buf_append(dst, out, (size_t)r);
        free(out);
        if (!ok) goto nomem;
        return LOOM_OK;
    }
    case NORM_PREPEND:
        if (n > 0 && !(tk_buf_append(dst, st->str, st->str_len) && tk_buf_append(dst, src, n))) goto nomem;
        return LOOM_OK;
    case NORM_REPLACE:
        if (st->re) {
            tk_spans sp = {0};
            loom_status s = tk_regex_spans(st->re, m, src, n, &sp, err);
            for (size_t i = 0; s == LOOM_OK && i < sp.n; i++) {
                bool ok = sp.v[i].is_match
                              ? tk_buf_append(dst, st->content, st->content_len)
                              : tk_buf_append(dst, src + sp.v[i].start, sp.v[i].end - sp.v[i].start);
                if (!ok) s = loom_err_set(err, LOOM_ENOMEM, "out of memory normalizing text");
            }
            free(sp.v);
            return s;
        }
        for (size_t i = 0; i < n;) {
            const char *hit = memmem(src + i, n - i, st->str, st->str_len);
            size_t upto = hit ? (size_t)(hit - src) : n;
            if (!tk_buf_append(dst, src + i, upto - i)) goto nomem;
            if (!hit) break;
            if (!tk_buf_append(dst, st->content, st->content_len)) goto nomem;
            i = upto + st->str_len;
        }
        return LOOM_OK;
    }
    return loom_err_set(err, LOOM_EINTERNAL, "bad normalizer step");
nomem:
    return loom_err_set(err, LOOM_ENOMEM, "out of memory normalizing text");
}

loom_status tk_normalize(const tk_normalizer *n, tk_match *m, const char *s, size_t len, tk_buf *out,
                         tk_buf *tmp, loom_err *err)
{
    out->len = 0;
    if (!n || n->n == 0) {
        if (!tk_buf_append(out, s, len)) return loom_err_set(err, LOOM_ENOMEM, "out of memory normalizing text");
        return LOOM_OK;
    }
    /* Route the steps so the last one writes into out. */
    tk_buf *bufs[2] = {out, tmp};
    size_t k = (n->n % 2 == 1) ? 0 : 1;
    const char *src = s;
    size_t src_len = len;
    for (size_t i = 0; i < n->n; i++) {
        tk_buf *dst = bufs[k];
        LOOM_CHECK(apply(&n->steps[i], m, src, src_len, dst, err));
        src = dst->p;
        src_len = dst->len;
        k ^= 1;
    }
    return LOOM_OK;
}
