/* PCRE2 wrapper: compiles Oniguruma-flavoured split patterns and iterates
 * matches the way the Rust onig crate does (an empty match right after the
 * previous match is skipped, then the search moves on one character). */
#define PCRE2_CODE_UNIT_WIDTH 8
#include "regex.h"

#include <pcre2.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "utf8.h"

struct tk_regex {
    pcre2_code *code;
};

/* Oniguruma's \s is Unicode White_Space; PCRE2's (UCP) lacks U+0085. */
static const char SPACE_SET[] =
    "\\t-\\r\\x{20}\\x{85}\\x{a0}\\x{1680}\\x{2000}-\\x{200a}\\x{2028}\\x{2029}"
    "\\x{202f}\\x{205f}\\x{3000}";

/* Rewrites \s (inside or outside a class) and \S (outside a class). */
static bool rewrite_pattern(const char *p, size_t n, tk_buf *out)
{
    bool in_class = false;
    size_t class_start = 0;
    for (size_t i = 0; i < n; i++) {
        char c = p[i];
        if (c == '\\' && i + 1 < n) {
            char d = p[i + 1];
            bool ok;
            if (d == 's')
                ok = in_class ? tk_buf_append(out, SPACE_SET, sizeof SPACE_SET - 1)
                              : (tk_buf_append(out, "[", 1) &&
                                 tk_buf_append(out, SPACE_SET, sizeof SPACE_SET - 1) &&
                                 tk_buf_append(out, "]", 1));
            else if (d == 'S' && !in_class)
                ok = tk_buf_append(out, "[^", 2) &&
                     tk_buf_append(out, SPACE_SET, sizeof SPACE_SET - 1) && tk_buf_append(out, "]", 1);
            else
                ok = tk_buf_append(out, p + i, 2);
            if (!ok) return false;
            i++;
            continue;
        }
        if (!in_class && c == '[') {
            in_class = true;
            class_start = out->len;
        } else if (in_class && c == ']') {
            /* "[]" and "[^]" keep a literal ']' as the first member */
            size_t since = out->len - class_start;
            bool first = since == 1 || (since == 2 && out->p[class_start + 1] == '^');
            if (!first) in_class = false;
        }
        if (!tk_buf_append(out, &c, 1)) return false;
    }
    return true;
}

loom_status tk_regex_compile(const char *pattern, size_t len, bool literal, tk_regex **out,
                             loom_err *err)
{
    *out = NULL;
    tk_buf pat = {0};
    uint32_t opts = PCRE2_UTF | PCRE2_UCP;
    if (literal) {
        opts = PCRE2_UTF | PCRE2_LITERAL; /* LITERAL rejects UCP */
        if (!tk_buf_append(&pat, pattern, len)) goto nomem;
    } else if (!rewrite_pattern(pattern, len, &pat)) {
        goto nomem;
    }
    int ecode;
    PCRE2_SIZE eoff;
    pcre2_code *code = pcre2_compile((PCRE2_SPTR)(pat.p ? pat.p : ""), pat.len, opts, &ecode,
                                     &eoff, NULL);
    if (!code) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(ecode, msg, sizeof msg);
        loom_err_set(err, LOOM_EINVAL, "cannot compile regex /%.*s/ at offset %zu: %s",
                     (int)(len > 200 ? 200 : len), pattern, (size_t)eoff, (char *)msg);
        tk_buf_free(&pat);
        return LOOM_EINVAL;
    }
    tk_buf_free(&pat);
    (void)pcre2_jit_compile(code, PCRE2_JIT_COMPLETE); /* falls back to the interpreter */
    tk_regex *re = malloc(sizeof *re);
    if (!re) {
        pcre2_code_free(code);
        return loom_err_set(err, LOOM_ENOMEM, "out of memory compiling regex");
    }
    re->code = code;
    *out = re;
    return LOOM_OK;
nomem:
    tk_buf_free(&pat);
    return loom_err_set(err, LOOM_ENOMEM, "out of memory compiling regex");
}

void tk_regex_free(tk_regex *re)
{
    if (!re) return;
    pcre2_code_free(re->code);
    free(re);
}

loom_status tk_match_init(tk_match *m, loom_err *err)
{
    memset(m, 0, sizeof *m);
    m->md = pcre2_match_data_create(1, NULL);
    m->mc = pcre2_match_context_create(NULL);
    if (!m->md || !m->mc) {
        tk_match_free(m);
        return loom_err_set(err, LOOM_ENOMEM, "out of memory for regex matching");
    }
    /* the JIT stack is made on first need (see tk_regex_spans): most texts
     * fit PCRE2's 32 KiB default and short encodes stay cheap */
    return LOOM_OK;
}

void tk_match_free(tk_match *m)
{
    pcre2_match_data_free(m->md);
    pcre2_match_context_free(m->mc);
    pcre2_jit_stack_free(m->js);
    memset(m, 0, sizeof *m);
}

static bool spans_push(tk_spans *o, size_t s, size_t e, bool is_match)
{
    if (o->n == o->cap) {
        size_t cap = o->cap ? o->cap * 2 : 64;
        struct tk_span *v = realloc(o->v, cap * sizeof *v);
        if (!v) return false;
        o->v = v;
        o->cap = cap;
    }
    o->v[o->n++] = (struct tk_span){s, e, is_match};
    return true;
}

loom_status tk_regex_spans(const tk_regex *re, tk_match *m, const char *s, size_t n, tk_spans *out,
                           loom_err *err)
{
    out->n = 0;
    size_t pos = 0, prev = 0;
    bool have_last = false;
    size_t last_end = 0;
    while (pos <= n) {
        int rc = pcre2_match(re->code, (PCRE2_SPTR)s, n, pos, PCRE2_NO_UTF_CHECK, m->md, m->mc);
        if (rc == PCRE2_ERROR_JIT_STACKLIMIT && !m->js) {
            m->js = pcre2_jit_stack_create(32 * 1024, 64 * 1024 * 1024, NULL);
            if (!m->js) goto nomem;
            pcre2_jit_stack_assign(m->mc, NULL, m->js);
            continue;
        }
        if (rc == PCRE2_ERROR_NOMATCH) break;
        if (rc < 0) {
            PCRE2_UCHAR msg[256];
            pcre2_get_error_message(rc, msg, sizeof msg);
            return loom_err_set(err, LOOM_EINVAL, "regex match failed: %s", (char *)msg);
        }
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(m->md);
        size_t ms = ov[0], me = ov[1];
        if (me < ms) me = ms; /* \K tricks; not used by tokenizer patterns */
        if (ms == me) {
            size_t step = ms < n ? tk_utf8_len((unsigned char)s[ms]) : 1;
            if (have_last && ms == last_end) { /* adjacent empty match: skip */
                pos = ms + step;
                continue;
            }
            pos = ms + step;
        } else {
            pos = me;
        }
        have_last = true;
        last_end = me;
        if (prev != ms && !spans_push(out, prev, ms, false)) goto nomem;
        if (!spans_push(out, ms, me, true)) goto nomem;
        prev = me;
    }
    if (prev != n && !spans_push(out, prev, n, false)) goto nomem;
    return LOOM_OK;
nomem:
    return loom_err_set(err, LOOM_ENOMEM, "out of memory splitting text");
}
