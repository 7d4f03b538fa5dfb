/* Strict parsing of numbers, id lists and dtype names from command-line
 * flags: the whole string must be consumed and in range, or the caller gets a
 * message. */
#ifndef LOOM_UTIL_PARSE_H
#define LOOM_UTIL_PARSE_H

#include <stddef.h>
#include <stdint.h>

#include "dtype.h"
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

/* Parses a --kv-cache-dtype value: "auto" (LOOM_DTYPE_COUNT: as the
 * activations), "fp16", "bf16" or "fp8" (LOOM_F8E4M3). Anything else is an
 * error listing the four. */
loom_status loom_parse_kv_dtype(const char *s, loom_dtype *out, loom_err *err);

/* Checks a parsed --kv-cache-dtype *kv against the activation dtype act and
 * normalizes it to what loom_gpu_opts.kv and the CPU model take:
 * LOOM_DTYPE_COUNT (the cache holds activations: auto, or fp16/bf16 equal to
 * act) or LOOM_F8E4M3. fp16/bf16 other than act is an error (the cache holds
 * activations or fp8) whose message says how to get act: act_flag names the
 * command's flag for it ("--dtype"), or is NULL and `backend` says what
 * computes in act ("the CPU backend", "--device cuda"). */
loom_status loom_kv_dtype_check(loom_dtype *kv, loom_dtype act, const char *act_flag, const char *backend, loom_err *err);

#endif
