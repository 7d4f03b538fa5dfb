/* GPU serving backend (see serve_gpu.h). */
#include "serve_gpu.h"

#include <cuda_runtime_api.h>
#include <stdio.h>
#include <stdlib.h>

#include "../parallel/dist_nccl.h"

struct loom_serve_gpu {
    loom_nccl *nccl;
    loom_gpu_model *m;
};

loom_serve_gpu *loom_serve_gpu_create(MPI_Comm workers, MPI_Comm tp_comm, MPI_Comm pp_comm, const char *model_dir,
                                      const loom_shard *shard, int64_t max_batch, int64_t max_tokens, int64_t max_seq_len,
                                      double kv_free_fraction, int64_t max_kv_tokens, int64_t tokens_per_block, loom_dtype kv_dtype,
                                      bool dummy_weights, loom_err *err)
{
    loom_serve_gpu *g = calloc(1, sizeof *g);
    if (!g) {
        loom_err_set(err, LOOM_ENOMEM, "out of memory");
        return NULL;
    }
    int n_dev = 0, local = 0, rank = 0;
    MPI_Comm node;
    MPI_Comm_split_type(workers, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node);
    MPI_Comm_rank(node, &local);
    MPI_Comm_free(&node);
    MPI_Comm_rank(workers, &rank);
    if (cudaGetDeviceCount(&n_dev) != cudaSuccess || n_dev == 0) {
        cudaGetLastError();
        loom_err_set(err, LOOM_EIO, "--device cuda: no CUDA device on this node (worker %d)", rank);
        free(g);
        return NULL;
    }
    cudaSetDevice(local % n_dev);
    g->nccl = loom_nccl_create(tp_comm, pp_comm, err);
    if (!g->nccl) goto fail;
    loom_gpu_opts o = loom_gpu_opts_default();
    o.max_seqs = max_batch;
    o.max_tokens = max_tokens;
    o.max_seq_len = max_seq_len;
    if (kv_free_fraction > 0) o.kv_free_fraction = kv_free_fraction;
    o.max_kv_tokens = max_kv_tokens;
    o.tokens_per_block = tokens_per_block;
    o.kv = kv_dtype;
    if (dummy_weights) {
        if (shard->tp_size != 1 || shard->pp_size != 1) {
            loom_err_set(err, LOOM_EINVAL, "--dummy-weights serves one unpartitioned worker (--tp 1 --pp 1)");
            goto fail;
        }
        loom_config cfg;
        if (loom_config_load(model_dir, &cfg, err) != LOOM_OK) goto fail;
        g->m = loom_gpu_model_dummy(&cfg, &o, 1234, err);
        loom_config_free(&cfg);
    } else {
        g->m = loom_gpu_model_load_part(model_dir, &o, shard, loom_nccl_hooks(g->nccl), err);
    }
    if (!g->m) goto fail;
    loom_gpu_mem mem = loom_gpu_model_mem(g->m);
    fprintf(stderr,
            "loom worker %d on GPU %d (stage %d, tp %d): weights %.1f MiB, KV pool %.2f GiB (%lld tokens, %s), workspace %.1f MiB, free %.2f GiB\n",
            rank, local % n_dev, shard->pp_rank, shard->tp_rank, (double)mem.weights / (1 << 20), (double)mem.kv / (1 << 30),
            (long long)mem.kv_tokens, loom_dtype_name(mem.kv_dtype), (double)mem.workspace / (1 << 20), (double)mem.free_after / (1 << 30));
    return g;
fail:
    loom_serve_gpu_destroy(g);
    return NULL;
}

void loom_serve_gpu_destroy(loom_serve_gpu *g)
{
    if (!g) return;
    loom_gpu_model_destroy(g->m);
    loom_nccl_destroy(g->nccl);
    free(g);
}

int64_t loom_serve_gpu_kv_blocks(const loom_serve_gpu *g) { return loom_gpu_model_mem(g->m).kv_blocks; }

loom_status loom_serve_gpu_step(loom_serve_gpu *g, int64_t n, const int64_t *slots, const int64_t *start, const int32_t *tokens,
                                const int64_t *pos0, const int32_t *const *tables, const int64_t *n_tables, const loom_gpu_sample *sp,
                                const int32_t *const *hist, const int64_t *hist_len, int32_t *out_ids, loom_err *err)
{
    for (int64_t i = 0; i < n; i++) LOOM_CHECK(loom_gpu_seq_bind(g->m, slots[i], pos0[i], tables[i], n_tables[i], err));
    return loom_gpu_forward_sampled(g->m, n, slots, start, tokens, sp, hist, hist_len, out_ids, err);
}
