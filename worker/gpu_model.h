/* The model on one GPU: weights uploaded in the activation dtype (fp16/bf16)
 * with q/k/v and gate/up fused into single GEMMs, a paged KV pool sized from
 * the free memory, and a batched forward pass over the CUDA ops (cuBLASLt
 * GEMMs, flash prefill / paged decode attention) with sampling on the GPU.
 * Nothing is allocated per step.
 *
 * Environment: LOOM_CUDA_GRAPHS=0 runs decode steps without CUDA graphs;
 * LOOM_CUDA_GRAPHS_PARTITIONED=0 keeps them to an unpartitioned model (by
 * default TP ranks and pipeline stages capture theirs too, NCCL calls inside);
 * LOOM_GEMV=0 sends one-row GEMMs to cuBLASLt too; LOOM_GEMM_TUNE=1 times
 * cuBLASLt's candidates once per small-n shape instead of taking the
 * heuristic's first choice (kernels/cuda/gemm.c).
 * LOOM_GPU_PROFILE=1 times every op kind of each step with CUDA events
 * (upload, embedding, norms, the four layer GEMMs, rope + KV append,
 * attention, silu*mul, communication, lm_head, sampling), accumulates the
 * times per (tokens in the step, graph replay or not) and prints the mean per
 * step and each kind's share to stderr at loom_gpu_model_destroy, beside the
 * host's wall time per step. The events stay out of graph captures: a
 * replayed decode step counts as one op ("graph replay"); for its breakdown
 * run with LOOM_CUDA_GRAPHS=0. Unset, it costs one untaken branch per op. */
#ifndef LOOM_WORKER_GPU_MODEL_H
#define LOOM_WORKER_GPU_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "../util/dtype.h"
#include "../util/status.h"
#include "config.h"

typedef struct loom_gpu_opts {
    loom_dtype act;              /* LOOM_F16 or LOOM_BF16 */
    loom_dtype kv;               /* KV cache elements: LOOM_DTYPE_COUNT (default) or act = the activation dtype;
                                    LOOM_F8E4M3 = K/V rounded to FP8 E4M3 when appended (unit scale, half the
                                    bytes); anything else is refused at load */
    int64_t max_tokens;          /* tokens per forward (prefill chunk budget) */
    int64_t max_seqs;            /* sequences per forward */
    int64_t max_seq_len;         /* positions per sequence */
    int64_t tokens_per_block;    /* paged KV block size */
    double kv_free_fraction;     /* of the memory free after weights + workspace (0.9) */
    int64_t max_kv_tokens;       /* > 0: cap the pool at this many tokens */
    int multi_block;             /* -1 auto, 0 off, 1 on */
    int device;                  /* CUDA device ordinal; -1 = the current device (default) */
} loom_gpu_opts;

loom_gpu_opts loom_gpu_opts_default(void);

typedef struct loom_gpu_model loom_gpu_model;

/* Data-plane hooks for a partitioned GPU model (parallel/dist_nccl.c fills
 * them with NCCL). Counts are elements of dtype dt; each returns 0 or an error
 * code; all are enqueued on `stream`. */
typedef struct loom_gpu_dist {
    void *ctx;
    int (*allreduce)(void *ctx, void *buf, int64_t n, loom_dtype dt, void *stream);        /* sum over the TP group */
    int (*allgather)(void *ctx, const void *send, void *recv, int64_t n, loom_dtype dt, void *stream); /* TP rank order */
    int (*send_next)(void *ctx, const void *buf, int64_t n, loom_dtype dt, void *stream);  /* to the next stage */
    int (*recv_prev)(void *ctx, void *buf, int64_t n, loom_dtype dt, void *stream);        /* from the previous stage */
} loom_gpu_dist;

/* Loads one partition (shard: TP rank and pipeline stage, as for the CPU
 * model) of a Hugging Face or converted directory onto the current device.
 * dist must be non-NULL when tp or pp > 1. On the last stage every TP rank
 * samples the same ids (deterministic); other stages return no ids. */
struct loom_shard;
loom_gpu_model *loom_gpu_model_load_part(const char *dir, const loom_gpu_opts *o, const struct loom_shard *shard,
                                         const loom_gpu_dist *dist, loom_err *err);

/* Loads a Hugging Face directory (whole model, one GPU). On error (no GPU,
 * out of memory: the message names what to reduce) returns NULL. */
loom_gpu_model *loom_gpu_model_load(const char *dir, const loom_gpu_opts *o, loom_err *err);

/* Random weights of the config's shapes (for `loom bench --dummy-weights`). */
loom_gpu_model *loom_gpu_model_dummy(const loom_config *cfg, const loom_gpu_opts *o, uint64_t seed, loom_err *err);

/* Random weights of one partition's shapes (shard as for load_part; NULL =
 * the whole model, the same weights as loom_gpu_model_dummy). dist must be
 * non-NULL when tp or pp > 1. On error (a shard that does not split cfg, out
 * of memory) returns NULL and fills err. */
loom_gpu_model *loom_gpu_model_dummy_part(const loom_config *cfg, const loom_gpu_opts *o, const struct loom_shard *shard,
                                          const loom_gpu_dist *dist, uint64_t seed, loom_err *err);

/* Frees device memory; accepts NULL. */
void loom_gpu_model_destroy(loom_gpu_model *m);

/* Memory as loaded (bytes) and the pool's capacity in tokens. */
typedef struct loom_gpu_mem {
    size_t weights, kv, workspace, total, free_after;
    int64_t kv_tokens, kv_blocks;
    loom_dtype kv_dtype; /* the pool's elements: the activations' dtype or LOOM_F8E4M3 */
} loom_gpu_mem;
loom_gpu_mem loom_gpu_model_mem(const loom_gpu_model *m);

/* Binds slot s to a block table the caller owns (the serving coordinator's):
 * its next forward finds `len` tokens already cached in table[0..n) and writes
 * new ones there. From the first call on, the model never takes or frees
 * blocks itself (external mode); a forward that outgrows the bound table
 * fails. EINVAL for a block id outside the pool, n over the per-sequence
 * maximum, or len > n * tokens_per_block. */
loom_status loom_gpu_seq_bind(loom_gpu_model *m, int64_t slot, int64_t len, const int32_t *table, int64_t n, loom_err *err);

/* Sequences are slots 0..max_seqs-1. Resets slot s (frees its blocks). */
void loom_gpu_seq_reset(loom_gpu_model *m, int64_t slot);

/* Tokens held in slot s's cache. */
int64_t loom_gpu_seq_len(const loom_gpu_model *m, int64_t slot);

/* One forward over a batch: sequence i is slot slots[i] and feeds tokens
 * tokens[start[i] .. start[i+1]) (host arrays) after what its cache holds;
 * blocks are taken from the pool as needed. Then picks the greedy token of
 * each sequence into out_ids (host, n_seqs; last stage only). Synchronizes the
 * stream before returning. Errors: out of KV blocks, limits. (Sampling:
 * loom_gpu_forward_sampled.) */
loom_status loom_gpu_forward(loom_gpu_model *m, int64_t n_seqs, const int64_t *slots, const int64_t *start,
                             const int32_t *tokens, int32_t *out_ids, loom_err *err);

/* Per-sequence sampling for loom_gpu_forward_sampled. */
typedef struct loom_gpu_sample {
    float temperature;        /* 0 = greedy */
    int32_t top_k;            /* 0 = off */
    float top_p;              /* 1 = off */
    float repetition_penalty; /* 1 = off */
    uint64_t seed;            /* with the sequence's length as the step: the same
                                 request gives the same tokens in any batch */
} loom_gpu_sample;

/* loom_gpu_forward with sampling parameters per sequence (sp[n_seqs]) and,
 * for the repetition penalty, each sequence's ids so far (hist[i], hist_len[i]
 * host arrays; may be NULL when no sequence uses a penalty). */
loom_status loom_gpu_forward_sampled(loom_gpu_model *m, int64_t n_seqs, const int64_t *slots, const int64_t *start,
                                     const int32_t *tokens, const loom_gpu_sample *sp, const int32_t *const *hist,
                                     const int64_t *hist_len, int32_t *out_ids, loom_err *err);

/* Copies the last forward's fp32 logits (n_seqs, vocab) to host memory. */
loom_status loom_gpu_logits(loom_gpu_model *m, int64_t n_seqs, float *out, loom_err *err);

/* Bytes of weights a decode step reads (for the bandwidth floor). */
size_t loom_gpu_weight_bytes(const loom_gpu_model *m);

const loom_config *loom_gpu_config(const loom_gpu_model *m);

#endif
