/* loom's GPU switches from the environment: the table, the check, the reader
 * (gpu_env.h). */
#include "gpu_env.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

static const loom_gpu_switch switches[] = {
    {"LOOM_CUDA_GRAPHS", 0, 1, 1},             /* decode steps replayed from CUDA graphs */
    {"LOOM_CUDA_GRAPHS_PARTITIONED", 0, 1, 1}, /* ... also on TP/PP ranks */
    {"LOOM_GEMV", 0, 1, 1},                    /* skinny GEMV kernels for few rows (else cuBLASLt) */
    {"LOOM_FUSED_DECODE", 0, 1, 1},            /* the fused one-token step */
    {"LOOM_FUSED_ROPE", 0, 1, 1},              /* RoPE + KV append in the QKV GEMV */
    {"LOOM_FUSED_GLU", 0, 1, 1},               /* SiLU*mul in the gate/up GEMV */
    {"LOOM_PDL", 0, 1, 1},                     /* programmatic dependent launch */
    {"LOOM_PDL_TRIGGER", 0, 2, 1},             /* GEMV trigger: at exit, after the wait, after the rows */
    {"LOOM_GEMV_BLOCKS_PER_SM", 1, 4, 2},      /* one-row GEMV blocks per SM */
    {"LOOM_GEMV_GAMMA_EARLY", 0, 1, 1},        /* the norm weight staged before the PDL wait */
    {"LOOM_GEMV_BALANCE", 0, 1, 1},            /* the grid cut to whole rounds of rows */
    {"LOOM_DECODE_STEP", 0, 1, 0},             /* batch 1 on one GPU: the whole step as one persistent kernel (slower) */
    {"LOOM_STEP_PREFETCH", 0, 2, 1},           /* ... prefetching into L2 each layer's K/V (1), and W's first lines (2) */
    {"LOOM_GEMM_TUNE", 0, 1, 0},               /* time cuBLASLt's candidates for small-row shapes */
    {"LOOM_GPU_PROFILE", 0, 1, 0},             /* per-op CUDA-event profile at exit */
    {"LOOM_TP_REDUCE_F32", 0, 1, 1},           /* TP sums fp32 partial products (0: partials rounded to act first) */
    {"LOOM_CUSTOM_ALLREDUCE", 0, 1, 1},        /* one-shot peer-to-peer all-reduce for small TP sums (else NCCL) */
};

const loom_gpu_switch *loom_gpu_switches(size_t *n)
{
    *n = sizeof switches / sizeof switches[0];
    return switches;
}

/* 1 and *out when s is a decimal integer (optional sign, no junk) within [lo, hi]. */
static int parse(const char *s, int lo, int hi, int *out)
{
    char *end;
    errno = 0;
    const long v = strtol(s, &end, 10);
    if (end == s || *end || errno || v < lo || v > hi) return 0;
    *out = (int)v;
    return 1;
}

loom_status loom_gpu_env_check(loom_err *err)
{
    for (size_t i = 0; i < sizeof switches / sizeof switches[0]; i++) {
        const loom_gpu_switch *w = &switches[i];
        const char *s = getenv(w->name);
        int v;
        if (!s || !*s || parse(s, w->lo, w->hi, &v)) continue;
        return loom_err_set(err, LOOM_EINVAL, "%s=\"%.64s\" is not an integer from %d to %d (unset it for the default, %d)", w->name, s,
                            w->lo, w->hi, w->dflt);
    }
    return LOOM_OK;
}

int loom_gpu_env_int(const char *name)
{
    for (size_t i = 0; i < sizeof switches / sizeof switches[0]; i++) {
        const loom_gpu_switch *w = &switches[i];
        if (strcmp(w->name, name)) continue;
        const char *s = getenv(name);
        int v;
        return s && *s && parse(s, w->lo, w->hi, &v) ? v : w->dflt;
    }
    return -1;
}
