/* The text side of one generation: feeds output ids to the incremental
 * detokenizer, finds stop strings (text ends before the first one), and
 * says how much text is safe to emit now (a possible stop string's prefix is
 * held back until it is decided). Used by `loom run` and the server. */
#ifndef LOOM_COORDINATOR_TEXTSTREAM_H
#define LOOM_COORDINATOR_TEXTSTREAM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../util/status.h"
#include "tokenizer/tokenizer.h"

#define LOOM_MAX_STOP_STRINGS 16

typedef struct loom_textstream {
    loom_detok *detok;   /* NULL without a tokenizer: no text */
    char *text;          /* decoded text so far (NUL-terminated) */
    size_t len, cap;
    size_t emitted;      /* bytes handed out by loom_textstream_take */
    char *stops[LOOM_MAX_STOP_STRINGS];
    int n_stops;
    size_t hold;         /* longest stop string - 1 */
    bool stopped;        /* a stop string was found; text ends before it */
} loom_textstream;

/* Initializes ts (tok may be NULL). Stop strings are copied; at most
 * LOOM_MAX_STOP_STRINGS, none empty. On error fills err. */
loom_status loom_textstream_init(loom_textstream *ts, const loom_tokenizer *tok, const char *const *stops, int n_stops,
                                 loom_err *err);

/* Frees what init allocated; accepts a zeroed struct. */
void loom_textstream_free(loom_textstream *ts);

/* Adds one output id; sets ts->stopped when the text now contains a stop string. */
loom_status loom_textstream_push(loom_textstream *ts, int32_t id, loom_err *err);

/* Ends the stream: flushes the detokenizer (unless stopped). */
loom_status loom_textstream_finish(loom_textstream *ts, loom_err *err);

/* The next bytes that are safe to emit (all of them when final or stopped);
 * advances ts->emitted. *piece points into ts->text. */
void loom_textstream_take(loom_textstream *ts, bool final, const char **piece, size_t *len);

#endif
