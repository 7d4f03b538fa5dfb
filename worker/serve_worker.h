/* A serving worker rank: loads its model partition, then executes the
 * coordinator's BatchPlans (ZeroMQ SUB) in order, passing activations and
 * all-reducing over MPI, and (last stage, TP rank 0) samples and returns a
 * StepResult (ZeroMQ PUSH). */
#ifndef LOOM_WORKER_SERVE_WORKER_H
#define LOOM_WORKER_SERVE_WORKER_H

#include <mpi.h>
#include <stdint.h>

#include "../util/status.h"
#include "model.h"

typedef struct loom_worker_opts {
    const char *model_dir;
    int tp, pp;
    const int64_t *pp_layers;   /* (pp) or NULL for an even split */
    int64_t max_batch_size;     /* sequence slots (sampler state) */
    int64_t max_num_tokens;     /* tokens per step */
    int64_t max_seq_len;        /* positions per sequence */
    int verbose;
    int device_cuda;            /* run the partition on this node's GPUs (NCCL) */
    double kv_free_fraction;    /* GPU: KV pool share of the memory free after weights (0 = 0.9) */
    int64_t max_kv_tokens;      /* the pool in tokens (CPU; 0 = max_batch_size x max_seq_len),
                                   a cap on it (GPU; 0 = none) */
    int64_t tokens_per_block;   /* paged KV block size (power of two, 8..128) */
    loom_dtype kv_dtype;        /* KV cache elements, as loom_kv_dtype_check leaves them: LOOM_DTYPE_COUNT = the
                                   activation dtype, LOOM_F8E4M3 = FP8 E4M3 (GPU: a byte each; CPU: fp32 holding
                                   E4M3 values). LOOM_F32 (a zeroed struct) is accepted on the CPU only */
    int dummy_weights;          /* GPU: random weights of the config's shapes (benchmarks) */
} loom_worker_opts;

typedef struct loom_worker loom_worker;

/* Loads this rank's partition (collective over `workers`, which must hold
 * tp*pp ranks) and allocates its paged KV pool and every sampler and buffer it
 * will use. Plans index the pool with the coordinator's block tables; each
 * ping answer reports the pool's size.
 * Prints the rank's memory line to stderr. On error returns NULL and fills err. */
loom_worker *loom_worker_create(MPI_Comm workers, const loom_worker_opts *o, loom_err *err);

/* Serves plans from plan_endpoint (SUB) and sends results to
 * result_endpoint (PUSH) until a Shutdown arrives. Returns non-OK if a step
 * fails (after telling the coordinator) or a socket breaks. */
loom_status loom_worker_serve(loom_worker *w, const char *plan_endpoint, const char *result_endpoint, loom_err *err);

/* Frees everything; accepts NULL. Collective over the workers. */
void loom_worker_destroy(loom_worker *w);

#endif
