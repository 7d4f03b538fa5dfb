/* tokenizer.json "pre_tokenizer": ByteLevel (GPT-2 regex, prefix space, byte
 * map), Split (regex or string, all HF split behaviours), Metaspace, Digits,
 * WhitespaceSplit and Sequence. Cuts normalized text into the words the BPE
 * model sees. */
#ifndef LOOM_TOKENIZER_PRETOKENIZE_H
#define LOOM_TOKENIZER_PRETOKENIZE_H

#include <jansson.h>
#include <stdbool.h>

#include "../../util/status.h"
#include "buf.h"
#include "regex.h"

typedef struct tk_pretok tk_pretok;

struct tk_piece {
    size_t off, len; /* bytes in the arena */
    bool first;      /* starts at offset 0 of the original input (Metaspace "first") */
};

typedef struct tk_pieces {
    struct tk_piece *v;
    size_t n, cap;
} tk_pieces;

/* Scratch reused across calls; zero-initialize, free with tk_pretok_scratch_free. */
typedef struct tk_pretok_scratch {
    tk_pieces tmp;
    tk_spans spans;
} tk_pretok_scratch;

/* Parses a pre_tokenizer object; JSON null gives *out = NULL (no splitting). */
loom_status tk_pretok_parse(json_t *j, tk_pretok **out, loom_err *err);

/* Frees; accepts NULL. */
void tk_pretok_free(tk_pretok *p);

/* Appends a piece; false on ENOMEM. */
bool tk_pieces_push(tk_pieces *ps, size_t off, size_t len, bool first);

/* Runs every pre-tokenizer step over *pieces (text in arena, which may grow),
 * replacing them with the resulting non-empty pieces. p may be NULL. */
loom_status tk_pretok_run(const tk_pretok *p, tk_match *m, tk_buf *arena, tk_pieces *pieces,
                          tk_pretok_scratch *sc, loom_err *err);

void tk_pretok_scratch_free(tk_pretok_scratch *sc);

#endif
