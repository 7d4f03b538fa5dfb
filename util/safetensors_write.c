/* Safetensors writing with dtype conversion (see safetensors_write.h). */
#include "safetensors_write.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *st_name(loom_dtype dt)
{
    return dt == LOOM_F32 ? "F32" : dt == LOOM_F16 ? "F16" : "BF16";
}

static int64_t numel(const loom_st_entry *e)
{
    return e->n_dims == 1 ? e->shape[0] : e->shape[0] * e->shape[1];
}

/* Writes n elements of e converted to its destination dtype, in blocks. */
static int write_converted(FILE *f, const loom_st_entry *e)
{
    int64_t n = numel(e);
    if (e->src_dtype == e->dst_dtype) return fwrite(e->data, loom_dtype_size(e->src_dtype), (size_t)n, f) == (size_t)n ? 0 : -1;
    enum { BLOCK = 8192 };
    float tmp[BLOCK];
    unsigned char out[BLOCK * 4];
    size_t es = loom_dtype_size(e->src_dtype);
    for (int64_t i = 0; i < n; i += BLOCK) {
        size_t k = (size_t)(n - i < BLOCK ? n - i : BLOCK);
        loom_dtype_to_f32(tmp, (const unsigned char *)e->data + (size_t)i * es, e->src_dtype, k);
        size_t ob = loom_dtype_size(e->dst_dtype);
        for (size_t j = 0; j < k; j++) {
            if (e->dst_dtype == LOOM_F32) {
                memcpy(out + 4 * j, &tmp[j], 4);
            } else {
                uint16_t h = e->dst_dtype == LOOM_F16 ? loom_f32_to_f16(tmp[j]) : loom_f32_to_bf16(tmp[j]);
                memcpy(out + 2 * j, &h, 2);
            }
        }
        if (fwrite(out, ob, k, f) != k) return -1;
    }
    return 0;
}

loom_status loom_st_write(const char *path, const loom_st_entry *entries, size_t n, loom_err *err)
{
    json_t *h = json_object(), *meta = json_object();
    json_object_set_new(meta, "format", json_string("pt"));
    json_object_set_new(h, "__metadata__", meta);
    uint64_t off = 0;
    for (size_t i = 0; i < n; i++) {
        const loom_st_entry *e = &entries[i];
        json_t *t = json_object(), *shape = json_array(), *offs = json_array();
        for (int d = 0; d < e->n_dims; d++) json_array_append_new(shape, json_integer(e->shape[d]));
        uint64_t bytes = (uint64_t)numel(e) * loom_dtype_size(e->dst_dtype);
        json_array_append_new(offs, json_integer((json_int_t)off));
        json_array_append_new(offs, json_integer((json_int_t)(off + bytes)));
        json_object_set_new(t, "dtype", json_string(st_name(e->dst_dtype)));
        json_object_set_new(t, "shape", shape);
        json_object_set_new(t, "data_offsets", offs);
        json_object_set_new(h, e->name, t);
        off += bytes;
    }
    char *hs = json_dumps(h, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(h);
    if (!hs) return loom_err_set(err, LOOM_ENOMEM, "out of memory");
    size_t hl = strlen(hs), pad = (8 - hl % 8) % 8;
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "wb");
    if (!f) {
        free(hs);
        return loom_err_set(err, LOOM_EIO, "cannot create %s: %s", tmp, strerror(errno));
    }
    uint64_t total = hl + pad;
    unsigned char len8[8];
    for (int i = 0; i < 8; i++) len8[i] = (unsigned char)(total >> (8 * i));
    int bad = fwrite(len8, 1, 8, f) != 8 || fwrite(hs, 1, hl, f) != hl || fwrite("        ", 1, pad, f) != pad;
    free(hs);
    for (size_t i = 0; i < n && !bad; i++) bad = write_converted(f, &entries[i]) != 0;
    if (fclose(f) != 0) bad = 1;
    if (bad || rename(tmp, path) != 0) {
        remove(tmp);
        return loom_err_set(err, LOOM_EIO, "cannot write %s: %s", path, strerror(errno ? errno : EIO));
    }
    return LOOM_OK;
}
