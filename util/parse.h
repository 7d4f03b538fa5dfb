/* Strict parsing of numbers and id lists from command-line flags: the whole
 * string must be consumed and in range, or the caller gets a message. */
#ifndef LOOM_UTIL_PARSE_H
#define LOOM_UTIL_PARSE_H

#include <stddef.h>
#include <stdint.h>

#include "status.h"

/* Parses a base-10 integer in [lo, hi]; `what` names the flag in errors. */
loom_status loom_parse_i64(const char *s, int64_t lo, int64_t hi, const char *what, int64_t *out, loom_err *err);

/* Parses a u64 (e.g. a seed). */
loom_status loom_parse_u64(const char *s, const char *what, uint64_t *out, loom_err *err);

/* Parses a finite float. */
loom_status loom_parse_f32(const char *s, const char *what, float *out, loom_err *err);

/* Parses "1,2,3" (spaces allowed around ids) into a malloc'd array of ids
 * >= 0. An empty list, an empty item or a non-number is an error. */
loom_status loom_parse_id_list(const char *s, const char *what, int32_t **ids, size_t *n, loom_err *err);

#endif
