/* Typed field access on jansson objects with error messages that name the file
 * and key, so a bad config.json says exactly what is wrong. */
#ifndef LOOM_UTIL_JSON_UTIL_H
#define LOOM_UTIL_JSON_UTIL_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "status.h"

/* Parses a JSON file. On error returns NULL and fills err with the path,
 * line, column and reason. The caller json_decref()s the result. */
json_t *loom_json_load_file(const char *path, loom_err *err);

/* Parses len bytes of JSON text (what names the source in messages). */
json_t *loom_json_loads(const char *text, size_t len, const char *what, loom_err *err);

/* Reads obj[key] as an integer into *out. A missing key or JSON null leaves
 * *out untouched and returns OK unless required; a value of another type
 * (or a float with a fraction) is an error. `what` names the file. */
loom_status loom_json_int(const json_t *obj, const char *key, bool required, int64_t *out,
                          const char *what, loom_err *err);

/* Same for a number (integer or real). */
loom_status loom_json_num(const json_t *obj, const char *key, bool required, double *out,
                          const char *what, loom_err *err);

/* Same for a boolean. */
loom_status loom_json_bool(const json_t *obj, const char *key, bool required, bool *out,
                           const char *what, loom_err *err);

/* Same for a string: *out points into obj (valid while obj lives). */
loom_status loom_json_str(const json_t *obj, const char *key, bool required, const char **out,
                          const char *what, loom_err *err);

#endif
