/* Safetensors writer: streams named tensors into one .safetensors file
 * (header first, then data), converting each to a chosen dtype on the way. */
#ifndef LOOM_UTIL_SAFETENSORS_WRITE_H
#define LOOM_UTIL_SAFETENSORS_WRITE_H

#include <stddef.h>
#include <stdint.h>

#include "dtype.h"
#include "status.h"

typedef struct loom_st_entry {
    const char *name;
    int n_dims;               /* 1 or 2 */
    int64_t shape[2];
    const void *data;         /* any alignment */
    loom_dtype src_dtype;     /* how data is stored */
    loom_dtype dst_dtype;     /* how to write it */
} loom_st_entry;

/* Writes entries to path (via path.tmp, renamed on success), with
 * __metadata__ {"format": "pt"}. On error returns non-OK and fills err. */
loom_status loom_st_write(const char *path, const loom_st_entry *entries, size_t n, loom_err *err);

#endif
