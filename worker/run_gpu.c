/* `loom run --device cuda` (see run_gpu.h). */
#include "run_gpu.h"

#include <stdlib.h>
#include <string.h>

#include "../util/clock.h"
#include "gpu_model.h"

loom_status loom_run_gpu(const char *dir, loom_dtype kv_dtype, const int32_t *prompt, int64_t n_prompt, const loom_gen_params *p, loom_token_cb cb,
                         void *cb_ctx, int32_t *out, int64_t *n_out, loom_finish *finish, loom_gen_stats *stats, loom_err *err)
{
    *n_out = 0;
    *finish = LOOM_FINISH_LENGTH;
    if (stats) memset(stats, 0, sizeof *stats);
    LOOM_CHECK(loom_sampling_validate(&p->sampling, err));
    loom_gpu_opts o = loom_gpu_opts_default();
    o.max_seqs = 1;
    o.max_seq_len = n_prompt + p->max_new_tokens;
    o.max_tokens = n_prompt < 2048 ? n_prompt : 2048;
    o.max_kv_tokens = o.max_seq_len;
    o.kv = kv_dtype;
    loom_gpu_model *m = loom_gpu_model_load(dir, &o, err);
    if (!m) return LOOM_EIO;
    const loom_config *c = loom_gpu_config(m);
    int32_t *hist = malloc((size_t)(n_prompt + p->max_new_tokens) * sizeof *hist);
    if (!hist) {
        loom_gpu_model_destroy(m);
        return loom_err_set(err, LOOM_ENOMEM, "out of memory");
    }
    memcpy(hist, prompt, (size_t)n_prompt * sizeof *hist);
    int64_t n_hist = n_prompt, slot = 0;
    loom_gpu_sample sp = {.temperature = p->sampling.temperature, .top_k = p->sampling.top_k, .top_p = p->sampling.top_p,
                          .repetition_penalty = p->sampling.repetition_penalty, .seed = p->sampling.seed};
    const int32_t *hp[1] = {hist};
    loom_status st = LOOM_OK;
    int32_t id = 0;
    double t0 = loom_now_s(), t1 = t0;
    for (int64_t i = 0; i < n_prompt && st == LOOM_OK; i += o.max_tokens) {
        int64_t n = n_prompt - i < o.max_tokens ? n_prompt - i : o.max_tokens, start[2] = {0, n}, hl[1] = {i + n};
        st = loom_gpu_forward_sampled(m, 1, &slot, start, prompt + i, &sp, hp, hl, &id, err);
    }
    t1 = loom_now_s();
    while (st == LOOM_OK) {
        hist[n_hist++] = id;
        if (!loom_gen_accept(p, c, id, cb, cb_ctx, out, n_out, finish)) break;
        int64_t start[2] = {0, 1}, hl[1] = {n_hist};
        st = loom_gpu_forward_sampled(m, 1, &slot, start, &hist[n_hist - 1], &sp, hp, hl, &id, err);
    }
    if (stats) {
        stats->prompt_tokens = n_prompt;
        stats->new_tokens = *n_out;
        stats->prefill_s = t1 - t0;
        stats->decode_s = loom_now_s() - t1;
    }
    free(hist);
    loom_gpu_model_destroy(m);
    return st;
}
