/* `loom run --device cuda` in a build without CUDA: says so. */
#include "run_gpu.h"

loom_status loom_run_gpu(const char *dir, loom_dtype kv_dtype, const int32_t *prompt, int64_t n_prompt, const loom_gen_params *p, loom_token_cb cb,
                         void *cb_ctx, int32_t *out, int64_t *n_out, loom_finish *finish, loom_gen_stats *stats, loom_err *err)
{
    (void)dir, (void)kv_dtype, (void)prompt, (void)n_prompt, (void)p, (void)cb, (void)cb_ctx, (void)out, (void)stats;
    *n_out = 0;
    *finish = LOOM_FINISH_LENGTH;
    return loom_err_set(err, LOOM_EUNSUPPORTED, "--device cuda: this loom was built without CUDA (nvcc at build time)");
}
