/* Shared generation flags (see gen_flags.h). */
#include "gen_flags.h"

#include <string.h>

#include "../util/parse.h"

void loom_gen_flags_init(loom_gen_flags *f)
{
    memset(f, 0, sizeof *f);
    f->sampling = loom_sampling_defaults();
}

bool loom_gen_flags_apply(loom_gen_flags *f, int c, const char *arg, loom_status *st, loom_err *err)
{
    int64_t v;
    *st = LOOM_OK;
    switch (c) {
    case LOOM_GEN_OPT_PROMPT: f->prompt = arg; break;
    case LOOM_GEN_OPT_PROMPT_IDS: f->prompt_ids = arg; break;
    case LOOM_GEN_OPT_MAX_NEW:
        *st = loom_parse_i64(arg, 1, INT32_MAX, "--max-new-tokens", &f->max_new_tokens, err);
        f->have_max_new = true;
        break;
    case LOOM_GEN_OPT_TEMP: *st = loom_parse_f32(arg, "--temperature", &f->sampling.temperature, err); break;
    case LOOM_GEN_OPT_TOPK:
        *st = loom_parse_i64(arg, 0, INT32_MAX, "--top-k", &v, err);
        f->sampling.top_k = (int32_t)v;
        break;
    case LOOM_GEN_OPT_TOPP: *st = loom_parse_f32(arg, "--top-p", &f->sampling.top_p, err); break;
    case LOOM_GEN_OPT_REP: *st = loom_parse_f32(arg, "--repetition-penalty", &f->sampling.repetition_penalty, err); break;
    case LOOM_GEN_OPT_SEED: *st = loom_parse_u64(arg, "--seed", &f->sampling.seed, err); break;
    case LOOM_GEN_OPT_STOP:
        if (f->n_stops == LOOM_MAX_STOP_STRINGS) *st = loom_err_set(err, LOOM_EINVAL, "--stop: at most %d stop strings", LOOM_MAX_STOP_STRINGS);
        else if (!*arg) *st = loom_err_set(err, LOOM_EINVAL, "--stop: the stop string is empty");
        else f->stops[f->n_stops++] = arg;
        break;
    case LOOM_GEN_OPT_STOP_ID:
        *st = loom_parse_i64(arg, 0, INT32_MAX, "--stop-id", &v, err);
        if (*st == LOOM_OK && f->n_stop_ids == LOOM_MAX_STOP_STRINGS)
            *st = loom_err_set(err, LOOM_EINVAL, "--stop-id: at most %d", LOOM_MAX_STOP_STRINGS);
        if (*st == LOOM_OK) f->stop_ids[f->n_stop_ids++] = (int32_t)v;
        break;
    default: return false;
    }
    return true;
}

loom_status loom_gen_flags_check(const loom_gen_flags *f, loom_err *err)
{
    return loom_sampling_validate(&f->sampling, err);
}
