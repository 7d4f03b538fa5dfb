/* One-shot generation on one GPU for `loom run --device cuda`: the same
 * contract as loom_generate (worker/generate.h), with the model loaded from
 * dir onto the current device and sampling on the GPU. In a build without
 * CUDA it fails with a message. */
#ifndef LOOM_WORKER_RUN_GPU_H
#define LOOM_WORKER_RUN_GPU_H

#include "generate.h"

/* vocab_size and eos ids come from dir's config. kv_dtype becomes
 * loom_gpu_opts.kv (LOOM_DTYPE_COUNT: as the activations; LOOM_F8E4M3). */
loom_status loom_run_gpu(const char *dir, loom_dtype kv_dtype, const int32_t *prompt, int64_t n_prompt, const loom_gen_params *p, loom_token_cb cb,
                         void *cb_ctx, int32_t *out, int64_t *n_out, loom_finish *finish, loom_gen_stats *stats, loom_err *err);

#endif
