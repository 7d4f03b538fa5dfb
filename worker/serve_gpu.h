/* The GPU side of a serving worker: picks this rank's GPU (node-local worker
 * index modulo the GPUs on the node), builds the NCCL communicators from the
 * worker's MPI ones, loads its partition as a loom_gpu_model and runs plan
 * steps on it. In a build without CUDA, create fails with a message. */
#ifndef LOOM_WORKER_SERVE_GPU_H
#define LOOM_WORKER_SERVE_GPU_H

#include <mpi.h>
#include <stdbool.h>
#include <stdint.h>

#include "../util/status.h"
#include "gpu_model.h"
#include "model.h"

typedef struct loom_serve_gpu loom_serve_gpu;

/* Collective over the workers (tp_comm, pp_comm as parallel/dist_mpi.c builds
 * them). max_*, kv_dtype: as the worker's options (kv_dtype becomes
 * loom_gpu_opts.kv). dummy_weights: random weights of the
 * config's shapes instead of loading (one unpartitioned worker; for
 * benchmarks). Prints the rank's memory line. */
loom_serve_gpu *loom_serve_gpu_create(MPI_Comm workers, MPI_Comm tp_comm, MPI_Comm pp_comm, const char *model_dir,
                                      const loom_shard *shard, int64_t max_batch, int64_t max_tokens, int64_t max_seq_len,
                                      double kv_free_fraction, int64_t max_kv_tokens, int64_t tokens_per_block, loom_dtype kv_dtype,
                                      bool dummy_weights, loom_err *err);

/* The KV pool's size in blocks. */
int64_t loom_serve_gpu_kv_blocks(const loom_serve_gpu *g);

/* Frees; accepts NULL. */
void loom_serve_gpu_destroy(loom_serve_gpu *g);

/* One step: slots[i] feeds tokens[start[i] .. start[i+1]) at positions
 * pos0[i] onward, its KV in the blocks tables[i][0..n_tables[i]) (the
 * coordinator's block table). On the last stage out_ids[i] is the sampled id
 * (sp[i], history hist[i][0..hist_len[i]) for the repetition penalty). */
loom_status loom_serve_gpu_step(loom_serve_gpu *g, int64_t n, const int64_t *slots, const int64_t *start, const int32_t *tokens,
                                const int64_t *pos0, const int32_t *const *tables, const int64_t *n_tables, const loom_gpu_sample *sp,
                                const int32_t *const *hist, const int64_t *hist_len, int32_t *out_ids, loom_err *err);

#endif
