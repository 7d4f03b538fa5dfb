/* Error buffer helpers: formatting and wrapping messages. */
#include "status.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

loom_status loom_err_set(loom_err *err, loom_status code, const char *fmt, ...)
{
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
    }
    return code;
}

loom_status loom_err_wrap(loom_err *err, loom_status code, const char *fmt, ...)
{
    if (!err) return code;
    char prefix[LOOM_ERR_LEN], old[LOOM_ERR_LEN];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    memcpy(old, err->msg, sizeof old);
    old[sizeof old - 1] = '\0';
    /* "prefix: old", cut to the buffer (built by hand: both parts may be long) */
    size_t n = 0, cap = sizeof err->msg - 1;
    for (const char *parts[] = {prefix, ": ", old}, **p = parts; p < parts + 3; p++)
        for (const char *c = *p; *c && n < cap; c++) err->msg[n++] = *c;
    err->msg[n] = '\0';
    return code;
}

const char *loom_status_str(loom_status s)
{
    switch (s) {
    case LOOM_OK: return "ok";
    case LOOM_EINVAL: return "invalid input";
    case LOOM_EIO: return "i/o error";
    case LOOM_ENOMEM: return "out of memory";
    case LOOM_EUNSUPPORTED: return "unsupported";
    case LOOM_EINTERNAL: return "internal error";
    }
    return "unknown status";
}
