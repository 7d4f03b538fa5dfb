/* Safetensors reader: mmaps model.safetensors, or every shard named by
 * model.safetensors.index.json, validates each header against the file
 * (sizes, offsets, dtypes, shapes) and looks tensors up by name. Tensors are
 * zero-copy views into the mappings. */
#ifndef LOOM_UTIL_SAFETENSORS_H
#define LOOM_UTIL_SAFETENSORS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "dtype.h"
#include "status.h"

#define LOOM_ST_MAX_DIMS 8

typedef struct loom_tensor {
    const char *name;                 /* owned by the set */
    const char *dtype_name;           /* the file's dtype string, e.g. "F16" */
    bool dtype_ok;                    /* dtype is one loom computes with */
    loom_dtype dtype;                 /* valid when dtype_ok */
    int n_dims;
    int64_t shape[LOOM_ST_MAX_DIMS];
    const void *data;                 /* into the mapping; any alignment */
    size_t nbytes;
    const char *file;                 /* path of the file that holds it */
} loom_tensor;

typedef struct loom_st_set loom_st_set;

/* Opens the weights of a Hugging Face model directory: dir/model.safetensors,
 * or the shards listed in dir/model.safetensors.index.json. Every header is
 * validated; on error returns NULL and fills err naming the file and problem. */
loom_st_set *loom_st_open_dir(const char *dir, loom_err *err);

/* Opens one .safetensors file. */
loom_st_set *loom_st_open_file(const char *path, loom_err *err);

/* Frees the set and unmaps; accepts NULL. */
void loom_st_close(loom_st_set *set);

/* The tensor called name, or NULL. */
const loom_tensor *loom_st_find(const loom_st_set *set, const char *name);

/* Number of tensors, and the i-th (for listing). */
size_t loom_st_count(const loom_st_set *set);
const loom_tensor *loom_st_at(const loom_st_set *set, size_t i);

/* Total bytes of tensor data across all files. */
size_t loom_st_data_bytes(const loom_st_set *set);

#endif
