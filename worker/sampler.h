/* Token sampling from logits, in transformers' order: repetition penalty,
 * temperature, top-k, top-p, then a draw from the softmax with a seeded
 * generator (same seed, same tokens). Temperature 0 is greedy. */
#ifndef LOOM_WORKER_SAMPLER_H
#define LOOM_WORKER_SAMPLER_H

#include <stdint.h>

#include "../util/status.h"

typedef struct loom_sampling_params {
    float temperature;        /* 0 = greedy */
    int32_t top_k;            /* 0 = off */
    float top_p;              /* 1 = off; (0, 1] */
    float repetition_penalty; /* 1 = off; > 0 */
    uint64_t seed;
} loom_sampling_params;

/* Defaults: greedy, no filters, penalty 1, seed 0. */
loom_sampling_params loom_sampling_defaults(void);

/* Checks ranges; on error fills err naming the parameter. */
loom_status loom_sampling_validate(const loom_sampling_params *p, loom_err *err);

typedef struct loom_sampler loom_sampler;

/* Creates a sampler for a vocabulary of `vocab` ids; allocates all scratch
 * now so sampling allocates nothing. Returns NULL (err filled) on failure. */
loom_sampler *loom_sampler_create(int64_t vocab, const loom_sampling_params *p, loom_err *err);

/* Frees; accepts NULL. */
void loom_sampler_destroy(loom_sampler *s);

/* Starts a new sequence on an existing sampler: new parameters and seed, no
 * allocation. Returns non-OK (err filled) if p is out of range. */
loom_status loom_sampler_reset(loom_sampler *s, const loom_sampling_params *p, loom_err *err);

/* Advances the generator as n samples would have (a preempted sequence that
 * is recomputed continues with the draws it would have made); greedy
 * parameters draw nothing. */
void loom_sampler_skip(loom_sampler *s, int64_t n);

/* Picks the next id. logits (vocab) are modified in place. history holds the
 * ids seen so far (prompt and generated) for the repetition penalty. */
int32_t loom_sampler_sample(loom_sampler *s, float *logits, const int32_t *history, int64_t n_history);

#endif
