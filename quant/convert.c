/* Checkpoint conversion (see convert.h). Each rank's partition is loaded with
 * the same loader the workers use, so what is written is by construction
 * what a worker of that layout would have sliced from the original. */
#include "convert.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "../kernels/ops.h"
#include "../util/fileutil.h"
#include "../util/json_util.h"
#include "../util/safetensors_write.h"
#include "../worker/model.h"

/* Conversion never runs the forward pass; the loader only needs hooks to exist. */
static loom_status no_comm(void *ctx, float *buf, int64_t n, loom_err *err)
{
    (void)ctx, (void)buf, (void)n;
    return loom_err_set(err, LOOM_EINTERNAL, "no data plane during conversion");
}

static loom_status no_send(void *ctx, const float *buf, int64_t n, loom_err *err)
{
    (void)ctx, (void)buf, (void)n;
    return loom_err_set(err, LOOM_EINTERNAL, "no data plane during conversion");
}

static loom_status no_gather(void *ctx, const float *local, int64_t count, float *out, loom_err *err)
{
    (void)ctx, (void)local, (void)count, (void)out;
    return loom_err_set(err, LOOM_EINTERNAL, "no data plane during conversion");
}

static loom_status copy_file(const char *from_dir, const char *to_dir, const char *name, loom_err *err)
{
    char src[4096], dst[4096];
    LOOM_CHECK(loom_path_join(src, sizeof src, from_dir, name, err));
    LOOM_CHECK(loom_path_join(dst, sizeof dst, to_dir, name, err));
    if (!loom_file_exists(src)) return LOOM_OK;
    char *data;
    size_t len;
    LOOM_CHECK(loom_file_read(src, &data, &len, err));
    FILE *f = fopen(dst, "wb");
    int bad = !f || fwrite(data, 1, len, f) != len;
    if (f && fclose(f) != 0) bad = 1;
    free(data);
    if (bad) return loom_err_set(err, LOOM_EIO, "cannot write %s: %s", dst, strerror(errno));
    return LOOM_OK;
}

static loom_status write_config(const loom_convert_opts *o, const int64_t *layers, loom_err *err)
{
    char src[4096], dst[4096];
    LOOM_CHECK(loom_path_join(src, sizeof src, o->model_dir, "config.json", err));
    LOOM_CHECK(loom_path_join(dst, sizeof dst, o->out_dir, "config.json", err));
    json_t *root = loom_json_load_file(src, err);
    if (!root) return LOOM_EINVAL;
    json_t *l = json_object(), *pl = json_array();
    for (int i = 0; i < o->pp; i++) json_array_append_new(pl, json_integer(layers[i]));
    json_object_set_new(l, "format", json_integer(1));
    json_object_set_new(l, "tp", json_integer(o->tp));
    json_object_set_new(l, "pp", json_integer(o->pp));
    json_object_set_new(l, "pp_layers", pl);
    json_object_set_new(root, "loom", l);
    if (o->have_dtype) {
        const char *names[] = {"float32", "float16", "bfloat16"};
        json_object_set_new(root, json_object_get(root, "torch_dtype") ? "torch_dtype" : "dtype", json_string(names[o->dtype]));
    }
    int rc = json_dump_file(root, dst, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    json_decref(root);
    if (rc != 0) return loom_err_set(err, LOOM_EIO, "cannot write %s", dst);
    return LOOM_OK;
}

loom_status loom_convert(const loom_convert_opts *o, loom_err *err)
{
    loom_config cfg;
    LOOM_CHECK(loom_config_load(o->model_dir, &cfg, err));
    loom_status st = LOOM_OK;
    int64_t *layers = NULL;
    loom_st_entry *entries = NULL;
    if (cfg.conv_tp) {
        st = loom_err_set(err, LOOM_EINVAL, "%s is already a converted checkpoint (tp=%d pp=%d); convert the Hugging Face original", o->model_dir,
                          cfg.conv_tp, cfg.conv_pp);
        goto out;
    }
    LOOM_CHECK_GOTO(st, loom_shard_check_tp(&cfg, o->tp, err), out);
    layers = calloc((size_t)o->pp, sizeof *layers);
    if (!layers) {
        st = loom_err_set(err, LOOM_ENOMEM, "out of memory");
        goto out;
    }
    for (int s = 0; s < o->pp; s++) {
        int64_t b, e;
        LOOM_CHECK_GOTO(st, loom_shard_layers(cfg.n_layers, o->pp, o->pp_layers, s, &b, &e, err), out);
        layers[s] = e - b;
    }
    if (mkdir(o->out_dir, 0755) != 0 && errno != EEXIST) {
        st = loom_err_set(err, LOOM_EIO, "cannot create %s: %s", o->out_dir, strerror(errno));
        goto out;
    }
    if (!loom_dir_exists(o->out_dir)) {
        st = loom_err_set(err, LOOM_EIO, "%s exists and is not a directory", o->out_dir);
        goto out;
    }
    loom_dist dummy = {.tp_allreduce = no_comm, .tp_gather = no_gather, .pp_send = no_send, .pp_recv = no_comm};
    int n_ranks = o->tp * o->pp;
    for (int s = 0, b = 0; s < o->pp; b += (int)layers[s], s++) {
        for (int t = 0; t < o->tp; t++) {
            int r = s * o->tp + t;
            loom_shard sh = {.tp_rank = t, .tp_size = o->tp, .pp_rank = s, .pp_size = o->pp, .layer_begin = b, .layer_end = b + layers[s]};
            loom_model *m = loom_model_load(o->model_dir, loom_ops_cpu(), &sh, &dummy, 1, 1, err);
            if (!m) {
                st = LOOM_EINVAL;
                goto out;
            }
            free(entries);
            entries = calloc((size_t)m->n_bound, sizeof *entries);
            if (!entries) {
                loom_model_destroy(m);
                st = loom_err_set(err, LOOM_ENOMEM, "out of memory");
                goto out;
            }
            size_t bytes = 0;
            for (int i = 0; i < m->n_bound; i++) {
                const loom_bound_tensor *bt = &m->bound[i];
                loom_dtype dst = o->have_dtype ? o->dtype : bt->dtype;
                entries[i] = (loom_st_entry){.name = bt->name, .n_dims = bt->n_dims, .shape = {bt->shape[0], bt->shape[1]},
                                             .data = bt->data, .src_dtype = bt->dtype, .dst_dtype = dst};
                bytes += (size_t)(bt->n_dims == 1 ? bt->shape[0] : bt->shape[0] * bt->shape[1]) * loom_dtype_size(dst);
            }
            char name[64], path[4096];
            snprintf(name, sizeof name, "rank%d.safetensors", r);
            st = loom_path_join(path, sizeof path, o->out_dir, name, err);
            if (st == LOOM_OK) st = loom_st_write(path, entries, (size_t)m->n_bound, err);
            if (st == LOOM_OK && o->progress)
                fprintf(stderr, "loom convert: rank %d/%d (stage %d, tp %d, layers %d-%lld): %d tensors, %.2f MiB -> %s\n", r + 1, n_ranks, s, t, b,
                        (long long)(b + layers[s] - 1), m->n_bound, (double)bytes / 1048576.0, path);
            loom_model_destroy(m);
            if (st != LOOM_OK) goto out;
        }
    }
    LOOM_CHECK_GOTO(st, write_config(o, layers, err), out);
    const char *extra[] = {"tokenizer.json", "tokenizer_config.json", "generation_config.json", "special_tokens_map.json"};
    for (size_t i = 0; i < sizeof extra / sizeof extra[0]; i++) LOOM_CHECK_GOTO(st, copy_file(o->model_dir, o->out_dir, extra[i], err), out);
out:
    free(entries);
    free(layers);
    loom_config_free(&cfg);
    return st;
}
