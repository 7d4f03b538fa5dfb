/* Status codes and the error buffer every fallible loom function fills.
 * Errors travel up as a loom_status with a human message in a caller-supplied
 * loom_err; only main() turns them into an exit code. */
#ifndef LOOM_UTIL_STATUS_H
#define LOOM_UTIL_STATUS_H

#include <stddef.h>

typedef enum loom_status {
    LOOM_OK = 0,
    LOOM_EINVAL,      /* bad input: file contents, flags, request fields */
    LOOM_EIO,         /* cannot open/read/map a file */
    LOOM_ENOMEM,      /* allocation failed */
    LOOM_EUNSUPPORTED,/* valid input we do not handle (architecture, dtype) */
    LOOM_EINTERNAL    /* a broken invariant: a bug in loom */
} loom_status;

#define LOOM_ERR_LEN 1024

typedef struct loom_err {
    char msg[LOOM_ERR_LEN]; /* NUL-terminated message; empty when no error */
} loom_err;

/* Formats a message into err (if err is non-NULL) and returns code.
 * Use as: return loom_err_set(err, LOOM_EINVAL, "bad %s", what); */
loom_status loom_err_set(loom_err *err, loom_status code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Prepends "prefix: " to an existing message (for adding context on the way up).
 * Returns code unchanged. */
loom_status loom_err_wrap(loom_err *err, loom_status code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Short name of a status code ("invalid input", ...). */
const char *loom_status_str(loom_status s);

/* Propagates a non-OK status to the caller. */
#define LOOM_CHECK(expr)                                                       \
    do {                                                                       \
        loom_status loom_s_ = (expr);                                          \
        if (loom_s_ != LOOM_OK) return loom_s_;                                \
    } while (0)

/* Stores a non-OK status in `st` and jumps to `label` (for functions that
 * must free what they half built). */
#define LOOM_CHECK_GOTO(st, expr, label)                                       \
    do {                                                                       \
        (st) = (expr);                                                         \
        if ((st) != LOOM_OK) goto label;                                       \
    } while (0)

#endif
