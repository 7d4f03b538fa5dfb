/* loom's GPU switches, read from the environment (README: "Benchmark"): the
 * names with their allowed values and defaults, a check that rejects a set
 * switch outside them with a message naming it (a GPU model runs it at
 * start), and the reader the model and the kernels use. */
#ifndef LOOM_UTIL_GPU_ENV_H
#define LOOM_UTIL_GPU_ENV_H

#include <stddef.h>

#include "status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct loom_gpu_switch {
    const char *name; /* LOOM_... */
    int lo, hi;       /* allowed integer values, inclusive */
    int dflt;         /* when unset or empty */
} loom_gpu_switch;

/* The switches, *n of them (static storage). */
const loom_gpu_switch *loom_gpu_switches(size_t *n);

/* LOOM_OK when every switch that is set (non-empty) is a decimal integer
 * within its range; else LOOM_EINVAL with a message naming the variable, its
 * value and the allowed values. */
loom_status loom_gpu_env_check(loom_err *err);

/* The switch's value: the environment's when set and valid, else its default
 * (also for a name not in the table: -1). */
int loom_gpu_env_int(const char *name);

#ifdef __cplusplus
}
#endif

#endif
