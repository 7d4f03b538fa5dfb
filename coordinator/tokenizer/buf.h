/* Growable byte buffer and int32 vector used throughout the tokenizer.
 * Inline so the hot encode loop pays no call overhead; every append reports
 * allocation failure as false and leaves the buffer unchanged. */
#ifndef LOOM_TOKENIZER_BUF_H
#define LOOM_TOKENIZER_BUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct tk_buf {
    char *p;    /* bytes, not NUL-terminated unless tk_buf_nul was called */
    size_t len; /* bytes used */
    size_t cap; /* bytes allocated */
} tk_buf;

typedef struct tk_ivec {
    int32_t *p;
    size_t len;
    size_t cap;
} tk_ivec;

static inline bool tk_buf_reserve(tk_buf *b, size_t extra)
{
    if (b->cap - b->len >= extra) return true;
    size_t want = b->len + extra;
    if (want < b->len) return false; /* overflow */
    size_t cap = b->cap ? b->cap : 64;
    while (cap < want) {
        if (cap > SIZE_MAX / 2) { cap = want; break; }
        cap *= 2;
    }
    char *p = realloc(b->p, cap);
    if (!p) return false;
    b->p = p;
    b->cap = cap;
    return true;
}

static inline bool tk_buf_append(tk_buf *b, const void *s, size_t n)
{
    if (!tk_buf_reserve(b, n)) return false;
    if (n) memcpy(b->p + b->len, s, n);
    b->len += n;
    return true;
}

/* Appends a NUL after the data without counting it in len. */
static inline bool tk_buf_nul(tk_buf *b)
{
    if (!tk_buf_reserve(b, 1)) return false;
    b->p[b->len] = '\0';
    return true;
}

static inline void tk_buf_free(tk_buf *b)
{
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
}

static inline bool tk_ivec_reserve(tk_ivec *v, size_t extra)
{
    if (v->cap - v->len >= extra) return true;
    size_t want = v->len + extra;
    size_t cap = v->cap ? v->cap : 16;
    while (cap < want) cap *= 2;
    if (cap > SIZE_MAX / sizeof(int32_t)) return false;
    int32_t *p = realloc(v->p, cap * sizeof(int32_t));
    if (!p) return false;
    v->p = p;
    v->cap = cap;
    return true;
}

static inline bool tk_ivec_push(tk_ivec *v, int32_t x)
{
    if (v->len == v->cap && !tk_ivec_reserve(v, 1)) return false;
    v->p[v->len++] = x;
    return true;
}

static inline void tk_ivec_free(tk_ivec *v)
{
    free(v->p);
    v->p = NULL;
    v->len = v->cap = 0;
}

#endif
