/* The single-sequence generation loop (see generate.h). */
#include "generate.h"
#include "../util/clock.h"

#include <stdlib.h>
#include <string.h>

bool loom_gen_accept(const loom_gen_params *p, const loom_config *cfg, int32_t id, loom_token_cb cb, void *cb_ctx, int32_t *out,
                     int64_t *n_out, loom_finish *finish)
{
    out[(*n_out)++] = id;
    bool more = cb ? cb(cb_ctx, id) : true;
    bool stop_id = false;
    for (int i = 0; i < p->n_stop_ids; i++) stop_id |= p->stop_ids[i] == id;
    if (!p->ignore_eos && loom_config_is_eos(cfg, id)) *finish = LOOM_FINISH_EOS;
    else if (stop_id || !more) *finish = LOOM_FINISH_STOP;
    else if (*n_out >= p->max_new_tokens) *finish = LOOM_FINISH_LENGTH;
    else return true;
    return false;
}

loom_status loom_generate(loom_model *m, loom_kv_cache *kv, const int32_t *prompt, int64_t n_prompt,
                          const loom_gen_params *p, loom_token_cb cb, void *cb_ctx, int32_t *out,
                          int64_t *n_out, loom_finish *finish, loom_gen_stats *stats, loom_err *err)
{
    *n_out = 0;
    *finish = LOOM_FINISH_LENGTH;
    if (stats) memset(stats, 0, sizeof *stats);
    if (n_prompt < 1) return loom_err_set(err, LOOM_EINVAL, "the prompt is empty");
    if (p->max_new_tokens < 1) return loom_err_set(err, LOOM_EINVAL, "max_new_tokens must be at least 1");
    if (kv->len != 0 || n_prompt + p->max_new_tokens > kv->max_seq)
        return loom_err_set(err, LOOM_EINVAL, "prompt (%lld) + max_new_tokens (%lld) exceeds the sequence limit (%lld)",
                            (long long)n_prompt, (long long)p->max_new_tokens, (long long)kv->max_seq);
    loom_sampler *s = loom_sampler_create(m->cfg.vocab_size, &p->sampling, err);
    if (!s) return LOOM_EINVAL;
    int32_t *hist = malloc((size_t)(n_prompt + p->max_new_tokens) * sizeof *hist);
    if (!hist) {
        loom_sampler_destroy(s);
        return loom_err_set(err, LOOM_ENOMEM, "out of memory");
    }
    memcpy(hist, prompt, (size_t)n_prompt * sizeof *hist);
    int64_t n_hist = n_prompt;

    loom_status st;
    double t0 = loom_now_s();
    LOOM_CHECK_GOTO(st, loom_model_prefill(m, kv, prompt, n_prompt, err), done);
    double t1 = loom_now_s();
    if (stats) {
        stats->prompt_tokens = n_prompt;
        stats->prefill_s = t1 - t0;
    }
    for (;;) {
        int32_t id = loom_sampler_sample(s, m->rs.logits, hist, n_hist);
        hist[n_hist++] = id;
        if (!loom_gen_accept(p, &m->cfg, id, cb, cb_ctx, out, n_out, finish)) break;
        LOOM_CHECK_GOTO(st, loom_model_forward(m, kv, &id, 1, err), done);
    }
    if (stats) {
        stats->new_tokens = *n_out;
        stats->decode_s = loom_now_s() - t1;
    }
done:
    free(hist);
    loom_sampler_destroy(s);
    return st;
}
