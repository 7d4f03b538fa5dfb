/* Pre-tokenizers. Each step maps a list of pieces to a new list: splits only
 * narrow pieces (no copying), while ByteLevel and Metaspace rewrite a piece's
 * text into fresh arena space. Split behaviours follow HF's
 * NormalizedString::split folds exactly. */
#include "pretokenize.h"

#include <stdlib.h>
#include <string.h>

#include <utf8proc.h>

#include "bytelevel.h"
#include "utf8.h"

/* tokenizers/src/pre_tokenizers/byte_level.rs */
static const char GPT2_PATTERN[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

enum pt_kind { PT_BYTELEVEL, PT_SPLIT, PT_METASPACE, PT_DIGITS, PT_WHITESPACE_SPLIT };
enum split_behavior { SB_REMOVED, SB_ISOLATED, SB_MERGED_PREV, SB_MERGED_NEXT, SB_CONTIGUOUS };
enum prepend_scheme { PREPEND_ALWAYS, PREPEND_FIRST, PREPEND_NEVER };

struct pt_step {
    enum pt_kind kind;
    bool add_prefix_space;         /* BYTELEVEL */
    tk_regex *re;                  /* BYTELEVEL (use_regex) and SPLIT; NULL = no split */
    enum split_behavior behavior;  /* SPLIT */
    bool invert;                   /* SPLIT */
    char repl[4];                  /* METASPACE replacement char, UTF-8 */
    size_t repl_len;
    enum prepend_scheme scheme;    /* METASPACE */
    bool split;                    /* METASPACE */
    bool individual_digits;        /* DIGITS */
};

struct tk_pretok {
    struct pt_step *steps;
    size_t n, cap;
};

void tk_pretok_free(tk_pretok *p)
{
    if (!p) return;
    for (size_t i = 0; i < p->n; i++) tk_regex_free(p->steps[i].re);
    free(p->steps);
    free(p);
}

void tk_pretok_scratch_free(tk_pretok_scratch *sc)
{
    free(sc->tmp.v);
    free(sc->spans.v);
    memset(sc, 0, sizeof *sc);
}

bool tk_pieces_push(tk_pieces *ps, size_t off, size_t len, bool first)
{
    if (ps->n == ps->cap) {
        size_t cap = ps->cap ? ps->cap * 2 : 64;
        struct tk_piece *v = realloc(ps->v, cap * sizeof *v);
        if (!v) return false;
        ps->v = v;
        ps->cap = cap;
    }
    ps->v[ps->n++] = (struct tk_piece){off, len, first};
    return true;
}

/* ---- parsing ------------------------------------------------------------ */

static loom_status get_bool(json_t *j, const char *key, bool dflt, bool *out, const char *what,
                            loom_err *err)
{
    json_t *v = json_object_get(j, key);
    if (!v || json_is_null(v)) {
        *out = dflt;
        return LOOM_OK;
    }
    if (!json_is_boolean(v))
        return loom_err_set(err, LOOM_EINVAL, "pre_tokenizer %s: \"%s\" must be a boolean", what, key);
    *out = json_is_true(v);
    return LOOM_OK;
}

static loom_status add_step(tk_pretok *p, struct pt_step st, loom_err *err)
{
    if (p->n == p->cap) {
        size_t cap = p->cap ? p->cap * 2 : 4;
        struct pt_step *v = realloc(p->steps, cap * sizeof *v);
        if (!v) {
            tk_regex_free(st.re);
            return loom_err_set(err, LOOM_ENOMEM, "out of memory parsing pre_tokenizer");
        }
        p->steps = v;
        p->cap = cap;
    }
    p->steps[p->n++] = st;
    return LOOM_OK;
}

static loom_status parse_metaspace(json_t *j, struct pt_step *st, loom_err *err)
{
    json_t *r = json_object_get(j, "replacement");
    if (!json_is_string(r))
        return loom_err_set(err, LOOM_EINVAL, "pre_tokenizer Metaspace: \"replacement\" must be a string");
    const char *rs = json_string_value(r);
    size_t rn = json_string_length(r);
    if (rn == 0 || rn > 4 || tk_utf8_len((unsigned char)rs[0]) != rn)
        return loom_err_set(err, LOOM_EINVAL, "pre_tokenizer Metaspace: \"replacement\" must be one character");
    memcpy(st->repl, rs, rn);
    st->repl_len = rn;
    st->scheme = PREPEND_ALWAYS;
    json_t *ps = json_object_get(j, "prepend_scheme");
    if (ps && !json_is_null(ps)) {
        const char *s = json_string_value(ps);
        if (!s) return loom_err_set(err, LOOM_EINVAL, "pre_tokenizer Metaspace: \"prepend_scheme\" must be a string");
        if (strcmp(s, "always") == 0) st->scheme = PREPEND_ALWAYS;
        else if (strcmp(s, "first") == 0) st->scheme = PREPEND_FIRST;
        else if (strcmp(s, "never") == 0) st->scheme = PREPEND_NEVER;
        else return loom_err_set(err, LOOM_EINVAL, "pre_tokenizer Metaspace: unknown prepend_scheme \"%s\"", s);
    }
    /* Legacy field: must agree with the scheme, as HF checks. */
    json_t *aps = json_object_get(j, "add_prefix_space");
    if (aps && !json_is_null(aps)) {
        if (!json_is_boolean(aps))
            return loom_err_set(err, LOOM_EINVAL, "pre_tokenizer Metaspace: \"add_prefix_space\" must be a boolean");
        if (json_is_true(aps) != (st->scheme != PREPEND_NEVER))
            return loom_err_set(err, LOOM_EINVAL, "Metaspace: add_prefix_space does not match prepend_scheme");
    }
    return get_bool(j, "split", true, &st->split, "Metaspace", err);
}

static loom_status parse_into(tk_pretok *p, json_t *j, int depth, loom_err *err)
{
    if (depth > 16) return loom_err_set(err, LOOM_EINVAL, "pre_tokenizer Sequence nested too deeply");
    if (!json_is_object(j)) return loom_err_set(err, LOOM_EINVAL, "pre_tokenizer must be an object or null");
    const char *type = json_string_value(json_object_get(j, "type"));
    if (!type) return loom_err_set(err, LOOM_EINVAL, "pre_tokenizer without a string \"type\"");
    struct pt_step st = {0};
    if (strcmp(type, "Sequence") == 0) {
        json_t *arr = json_object_get(j, "pretokenizers");
        if (!json_is_array(arr))
            return loom_err_set(err, LOOM_EINVAL, "pre_tokenizer Sequence: \"pretokenizers\" must be an array");
        size_t i;
        json_t *child;
        json_array_foreach(arr, i, child) LOOM_CHECK(parse_into(p, child, depth + 1, err));
        return LOOM_OK;
    }
    if (strcmp(type, "ByteLevel") == 0) {
        bool use_regex = true;
        st.kind = PT_BYTELEVEL;
        LOOM_CHECK(get_bool(j, "add_prefix_space", true, &st.add_prefix_space, type, err));
        LOOM_CHECK(get_bool(j, "use_regex", true, &use_regex, type, err));
        if (use_regex) LOOM_CHECK(tk_regex_compile(GPT2_PATTERN, sizeof GPT2_PATTERN - 1, false, &st.re, err));
    } else if (strcmp(type, "Split") == 0) {
        st.kind = PT_SPLIT;
        const char *b = json_string_value(json_object_get(j, "behavior"));
        if (!b) return loom_err_set(err, LOOM_EINVAL, "pre_tokenizer Split: \"behavior\" must be a string");
        if (strcmp(b, "Removed") == 0) st.behavior = SB_REMOVED;
        else if (strcmp(b, "Isolated") == 0) st.behavior = SB_ISOLATED;
        else if (strcmp(b, "MergedWithPrevious") == 0) st.behavior = SB_MERGED_PREV;
        else if (strcmp(b, "MergedWithNext") == 0) st.behavior = SB_MERGED_NEXT;
        else if (strcmp(b, "Contiguous") == 0) st.behavior = SB_CONTIGUOUS;
        else return loom_err_set(err, LOOM_EINVAL, "pre_tokenizer Split: unknown behavior \"%s\"", b);
        LOOM_CHECK(get_bool(j, "invert", false, &st.invert, type, err));
        json_t *pat = json_object_get(j, "pattern");
        json_t *ps = json_object_get(pat, "String"), *pr = json_object_get(pat, "Regex");
        if (json_is_string(ps))
            LOOM_CHECK(tk_regex_compile(json_string_value(ps), json_string_length(ps), true, &st.re, err));
        else if (json_is_string(pr))
            LOOM_CHECK(tk_regex_compile(json_string_value(pr), json_string_length(pr), false, &st.re, err));
        else
            return loom_err_set(err, LOOM_EINVAL,
                                "pre_tokenizer Split: \"pattern\" must be {\"String\": ...} or {\"Regex\": ...}");
    } else if (strcmp(type, "Metaspace") == 0) {
        st.kind = PT_METASPACE;
        LOOM_CHECK(parse_metaspace(j, &st, err));
    } else if (strcmp(type, "Digits") == 0) {
        st.kind = PT_DIGITS;
        LOOM_CHECK(get_bool(j, "individual_digits", false, &st.individual_digits, type, err));
    } else if (strcmp(type, "WhitespaceSplit") == 0) {
        st.kind = PT_WHITESPACE_SPLIT;
    } else {
        return loom_err_set(err, LOOM_EUNSUPPORTED, "unsupported pre_tokenizer type %s in tokenizer.json", type);
    }
    return add_step(p, st, err);
}

loom_status tk_pretok_parse(json_t *j, tk_pretok **out, loom_err *err)
{
    *out = NULL;
    if (!j || json_is_null(j)) return LOOM_OK;
    tk_pretok *p = calloc(1, sizeof *p);
    if (!p) return loom_err_set(err, LOOM_ENOMEM, "out of memory parsing pre_tokenizer");
    loom_status st = parse_into(p, j, 0, err);
    if (st != LOOM_OK) {
        tk_pretok_free(p);
        return st;
    }
    *out = p;
    return LOOM_OK;
}

/* ---- running ------------------------------------------------------------ */

#define NOMEM() loom_err_set(err, LOOM_ENOMEM, "out of memory pre-tokenizing text")

/* Folds spans (relative to piece pc) by behaviour and appends the non-empty
 * results to out (HF NormalizedString::split). */
static bool emit_split(const struct tk_piece *pc, tk_spans *sp, enum split_behavior b, bool invert,
                       tk_pieces *out)
{
    struct tk_span *v = sp->v;
    size_t n = sp->n, k = 0;
    if (invert)
        for (size_t i = 0; i < n; i++) v[i].is_match = !v[i].is_match;
    /* fold in place into v[0..k), each entry then means "keep" unless removed */
    switch (b) {
    case SB_ISOLATED:
    case SB_REMOVED:
        k = n;
        break;
    case SB_CONTIGUOUS: {
        bool prev = false;
        for (size_t i = 0; i < n; i++) {
            bool m = v[i].is_match;
            if (m == prev && k > 0) v[k - 1].end = v[i].end;
            else v[k++] = (struct tk_span){v[i].start, v[i].end, false};
            prev = m;
        }
        break;
    }
    case SB_MERGED_PREV: {
        bool prev = false;
        for (size_t i = 0; i < n; i++) {
            bool m = v[i].is_match;
            if (m && !prev && k > 0) v[k - 1].end = v[i].end;
            else v[k++] = (struct tk_span){v[i].start, v[i].end, false};
            prev = m;
        }
        break;
    }
    case SB_MERGED_NEXT: {
        /* right-to-left fold, written to the tail then read forward */
        bool prev = false;
        size_t w = n;
        for (size_t i = n; i-- > 0;) {
            bool m = v[i].is_match;
            if (m && !prev && w < n) v[w].start = v[i].start;
            else v[--w] = (struct tk_span){v[i].start, v[i].end, false};
            prev = m;
        }
        for (size_t i = w; i < n; i++) v[k++] = v[i];
        break;
    }
    }
    for (size_t i = 0; i < k; i++) {
        if (b == SB_REMOVED && v[i].is_match) continue;
        if (v[i].end == v[i].start) continue;
        if (!tk_pieces_push(out, pc->off + v[i].start, v[i].end - v[i].start, pc->first && v[i].start == 0))
            return false;
    }
    return true;
}

/* HF's Pattern for a char predicate: every matching character is its own
 * match span, the stretches between them are gap spans. */
static bool char_spans(const char *t, size_t n, bool (*pred)(const struct pt_step *, const char *, size_t),
                       const struct pt_step *st, tk_spans *sp)
{
    sp->n = 0;
    size_t prev = 0;
    for (size_t k = 0; k <= n;) {
        size_t cl = k < n ? tk_utf8_len((unsigned char)t[k]) : 0;
        bool hit = k < n && pred(st, t + k, cl);
        if (hit || k == n) {
            if (sp->n + 2 > sp->cap) {
                size_t cap = sp->cap ? sp->cap * 2 : 64;
                struct tk_span *v = realloc(sp->v, cap * sizeof *v);
                if (!v) return false;
                sp->v = v;
                sp->cap = cap;
            }
            if (prev < k) sp->v[sp->n++] = (struct tk_span){prev, k, false};
            if (k == n) break;
            sp->v[sp->n++] = (struct tk_span){k, k + cl, true};
            prev = k + cl;
        }
        k += cl;
    }
    return true;
}

static bool is_repl(const struct pt_step *st, const char *c, size_t cl)
{
    return cl == st->repl_len && memcmp(c, st->repl, cl) == 0;
}

/* Rust char::is_numeric: general categories Nd, Nl, No. */
static bool is_numeric(const struct pt_step *st, const char *c, size_t cl)
{
    (void)st;
    (void)cl;
    uint32_t cp;
    tk_utf8_decode(c, &cp);
    if (cp < 0x80) return cp >= '0' && cp <= '9';
    utf8proc_category_t cat = utf8proc_category((utf8proc_int32_t)cp);
    return cat == UTF8PROC_CATEGORY_ND || cat == UTF8PROC_CATEGORY_NL || cat == UTF8PROC_CATEGORY_NO;
}

/* Rust char::is_whitespace (White_Space). */
static bool is_white(const struct pt_step *st, const char *c, size_t cl)
{
    (void)st;
    (void)cl;
    uint32_t cp;
    tk_utf8_decode(c, &cp);
    return tk_is_space(cp);
}

static loom_status run_bytelevel(const struct pt_step *st, tk_match *m, tk_buf *arena, tk_pieces *in,
                                 tk_pieces *out, tk_spans *sp, loom_err *err)
{
    /* 1. prefix space and GPT-2 regex split */
    for (size_t i = 0; i < in->n; i++) {
        struct tk_piece pc = in->v[i];
        if (st->add_prefix_space && arena->p[pc.off] != ' ') {
            if (!tk_buf_reserve(arena, pc.len + 1)) return NOMEM();
            size_t off = arena->len;
            arena->p[arena->len++] = ' ';
            memcpy(arena->p + arena->len, arena->p + pc.off, pc.len);
            arena->len += pc.len;
            pc.off = off;
            pc.len += 1;
        }
        if (st->re) {
            LOOM_CHECK(tk_regex_spans(st->re, m, arena->p + pc.off, pc.len, sp, err));
            if (!emit_split(&pc, sp, SB_ISOLATED, false, out)) return NOMEM();
        } else if (!tk_pieces_push(out, pc.off, pc.len, pc.first)) {
            return NOMEM();
        }
    }
    /* 2. map every byte to its printable stand-in */
    for (size_t i = 0; i < out->n; i++) {
        struct tk_piece *pc = &out->v[i];
        if (!tk_buf_reserve(arena, pc->len * 2)) return NOMEM();
        const unsigned char *src = (const unsigned char *)arena->p + pc->off;
        char *dst = arena->p + arena->len;
        size_t w = 0;
        for (size_t k = 0; k < pc->len; k++) w += tk_utf8_encode(tk_bytelevel_char(src[k]), dst + w);
        pc->off = arena->len;
        pc->len = w;
        arena->len += w;
    }
    return LOOM_OK;
}

static loom_status run_metaspace(const struct pt_step *st, tk_buf *arena, tk_pieces *in, tk_pieces *out,
                                 tk_spans *sp, loom_err *err)
{
    for (size_t i = 0; i < in->n; i++) {
        struct tk_piece pc = in->v[i];
        if (!tk_buf_reserve(arena, pc.len * st->repl_len + st->repl_len)) return NOMEM();
        const char *src = arena->p + pc.off;
        char *dst = arena->p + arena->len;
        size_t w = 0;
        /* replace ' ' first; the prepend check looks at the replaced text */
        bool starts_with_repl = pc.len > 0 && (src[0] == ' ' || (pc.len >= st->repl_len &&
                                                memcmp(src, st->repl, st->repl_len) == 0));
        bool prepend = !starts_with_repl && (st->scheme == PREPEND_ALWAYS ||
                                             (st->scheme == PREPEND_FIRST && pc.first));
        if (prepend) {
            memcpy(dst, st->repl, st->repl_len);
            w += st->repl_len;
        }
        for (size_t k = 0; k < pc.len; k++) {
            if (src[k] == ' ') {
                memcpy(dst + w, st->repl, st->repl_len);
                w += st->repl_len;
            } else {
                dst[w++] = src[k];
            }
        }
        struct tk_piece np = {arena->len, w, pc.first};
        arena->len += w;
        if (!st->split) {
            if (!tk_pieces_push(out, np.off, np.len, np.first)) return NOMEM();
            continue;
        }
        /* every replacement char is a match; MergedWithNext glues it to what follows */
        if (!char_spans(arena->p + np.off, np.len, is_repl, st, sp)) return NOMEM();
        if (!emit_split(&np, sp, SB_MERGED_NEXT, false, out)) return NOMEM();
    }
    return LOOM_OK;
}

loom_status tk_pretok_run(const tk_pretok *p, tk_match *m, tk_buf *arena, tk_pieces *pieces,
                          tk_pretok_scratch *sc, loom_err *err)
{
    if (!p) return LOOM_OK;
    for (size_t s = 0; s < p->n; s++) {
        const struct pt_step *st = &p->steps[s];
        tk_pieces *out = &sc->tmp;
        out->n = 0;
        switch (st->kind) {
        case PT_BYTELEVEL:
            LOOM_CHECK(run_bytelevel(st, m, arena, pieces, out, &sc->spans, err));
            break;
        case PT_SPLIT:
            for (size_t i = 0; i < pieces->n; i++) {
                struct tk_piece pc = pieces->v[i];
                LOOM_CHECK(tk_regex_spans(st->re, m, arena->p + pc.off, pc.len, &sc->spans, err));
                if (!emit_split(&pc, &sc->spans, st->behavior, st->invert, out)) return NOMEM();
            }
            break;
        case PT_METASPACE:
            LOOM_CHECK(run_metaspace(st, arena, pieces, out, &sc->spans, err));
            break;
        case PT_DIGITS:
        case PT_WHITESPACE_SPLIT:
            for (size_t i = 0; i < pieces->n; i++) {
                struct tk_piece pc = pieces->v[i];
                bool digits = st->kind == PT_DIGITS;
                if (!char_spans(arena->p + pc.off, pc.len, digits ? is_numeric : is_white, st, &sc->spans) ||
                    !emit_split(&pc, &sc->spans, digits ? (st->individual_digits ? SB_ISOLATED : SB_CONTIGUOUS)
                                                        : SB_REMOVED, false, out))
                    return NOMEM();
            }
            break;
        }
        /* swap so pieces holds the result */
        tk_pieces t = *pieces;
        *pieces = *out;
        *out = t;
    }
    return LOOM_OK;
}
