/* `loom bench` flag parsing and usage (see bench_args.h). */
#include "bench_args.h"

#include <getopt.h>
#include <stdlib.h>
#include <string.h>

#include "../util/parse.h"
#include "../util/status.h"

void loom_bench_usage(FILE *f)
{
    fprintf(f,
            "usage: loom bench (--dummy-weights PRESET|CONFIG.json | --model DIR) [options]\n"
            "       mpirun -n TP*PP loom bench ... --tp TP --pp PP\n"
            "\n"
            "Static-batch prefill + greedy decode on one GPU, or on TP*PP GPUs (one MPI rank each), with the floors\n"
            "measured in the same run.\n"
            "  --dummy-weights P          random weights: llama-7b, llama3-8b, llama-13b, llama-70b, or a config.json\n"
            "  --model DIR                a Hugging Face directory (real weights)\n"
            "  --batch-size \"1;8;64\"      batch sizes\n"
            "  --input-output-len \"128,256;2048,256\"  input,output lengths; PREFIX+IN,OUT (e.g. 1024+32,2)\n"
            "                             first prefills PREFIX tokens untimed, then times IN more (a reused cached\n"
            "                             prefix: TTFT is that chunk's)\n"
            "  --dtype fp16|bf16          activation and weight dtype (default fp16)\n"
            "  --kv-cache-dtype auto|fp16|bf16|fp8  KV cache elements: auto (default) = --dtype; fp8 = E4M3,\n"
            "                             unit scale (half the KV bytes)\n"
            "  --max-num-tokens N         tokens per prefill forward (default 8192)\n"
            "  --kv-cache-free-gpu-mem-fraction F  of the memory free after weights (default 0.9)\n"
            "  --max-tokens-in-paged-kv-cache N    cap the KV pool\n"
            "  --multi-block auto|on|off  split long decode contexts over several blocks (default auto)\n"
            "  --tp N                     tensor-parallel GPUs per pipeline stage (default 1)\n"
            "  --pp N                     pipeline stages (default 1); no micro-batching: each step passes through\n"
            "                             the stages in turn and the last stage's ids go back to the first\n"
            "  --json FILE                write all numbers\n"
            "With --tp or --pp above 1, run under mpirun with exactly TP*PP ranks; rank r takes the GPU\n"
            "(node-local rank %% GPU count), and rank 0 prints the table and writes the JSON.\n");
}

static loom_status parse_list(const char *s, const char *what, int64_t *out, int64_t *prefix, int *n, int per, loom_err *err)
{
    /* "a;b;c" (per = 1) or "a,b;c,d" (per = 2, each a optionally "p+a": prefix[i] = p) */
    char *copy = strdup(s), *save = NULL;
    if (!copy) return loom_err_set(err, LOOM_ENOMEM, "out of memory");
    *n = 0;
    loom_status st = LOOM_OK;
    for (char *tok = strtok_r(copy, ";", &save); tok && st == LOOM_OK; tok = strtok_r(NULL, ";", &save)) {
        if (*n >= LOOM_BENCH_MAX_CASES) {
            st = loom_err_set(err, LOOM_EINVAL, "%s: at most %d entries", what, LOOM_BENCH_MAX_CASES);
            break;
        }
        if (per == 1) {
            st = loom_parse_i64(tok, 1, 4096, what, &out[*n], err);
        } else {
            char *comma = strchr(tok, ',');
            if (!comma) {
                st = loom_err_set(err, LOOM_EINVAL, "%s: \"%s\" is not IN,OUT", what, tok);
                break;
            }
            *comma = '\0';
            char *in = tok, *plus = strchr(tok, '+');
            prefix[*n] = 0;
            if (plus) {
                *plus = '\0';
                in = plus + 1;
                st = loom_parse_i64(tok, 1, 1 << 20, what, &prefix[*n], err);
                if (st != LOOM_OK) break;
            }
            st = loom_parse_i64(in, 1, 1 << 20, what, &out[2 * *n], err);
            if (st == LOOM_OK) st = loom_parse_i64(comma + 1, 1, 1 << 20, what, &out[2 * *n + 1], err);
        }
        (*n)++;
    }
    free(copy);
    if (st == LOOM_OK && *n == 0) st = loom_err_set(err, LOOM_EINVAL, "%s is empty", what);
    return st;
}

int loom_bench_parse(int argc, char **argv, loom_bench_args *a)
{
    enum { OPT_TP = 256, OPT_PP, OPT_KV_DTYPE };
    static const struct option longopts[] = {
        {"dummy-weights", required_argument, 0, 'w'}, {"model", required_argument, 0, 'm'},
        {"batch-size", required_argument, 0, 'b'},    {"input-output-len", required_argument, 0, 'l'},
        {"dtype", required_argument, 0, 'd'},         {"max-num-tokens", required_argument, 0, 't'},
        {"kv-cache-free-gpu-mem-fraction", required_argument, 0, 'f'},
        {"kv-cache-dtype", required_argument, 0, OPT_KV_DTYPE},
        {"max-tokens-in-paged-kv-cache", required_argument, 0, 'k'},
        {"multi-block", required_argument, 0, 'x'},   {"json", required_argument, 0, 'j'},
        {"tp", required_argument, 0, OPT_TP},         {"pp", required_argument, 0, OPT_PP},
        {"help", no_argument, 0, 'h'},                {0, 0, 0, 0},
    };
    const char *bs_s = "1;8;64", *io_s = "128,256;2048,256";
    memset(a, 0, sizeof *a);
    a->act = LOOM_F16;
    a->kv = LOOM_DTYPE_COUNT;
    a->multi_block = -1;
    a->tp = a->pp = 1;
    loom_err err = {{0}};
    int c, bad = 0;
    optind = 1;
    opterr = 0;
    while (!bad && (c = getopt_long(argc, argv, ":", longopts, NULL)) != -1) {
        float fv;
        int64_t v;
        switch (c) {
        case 'w': a->dummy = optarg; break;
        case 'm': a->model = optarg; break;
        case 'b': bs_s = optarg; break;
        case 'l': io_s = optarg; break;
        case 'd':
            if (!strcmp(optarg, "fp16")) a->act = LOOM_F16;
            else if (!strcmp(optarg, "bf16")) a->act = LOOM_BF16;
            else bad = loom_err_set(&err, LOOM_EINVAL, "--dtype must be fp16 or bf16") != LOOM_OK;
            break;
        case 't': bad = loom_parse_i64(optarg, 1, 1 << 20, "--max-num-tokens", &a->max_tokens, &err) != LOOM_OK; break;
        case 'f':
            bad = loom_parse_f32(optarg, "--kv-cache-free-gpu-mem-fraction", &fv, &err) != LOOM_OK;
            if (!bad && !(fv > 0 && fv <= 1)) bad = loom_err_set(&err, LOOM_EINVAL, "--kv-cache-free-gpu-mem-fraction must be in (0, 1]") != LOOM_OK;
            a->kv_fraction = fv;
            break;
        case OPT_KV_DTYPE: bad = loom_parse_kv_dtype(optarg, &a->kv, &err) != LOOM_OK; break;
        case 'k': bad = loom_parse_i64(optarg, 1, INT32_MAX, "--max-tokens-in-paged-kv-cache", &a->max_kv_tokens, &err) != LOOM_OK; break;
        case 'x':
            a->multi_block = !strcmp(optarg, "on") ? 1 : !strcmp(optarg, "off") ? 0 : !strcmp(optarg, "auto") ? -1 : -2;
            if (a->multi_block == -2) bad = loom_err_set(&err, LOOM_EINVAL, "--multi-block must be auto, on or off") != LOOM_OK;
            break;
        case OPT_TP:
            bad = loom_parse_i64(optarg, 1, 4096, "--tp", &v, &err) != LOOM_OK;
            a->tp = (int)v;
            break;
        case OPT_PP:
            bad = loom_parse_i64(optarg, 1, 4096, "--pp", &v, &err) != LOOM_OK;
            a->pp = (int)v;
            break;
        case 'j': a->json_path = optarg; break;
        case 'h': loom_bench_usage(stdout); return 1;
        case ':': bad = loom_err_set(&err, LOOM_EINVAL, "option %s needs a value", argv[optind - 1]) != LOOM_OK; break;
        default: bad = loom_err_set(&err, LOOM_EINVAL, "unknown option %s", argv[optind - 1]) != LOOM_OK; break;
        }
    }
    if (!bad) bad = loom_kv_dtype_check(&a->kv, a->act, "--dtype", NULL, &err) != LOOM_OK;
    if (!bad && !a->dummy == !a->model) bad = loom_err_set(&err, LOOM_EINVAL, "give exactly one of --dummy-weights or --model") != LOOM_OK;
    if (!bad && (int64_t)a->tp * a->pp > 4096) bad = loom_err_set(&err, LOOM_EINVAL, "--tp %d --pp %d: at most 4096 ranks", a->tp, a->pp) != LOOM_OK;
    if (!bad) bad = parse_list(bs_s, "--batch-size", a->batch, NULL, &a->n_batch, 1, &err) != LOOM_OK;
    if (!bad) bad = parse_list(io_s, "--input-output-len", a->io, a->prefix, &a->n_io, 2, &err) != LOOM_OK;
    if (bad) {
        fprintf(stderr, "loom bench: %s (see 'loom bench --help')\n", err.msg);
        return 2;
    }
    return 0;
}
