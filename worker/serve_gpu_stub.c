/* GPU serving backend in a build without CUDA: says so. */
#include "serve_gpu.h"

loom_serve_gpu *loom_serve_gpu_create(MPI_Comm workers, MPI_Comm tp_comm, MPI_Comm pp_comm, const char *model_dir,
                                      const loom_shard *shard, int64_t max_batch, int64_t max_tokens, int64_t max_seq_len,
                                      double kv_free_fraction, int64_t max_kv_tokens, int64_t tokens_per_block, loom_dtype kv_dtype,
                                      bool dummy_weights, loom_err *err)
{
    (void)workers, (void)tp_comm, (void)pp_comm, (void)model_dir, (void)shard, (void)max_batch, (void)max_tokens, (void)max_seq_len, (void)kv_free_fraction,
        (void)max_kv_tokens, (void)tokens_per_block, (void)kv_dtype, (void)dummy_weights;
    loom_err_set(err, LOOM_EUNSUPPORTED, "--device cuda: this loom was built without CUDA (nvcc and NCCL at build time)");
    return NULL;
}

void loom_serve_gpu_destroy(loom_serve_gpu *g) { (void)g; }

int64_t loom_serve_gpu_kv_blocks(const loom_serve_gpu *g)
{
    (void)g;
    return 0;
}

loom_status loom_serve_gpu_step(loom_serve_gpu *g, int64_t n, const int64_t *slots, const int64_t *start, const int32_t *tokens,
                                const int64_t *pos0, const int32_t *const *tables, const int64_t *n_tables, const loom_gpu_sample *sp,
                                const int32_t *const *hist, const int64_t *hist_len, int32_t *out_ids, loom_err *err)
{
    (void)g, (void)n, (void)slots, (void)start, (void)tokens, (void)pos0, (void)tables, (void)n_tables, (void)sp, (void)hist, (void)hist_len,
        (void)out_ids;
    return loom_err_set(err, LOOM_EUNSUPPORTED, "built without CUDA");
}
