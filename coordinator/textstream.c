/* Detokenized output with stop strings (see textstream.h). */
#include "textstream.h"

#include <stdlib.h>
#include <string.h>

loom_status loom_textstream_init(loom_textstream *ts, const loom_tokenizer *tok, const char *const *stops, int n_stops,
                                 loom_err *err)
{
    memset(ts, 0, sizeof *ts);
    if (n_stops > LOOM_MAX_STOP_STRINGS) return loom_err_set(err, LOOM_EINVAL, "at most %d stop strings", LOOM_MAX_STOP_STRINGS);
    for (int i = 0; i < n_stops; i++) {
        if (!stops[i] || !stops[i][0]) {
            loom_textstream_free(ts);
            return loom_err_set(err, LOOM_EINVAL, "a stop string is empty");
        }
        ts->stops[i] = strdup(stops[i]);
        if (!ts->stops[i]) {
            loom_textstream_free(ts);
            return loom_err_set(err, LOOM_ENOMEM, "out of memory");
        }
        ts->n_stops = i + 1;
        size_t l = strlen(stops[i]);
        if (l - 1 > ts->hold) ts->hold = l - 1;
    }
    if (tok) {
        ts->detok = loom_detok_create(tok, true);
        if (!ts->detok) {
            loom_textstream_free(ts);
            return loom_err_set(err, LOOM_ENOMEM, "out of memory");
        }
    }
    return LOOM_OK;
}

void loom_textstream_free(loom_textstream *ts)
{
    if (!ts) return;
    loom_detok_destroy(ts->detok);
    free(ts->text);
    for (int i = 0; i < ts->n_stops; i++) free(ts->stops[i]);
    memset(ts, 0, sizeof *ts);
}

static loom_status append(loom_textstream *ts, const char *p, size_t n, loom_err *err)
{
    if (ts->len + n + 1 > ts->cap) {
        size_t cap = ts->cap ? ts->cap : 256;
        while (cap < ts->len + n + 1) cap *= 2;
        char *t = realloc(ts->text, cap);
        if (!t) return loom_err_set(err, LOOM_ENOMEM, "out of memory");
        ts->text = t;
        ts->cap = cap;
    }
    memcpy(ts->text + ts->len, p, n);
    ts->len += n;
    ts->text[ts->len] = '\0';
    return LOOM_OK;
}

/* Truncates at the earliest stop string that ends in the bytes from new_from. */
static void find_stop(loom_textstream *ts, size_t new_from)
{
    for (int i = 0; i < ts->n_stops; i++) {
        size_t sl = strlen(ts->stops[i]);
        if (ts->len < sl) continue;
        size_t from = new_from >= sl - 1 ? new_from - (sl - 1) : 0;
        char *hit = memmem(ts->text + from, ts->len - from, ts->stops[i], sl);
        if (hit) {
            ts->len = (size_t)(hit - ts->text);
            ts->text[ts->len] = '\0';
            ts->stopped = true;
        }
    }
    if (ts->emitted > ts->len) ts->emitted = ts->len; /* cannot happen: held back */
}

loom_status loom_textstream_push(loom_textstream *ts, int32_t id, loom_err *err)
{
    if (!ts->detok || ts->stopped) return LOOM_OK;
    const char *piece;
    size_t n;
    LOOM_CHECK(loom_detok_push(ts->detok, id, &piece, &n, err));
    size_t before = ts->len;
    LOOM_CHECK(append(ts, piece, n, err));
    find_stop(ts, before);
    return LOOM_OK;
}

loom_status loom_textstream_finish(loom_textstream *ts, loom_err *err)
{
    if (!ts->detok || ts->stopped) return LOOM_OK;
    const char *piece;
    size_t n;
    LOOM_CHECK(loom_detok_flush(ts->detok, &piece, &n, err));
    size_t before = ts->len;
    LOOM_CHECK(append(ts, piece, n, err));
    find_stop(ts, before);
    return LOOM_OK;
}

void loom_textstream_take(loom_textstream *ts, bool final, const char **piece, size_t *len)
{
    size_t upto = ts->len;
    if (!final && !ts->stopped) {
        upto = ts->len > ts->hold ? ts->len - ts->hold : 0;
        /* never split a UTF-8 character */
        while (upto > ts->emitted && upto < ts->len && ((unsigned char)ts->text[upto] & 0xC0) == 0x80) upto--;
    }
    if (upto < ts->emitted) upto = ts->emitted;
    *piece = ts->text ? ts->text + ts->emitted : "";
    *len = upto - ts->emitted;
    ts->emitted = upto;
}
