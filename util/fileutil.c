/* File reading, read-only mmap and path helpers (see fileutil.h). */
#include "fileutil.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

loom_status loom_file_read(const char *path, char **data, size_t *len, loom_err *err)
{
    *data = NULL;
    *len = 0;
    FILE *f = fopen(path, "rb");
    if (!f) return loom_err_set(err, LOOM_EIO, "cannot open %s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        fclose(f);
        return loom_err_set(err, LOOM_EIO, "%s is not a regular file", path);
    }
    size_t size = (size_t)st.st_size;
    char *buf = malloc(size + 1);
    if (!buf) {
        fclose(f);
        return loom_err_set(err, LOOM_ENOMEM, "cannot allocate %zu bytes to read %s", size + 1, path);
    }
    size_t got = fread(buf, 1, size, f);
    int rerr = ferror(f);
    fclose(f);
    if (got != size || rerr) {
        free(buf);
        return loom_err_set(err, LOOM_EIO, "short read from %s", path);
    }
    buf[size] = '\0';
    *data = buf;
    *len = size;
    return LOOM_OK;
}

loom_status loom_mmap_open(const char *path, loom_mmap *m, loom_err *err)
{
    m->addr = NULL;
    m->size = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return loom_err_set(err, LOOM_EIO, "cannot open %s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return loom_err_set(err, LOOM_EIO, "%s is not a regular file", path);
    }
    if (st.st_size > 0) {
        void *addr = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (addr == MAP_FAILED) {
            int e = errno;
            close(fd);
            return loom_err_set(err, LOOM_EIO, "cannot mmap %s: %s", path, strerror(e));
        }
        m->addr = addr;
        m->size = (size_t)st.st_size;
    }
    close(fd);
    return LOOM_OK;
}

void loom_mmap_close(loom_mmap *m)
{
    if (m && m->addr) munmap(m->addr, m->size);
    if (m) {
        m->addr = NULL;
        m->size = 0;
    }
}

bool loom_file_exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

bool loom_dir_exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

loom_status loom_path_join(char *out, size_t cap, const char *dir, const char *name, loom_err *err)
{
    int n = snprintf(out, cap, "%s/%s", dir, name);
    if (n < 0 || (size_t)n >= cap) return loom_err_set(err, LOOM_EINVAL, "path too long: %s/%s", dir, name);
    return LOOM_OK;
}
