/* Model loading: reads the config, maps the safetensors, binds every
 * Hugging Face tensor name to its slot with a shape check, and carves the
 * run state out of one allocation. */
#include "model.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Binds name (formatted) to *w, checking rank-1 or rank-2 shape. rows/cols:
 * expected shape; cols == 0 means a vector of `rows`. A missing optional
 * tensor leaves w->data NULL. */
static loom_status bind(loom_model *m, loom_weight *w, bool required, int64_t rows, int64_t cols,
                        loom_err *err, const char *fmt, ...) __attribute__((format(printf, 7, 8)));

static loom_status bind(loom_model *m, loom_weight *w, bool required, int64_t rows, int64_t cols,
                        loom_err *err, const char *fmt, ...)
{
    char name[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    const loom_tensor *t = loom_st_find(m->st, name);
    w->data = NULL;
    if (!t) {
        if (!required) return LOOM_OK;
        return loom_err_set(err, LOOM_EINVAL, "missing tensor %s (needed by %s with this config.json)", name, m->cfg.arch_name);
    }
    if (!t->dtype_ok)
        return loom_err_set(err, LOOM_EUNSUPPORTED, "%s: tensor %s has dtype %s (supported: F32, F16, BF16)", t->file, name, t->dtype_name);
    bool ok = cols ? (t->n_dims == 2 && t->shape[0] == rows && t->shape[1] == cols)
                   : (t->n_dims == 1 && t->shape[0] == rows);
    if (!ok) {
        char got[128] = "[", want[64];
        for (int i = 0; i < t->n_dims; i++) {
            size_t l = strlen(got);
            snprintf(got + l, sizeof got - l, "%s%lld", i ? ", " : "", (long long)t->shape[i]);
        }
        strncat(got, "]", sizeof got - strlen(got) - 1);
        if (cols) snprintf(want, sizeof want, "[%lld, %lld]", (long long)rows, (long long)cols);
        else snprintf(want, sizeof want, "[%lld]", (long long)rows);
        return loom_err_set(err, LOOM_EINVAL, "%s: tensor %s has shape %s but config.json implies %s", t->file, name, got, want);
    }
    w->data = t->data;
    w->dtype = t->dtype;
    m->weight_bytes += t->nbytes;
    return LOOM_OK;
}

static loom_status bind_weights(loom_model *m, loom_err *err)
{
    const loom_config *c = &m->cfg;
    int64_t H = c->hidden_size, I = c->intermediate_size, V = c->vocab_size;
    int64_t QD = c->n_heads * c->head_dim, KD = c->n_kv_heads * c->head_dim;
    loom_weights *w = &m->w;
    w->layers = calloc((size_t)c->n_layers, sizeof *w->layers);
    if (!w->layers) return loom_err_set(err, LOOM_ENOMEM, "out of memory");
    LOOM_CHECK(bind(m, &w->embed, true, V, H, err, "model.embed_tokens.weight"));
    for (int64_t l = 0; l < c->n_layers; l++) {
        loom_layer_weights *L = &w->layers[l];
        const char *p = "model.layers";
        long long i = (long long)l;
        LOOM_CHECK(bind(m, &L->attn_norm, true, H, 0, err, "%s.%lld.input_layernorm.weight", p, i));
        LOOM_CHECK(bind(m, &L->wq, true, QD, H, err, "%s.%lld.self_attn.q_proj.weight", p, i));
        LOOM_CHECK(bind(m, &L->wk, true, KD, H, err, "%s.%lld.self_attn.k_proj.weight", p, i));
        LOOM_CHECK(bind(m, &L->wv, true, KD, H, err, "%s.%lld.self_attn.v_proj.weight", p, i));
        LOOM_CHECK(bind(m, &L->wo, true, H, QD, err, "%s.%lld.self_attn.o_proj.weight", p, i));
        if (c->qkv_bias) {
            LOOM_CHECK(bind(m, &L->bq, true, QD, 0, err, "%s.%lld.self_attn.q_proj.bias", p, i));
            LOOM_CHECK(bind(m, &L->bk, true, KD, 0, err, "%s.%lld.self_attn.k_proj.bias", p, i));
            LOOM_CHECK(bind(m, &L->bv, true, KD, 0, err, "%s.%lld.self_attn.v_proj.bias", p, i));
        }
        if (c->o_bias) LOOM_CHECK(bind(m, &L->bo, true, H, 0, err, "%s.%lld.self_attn.o_proj.bias", p, i));
        LOOM_CHECK(bind(m, &L->mlp_norm, true, H, 0, err, "%s.%lld.post_attention_layernorm.weight", p, i));
        LOOM_CHECK(bind(m, &L->w_gate, true, I, H, err, "%s.%lld.mlp.gate_proj.weight", p, i));
        LOOM_CHECK(bind(m, &L->w_up, true, I, H, err, "%s.%lld.mlp.up_proj.weight", p, i));
        LOOM_CHECK(bind(m, &L->w_down, true, H, I, err, "%s.%lld.mlp.down_proj.weight", p, i));
        if (c->mlp_bias) {
            LOOM_CHECK(bind(m, &L->b_gate, true, I, 0, err, "%s.%lld.mlp.gate_proj.bias", p, i));
            LOOM_CHECK(bind(m, &L->b_up, true, I, 0, err, "%s.%lld.mlp.up_proj.bias", p, i));
            LOOM_CHECK(bind(m, &L->b_down, true, H, 0, err, "%s.%lld.mlp.down_proj.bias", p, i));
        }
        /* A bias must have the weight's dtype: the matmul op reads both as one type. */
        loom_weight *pairs[][2] = {{&L->wq, &L->bq}, {&L->wk, &L->bk}, {&L->wv, &L->bv}, {&L->wo, &L->bo},
                                   {&L->w_gate, &L->b_gate}, {&L->w_up, &L->b_up}, {&L->w_down, &L->b_down}};
        for (size_t k = 0; k < sizeof pairs / sizeof pairs[0]; k++)
            if (pairs[k][1]->data && pairs[k][1]->dtype != pairs[k][0]->dtype)
                return loom_err_set(err, LOOM_EUNSUPPORTED, "layer %lld: a bias is stored as %s but its weight as %s (mixed dtypes are not supported)",
                                    i, loom_dtype_name(pairs[k][1]->dtype), loom_dtype_name(pairs[k][0]->dtype));
    }
    LOOM_CHECK(bind(m, &w->final_norm, true, H, 0, err, "model.norm.weight"));
    if (c->tie_word_embeddings) {
        w->lm_head = w->embed;
        m->weight_bytes += (size_t)(V * H) * loom_dtype_size(w->embed.dtype); /* read twice per step */
    } else {
        LOOM_CHECK(bind(m, &w->lm_head, true, V, H, err, "lm_head.weight"));
    }
    return LOOM_OK;
}

/* One allocation for all activations, carved by a size table. */
static loom_status alloc_run_state(loom_model *m, int64_t T, loom_err *err)
{
    const loom_config *c = &m->cfg;
    loom_run_state *rs = &m->rs;
    int64_t QD = c->n_heads * c->head_dim;
    struct { void **slot; int64_t elems; size_t esize; } table[] = {
        {(void **)&rs->x, T * c->hidden_size, sizeof(float)},
        {(void **)&rs->xb, T * c->hidden_size, sizeof(float)},
        {(void **)&rs->q, T * QD, sizeof(float)},
        {(void **)&rs->att, T * QD, sizeof(float)},
        {(void **)&rs->hb, T * c->intermediate_size, sizeof(float)},
        {(void **)&rs->hb2, T * c->intermediate_size, sizeof(float)},
        {(void **)&rs->logits, c->vocab_size, sizeof(float)},
        {(void **)&rs->pos, T, sizeof(int32_t)},
        {(void **)&rs->inv_freq, c->head_dim / 2, sizeof(float)},
    };
    size_t n = sizeof table / sizeof table[0], total = 0;
    for (size_t i = 0; i < n; i++) total += ((size_t)table[i].elems * table[i].esize + 63) & ~(size_t)63;
    rs->block = aligned_alloc(64, total);
    if (!rs->block) return loom_err_set(err, LOOM_ENOMEM, "cannot allocate %zu bytes of activations; lower the prefill chunk", total);
    char *p = rs->block;
    for (size_t i = 0; i < n; i++) {
        *table[i].slot = p;
        p += ((size_t)table[i].elems * table[i].esize + 63) & ~(size_t)63;
    }
    rs->bytes = total;
    rs->max_tokens = T;
    loom_config_rope_inv_freq(c, rs->inv_freq);
    return LOOM_OK;
}

loom_model *loom_model_load(const char *dir, const loom_ops *ops, int64_t max_tokens, loom_err *err)
{
    loom_model *m = calloc(1, sizeof *m);
    if (!m) {
        loom_err_set(err, LOOM_ENOMEM, "out of memory");
        return NULL;
    }
    m->ops = ops;
    if (max_tokens < 1) max_tokens = 1;
    if (loom_config_load(dir, &m->cfg, err) != LOOM_OK) goto fail;
    m->st = loom_st_open_dir(dir, err);
    if (!m->st) goto fail;
    if (bind_weights(m, err) != LOOM_OK) goto fail;
    if (alloc_run_state(m, max_tokens, err) != LOOM_OK) goto fail;
    return m;
fail:
    loom_model_destroy(m);
    return NULL;
}

void loom_model_destroy(loom_model *m)
{
    if (!m) return;
    free(m->rs.block);
    free(m->w.layers);
    loom_st_close(m->st);
    loom_config_free(&m->cfg);
    free(m);
}
