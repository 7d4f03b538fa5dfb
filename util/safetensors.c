/* Safetensors parsing and validation over read-only mmaps (see safetensors.h).
 * Layout: u64 little-endian header length N, N bytes of JSON
 * {name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {...}},
 * then the data region that offsets are relative to. */
#include "safetensors.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "fileutil.h"
#include "json_util.h"

typedef struct st_file {
    char *path;
    loom_mmap map;
} st_file;

struct loom_st_set {
    st_file *files;
    size_t n_files;
    loom_tensor *tensors;
    size_t n_tensors, cap_tensors;
    size_t data_bytes;
};

/* Element sizes of every dtype safetensors defines, so a well-formed file with
 * a type we do not compute with still validates (and fails only if used). */
static int st_dtype_bytes(const char *s)
{
    static const struct { const char *name; int bytes; } t[] = {
        {"F64", 8}, {"F32", 4}, {"F16", 2}, {"BF16", 2}, {"I64", 8}, {"I32", 4},
        {"I16", 2}, {"I8", 1}, {"U64", 8}, {"U32", 4}, {"U16", 2}, {"U8", 1},
        {"BOOL", 1}, {"F8_E4M3", 1}, {"F8_E5M2", 1},
    };
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++)
        if (!strcmp(s, t[i].name)) return t[i].bytes;
    return 0;
}

static loom_status push_tensor(loom_st_set *set, loom_tensor *t, loom_err *err)
{
    if (set->n_tensors == set->cap_tensors) {
        size_t cap = set->cap_tensors ? set->cap_tensors * 2 : 64;
        loom_tensor *nt = realloc(set->tensors, cap * sizeof *nt);
        if (!nt) return loom_err_set(err, LOOM_ENOMEM, "out of memory reading safetensors headers");
        set->tensors = nt;
        set->cap_tensors = cap;
    }
    set->tensors[set->n_tensors++] = *t;
    return LOOM_OK;
}

static void free_tensor_strings(loom_tensor *t)
{
    free((char *)t->name);
    free((char *)t->dtype_name);
}

/* Parses one tensor entry of a header. */
static loom_status parse_entry(loom_st_set *set, st_file *f, const char *name, json_t *e,
                               const unsigned char *data, size_t data_len, loom_err *err)
{
    const char *path = f->path;
    if (!json_is_object(e)) return loom_err_set(err, LOOM_EINVAL, "%s: header entry for tensor \"%s\" is not an object", path, name);
    json_t *jd = json_object_get(e, "dtype"), *js = json_object_get(e, "shape"), *jo = json_object_get(e, "data_offsets");
    if (!json_is_string(jd) || !json_is_array(js) || !json_is_array(jo) || json_array_size(jo) != 2)
        return loom_err_set(err, LOOM_EINVAL, "%s: tensor \"%s\" needs dtype (string), shape (array) and data_offsets ([begin, end])", path, name);
    const char *dname = json_string_value(jd);
    int esize = st_dtype_bytes(dname);
    if (!esize) return loom_err_set(err, LOOM_EINVAL, "%s: tensor \"%s\" has unknown dtype \"%s\"", path, name, dname);
    loom_tensor t = {0};
    size_t nd = json_array_size(js);
    if (nd > LOOM_ST_MAX_DIMS) return loom_err_set(err, LOOM_EINVAL, "%s: tensor \"%s\" has %zu dimensions (at most %d supported)", path, name, nd, LOOM_ST_MAX_DIMS);
    t.n_dims = (int)nd;
    uint64_t numel = 1;
    for (size_t i = 0; i < nd; i++) {
        json_t *d = json_array_get(js, i);
        if (!json_is_integer(d) || json_integer_value(d) < 0)
            return loom_err_set(err, LOOM_EINVAL, "%s: tensor \"%s\" has a bad shape entry", path, name);
        t.shape[i] = (int64_t)json_integer_value(d);
        if (t.shape[i] && numel > UINT64_MAX / 16 / (uint64_t)t.shape[i])
            return loom_err_set(err, LOOM_EINVAL, "%s: tensor \"%s\" shape overflows", path, name);
        numel *= (uint64_t)t.shape[i];
    }
    json_t *jb = json_array_get(jo, 0), *je = json_array_get(jo, 1);
    if (!json_is_integer(jb) || !json_is_integer(je) || json_integer_value(jb) < 0 || json_integer_value(je) < json_integer_value(jb))
        return loom_err_set(err, LOOM_EINVAL, "%s: tensor \"%s\" has bad data_offsets", path, name);
    uint64_t b = (uint64_t)json_integer_value(jb), en = (uint64_t)json_integer_value(je);
    if (en > data_len)
        return loom_err_set(err, LOOM_EINVAL, "%s: tensor \"%s\" data_offsets [%llu, %llu] run past the end of the data (%zu bytes); the file is truncated or corrupt",
                            path, name, (unsigned long long)b, (unsigned long long)en, data_len);
    if (en - b != numel * (uint64_t)esize)
        return loom_err_set(err, LOOM_EINVAL, "%s: tensor \"%s\" holds %llu bytes but its shape and dtype %s need %llu", path, name,
                            (unsigned long long)(en - b), dname, (unsigned long long)(numel * (uint64_t)esize));
    t.dtype_ok = loom_dtype_from_safetensors(dname, &t.dtype) == 0;
    t.data = data + b;
    t.nbytes = (size_t)(en - b);
    t.file = f->path;
    t.name = strdup(name);
    t.dtype_name = strdup(dname);
    if (!t.name || !t.dtype_name) {
        free_tensor_strings(&t);
        return loom_err_set(err, LOOM_ENOMEM, "out of memory");
    }
    loom_status st = push_tensor(set, &t, err);
    if (st != LOOM_OK) free_tensor_strings(&t);
    else set->data_bytes += t.nbytes;
    return st;
}

static loom_status parse_file(loom_st_set *set, st_file *f, loom_err *err)
{
    const unsigned char *base = f->map.addr;
    size_t size = f->map.size;
    if (size < 8) return loom_err_set(err, LOOM_EINVAL, "%s: file is %zu bytes, too short to be safetensors", f->path, size);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | base[i];
    if (hlen > size - 8)
        return loom_err_set(err, LOOM_EINVAL, "%s: header length %llu is longer than the file (%zu bytes); the file is truncated or not safetensors",
                            f->path, (unsigned long long)hlen, size);
    if (hlen > 100u * 1024 * 1024) return loom_err_set(err, LOOM_EINVAL, "%s: header length %llu is implausibly large", f->path, (unsigned long long)hlen);
    json_error_t je;
    json_t *h = json_loadb((const char *)base + 8, (size_t)hlen, JSON_REJECT_DUPLICATES, &je);
    if (!h) return loom_err_set(err, LOOM_EINVAL, "%s: header is not valid JSON (column %d: %s)", f->path, je.column, je.text);
    if (!json_is_object(h)) {
        json_decref(h);
        return loom_err_set(err, LOOM_EINVAL, "%s: header is not a JSON object", f->path);
    }
    const unsigned char *data = base + 8 + hlen;
    size_t data_len = size - 8 - (size_t)hlen;
    const char *key;
    json_t *val;
    loom_status st = LOOM_OK;
    json_object_foreach(h, key, val) {
        if (!strcmp(key, "__metadata__")) continue;
        st = parse_entry(set, f, key, val, data, data_len, err);
        if (st != LOOM_OK) break;
    }
    json_decref(h);
    return st;
}

static loom_status add_file(loom_st_set *set, const char *path, loom_err *err)
{
    st_file *nf = realloc(set->files, (set->n_files + 1) * sizeof *nf);
    if (!nf) return loom_err_set(err, LOOM_ENOMEM, "out of memory");
    set->files = nf;
    st_file *f = &set->files[set->n_files];
    memset(f, 0, sizeof *f);
    f->path = strdup(path);
    if (!f->path) return loom_err_set(err, LOOM_ENOMEM, "out of memory");
    set->n_files++;
    LOOM_CHECK(loom_mmap_open(path, &f->map, err));
    return parse_file(set, f, err);
}

loom_st_set *loom_st_open_file(const char *path, loom_err *err)
{
    loom_st_set *set = calloc(1, sizeof *set);
    if (!set) {
        loom_err_set(err, LOOM_ENOMEM, "out of memory");
        return NULL;
    }
    if (add_file(set, path, err) != LOOM_OK) {
        loom_st_close(set);
        return NULL;
    }
    return set;
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(const char *const *)a, *(const char *const *)b); }

/* Opens the shards an index names (each distinct file once, sorted). */
static loom_status open_sharded(loom_st_set *set, const char *dir, const char *index_path, loom_err *err)
{
    json_t *idx = loom_json_load_file(index_path, err);
    if (!idx) return LOOM_EINVAL;
    loom_status st = LOOM_OK;
    const char **names = NULL;
    json_t *wm = json_object_get(idx, "weight_map");
    if (!json_is_object(wm) || json_object_size(wm) == 0) {
        st = loom_err_set(err, LOOM_EINVAL, "%s: missing or empty \"weight_map\" object", index_path);
        goto out;
    }
    size_t n = 0;
    names = calloc(json_object_size(wm), sizeof *names);
    if (!names) {
        st = loom_err_set(err, LOOM_ENOMEM, "out of memory");
        goto out;
    }
    const char *key;
    json_t *val;
    json_object_foreach(wm, key, val) {
        if (!json_is_string(val)) {
            st = loom_err_set(err, LOOM_EINVAL, "%s: weight_map entry \"%s\" is not a file name", index_path, key);
            goto out;
        }
        const char *fn = json_string_value(val);
        if (strchr(fn, '/') || !strcmp(fn, "..")) {
            st = loom_err_set(err, LOOM_EINVAL, "%s: weight_map names \"%s\", which is not a plain file name", index_path, fn);
            goto out;
        }
        names[n++] = fn;
    }
    qsort(names, n, sizeof *names, cmp_str);
    for (size_t i = 0; i < n; i++) {
        if (i && !strcmp(names[i], names[i - 1])) continue;
        char path[4096];
        LOOM_CHECK_GOTO(st, loom_path_join(path, sizeof path, dir, names[i], err), out);
        LOOM_CHECK_GOTO(st, add_file(set, path, err), out);
    }
    /* Every name in the index must be in the shard it names. */
    json_object_foreach(wm, key, val) {
        const loom_tensor *t = loom_st_find(set, key);
        if (!t) {
            st = loom_err_set(err, LOOM_EINVAL, "%s: tensor \"%s\" is listed but not found in %s", index_path, key, json_string_value(val));
            goto out;
        }
    }
out:
    free(names);
    json_decref(idx);
    return st;
}

loom_st_set *loom_st_open_dir(const char *dir, loom_err *err)
{
    char single[4096], index[4096];
    if (loom_path_join(single, sizeof single, dir, "model.safetensors", err) != LOOM_OK ||
        loom_path_join(index, sizeof index, dir, "model.safetensors.index.json", err) != LOOM_OK)
        return NULL;
    if (loom_file_exists(single)) return loom_st_open_file(single, err);
    if (!loom_file_exists(index)) {
        loom_err_set(err, LOOM_EIO, "%s: no model.safetensors or model.safetensors.index.json (only safetensors checkpoints are supported)", dir);
        return NULL;
    }
    loom_st_set *set = calloc(1, sizeof *set);
    if (!set) {
        loom_err_set(err, LOOM_ENOMEM, "out of memory");
        return NULL;
    }
    if (open_sharded(set, dir, index, err) != LOOM_OK) {
        loom_st_close(set);
        return NULL;
    }
    return set;
}

void loom_st_close(loom_st_set *set)
{
    if (!set) return;
    for (size_t i = 0; i < set->n_tensors; i++) free_tensor_strings(&set->tensors[i]);
    free(set->tensors);
    for (size_t i = 0; i < set->n_files; i++) {
        loom_mmap_close(&set->files[i].map);
        free(set->files[i].path);
    }
    free(set->files);
    free(set);
}

const loom_tensor *loom_st_find(const loom_st_set *set, const char *name)
{
    /* Linear scan: models have a few hundred tensors and lookups happen once
     * at load time. */
    for (size_t i = 0; i < set->n_tensors; i++)
        if (!strcmp(set->tensors[i].name, name)) return &set->tensors[i];
    return NULL;
}

size_t loom_st_count(const loom_st_set *set) { return set->n_tensors; }
const loom_tensor *loom_st_at(const loom_st_set *set, size_t i) { return i < set->n_tensors ? &set->tensors[i] : NULL; }
size_t loom_st_data_bytes(const loom_st_set *set) { return set->data_bytes; }
