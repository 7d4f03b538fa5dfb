/* `loom bench`'s command line: one parser for the CUDA build (bench.c) and
 * the build without CUDA (bench_stub.c), so a bad flag gets the same usage
 * error either way. */
#ifndef LOOM_BENCH_ARGS_H
#define LOOM_BENCH_ARGS_H

#include <stdint.h>
#include <stdio.h>

#include "../util/dtype.h"

#define LOOM_BENCH_MAX_CASES 32

typedef struct loom_bench_args {
    const char *dummy;              /* --dummy-weights PRESET|CONFIG.json, or NULL */
    const char *model;              /* --model DIR, or NULL (exactly one of the two is set) */
    const char *json_path;          /* --json FILE, or NULL */
    int64_t batch[LOOM_BENCH_MAX_CASES];   /* --batch-size, n_batch entries */
    int64_t io[2 * LOOM_BENCH_MAX_CASES];  /* --input-output-len: (in, out) pairs, n_io of them */
    int64_t prefix[LOOM_BENCH_MAX_CASES];  /* per pair: tokens already cached (PREFIX+IN,OUT), else 0 */
    int n_batch, n_io;
    loom_dtype act;                 /* --dtype: LOOM_F16 (default) or LOOM_BF16 */
    loom_dtype kv;                  /* --kv-cache-dtype: LOOM_DTYPE_COUNT (auto, or equal to --dtype) or LOOM_F8E4M3 */
    int64_t max_tokens;             /* --max-num-tokens; 0 = the GPU model's default */
    double kv_fraction;             /* --kv-cache-free-gpu-mem-fraction; 0 = default */
    int64_t max_kv_tokens;          /* --max-tokens-in-paged-kv-cache; 0 = no cap */
    int multi_block;                /* -1 auto (default), 0 off, 1 on */
    int tp, pp;                     /* --tp, --pp (default 1, 1): ranks = tp * pp */
} loom_bench_args;

/* Prints the usage text. */
void loom_bench_usage(FILE *f);

/* Parses argv (argv[0] is "bench"). Returns 0 when a benchmark should run,
 * 1 after printing the usage for --help, 2 after printing a usage error
 * ("loom bench: ... (see 'loom bench --help')") to stderr. */
int loom_bench_parse(int argc, char **argv, loom_bench_args *a);

#endif
