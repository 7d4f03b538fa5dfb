/* Generation for one sequence: prefill the prompt, then sample and feed one
 * token at a time until max_new_tokens, an EOS/stop id, or the caller's
 * per-token callback says stop (stop strings live with the detokenizer). */
#ifndef LOOM_WORKER_GENERATE_H
#define LOOM_WORKER_GENERATE_H

#include <stdbool.h>
#include <stdint.h>

#include "model.h"
#include "sampler.h"

typedef enum loom_finish {
    LOOM_FINISH_LENGTH, /* max_new_tokens reached */
    LOOM_FINISH_EOS,    /* an EOS id of the model was sampled */
    LOOM_FINISH_STOP    /* a stop id, or the callback asked to stop (stop string) */
} loom_finish;

typedef struct loom_gen_params {
    int64_t max_new_tokens;
    loom_sampling_params sampling;
    const int32_t *stop_ids; /* extra ids that end generation (kept in the output) */
    int n_stop_ids;
    bool ignore_eos;         /* do not stop on the model's EOS ids */
} loom_gen_params;

typedef struct loom_gen_stats {
    int64_t prompt_tokens, new_tokens;
    double prefill_s, decode_s; /* wall seconds */
} loom_gen_stats;

/* Called after each new token; return false to stop (finish = STOP). */
typedef bool (*loom_token_cb)(void *ctx, int32_t id);

/* Records a newly sampled id: appends it to out (n_out advances), hands it to
 * cb, and decides whether generation goes on. Returns false with *finish set
 * (EOS id of cfg unless ignore_eos, a stop id or the callback saying stop:
 * STOP, max_new_tokens reached: LENGTH). Shared by every generation loop. */
bool loom_gen_accept(const loom_gen_params *p, const loom_config *cfg, int32_t id, loom_token_cb cb, void *cb_ctx, int32_t *out,
                     int64_t *n_out, loom_finish *finish);

/* Generates after prompt[0..n_prompt). out (capacity p->max_new_tokens)
 * receives the new ids (EOS/stop id included when it ends generation), *n_out
 * their count. kv must be empty and hold n_prompt + max_new_tokens positions.
 * Allocates only the sampler and the history buffer, before the loop. */
loom_status loom_generate(loom_model *m, loom_kv_cache *kv, const int32_t *prompt, int64_t n_prompt,
                          const loom_gen_params *p, loom_token_cb cb, void *cb_ctx, int32_t *out,
                          int64_t *n_out, loom_finish *finish, loom_gen_stats *stats, loom_err *err);

#endif
