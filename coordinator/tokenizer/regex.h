/* Regex splitting for tokenizer.json patterns. The patterns are written for
 * Oniguruma (what HF tokenizers uses); they are compiled with PCRE2 in UTF+UCP
 * mode after rewriting \s and \S to Oniguruma's White_Space set. */
#ifndef LOOM_TOKENIZER_REGEX_H
#define LOOM_TOKENIZER_REGEX_H

#include <stdbool.h>
#include <stddef.h>

#include "../../util/status.h"

typedef struct tk_regex tk_regex;

/* Per-call matching scratch (PCRE2 match data and JIT stack); one per thread. */
typedef struct tk_match {
    void *md; /* pcre2_match_data_8 */
    void *mc; /* pcre2_match_context_8 */
    void *js; /* pcre2_jit_stack_8 */
} tk_match;

struct tk_span {
    size_t start, end; /* byte range */
    bool is_match;     /* matched the pattern (vs the gap between matches) */
};

typedef struct tk_spans {
    struct tk_span *v;
    size_t n, cap;
} tk_spans;

/* Compiles pattern[0..len). literal: match the string as is (HF's
 * {"String": ...} patterns). On error returns non-OK and fills err. */
loom_status tk_regex_compile(const char *pattern, size_t len, bool literal, tk_regex **out,
                             loom_err *err);

/* Frees; accepts NULL. */
void tk_regex_free(tk_regex *re);

/* Sets up matching scratch. On error fills err. */
loom_status tk_match_init(tk_match *m, loom_err *err);

/* Frees; accepts a zeroed struct. */
void tk_match_free(tk_match *m);

/* Splits valid UTF-8 s[0..n) into spans covering it, alternating gaps and
 * matches as HF's Pattern::find_matches does (n == 0 gives no spans). Empty
 * matches are kept (they still cut the text). Replaces out's contents. */
loom_status tk_regex_spans(const tk_regex *re, tk_match *m, const char *s, size_t n, tk_spans *out,
                           loom_err *err);

#endif
