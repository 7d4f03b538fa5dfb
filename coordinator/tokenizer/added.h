/* Added tokens ("added_tokens" in tokenizer.json): parsing, and cutting text
 * at their occurrences before the model runs, with HF's leftmost-longest
 * matching and the single_word / lstrip / rstrip rules. */
#ifndef LOOM_TOKENIZER_ADDED_H
#define LOOM_TOKENIZER_ADDED_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "../../util/status.h"
#include "buf.h"
#include "normalize.h"

struct tk_added_token {
    char *content;    /* token text as written in the file */
    size_t len;
    char *text;       /* what decoding yields: content, normalized when `normalized` (as HF) */
    size_t text_len;
    int32_t id;
    bool single_word, lstrip, rstrip, normalized, special;
};

/* One matcher per token set: patterns bucketed by first byte, longest first. */
struct tk_matcher {
    char **pat;        /* (n) pattern bytes (content, or normalized content) */
    size_t *pat_len;   /* (n) */
    size_t *tok;       /* (n) index into tk_added.v */
    uint32_t *bucket;  /* (257) pattern indices [bucket[b], bucket[b+1]) start with byte b */
    size_t n;
};

typedef struct tk_added {
    struct tk_added_token *v; /* (n) in file order */
    size_t n;
    struct tk_matcher raw;    /* normalized == false: matched on the input text */
    struct tk_matcher norm;   /* normalized == true: matched on normalized text */
} tk_added;

struct tk_split {
    size_t off, len;  /* bytes of the searched text */
    int32_t id;       /* added token id, or -1 for plain text */
};

typedef struct tk_splits {
    struct tk_split *v;
    size_t n, cap;
} tk_splits;

/* Parses the "added_tokens" array (NULL or null means none). Patterns of
 * normalized tokens are passed through norm, as HF does. */
loom_status tk_added_parse(json_t *arr, const tk_normalizer *norm, tk_added *out, loom_err *err);

/* Frees; accepts a zeroed struct. */
void tk_added_free(tk_added *a);

/* Cuts s[0..n) at added tokens of one set (normalized or not) into out
 * (replaced), covering all of s; empty text splits are dropped. */
loom_status tk_added_split(const tk_added *a, bool normalized_set, const char *s, size_t n, tk_splits *out,
                           loom_err *err);

#endif
