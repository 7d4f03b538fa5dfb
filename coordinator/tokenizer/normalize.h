/* tokenizer.json "normalizer": NFC/NFD/NFKC/NFKD (utf8proc), Prepend,
 * Replace (string or regex) and Sequence of those. Applied to each stretch of
 * text between added tokens, as HF does. */
#ifndef LOOM_TOKENIZER_NORMALIZE_H
#define LOOM_TOKENIZER_NORMALIZE_H

#include <jansson.h>

#include "../../util/status.h"
#include "buf.h"
#include "regex.h"

typedef struct tk_normalizer tk_normalizer;

/* Parses a normalizer object; JSON null (or j == NULL) gives *out = NULL, which
 * tk_normalize treats as the identity. Unknown types are LOOM_EUNSUPPORTED. */
loom_status tk_normalizer_parse(json_t *j, tk_normalizer **out, loom_err *err);

/* Frees; accepts NULL. */
void tk_normalizer_free(tk_normalizer *n);

/* Normalizes valid UTF-8 s[0..len) into out (replacing its contents); tmp is
 * scratch. m is regex scratch (used by Replace with a Regex pattern). */
loom_status tk_normalize(const tk_normalizer *n, tk_match *m, const char *s, size_t len, tk_buf *out,
                         tk_buf *tmp, loom_err *err);

#endif
