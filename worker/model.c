/* Model loading: reads the config, maps the safetensors, and binds every
 * Hugging Face tensor name this partition needs to its slot with a shape
 * check. Column-parallel slices (q/k/v, gate/up, lm_head rows) are views into
 * the mapping; row-parallel slices (o_proj, down_proj columns) are copied
 * once. A `loom convert` directory holds the slices already: all views. */
#include "model.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../util/fileutil.h"

loom_shard loom_shard_single(const loom_config *cfg)
{
    return (loom_shard){.tp_rank = 0, .tp_size = 1, .pp_rank = 0, .pp_size = 1, .layer_begin = 0, .layer_end = cfg->n_layers};
}

loom_status loom_shard_layers(int64_t n_layers, int pp_size, const int64_t *pp_layers, int pp_rank,
                              int64_t *begin, int64_t *end, loom_err *err)
{
    if (pp_size < 1 || pp_size > n_layers)
        return loom_err_set(err, LOOM_EINVAL, "cannot split %lld layers over %d pipeline stages (pp must be 1..%lld)",
                            (long long)n_layers, pp_size, (long long)n_layers);
    int64_t b = 0;
    if (pp_layers) {
        int64_t sum = 0;
        for (int i = 0; i < pp_size; i++) {
            if (pp_layers[i] < 1) return loom_err_set(err, LOOM_EINVAL, "pipeline stage %d is given %lld layers; every stage needs at least one", i, (long long)pp_layers[i]);
            sum += pp_layers[i];
        }
        if (sum != n_layers)
            return loom_err_set(err, LOOM_EINVAL, "the per-stage layer counts add up to %lld, but the model has %lld layers", (long long)sum, (long long)n_layers);
        for (int i = 0; i < pp_rank; i++) b += pp_layers[i];
        *begin = b;
        *end = b + pp_layers[pp_rank];
        return LOOM_OK;
    }
    int64_t base = n_layers / pp_size, extra = n_layers % pp_size;
    for (int i = 0; i < pp_rank; i++) b += base + (i < extra);
    *begin = b;
    *end = b + base + (pp_rank < extra);
    return LOOM_OK;
}

static bool tp_ok(const loom_config *c, int64_t tp)
{
    return c->n_heads % tp == 0 && (c->n_kv_heads % tp == 0 || tp % c->n_kv_heads == 0) && c->intermediate_size % tp == 0;
}

loom_status loom_shard_check_tp(const loom_config *c, int tp, loom_err *err)
{
    if (tp >= 1 && tp_ok(c, tp)) return LOOM_OK;
    char works[256] = "";
    for (int64_t t = 1; t <= c->n_heads && strlen(works) < sizeof works - 16; t++)
        if (tp_ok(c, t)) snprintf(works + strlen(works), sizeof works - strlen(works), "%s%lld", works[0] ? ", " : "", (long long)t);
    const char *what = c->n_heads % tp ? "num_attention_heads" : c->intermediate_size % tp ? "intermediate_size" : "num_key_value_heads";
    long long val = c->n_heads % tp ? c->n_heads : c->intermediate_size % tp ? c->intermediate_size : c->n_kv_heads;
    return loom_err_set(err, LOOM_EINVAL, "tensor parallelism %d cannot split %s = %lld (TP sizes that work for this model: %s)", tp, what, val, works);
}

loom_status loom_shard_dims_make(const loom_config *c, const loom_shard *sh, loom_shard_dims *d, loom_err *err)
{
    if (sh->tp_size < 1 || sh->tp_rank < 0 || sh->tp_rank >= sh->tp_size || sh->pp_size < 1 || sh->pp_rank < 0 ||
        sh->pp_rank >= sh->pp_size || sh->layer_begin < 0 || sh->layer_end > c->n_layers || sh->layer_begin >= sh->layer_end)
        return loom_err_set(err, LOOM_EINVAL, "invalid partition (tp %d/%d, pp %d/%d, layers %lld..%lld) for a %lld-layer model", sh->tp_rank,
                            sh->tp_size, sh->pp_rank, sh->pp_size, (long long)sh->layer_begin, (long long)sh->layer_end, (long long)c->n_layers);
    LOOM_CHECK(loom_shard_check_tp(c, sh->tp_size, err));
    const int64_t tp = sh->tp_size;
    d->n_heads_local = c->n_heads / tp;
    if (c->n_kv_heads % tp == 0) {
        d->n_kv_local = c->n_kv_heads / tp;
        d->kv_head_begin = sh->tp_rank * d->n_kv_local;
    } else { /* tp > kv heads: each kv head is replicated on tp / n_kv ranks */
        d->n_kv_local = 1;
        d->kv_head_begin = sh->tp_rank / (tp / c->n_kv_heads);
    }
    d->inter_local = c->intermediate_size / tp;
    d->vocab_local = (c->vocab_size + tp - 1) / tp;
    d->v_begin = sh->tp_rank * d->vocab_local;
    int64_t v_end = d->v_begin + d->vocab_local < c->vocab_size ? d->v_begin + d->vocab_local : c->vocab_size;
    d->v_rows = v_end > d->v_begin ? v_end - d->v_begin : 0;
    return LOOM_OK;
}

static loom_status keep_owned(loom_model *m, void *p, loom_err *err)
{
    if (m->n_owned == m->cap_owned) {
        int cap = m->cap_owned ? m->cap_owned * 2 : 32;
        void **o = realloc(m->owned, (size_t)cap * sizeof *o);
        if (!o) return loom_err_set(err, LOOM_ENOMEM, "out of memory");
        m->owned = o;
        m->cap_owned = cap;
    }
    m->owned[m->n_owned++] = p;
    return LOOM_OK;
}

static loom_status record_bound(loom_model *m, const char *name, int64_t rows, int64_t cols, const loom_weight *w, loom_err *err)
{
    if (m->n_bound == m->cap_bound) {
        int cap = m->cap_bound ? m->cap_bound * 2 : 64;
        loom_bound_tensor *b = realloc(m->bound, (size_t)cap * sizeof *b);
        if (!b) return loom_err_set(err, LOOM_ENOMEM, "out of memory");
        m->bound = b;
        m->cap_bound = cap;
    }
    loom_bound_tensor *b = &m->bound[m->n_bound++];
    snprintf(b->name, sizeof b->name, "%s", name);
    b->n_dims = cols ? 2 : 1;
    b->shape[0] = rows;
    b->shape[1] = cols;
    b->data = w->data;
    b->dtype = w->dtype;
    return LOOM_OK;
}

static void shape_str(char *buf, size_t cap, const int64_t *shape, int n)
{
    size_t l = (size_t)snprintf(buf, cap, "[");
    for (int i = 0; i < n && l < cap; i++) l += (size_t)snprintf(buf + l, cap - l, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (l < cap) snprintf(buf + l, cap - l, "]");
}

/* A slice request: the tensor's full shape (cols = 0 for a vector) and the
 * block [r0, r0+nr) x [c0, c0+nc) this partition takes. */
typedef struct slice {
    int64_t rows, cols, r0, nr, c0, nc;
} slice;

static slice whole(int64_t rows, int64_t cols) { return (slice){rows, cols, 0, rows, 0, cols}; }
static slice row_slice(int64_t rows, int64_t cols, int64_t r0, int64_t nr) { return (slice){rows, cols, r0, nr, 0, cols}; }
static slice col_slice(int64_t rows, int64_t cols, int64_t c0, int64_t nc) { return (slice){rows, cols, 0, rows, c0, nc}; }

/* Binds the tensor `file_name` as this partition's `name`. */
static loom_status bind_as(loom_model *m, loom_weight *w, bool required, slice s, const char *file_name,
                           const char *name, loom_err *err)
{
    w->data = NULL;
    const loom_tensor *t = loom_st_find(m->st, file_name);
    if (!t) {
        if (!required) return LOOM_OK;
        return loom_err_set(err, LOOM_EINVAL, "missing tensor %s (needed by %s with this config.json)", file_name, m->cfg.arch_name);
    }
    if (!t->dtype_ok)
        return loom_err_set(err, LOOM_EUNSUPPORTED, "%s: tensor %s has dtype %s (supported: F32, F16, BF16)", t->file, file_name, t->dtype_name);
    /* A converted file holds the slice itself; a Hugging Face file the whole. */
    int64_t want[2] = {m->converted ? s.nr : s.rows, m->converted ? s.nc : s.cols};
    int nd = s.cols ? 2 : 1;
    if (t->n_dims != nd || t->shape[0] != want[0] || (nd == 2 && t->shape[1] != want[1])) {
        char got[96], exp[96];
        shape_str(got, sizeof got, t->shape, t->n_dims);
        shape_str(exp, sizeof exp, want, nd);
        return loom_err_set(err, LOOM_EINVAL, "%s: tensor %s has shape %s but config.json implies %s", t->file, file_name, got, exp);
    }
    size_t es = loom_dtype_size(t->dtype);
    int64_t cols = nd == 2 ? s.cols : 1, nc = nd == 2 ? s.nc : 1;
    w->dtype = t->dtype;
    if (m->converted || nc == cols) {
        size_t off = m->converted ? 0 : (size_t)(s.r0 * cols) * es;
        w->data = (const char *)t->data + off;
    } else {
        size_t row_bytes = (size_t)nc * es;
        char *copy = malloc((size_t)s.nr * row_bytes);
        if (!copy) return loom_err_set(err, LOOM_ENOMEM, "out of memory copying a slice of %s", file_name);
        LOOM_CHECK(keep_owned(m, copy, err));
        for (int64_t r = 0; r < s.nr; r++)
            memcpy(copy + (size_t)r * row_bytes, (const char *)t->data + ((size_t)((s.r0 + r) * cols + s.c0)) * es, row_bytes);
        w->data = copy;
    }
    m->weight_bytes += (size_t)(s.nr * nc) * es;
    return record_bound(m, name, s.nr, nd == 2 ? s.nc : 0, w, err);
}

static loom_status bind(loom_model *m, loom_weight *w, bool required, slice s, loom_err *err, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));

static loom_status bind(loom_model *m, loom_weight *w, bool required, slice s, loom_err *err, const char *fmt, ...)
{
    char name[128];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    return bind_as(m, w, required, s, name, name, err);
}

static loom_status bind_layer(loom_model *m, int64_t l, loom_layer_weights *L, loom_err *err)
{
    const loom_config *c = &m->cfg;
    const int64_t H = c->hidden_size, hd = c->head_dim, tr = m->shard.tp_rank;
    const int64_t QD = c->n_heads * hd, KD = c->n_kv_heads * hd, I = c->intermediate_size;
    const int64_t qd = m->n_heads_local * hd, kd = m->n_kv_local * hd, il = m->inter_local;
    const int64_t q0 = tr * qd, k0 = m->kv_head_begin * hd, i0 = tr * il;
    const bool rank0 = tr == 0;
    const char *p = "model.layers";
    long long i = (long long)l;
    LOOM_CHECK(bind(m, &L->attn_norm, true, whole(H, 0), err, "%s.%lld.input_layernorm.weight", p, i));
    LOOM_CHECK(bind(m, &L->wq, true, row_slice(QD, H, q0, qd), err, "%s.%lld.self_attn.q_proj.weight", p, i));
    LOOM_CHECK(bind(m, &L->wk, true, row_slice(KD, H, k0, kd), err, "%s.%lld.self_attn.k_proj.weight", p, i));
    LOOM_CHECK(bind(m, &L->wv, true, row_slice(KD, H, k0, kd), err, "%s.%lld.self_attn.v_proj.weight", p, i));
    LOOM_CHECK(bind(m, &L->wo, true, col_slice(H, QD, q0, qd), err, "%s.%lld.self_attn.o_proj.weight", p, i));
    if (c->qkv_bias) {
        LOOM_CHECK(bind(m, &L->bq, true, row_slice(QD, 0, q0, qd), err, "%s.%lld.self_attn.q_proj.bias", p, i));
        LOOM_CHECK(bind(m, &L->bk, true, row_slice(KD, 0, k0, kd), err, "%s.%lld.self_attn.k_proj.bias", p, i));
        LOOM_CHECK(bind(m, &L->bv, true, row_slice(KD, 0, k0, kd), err, "%s.%lld.self_attn.v_proj.bias", p, i));
    }
    /* Row-parallel biases are added once, by TP rank 0, before the all-reduce. */
    if (c->o_bias && rank0) LOOM_CHECK(bind(m, &L->bo, true, whole(H, 0), err, "%s.%lld.self_attn.o_proj.bias", p, i));
    LOOM_CHECK(bind(m, &L->mlp_norm, true, whole(H, 0), err, "%s.%lld.post_attention_layernorm.weight", p, i));
    LOOM_CHECK(bind(m, &L->w_gate, true, row_slice(I, H, i0, il), err, "%s.%lld.mlp.gate_proj.weight", p, i));
    LOOM_CHECK(bind(m, &L->w_up, true, row_slice(I, H, i0, il), err, "%s.%lld.mlp.up_proj.weight", p, i));
    LOOM_CHECK(bind(m, &L->w_down, true, col_slice(H, I, i0, il), err, "%s.%lld.mlp.down_proj.weight", p, i));
    if (c->mlp_bias) {
        LOOM_CHECK(bind(m, &L->b_gate, true, row_slice(I, 0, i0, il), err, "%s.%lld.mlp.gate_proj.bias", p, i));
        LOOM_CHECK(bind(m, &L->b_up, true, row_slice(I, 0, i0, il), err, "%s.%lld.mlp.up_proj.bias", p, i));
        if (rank0) LOOM_CHECK(bind(m, &L->b_down, true, whole(H, 0), err, "%s.%lld.mlp.down_proj.bias", p, i));
    }
    /* A bias must have its weight's dtype: the matmul op reads both as one type. */
    const loom_weight *pairs[][2] = {{&L->wq, &L->bq}, {&L->wk, &L->bk}, {&L->wv, &L->bv}, {&L->wo, &L->bo},
                                     {&L->w_gate, &L->b_gate}, {&L->w_up, &L->b_up}, {&L->w_down, &L->b_down}};
    for (size_t k = 0; k < sizeof pairs / sizeof pairs[0]; k++)
        if (pairs[k][1]->data && pairs[k][1]->dtype != pairs[k][0]->dtype)
            return loom_err_set(err, LOOM_EUNSUPPORTED, "layer %lld: a bias is stored as %s but its weight as %s (mixed dtypes are not supported)",
                                i, loom_dtype_name(pairs[k][1]->dtype), loom_dtype_name(pairs[k][0]->dtype));
    return LOOM_OK;
}

static loom_status bind_weights(loom_model *m, loom_err *err)
{
    const loom_config *c = &m->cfg;
    const loom_shard *sh = &m->shard;
    const int64_t H = c->hidden_size, V = c->vocab_size;
    const int64_t n_local = sh->layer_end - sh->layer_begin;
    loom_weights *w = &m->w;
    w->layers = calloc((size_t)n_local, sizeof *w->layers);
    if (!w->layers) return loom_err_set(err, LOOM_ENOMEM, "out of memory");
    const bool first = sh->pp_rank == 0, last = sh->pp_rank == sh->pp_size - 1;
    if (first) LOOM_CHECK(bind(m, &w->embed, true, whole(V, H), err, "model.embed_tokens.weight"));
    for (int64_t l = 0; l < n_local; l++) LOOM_CHECK(bind_layer(m, sh->layer_begin + l, &w->layers[l], err));
    if (last) {
        LOOM_CHECK(bind(m, &w->final_norm, true, whole(H, 0), err, "model.norm.weight"));
        slice s = row_slice(V, H, m->v_begin, m->v_rows);
        /* Tied embeddings: lm_head is embed_tokens (a converted file stores the slice as lm_head). */
        if (c->tie_word_embeddings && !m->converted)
            LOOM_CHECK(bind_as(m, &w->lm_head, true, s, "model.embed_tokens.weight", "lm_head.weight", err));
        else
            LOOM_CHECK(bind(m, &w->lm_head, true, s, err, "lm_head.weight"));
    }
    return LOOM_OK;
}

/* One allocation for all activations, carved by a size table. */
static loom_status alloc_run_state(loom_model *m, int64_t T, int64_t S, loom_err *err)
{
    const loom_config *c = &m->cfg;
    loom_run_state *rs = &m->rs;
    const int64_t qd = m->n_heads_local * c->head_dim, kd = m->n_kv_local * c->head_dim;
    const int64_t tp = m->shard.tp_size, Vl = m->vocab_local;
    struct {
        void **slot;
        int64_t elems;
        size_t esize;
    } table[] = {
        {(void **)&rs->x, T * c->hidden_size, sizeof(float)},
        {(void **)&rs->xb, T * c->hidden_size, sizeof(float)},
        {(void **)&rs->q, T * qd, sizeof(float)},
        {(void **)&rs->k, T * kd, sizeof(float)},
        {(void **)&rs->v, T * kd, sizeof(float)},
        {(void **)&rs->att, T * qd, sizeof(float)},
        {(void **)&rs->hb, T * m->inter_local, sizeof(float)},
        {(void **)&rs->hb2, T * m->inter_local, sizeof(float)},
        {(void **)&rs->last, S * c->hidden_size, sizeof(float)},
        {(void **)&rs->logits_local, S * Vl, sizeof(float)},
        {(void **)&rs->gather, tp > 1 ? tp * S * Vl : 1, sizeof(float)},
        {(void **)&rs->logits, S * c->vocab_size, sizeof(float)},
        {(void **)&rs->pos, T, sizeof(int32_t)},
        {(void **)&rs->inv_freq, c->head_dim / 2, sizeof(float)},
    };
    size_t n = sizeof table / sizeof table[0], total = 0;
    for (size_t i = 0; i < n; i++) total += ((size_t)table[i].elems * table[i].esize + 63) & ~(size_t)63;
    rs->block = aligned_alloc(64, total);
    if (!rs->block)
        return loom_err_set(err, LOOM_ENOMEM, "cannot allocate %zu bytes of activations for %lld tokens x %lld sequences; lower the batch or chunk size",
                            total, (long long)T, (long long)S);
    char *p = rs->block;
    for (size_t i = 0; i < n; i++) {
        *table[i].slot = p;
        p += ((size_t)table[i].elems * table[i].esize + 63) & ~(size_t)63;
    }
    rs->bytes = total;
    rs->max_tokens = T;
    rs->max_seqs = S;
    loom_config_rope_inv_freq(c, rs->inv_freq);
    return LOOM_OK;
}

/* Opens this partition's weights: rank{R}.safetensors of a converted
 * directory, or the Hugging Face checkpoint. */
static loom_status open_weights(loom_model *m, const char *dir, loom_err *err)
{
    const loom_config *c = &m->cfg;
    if (!c->conv_tp) {
        m->st = loom_st_open_dir(dir, err);
        return m->st ? LOOM_OK : LOOM_EINVAL;
    }
    const loom_shard *sh = &m->shard;
    if (c->conv_tp != sh->tp_size || c->conv_pp != sh->pp_size)
        return loom_err_set(err, LOOM_EINVAL, "%s was converted for tp=%d pp=%d but is being run with tp=%d pp=%d; convert again or launch with the same layout",
                            dir, c->conv_tp, c->conv_pp, sh->tp_size, sh->pp_size);
    int64_t b, e;
    LOOM_CHECK(loom_shard_layers(c->n_layers, c->conv_pp, c->conv_pp_layers, sh->pp_rank, &b, &e, err));
    if (b != sh->layer_begin || e != sh->layer_end)
        return loom_err_set(err, LOOM_EINVAL, "%s holds layers %lld..%lld on stage %d, but this run asks for %lld..%lld (use the same --pp-layers as at conversion)",
                            dir, (long long)b, (long long)e - 1, sh->pp_rank, (long long)sh->layer_begin, (long long)sh->layer_end - 1);
    char name[64], path[4096];
    snprintf(name, sizeof name, "rank%d.safetensors", sh->pp_rank * sh->tp_size + sh->tp_rank);
    LOOM_CHECK(loom_path_join(path, sizeof path, dir, name, err));
    m->converted = true;
    m->st = loom_st_open_file(path, err);
    return m->st ? LOOM_OK : LOOM_EINVAL;
}

loom_model *loom_model_load(const char *dir, const loom_ops *ops, const loom_shard *shard,
                            const loom_dist *dist, int64_t max_tokens, int64_t max_seqs, loom_err *err)
{
    loom_model *m = calloc(1, sizeof *m);
    if (!m) {
        loom_err_set(err, LOOM_ENOMEM, "out of memory");
        return NULL;
    }
    m->ops = ops;
    m->dist = dist;
    if (loom_config_load(dir, &m->cfg, err) != LOOM_OK) goto fail;
    const loom_config *c = &m->cfg;
    m->shard = shard ? *shard : loom_shard_single(c);
    const loom_shard *sh = &m->shard;
    loom_shard_dims d;
    if (loom_shard_dims_make(c, sh, &d, err) != LOOM_OK) goto fail;
    if ((sh->tp_size > 1 || sh->pp_size > 1) && !dist) {
        loom_err_set(err, LOOM_EINTERNAL, "a partitioned model needs data-plane hooks");
        goto fail;
    }
    m->n_heads_local = d.n_heads_local;
    m->n_kv_local = d.n_kv_local;
    m->kv_head_begin = d.kv_head_begin;
    m->inter_local = d.inter_local;
    m->vocab_local = d.vocab_local;
    m->v_begin = d.v_begin;
    m->v_rows = d.v_rows;
    if (max_tokens < 1) max_tokens = 1;
    if (max_seqs < 1) max_seqs = 1;
    if (open_weights(m, dir, err) != LOOM_OK) goto fail;
    if (bind_weights(m, err) != LOOM_OK) goto fail;
    if (alloc_run_state(m, max_tokens, max_seqs, err) != LOOM_OK) goto fail;
    m->kv_dtype = LOOM_F32;
    return m;
fail:
    loom_model_destroy(m);
    return NULL;
}

loom_status loom_model_set_kv_dtype(loom_model *m, loom_dtype kv, loom_err *err)
{
    if (kv == LOOM_DTYPE_COUNT) kv = LOOM_F32;
    if (kv != LOOM_F32 && kv != LOOM_F8E4M3)
        return loom_err_set(err, LOOM_EINVAL, "the CPU backend keeps its KV cache in fp32 or rounds it to fp8, not %s", loom_dtype_name(kv));
    m->kv_dtype = kv;
    return LOOM_OK;
}

void loom_model_destroy(loom_model *m)
{
    if (!m) return;
    free(m->rs.block);
    free(m->w.layers);
    for (int i = 0; i < m->n_owned; i++) free(m->owned[i]);
    free(m->owned);
    free(m->bound);
    loom_st_close(m->st);
    loom_config_free(&m->cfg);
    free(m);
}

loom_kv_cache *loom_model_kv_create(const loom_model *m, int64_t max_seq, loom_err *err)
{
    return loom_kv_cache_create(m->shard.layer_end - m->shard.layer_begin, max_seq, m->n_kv_local, m->cfg.head_dim, err);
}
