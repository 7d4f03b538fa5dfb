/* A loaded Llama-family model partition: its config, the weights of its
 * tensor-parallel shard and pipeline stage (zero-copy views into mmapped
 * safetensors where the slice is contiguous, private copies where it is not),
 * and the batched forward pass over the op table. With tp = pp = 1 it is the
 * whole model. */
#ifndef LOOM_WORKER_MODEL_H
#define LOOM_WORKER_MODEL_H

#include <stdbool.h>
#include <stdint.h>

#include "../kernels/ops.h"
#include "../kv/kv_cache.h"
#include "../util/safetensors.h"
#include "config.h"

/* Which partition this process holds. */
typedef struct loom_shard {
    int tp_rank, tp_size;       /* tensor-parallel rank in the stage's group */
    int pp_rank, pp_size;       /* pipeline stage */
    int64_t layer_begin, layer_end; /* [begin, end): the stage's layers */
} loom_shard;

/* The whole model as one partition. */
loom_shard loom_shard_single(const loom_config *cfg);

/* Splits n_layers over pp stages: as evenly as possible (earlier stages
 * take the remainder), or by explicit per-stage counts (pp_layers, may be
 * NULL). Fills layer_begin/end of stage pp_rank. Errors name the problem. */
loom_status loom_shard_layers(int64_t n_layers, int pp_size, const int64_t *pp_layers, int pp_rank,
                              int64_t *begin, int64_t *end, loom_err *err);

/* Checks that tp can split the config's heads, kv heads (or replicate them
 * when tp > kv heads) and intermediate size; the message names the shape and
 * the TP sizes that work. */
loom_status loom_shard_check_tp(const loom_config *cfg, int tp_size, loom_err *err);

/* A partition's local shapes (the loom_model fields of the same names). */
typedef struct loom_shard_dims {
    int64_t n_heads_local, n_kv_local, inter_local; /* Hl, KVl, Il */
    int64_t kv_head_begin;   /* first global kv head this rank holds */
    int64_t vocab_local;     /* Vl = ceil(vocab / tp) */
    int64_t v_begin, v_rows; /* this rank's lm_head rows (the last rank may hold fewer, or none) */
} loom_shard_dims;

/* Checks that sh is a partition of cfg (ranks in range, layers inside the
 * model, loom_shard_check_tp) and fills its local shapes. Errors name the
 * problem. */
loom_status loom_shard_dims_make(const loom_config *cfg, const loom_shard *sh, loom_shard_dims *d, loom_err *err);

/* Data-plane hooks the forward pass calls for TP and PP; parallel/ fills them
 * (MPI on the CPU, NCCL later). NULL hooks are fine when tp = pp = 1. */
typedef struct loom_dist {
    void *ctx;
    /* Sum buf (n floats) over the TP group, in place, on every member. */
    loom_status (*tp_allreduce)(void *ctx, float *buf, int64_t n, loom_err *err);
    /* Gathers each member's (rows, n_local) block to TP rank 0 into
     * out (tp_size, rows, n_local), in rank order. out is used on rank 0 only. */
    loom_status (*tp_gather)(void *ctx, const float *local, int64_t count, float *out, loom_err *err);
    /* Sends / receives n floats of activations to the next / from the
     * previous pipeline stage (same TP rank). */
    loom_status (*pp_send)(void *ctx, const float *buf, int64_t n, loom_err *err);
    loom_status (*pp_recv)(void *ctx, float *buf, int64_t n, loom_err *err);
} loom_dist;

/* A weight: a view in its stored dtype. */
typedef struct loom_weight {
    const void *data; /* NULL when absent (optional bias) */
    loom_dtype dtype;
} loom_weight;

/* Shapes are this partition's (local): Hl = n_heads/tp query heads,
 * KVl kv heads (n_kv/tp, or 1 when replicated), Il = intermediate/tp,
 * Vl = ceil(vocab/tp) rows of lm_head (the last rank may hold fewer). */
typedef struct loom_layer_weights {
    loom_weight attn_norm;      /* (hidden) */
    loom_weight wq, bq;         /* (Hl*head_dim, hidden), (Hl*head_dim) */
    loom_weight wk, bk;         /* (KVl*head_dim, hidden), (KVl*head_dim) */
    loom_weight wv, bv;         /* (KVl*head_dim, hidden), (KVl*head_dim) */
    loom_weight wo, bo;         /* (hidden, Hl*head_dim), (hidden) on tp rank 0 only */
    loom_weight mlp_norm;       /* (hidden) */
    loom_weight w_gate, b_gate; /* (Il, hidden), (Il) */
    loom_weight w_up, b_up;     /* (Il, hidden), (Il) */
    loom_weight w_down, b_down; /* (hidden, Il), (hidden) on tp rank 0 only */
} loom_layer_weights;

typedef struct loom_weights {
    loom_weight embed;          /* (vocab, hidden); first stage only */
    loom_layer_weights *layers; /* (layer_end - layer_begin) */
    loom_weight final_norm;     /* (hidden); last stage only */
    loom_weight lm_head;        /* (v_rows, hidden): vocab rows [v_begin, v_begin+v_rows); last stage only */
} loom_weights;

/* A tensor this partition holds, as `loom convert` writes it. */
typedef struct loom_bound_tensor {
    char name[128];
    int n_dims;
    int64_t shape[2];
    const void *data;
    loom_dtype dtype;
} loom_bound_tensor;

/* Activations and scratch for forward calls of up to max_tokens tokens over
 * up to max_seqs sequences: one allocation carved by a size table. */
typedef struct loom_run_state {
    int64_t max_tokens, max_seqs;
    float *x;      /* (max_tokens, hidden) residual stream */
    float *xb;     /* (max_tokens, hidden) normed input / projection output */
    float *q;      /* (max_tokens, Hl*head_dim) */
    float *k;      /* (max_tokens, KVl*head_dim) new keys before they go to the caches */
    float *v;      /* (max_tokens, KVl*head_dim) */
    float *att;    /* (max_tokens, Hl*head_dim) attention output */
    float *hb;     /* (max_tokens, Il) gate, then silu(gate)*up */
    float *hb2;    /* (max_tokens, Il) up */
    float *last;   /* (max_seqs, hidden) final-normed last token of each sequence */
    float *logits_local; /* (max_seqs, Vl) this rank's vocab slice */
    float *gather; /* (tp_size, max_seqs, Vl) gathered slices (tp rank 0) */
    float *logits; /* (max_seqs, vocab) full logits of each sequence's last token */
    int32_t *pos;  /* (max_tokens) positions of the tokens being fed */
    float *inv_freq; /* (head_dim/2) rotary frequencies */
    void *block;   /* the single allocation */
    size_t bytes;
} loom_run_state;

typedef struct loom_model {
    loom_config cfg;
    loom_shard shard;
    int64_t n_heads_local, n_kv_local, inter_local; /* Hl, KVl, Il */
    int64_t kv_head_begin;  /* first global kv head this rank holds */
    int64_t vocab_local;    /* Vl = ceil(vocab / tp) */
    int64_t v_begin, v_rows;/* this rank's lm_head rows */
    loom_weights w;
    loom_st_set *st;        /* owns the mappings the views point into */
    void **owned;           /* private copies of non-contiguous slices */
    int n_owned, cap_owned;
    loom_bound_tensor *bound; /* every tensor this partition holds */
    int n_bound, cap_bound;
    bool converted;         /* loaded from a `loom convert` directory */
    const loom_ops *ops;
    const loom_dist *dist;
    loom_run_state rs;
    size_t weight_bytes;    /* bytes of weights this partition's forward reads */
    loom_dtype kv_dtype;    /* LOOM_F32 (after load) or LOOM_F8E4M3: every K (after RoPE) and V element is
                               rounded through E4M3 as it enters the cache, the oracle of the GPU's FP8
                               cache; the cache stays fp32. Set with loom_model_set_kv_dtype */
} loom_model;

/* Loads the partition `shard` (NULL = the whole model) from dir: a Hugging
 * Face directory (sliced at load) or a `loom convert` output (this rank's
 * rank{R}.safetensors, zero-copy). Binds and shape-checks every weight and
 * allocates run state for forward calls of up to max_tokens tokens over up to
 * max_seqs sequences. dist may be NULL for tp = pp = 1. On error returns NULL
 * and fills err (naming the file, tensor and expected shape). */
loom_model *loom_model_load(const char *dir, const loom_ops *ops, const loom_shard *shard,
                            const loom_dist *dist, int64_t max_tokens, int64_t max_seqs, loom_err *err);

/* Chooses what the forward pass stores in the KV caches: LOOM_F32 or
 * LOOM_DTYPE_COUNT (the fp32 activations, the default) or LOOM_F8E4M3 (each
 * element rounded to the nearest E4M3 value, unit scale, kept in fp32). Set it
 * before the first forward: caches filled before keep their values. Any other
 * dtype is refused with a message. */
loom_status loom_model_set_kv_dtype(loom_model *m, loom_dtype kv, loom_err *err);

/* Frees the model and unmaps its files; accepts NULL. */
void loom_model_destroy(loom_model *m);

/* Creates a KV cache for one sequence on this partition (its layers and kv heads). */
loom_kv_cache *loom_model_kv_create(const loom_model *m, int64_t max_seq, loom_err *err);

/* A batch for one forward call: n_seqs sequences, sequence s feeding tokens
 * [seq_start[s], seq_start[s+1]) at positions kv[s]->len onward. Each kv[s]
 * is a standalone cache (loom_model_kv_create) or a view of a pool bound with
 * loom_kv_cache_bind; views may share one pool, but the blocks a sequence
 * writes (those holding positions len .. len+n-1) must be its own. */
typedef struct loom_batch {
    int64_t n_seqs;
    const int64_t *seq_start;   /* (n_seqs + 1), seq_start[0] = 0 */
    const int32_t *tokens;      /* (n_tokens); read on the first stage only */
    loom_kv_cache *const *kv;   /* (n_seqs); pools shaped like this partition */
} loom_batch;

/* Runs a batch through this partition. The first stage embeds tokens; other
 * stages receive activations from the previous stage; all but the last send
 * them on. Every sequence's K/V are appended to its cache and kv->len
 * advances. On the last stage, rs.logits (n_seqs, vocab) holds each
 * sequence's last-token logits on TP rank 0 (and on every rank when tp = 1).
 * Token ids must be in [0, vocab). */
loom_status loom_model_forward_batch(loom_model *m, const loom_batch *b, loom_err *err);

/* One sequence, n tokens (1 <= n <= max_tokens): a batch of one. */
loom_status loom_model_forward(loom_model *m, loom_kv_cache *kv, const int32_t *tokens, int64_t n,
                               loom_err *err);

/* Feeds a whole prompt of one sequence in chunks of at most max_tokens. */
loom_status loom_model_prefill(loom_model *m, loom_kv_cache *kv, const int32_t *tokens, int64_t n,
                               loom_err *err);

#endif
