/* A loaded Llama-family model: its config, zero-copy views of its weights
 * (mmapped safetensors, stored dtype), and the forward pass over the op
 * table. One model, one KV cache per sequence (kv/kv_cache.h). */
#ifndef LOOM_WORKER_MODEL_H
#define LOOM_WORKER_MODEL_H

#include <stdint.h>

#include "../kernels/ops.h"
#include "../kv/kv_cache.h"
#include "../util/safetensors.h"
#include "config.h"

/* A weight: a view into the mapping, in its stored dtype. */
typedef struct loom_weight {
    const void *data; /* NULL when absent (optional bias) */
    loom_dtype dtype;
} loom_weight;

typedef struct loom_layer_weights {
    loom_weight attn_norm;  /* (hidden) */
    loom_weight wq, bq;     /* (n_heads*head_dim, hidden), (n_heads*head_dim) */
    loom_weight wk, bk;     /* (n_kv_heads*head_dim, hidden), (n_kv_heads*head_dim) */
    loom_weight wv, bv;     /* (n_kv_heads*head_dim, hidden), (n_kv_heads*head_dim) */
    loom_weight wo, bo;     /* (hidden, n_heads*head_dim), (hidden) */
    loom_weight mlp_norm;   /* (hidden) */
    loom_weight w_gate, b_gate; /* (intermediate, hidden), (intermediate) */
    loom_weight w_up, b_up;     /* (intermediate, hidden), (intermediate) */
    loom_weight w_down, b_down; /* (hidden, intermediate), (hidden) */
} loom_layer_weights;

typedef struct loom_weights {
    loom_weight embed;       /* (vocab, hidden) */
    loom_layer_weights *layers; /* (n_layers) */
    loom_weight final_norm;  /* (hidden) */
    loom_weight lm_head;     /* (vocab, hidden); embed when tied */
} loom_weights;

/* Activations and scratch for forward calls of up to max_tokens tokens, one
 * allocation carved by a size table. */
typedef struct loom_run_state {
    int64_t max_tokens;
    float *x;      /* (max_tokens, hidden) residual stream */
    float *xb;     /* (max_tokens, hidden) normed input / projection output */
    float *q;      /* (max_tokens, n_heads*head_dim) */
    float *att;    /* (max_tokens, n_heads*head_dim) attention output */
    float *hb;     /* (max_tokens, intermediate) gate, then silu(gate)*up */
    float *hb2;    /* (max_tokens, intermediate) up */
    float *logits; /* (vocab) logits of the last token */
    int32_t *pos;  /* (max_tokens) positions of the tokens being fed */
    float *inv_freq; /* (head_dim/2) rotary frequencies */
    void *block;   /* the single allocation */
    size_t bytes;
} loom_run_state;

typedef struct loom_model {
    loom_config cfg;
    loom_weights w;
    loom_st_set *st;      /* owns the mappings the weights point into */
    const loom_ops *ops;
    loom_run_state rs;
    size_t weight_bytes;  /* bytes of weights the forward pass reads */
} loom_model;

/* Loads config.json + safetensors from dir, binds and shape-checks every
 * weight, and allocates run state for forward calls of up to max_tokens
 * tokens. On error returns NULL and fills err (naming the file, tensor and
 * the shape expected). */
loom_model *loom_model_load(const char *dir, const loom_ops *ops, int64_t max_tokens, loom_err *err);

/* Frees the model and unmaps its files; accepts NULL. */
void loom_model_destroy(loom_model *m);

/* Runs n tokens (1 <= n <= rs.max_tokens) of one sequence through the model
 * at positions kv->len .. kv->len+n-1, appends their K/V to kv, advances
 * kv->len, and leaves the last token's logits in m->rs.logits.
 * Token ids must be in [0, vocab); kv->len + n <= kv->max_seq. */
loom_status loom_model_forward(loom_model *m, loom_kv_cache *kv, const int32_t *tokens, int64_t n,
                               loom_err *err);

/* Feeds a whole prompt in chunks of at most rs.max_tokens; logits of the last
 * token end up in m->rs.logits. */
loom_status loom_model_prefill(loom_model *m, loom_kv_cache *kv, const int32_t *tokens, int64_t n,
                               loom_err *err);

#endif
