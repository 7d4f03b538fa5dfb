/* Typed jansson accessors with file/key-naming errors (see json_util.h). */
#include "json_util.h"

#include <math.h>

json_t *loom_json_load_file(const char *path, loom_err *err)
{
    json_error_t je;
    json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &je);
    if (!root) loom_err_set(err, LOOM_EINVAL, "%s: invalid JSON at line %d column %d: %s", path, je.line, je.column, je.text);
    return root;
}

json_t *loom_json_loads(const char *text, size_t len, const char *what, loom_err *err)
{
    json_error_t je;
    json_t *root = json_loadb(text, len, 0, &je);
    if (!root) loom_err_set(err, LOOM_EINVAL, "%s: invalid JSON at line %d column %d: %s", what, je.line, je.column, je.text);
    return root;
}

static loom_status missing(const char *key, bool required, const char *what, loom_err *err)
{
    if (required) return loom_err_set(err, LOOM_EINVAL, "%s: missing required field \"%s\"", what, key);
    return LOOM_OK;
}

loom_status loom_json_int(const json_t *obj, const char *key, bool required, int64_t *out,
                          const char *what, loom_err *err)
{
    json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v)) return missing(key, required, what, err);
    if (json_is_integer(v)) {
        *out = (int64_t)json_integer_value(v);
        return LOOM_OK;
    }
    if (json_is_real(v)) {
        double d = json_real_value(v);
        if (d == floor(d) && fabs(d) < 9e15) {
            *out = (int64_t)d;
            return LOOM_OK;
        }
    }
    return loom_err_set(err, LOOM_EINVAL, "%s: field \"%s\" must be an integer", what, key);
}

loom_status loom_json_num(const json_t *obj, const char *key, bool required, double *out,
                          const char *what, loom_err *err)
{
    json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v)) return missing(key, required, what, err);
    if (!json_is_number(v)) return loom_err_set(err, LOOM_EINVAL, "%s: field \"%s\" must be a number", what, key);
    *out = json_number_value(v);
    return LOOM_OK;
}

loom_status loom_json_bool(const json_t *obj, const char *key, bool required, bool *out,
                           const char *what, loom_err *err)
{
    json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v)) return missing(key, required, what, err);
    if (!json_is_boolean(v)) return loom_err_set(err, LOOM_EINVAL, "%s: field \"%s\" must be true or false", what, key);
    *out = json_is_true(v);
    return LOOM_OK;
}

loom_status loom_json_str(const json_t *obj, const char *key, bool required, const char **out,
                          const char *what, loom_err *err)
{
    json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v)) return missing(key, required, what, err);
    if (!json_is_string(v)) return loom_err_set(err, LOOM_EINVAL, "%s: field \"%s\" must be a string", what, key);
    *out = json_string_value(v);
    return LOOM_OK;
}
