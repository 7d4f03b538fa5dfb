/* The generation flags `loom run` and `loom client` share: prompt, length,
 * sampling and stops, with the same spelling, ranges and messages. Each
 * command adds LOOM_GEN_LONGOPTS to its getopt_long table and passes the
 * codes it gets back to loom_gen_flags_apply. */
#ifndef LOOM_COORDINATOR_GEN_FLAGS_H
#define LOOM_COORDINATOR_GEN_FLAGS_H

#include <getopt.h>
#include <stdbool.h>
#include <stdint.h>

#include "../util/status.h"
#include "../worker/sampler.h"
#include "textstream.h"

typedef struct loom_gen_flags {
    const char *prompt;       /* --prompt TEXT */
    const char *prompt_ids;   /* --prompt-ids 1,2,3 (parsed later, against the vocabulary) */
    int64_t max_new_tokens;   /* --max-new-tokens N */
    bool have_max_new;
    loom_sampling_params sampling; /* --temperature --top-k --top-p --repetition-penalty --seed */
    const char *stops[LOOM_MAX_STOP_STRINGS]; /* --stop STR (repeatable) */
    int n_stops;
    int32_t stop_ids[LOOM_MAX_STOP_STRINGS];  /* --stop-id ID (repeatable) */
    int n_stop_ids;
} loom_gen_flags;

enum {
    LOOM_GEN_OPT_PROMPT = 0x1000,
    LOOM_GEN_OPT_PROMPT_IDS,
    LOOM_GEN_OPT_MAX_NEW,
    LOOM_GEN_OPT_TEMP,
    LOOM_GEN_OPT_TOPK,
    LOOM_GEN_OPT_TOPP,
    LOOM_GEN_OPT_REP,
    LOOM_GEN_OPT_SEED,
    LOOM_GEN_OPT_STOP,
    LOOM_GEN_OPT_STOP_ID,
};

#define LOOM_GEN_LONGOPTS                                                      \
    {"prompt", required_argument, 0, LOOM_GEN_OPT_PROMPT},                     \
    {"prompt-ids", required_argument, 0, LOOM_GEN_OPT_PROMPT_IDS},             \
    {"max-new-tokens", required_argument, 0, LOOM_GEN_OPT_MAX_NEW},            \
    {"temperature", required_argument, 0, LOOM_GEN_OPT_TEMP},                  \
    {"top-k", required_argument, 0, LOOM_GEN_OPT_TOPK},                        \
    {"top-p", required_argument, 0, LOOM_GEN_OPT_TOPP},                        \
    {"repetition-penalty", required_argument, 0, LOOM_GEN_OPT_REP},            \
    {"seed", required_argument, 0, LOOM_GEN_OPT_SEED},                         \
    {"stop", required_argument, 0, LOOM_GEN_OPT_STOP},                         \
    {"stop-id", required_argument, 0, LOOM_GEN_OPT_STOP_ID}

/* Zeroes f and sets the defaults (greedy, no filters, seed 0). */
void loom_gen_flags_init(loom_gen_flags *f);

/* If c is one of the LOOM_GEN_OPT_* codes, applies arg and returns true
 * (*st then says whether the value was good; the message is in err);
 * returns false for any other code. */
bool loom_gen_flags_apply(loom_gen_flags *f, int c, const char *arg, loom_status *st, loom_err *err);

/* After parsing: the sampling values in range (their message names them). */
loom_status loom_gen_flags_check(const loom_gen_flags *f, loom_err *err);

#endif
