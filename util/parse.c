/* Strict flag parsing (see parse.h). */
#include "parse.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

loom_status loom_parse_i64(const char *s, int64_t lo, int64_t hi, const char *what, int64_t *out, loom_err *err)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (end == s || *end || errno == ERANGE || isspace((unsigned char)*s))
        return loom_err_set(err, LOOM_EINVAL, "%s: \"%s\" is not an integer", what, s);
    if (v < lo || v > hi)
        return loom_err_set(err, LOOM_EINVAL, "%s: %lld is out of range (%lld to %lld)", what, v, (long long)lo, (long long)hi);
    *out = v;
    return LOOM_OK;
}

loom_status loom_parse_u64(const char *s, const char *what, uint64_t *out, loom_err *err)
{
    char *end;
    errno = 0;
    if (!isdigit((unsigned char)*s)) return loom_err_set(err, LOOM_EINVAL, "%s: \"%s\" is not a non-negative integer", what, s);
    unsigned long long v = strtoull(s, &end, 10);
    if (*end || errno == ERANGE) return loom_err_set(err, LOOM_EINVAL, "%s: \"%s\" is not a non-negative 64-bit integer", what, s);
    *out = v;
    return LOOM_OK;
}

loom_status loom_parse_f32(const char *s, const char *what, float *out, loom_err *err)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (end == s || *end || isspace((unsigned char)*s) || !isfinite(v) || errno == ERANGE)
        return loom_err_set(err, LOOM_EINVAL, "%s: \"%s\" is not a finite number", what, s);
    *out = (float)v;
    return LOOM_OK;
}

loom_status loom_parse_id_list(const char *s, const char *what, int32_t **ids, size_t *n, loom_err *err)
{
    *ids = NULL;
    *n = 0;
    size_t cap = 1;
    for (const char *p = s; *p; p++) cap += *p == ',';
    int32_t *v = malloc(cap * sizeof *v);
    if (!v) return loom_err_set(err, LOOM_ENOMEM, "out of memory");
    size_t k = 0;
    const char *p = s;
    for (;;) {
        while (*p == ' ') p++;
        char *end;
        errno = 0;
        if (!isdigit((unsigned char)*p)) goto bad;
        long long x = strtoll(p, &end, 10);
        if (errno == ERANGE || x > INT32_MAX) goto bad;
        v[k++] = (int32_t)x;
        p = end;
        while (*p == ' ') p++;
        if (*p == '\0') break;
        if (*p != ',') goto bad;
        p++;
    }
    *ids = v;
    *n = k;
    return LOOM_OK;
bad:
    free(v);
    return loom_err_set(err, LOOM_EINVAL, "%s: \"%s\" is not a comma-separated list of non-negative token ids", what, s);
}

loom_status loom_parse_kv_dtype(const char *s, loom_dtype *out, loom_err *err)
{
    if (!strcmp(s, "auto")) *out = LOOM_DTYPE_COUNT;
    else if (!strcmp(s, "fp16")) *out = LOOM_F16;
    else if (!strcmp(s, "bf16")) *out = LOOM_BF16;
    else if (!strcmp(s, "fp8")) *out = LOOM_F8E4M3;
    else return loom_err_set(err, LOOM_EINVAL, "--kv-cache-dtype must be auto, fp16, bf16 or fp8 (got \"%s\")", s);
    return LOOM_OK;
}

loom_status loom_kv_dtype_check(loom_dtype *kv, loom_dtype act, const char *act_flag, const char *backend, loom_err *err)
{
    if (*kv == LOOM_DTYPE_COUNT || *kv == LOOM_F8E4M3) return LOOM_OK;
    if (*kv == act) {
        *kv = LOOM_DTYPE_COUNT;
        return LOOM_OK;
    }
    const char *name = loom_dtype_name(*kv);
    if (act_flag)
        return loom_err_set(err, LOOM_EINVAL, "--kv-cache-dtype %s needs %s %s: the KV cache holds activations or fp8", name, act_flag, name);
    return loom_err_set(err, LOOM_EINVAL, "--kv-cache-dtype %s needs %s activations, but %s computes in %s: the KV cache holds activations or fp8 (use auto or fp8)",
                        name, name, backend, loom_dtype_name(act));
}
