/* Decoding. A decoder chain is a list of steps; tokens enter step 0 and each
 * step passes its output on. Steps after a fusing step (ByteLevel, Fuse) see
 * one growing token in chunks and hold back only what later input could still
 * change (a partial UTF-8 sequence, trailing Strip characters, a pending
 * ByteFallback group), so streamed pieces concatenate to the full decode. */
#include "decode.h"

#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "bytelevel.h"
#include "tokenizer_int.h"
#include "utf8.h"

enum dec_kind { DK_BYTELEVEL, DK_REPLACE, DK_BYTEFALLBACK, DK_FUSE, DK_STRIP, DK_METASPACE, DK_JOIN };

struct dec_step {
    enum dec_kind kind;
    bool fused_in;        /* input is chunks of one fused token */
    char *pat;            /* REPLACE pattern */
    size_t pat_len;
    char *rep;            /* REPLACE content */
    size_t rep_len;
    char ch[4];           /* STRIP content / METASPACE replacement, UTF-8 */
    size_t ch_len;
    size_t start, stop;   /* STRIP counts */
    bool prepend;         /* METASPACE: prepend_scheme != never */
};

struct tk_decoder {
    struct dec_step *steps;
    size_t n, cap;
};

struct dec_state {
    tk_buf hold;      /* held-back input: bytes (BYTELEVEL, BYTEFALLBACK), text (REPLACE, STRIP) */
    tk_buf scratch;   /* this step's output before it is passed on */
    size_t index;     /* tokens seen (METASPACE, JOIN) */
    size_t lead;      /* STRIP: leading chars stripped so far */
    bool lead_done;   /* STRIP: met a non-strip char */
};

struct loom_detok {
    const loom_tokenizer *tok;
    bool skip_special;
    struct dec_state *st; /* (dec->n) */
    tk_buf out;           /* text produced by the current call */
};

static const char FFFD[] = "\xEF\xBF\xBD";

/* ---- parsing ------------------------------------------------------------ */

void tk_decoder_free(tk_decoder *d)
{
    if (!d) return;
    for (size_t i = 0; i < d->n; i++) {
        free(d->steps[i].pat);
        free(d->steps[i].rep);
    }
    free(d->steps);
    free(d);
}

static loom_status add_step(tk_decoder *d, struct dec_step st, loom_err *err)
{
    if (d->n == d->cap) {
        size_t cap = d->cap ? d->cap * 2 : 4;
        struct dec_step *v = realloc(d->steps, cap * sizeof *v);
        if (!v) {
            free(st.pat);
            free(st.rep);
            return loom_err_set(err, LOOM_ENOMEM, "out of memory parsing decoder");
        }
        d->steps = v;
        d->cap = cap;
    }
    d->steps[d->n++] = st;
    return LOOM_OK;
}

static loom_status get_char(json_t *j, const char *key, const char *what, struct dec_step *st, loom_err *err)
{
    json_t *v = json_object_get(j, key);
    const char *s = json_string_value(v);
    size_t n = json_string_length(v);
    if (!s || n == 0 || n > 4 || tk_utf8_len((unsigned char)s[0]) != n)
        return loom_err_set(err, LOOM_EINVAL, "decoder %s: \"%s\" must be a one-character string", what, key);
    memcpy(st->ch, s, n);
    st->ch_len = n;
    return LOOM_OK;
}

static loom_status get_count(json_t *j, const char *key, size_t *out, loom_err *err)
{
    json_t *v = json_object_get(j, key);
    if (!json_is_integer(v) || json_integer_value(v) < 0)
        return loom_err_set(err, LOOM_EINVAL, "decoder Strip: \"%s\" must be a non-negative integer", key);
    *out = (size_t)json_integer_value(v);
    return LOOM_OK;
}

static char *dup_bytes(const char *s, size_t n)
{
    char *p = malloc(n + 1);
    if (p) {
        if (n) memcpy(p, s, n);
        p[n] = '\0';
    }
    return p;
}

static loom_status parse_into(tk_decoder *d, json_t *j, int depth, loom_err *err)
{
    if (depth > 16) return loom_err_set(err, LOOM_EINVAL, "decoder Sequence nested too deeply");
    if (!json_is_object(j)) return loom_err_set(err, LOOM_EINVAL, "decoder must be an object or null");
    const char *type = json_string_value(json_object_get(j, "type"));
    if (!type) return loom_err_set(err, LOOM_EINVAL, "decoder without a string \"type\"");
    struct dec_step st = {0};
    if (strcmp(type, "Sequence") == 0) {
        json_t *arr = json_object_get(j, "decoders");
        if (!json_is_array(arr))
            return loom_err_set(err, LOOM_EINVAL, "decoder Sequence: \"decoders\" must be an array");
        size_t i;
        json_t *child;
        json_array_foreach(arr, i, child) LOOM_CHECK(parse_into(d, child, depth + 1, err));
        return LOOM_OK;
    }
    if (strcmp(type, "ByteLevel") == 0) {
        st.kind = DK_BYTELEVEL;
    } else if (strcmp(type, "ByteFallback") == 0) {
        st.kind = DK_BYTEFALLBACK;
    } else if (strcmp(type, "Fuse") == 0) {
        st.kind = DK_FUSE;
    } else if (strcmp(type, "Strip") == 0) {
        st.kind = DK_STRIP;
        LOOM_CHECK(get_char(j, "content", type, &st, err));
        LOOM_CHECK(get_count(j, "start", &st.start, err));
        LOOM_CHECK(get_count(j, "stop", &st.stop, err));
    } else if (strcmp(type, "Metaspace") == 0) {
        st.kind = DK_METASPACE;
        LOOM_CHECK(get_char(j, "replacement", type, &st, err));
        st.prepend = true;
        json_t *ps = json_object_get(j, "prepend_scheme");
        if (ps && !json_is_null(ps)) {
            const char *s = json_string_value(ps);
            if (!s || (strcmp(s, "always") && strcmp(s, "first") && strcmp(s, "never")))
                return loom_err_set(err, LOOM_EINVAL, "decoder Metaspace: bad \"prepend_scheme\"");
            st.prepend = strcmp(s, "never") != 0;
        }
        json_t *aps = json_object_get(j, "add_prefix_space");
        if (aps && !json_is_null(aps) && (!json_is_boolean(aps) || json_is_true(aps) != st.prepend))
            return loom_err_set(err, LOOM_EINVAL, "Metaspace: add_prefix_space does not match prepend_scheme");
    } else if (strcmp(type, "Replace") == 0) {
        st.kind = DK_REPLACE;
        json_t *content = json_object_get(j, "content");
        json_t *ps = json_object_get(json_object_get(j, "pattern"), "String");
        if (!json_is_string(content))
            return loom_err_set(err, LOOM_EINVAL, "decoder Replace: \"content\" must be a string");
        if (!json_is_string(ps) || json_string_length(ps) == 0)
            return loom_err_set(err, LOOM_EUNSUPPORTED,
                                "decoder Replace: only non-empty {\"String\": ...} patterns are supported");
        st.pat = dup_bytes(json_string_value(ps), json_string_length(ps));
        st.pat_len = json_string_length(ps);
        st.rep = dup_bytes(json_string_value(content), json_string_length(content));
        st.rep_len = json_string_length(content);
        if (!st.pat || !st.rep) {
            free(st.pat);
            free(st.rep);
            return loom_err_set(err, LOOM_ENOMEM, "out of memory parsing decoder");
        }
    } else {
        return loom_err_set(err, LOOM_EUNSUPPORTED, "unsupported decoder type %s in tokenizer.json", type);
    }
    return add_step(d, st, err);
}

loom_status tk_decoder_parse(json_t *j, tk_decoder **out, loom_err *err)
{
    *out = NULL;
    tk_decoder *d = calloc(1, sizeof *d);
    if (!d) return loom_err_set(err, LOOM_ENOMEM, "out of memory parsing decoder");
    loom_status st;
    if (!j || json_is_null(j)) st = add_step(d, (struct dec_step){.kind = DK_JOIN}, err);
    else st = parse_into(d, j, 0, err);
    bool fused = false;
    for (size_t i = 0; st == LOOM_OK && i < d->n; i++) {
        struct dec_step *s = &d->steps[i];
        s->fused_in = fused;
        if (fused && (s->kind == DK_BYTELEVEL || s->kind == DK_BYTEFALLBACK))
            st = loom_err_set(err, LOOM_EUNSUPPORTED, "unsupported decoder chain: %s after ByteLevel or Fuse",
                              s->kind == DK_BYTELEVEL ? "ByteLevel" : "ByteFallback");
        if (s->kind == DK_BYTELEVEL || s->kind == DK_FUSE) fused = true;
    }
    if (st != LOOM_OK) {
        tk_decoder_free(d);
        return st;
    }
    *out = d;
    return LOOM_OK;
}

/* ---- streaming steps ---------------------------------------------------- */

#define NOMEM() loom_err_set(err, LOOM_ENOMEM, "out of memory decoding")

static loom_status push(loom_detok *d, size_t k, const char *s, size_t n, loom_err *err);

/* Passes output of step k on (to step k+1 or the caller's text). */
static loom_status emit(loom_detok *d, size_t k, const char *s, size_t n, loom_err *err)
{
    if (k + 1 < d->tok->dec->n) return push(d, k + 1, s, n, err);
    if (!tk_buf_append(&d->out, s, n)) return NOMEM();
    return LOOM_OK;
}

/* Rust String::from_utf8_lossy over b[0..n): appends text to out and returns
 * how many bytes were consumed; an incomplete sequence at the end is left
 * unconsumed unless final, where it becomes one U+FFFD. */
static bool lossy_utf8(const unsigned char *b, size_t n, bool final, tk_buf *out, size_t *consumed)
{
    size_t i = 0;
    while (i < n) {
        unsigned char c = b[i];
        if (c < 0x80) {
            size_t j = i + 1;
            while (j < n && b[j] < 0x80) j++;
            if (!tk_buf_append(out, b + i, j - i)) return false;
            i = j;
            continue;
        }
        size_t width;
        unsigned char lo = 0x80, hi = 0xBF;
        if (c >= 0xC2 && c <= 0xDF) width = 2;
        else if (c >= 0xE0 && c <= 0xEF) {
            width = 3;
            if (c == 0xE0) lo = 0xA0;
            if (c == 0xED) hi = 0x9F;
        } else if (c >= 0xF0 && c <= 0xF4) {
            width = 4;
            if (c == 0xF0) lo = 0x90;
            if (c == 0xF4) hi = 0x8F;
        } else {
            if (!tk_buf_append(out, FFFD, 3)) return false;
            i++;
            continue;
        }
        size_t k = 1;
        for (; k < width; k++) {
            if (i + k >= n) break;
            unsigned char x = b[i + k];
            bool ok = k == 1 ? (x >= lo && x <= hi) : (x & 0xC0) == 0x80;
            if (!ok) break;
        }
        if (k == width) {
            if (!tk_buf_append(out, b + i, width)) return false;
            i += width;
        } else if (i + k >= n) { /* ran out of input mid-sequence */
            if (!final) break;
            if (!tk_buf_append(out, FFFD, 3)) return false;
            i = n;
        } else { /* invalid byte at i + k: the maximal prefix becomes one U+FFFD */
            if (!tk_buf_append(out, FFFD, 3)) return false;
            i += k;
        }
    }
    *consumed = i;
    return true;
}

/* Replaces every pat in s[0..n) by rep, appending to out. */
static bool replace_all(const struct dec_step *sp, const char *s, size_t n, tk_buf *out)
{
    for (size_t i = 0; i < n;) {
        const char *hit = memmem(s + i, n - i, sp->pat, sp->pat_len);
        size_t upto = hit ? (size_t)(hit - s) : n;
        if (!tk_buf_append(out, s + i, upto - i)) return false;
        if (!hit) break;
        if (!tk_buf_append(out, sp->rep, sp->rep_len)) return false;
        i = upto + sp->pat_len;
    }
    return true;
}

static bool is_byte_token(const char *s, size_t n, unsigned char *byte)
{
    /* ByteFallback decoder: exactly "<0x" two hex digits ">" */
    if (n != 6 || memcmp(s, "<0x", 3) != 0 || s[5] != '>') return false;
    int v = 0;
    for (int i = 3; i < 5; i++) {
        char c = s[i];
        int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10
              : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
        if (d < 0) return false;
        v = v * 16 + d;
    }
    *byte = (unsigned char)v;
    return true;
}

static loom_status flush_byte_group(loom_detok *d, size_t k, loom_err *err)
{
    struct dec_state *st = &d->st[k];
    if (st->hold.len == 0) return LOOM_OK;
    loom_status s = LOOM_OK;
    if (tk_utf8_valid(st->hold.p, st->hold.len, NULL)) {
        /* emit from scratch: hold must be empty before downstream runs */
        st->scratch.len = 0;
        if (!tk_buf_append(&st->scratch, st->hold.p, st->hold.len)) return NOMEM();
        st->hold.len = 0;
        s = emit(d, k, st->scratch.p, st->scratch.len, err);
    } else {
        size_t nbytes = st->hold.len;
        st->hold.len = 0;
        for (size_t i = 0; s == LOOM_OK && i < nbytes; i++) s = emit(d, k, FFFD, 3, err);
    }
    return s;
}

/* Strips up to `start` leading sp->ch from the token/stream start. */
static size_t strip_lead(const struct dec_step *sp, struct dec_state *st, const char *s, size_t n)
{
    size_t i = 0;
    while (!st->lead_done && i < n) {
        if (st->lead < sp->start && n - i >= sp->ch_len && memcmp(s + i, sp->ch, sp->ch_len) == 0) {
            st->lead++;
            i += sp->ch_len;
        } else {
            st->lead_done = true;
        }
    }
    return i;
}

/* Length of the trailing run of sp->ch in s[0..n), in bytes. */
static size_t trailing_run(const struct dec_step *sp, const char *s, size_t n)
{
    size_t e = n;
    while (e >= sp->ch_len && memcmp(s + e - sp->ch_len, sp->ch, sp->ch_len) == 0) e -= sp->ch_len;
    return n - e;
}

static loom_status push(loom_detok *d, size_t k, const char *s, size_t n, loom_err *err)
{
    const struct dec_step *sp = &d->tok->dec->steps[k];
    struct dec_state *st = &d->st[k];
    tk_buf *o = &st->scratch;
    switch (sp->kind) {
    case DK_BYTELEVEL: {
        /* bytes of the token, or its raw UTF-8 if any char is outside the map */
        size_t start = st->hold.len;
        bool mapped = true;
        if (!tk_buf_reserve(&st->hold, n)) return NOMEM();
        for (size_t i = 0; i < n;) {
            uint32_t cp;
            i += tk_utf8_decode(s + i, &cp);
            int b = tk_bytelevel_byte(cp);
            if (b < 0) {
                mapped = false;
                break;
            }
            st->hold.p[st->hold.len++] = (char)b;
        }
        if (!mapped) {
            st->hold.len = start;
            if (!tk_buf_append(&st->hold, s, n)) return NOMEM();
        }
        o->len = 0;
        size_t used;
        if (!lossy_utf8((const unsigned char *)st->hold.p, st->hold.len, false, o, &used)) return NOMEM();
        memmove(st->hold.p, st->hold.p + used, st->hold.len - used);
        st->hold.len -= used;
        return o->len ? emit(d, k, o->p, o->len, err) : LOOM_OK;
    }
    case DK_REPLACE:
        o->len = 0;
        if (!sp->fused_in) {
            if (!replace_all(sp, s, n, o)) return NOMEM();
            return emit(d, k, o->p, o->len, err);
        }
        /* chunked: hold back a suffix that may be the start of a match */
        if (!tk_buf_append(&st->hold, s, n)) return NOMEM();
        {
            size_t keep = 0;
            size_t max = st->hold.len < sp->pat_len - 1 ? st->hold.len : sp->pat_len - 1;
            for (size_t l = max; l > 0; l--)
                if (memcmp(st->hold.p + st->hold.len - l, sp->pat, l) == 0) {
                    keep = l;
                    break;
                }
            /* a held suffix never overlaps a full match ending later: matches
             * are found left to right and the suffix is shorter than pat */
            size_t body = st->hold.len - keep;
            size_t i = 0;
            while (i < body) {
                const char *hit = memmem(st->hold.p + i, st->hold.len - i, sp->pat, sp->pat_len);
                if (!hit || (size_t)(hit - st->hold.p) >= body) break;
                size_t at = (size_t)(hit - st->hold.p);
                if (!tk_buf_append(o, st->hold.p + i, at - i) || !tk_buf_append(o, sp->rep, sp->rep_len))
                    return NOMEM();
                i = at + sp->pat_len;
            }
            if (i < body && !tk_buf_append(o, st->hold.p + i, body - i)) return NOMEM();
            size_t rest = i > body ? i : body;
            memmove(st->hold.p, st->hold.p + rest, st->hold.len - rest);
            st->hold.len -= rest;
        }
        return o->len ? emit(d, k, o->p, o->len, err) : LOOM_OK;
    case DK_BYTEFALLBACK: {
        unsigned char byte;
        if (is_byte_token(s, n, &byte)) {
            if (!tk_buf_append(&st->hold, &byte, 1)) return NOMEM();
            return LOOM_OK;
        }
        LOOM_CHECK(flush_byte_group(d, k, err));
        return emit(d, k, s, n, err);
    }
    case DK_FUSE:
        return n ? emit(d, k, s, n, err) : LOOM_OK;
    case DK_STRIP: {
        if (!sp->fused_in) {
            st->lead = 0;
            st->lead_done = false;
            size_t a = strip_lead(sp, st, s, n);
            size_t e = n;
            for (size_t i = 0; i < sp->stop && e >= a + sp->ch_len &&
                               memcmp(s + e - sp->ch_len, sp->ch, sp->ch_len) == 0; i++)
                e -= sp->ch_len;
            return emit(d, k, s + a, e - a, err);
        }
        size_t a = strip_lead(sp, st, s, n);
        s += a;
        n -= a;
        if (sp->stop == 0) return n ? emit(d, k, s, n, err) : LOOM_OK;
        /* hold the trailing run of strip chars until something else follows */
        size_t run = trailing_run(sp, s, n);
        o->len = 0;
        if (run < n) {
            if (!tk_buf_append(o, st->hold.p, st->hold.len) || !tk_buf_append(o, s, n - run)) return NOMEM();
            st->hold.len = 0;
        }
        if (!tk_buf_append(&st->hold, s + n - run, run)) return NOMEM();
        return o->len ? emit(d, k, o->p, o->len, err) : LOOM_OK;
    }
    case DK_METASPACE: {
        bool first = sp->fused_in || st->index == 0;
        st->index++;
        o->len = 0;
        for (size_t i = 0; i < n;) {
            size_t cl = tk_utf8_len((unsigned char)s[i]);
            if (cl == sp->ch_len && memcmp(s + i, sp->ch, cl) == 0) {
                if (!(first && sp->prepend) && !tk_buf_append(o, " ", 1)) return NOMEM();
            } else if (!tk_buf_append(o, s + i, cl)) {
                return NOMEM();
            }
            i += cl;
        }
        if (sp->fused_in && o->len == 0) return LOOM_OK;
        return emit(d, k, o->p, o->len, err);
    }
    case DK_JOIN:
        if (st->index++ > 0) LOOM_CHECK(emit(d, k, " ", 1, err));
        return emit(d, k, s, n, err);
    }
    return loom_err_set(err, LOOM_EINTERNAL, "bad decoder step");
}

/* End of stream: flush what step k holds, then the steps after it. */
static loom_status finish(loom_detok *d, size_t k, loom_err *err)
{
    const tk_decoder *dec = d->tok->dec;
    if (k >= dec->n) return LOOM_OK;
    const struct dec_step *sp = &dec->steps[k];
    struct dec_state *st = &d->st[k];
    tk_buf *o = &st->scratch;
    o->len = 0;
    switch (sp->kind) {
    case DK_BYTELEVEL:
        if (st->hold.len) {
            size_t used;
            if (!lossy_utf8((const unsigned char *)st->hold.p, st->hold.len, true, o, &used)) return NOMEM();
            st->hold.len = 0;
        }
        break;
    case DK_REPLACE:
    case DK_STRIP:
        if (sp->kind == DK_STRIP) {
            size_t drop = 0;
            for (size_t i = 0; i < sp->stop && drop + sp->ch_len <= st->hold.len; i++) drop += sp->ch_len;
            st->hold.len -= drop;
        }
        if (!tk_buf_append(o, st->hold.p, st->hold.len)) return NOMEM();
        st->hold.len = 0;
        break;
    case DK_BYTEFALLBACK:
        LOOM_CHECK(flush_byte_group(d, k, err));
        o->len = 0; /* flush_byte_group already passed it on */
        break;
    default:
        break;
    }
    if (o->len) LOOM_CHECK(emit(d, k, o->p, o->len, err));
    return finish(d, k + 1, err);
}

/* ---- public API --------------------------------------------------------- */

static loom_status detok_init(loom_detok *d, const loom_tokenizer *tok, bool skip_special)
{
    memset(d, 0, sizeof *d);
    d->tok = tok;
    d->skip_special = skip_special;
    d->st = calloc(tok->dec->n, sizeof *d->st);
    return d->st ? LOOM_OK : LOOM_ENOMEM;
}

static void detok_fini(loom_detok *d)
{
    if (d->st) {
        for (size_t i = 0; i < d->tok->dec->n; i++) {
            tk_buf_free(&d->st[i].hold);
            tk_buf_free(&d->st[i].scratch);
        }
    }
    free(d->st);
    tk_buf_free(&d->out);
}

static loom_status detok_id(loom_detok *d, int32_t id, loom_err *err)
{
    const loom_tokenizer *tok = d->tok;
    if (id < 0 || id >= tok->vocab_size || !tok->id_str[id])
        return loom_err_set(err, LOOM_EINVAL, "token id %d is not in the vocabulary", (int)id);
    if (d->skip_special && tok->special[id]) return LOOM_OK;
    return push(d, 0, tok->id_str[id], tok->id_len[id], err);
}

loom_status loom_tokenizer_decode(const loom_tokenizer *tok, const int32_t *ids, size_t n_ids, bool skip_special,
                                  char **text, size_t *len, loom_err *err)
{
    if (!tok || (!ids && n_ids) || !text || !len)
        return loom_err_set(err, LOOM_EINVAL, "loom_tokenizer_decode: NULL argument");
    *text = NULL;
    *len = 0;
    loom_detok d;
    if (detok_init(&d, tok, skip_special) != LOOM_OK) return NOMEM();
    loom_status st = LOOM_OK;
    for (size_t i = 0; st == LOOM_OK && i < n_ids; i++) st = detok_id(&d, ids[i], err);
    if (st == LOOM_OK) st = finish(&d, 0, err);
    if (st == LOOM_OK && !tk_buf_nul(&d.out)) st = NOMEM();
    if (st == LOOM_OK) {
        *text = d.out.p;
        *len = d.out.len;
        d.out.p = NULL;
    }
    detok_fini(&d);
    return st;
}

loom_detok *loom_detok_create(const loom_tokenizer *tok, bool skip_special)
{
    if (!tok) return NULL;
    loom_detok *d = malloc(sizeof *d);
    if (!d) return NULL;
    if (detok_init(d, tok, skip_special) != LOOM_OK) {
        free(d);
        return NULL;
    }
    return d;
}

void loom_detok_destroy(loom_detok *d)
{
    if (!d) return;
    detok_fini(d);
    free(d);
}

loom_status loom_detok_push(loom_detok *d, int32_t id, const char **piece, size_t *piece_len, loom_err *err)
{
    if (!d || !piece || !piece_len) return loom_err_set(err, LOOM_EINVAL, "loom_detok_push: NULL argument");
    d->out.len = 0;
    loom_status st = detok_id(d, id, err);
    *piece = d->out.p ? d->out.p : "";
    *piece_len = st == LOOM_OK ? d->out.len : 0;
    return st;
}

loom_status loom_detok_flush(loom_detok *d, const char **piece, size_t *piece_len, loom_err *err)
{
    if (!d || !piece || !piece_len) return loom_err_set(err, LOOM_EINVAL, "loom_detok_flush: NULL argument");
    d->out.len = 0;
    loom_status st = finish(d, 0, err);
    *piece = d->out.p ? d->out.p : "";
    *piece_len = st == LOOM_OK ? d->out.len : 0;
    return st;
}
