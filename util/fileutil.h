/* Small file helpers: read a whole file, map a file read-only, path joins.
 * Every failure names the path and the reason. */
#ifndef LOOM_UTIL_FILEUTIL_H
#define LOOM_UTIL_FILEUTIL_H

#include <stdbool.h>
#include <stddef.h>

#include "status.h"

/* Reads the whole file into a malloc'd, NUL-terminated buffer (*len excludes
 * the NUL). On error returns non-OK and fills err. */
loom_status loom_file_read(const char *path, char **data, size_t *len, loom_err *err);

/* A read-only memory mapping of a whole file. */
typedef struct loom_mmap {
    void *addr;  /* NULL for an empty file */
    size_t size; /* bytes */
} loom_mmap;

/* Maps path read-only. On error returns non-OK and fills err. */
loom_status loom_mmap_open(const char *path, loom_mmap *m, loom_err *err);

/* Unmaps; accepts a zeroed struct. */
void loom_mmap_close(loom_mmap *m);

/* True if path exists and is a regular file. */
bool loom_file_exists(const char *path);

/* True if path exists and is a directory. */
bool loom_dir_exists(const char *path);

/* snprintf(out, cap, "%s/%s", dir, name); returns non-OK if it does not fit. */
loom_status loom_path_join(char *out, size_t cap, const char *dir, const char *name, loom_err *err);

#endif
