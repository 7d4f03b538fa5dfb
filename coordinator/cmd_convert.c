/* `loom convert`: per-rank checkpoints from a Hugging Face directory (see
 * quant/convert.h). */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../quant/convert.h"
#include "../util/parse.h"
#include "commands.h"

static void convert_usage(FILE *f)
{
    fprintf(f,
            "usage: loom convert --model HF_DIR --out DIR [--tp N] [--pp M] [--pp-layers a,b,...] [--dtype fp32|fp16|bf16]\n"
            "\n"
            "Writes DIR/config.json and DIR/rank{R}.safetensors (R = stage * TP + tp rank): the\n"
            "slices each worker of a TP x PP layout loads, so workers map only their own file.\n"
            "  --tp N              tensor-parallel ranks (default 1)\n"
            "  --pp M              pipeline stages (default 1)\n"
            "  --pp-layers a,b,..  layers per stage (default: as even as possible)\n"
            "  --dtype D           cast the weights (default: keep the stored dtype)\n"
            "Serve the result with: mpirun -n $((1+N*M)) loom serve --model DIR --tp N --pp M\n");
}

int loom_cmd_convert(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"model", required_argument, 0, 'm'}, {"out", required_argument, 0, 'o'},   {"tp", required_argument, 0, 't'},
        {"pp", required_argument, 0, 'p'},    {"pp-layers", required_argument, 0, 'l'}, {"dtype", required_argument, 0, 'd'},
        {"help", no_argument, 0, 'h'},        {0, 0, 0, 0},
    };
    loom_convert_opts o = {.tp = 1, .pp = 1, .progress = 1};
    loom_err err = {{0}};
    const char *layers_s = NULL;
    int64_t v;
    int c, usage = 0;
    optind = 1;
    opterr = 0;
    while (!usage && (c = getopt_long(argc, argv, ":", longopts, NULL)) != -1) {
        switch (c) {
        case 'm': o.model_dir = optarg; break;
        case 'o': o.out_dir = optarg; break;
        case 't':
            if (loom_parse_i64(optarg, 1, 4096, "--tp", &v, &err) != LOOM_OK) usage = 1;
            o.tp = (int)v;
            break;
        case 'p':
            if (loom_parse_i64(optarg, 1, 4096, "--pp", &v, &err) != LOOM_OK) usage = 1;
            o.pp = (int)v;
            break;
        case 'l': layers_s = optarg; break;
        case 'd':
            o.have_dtype = 1;
            if (!strcmp(optarg, "fp32") || !strcmp(optarg, "float32")) o.dtype = LOOM_F32;
            else if (!strcmp(optarg, "fp16") || !strcmp(optarg, "float16")) o.dtype = LOOM_F16;
            else if (!strcmp(optarg, "bf16") || !strcmp(optarg, "bfloat16")) o.dtype = LOOM_BF16;
            else usage = loom_err_set(&err, LOOM_EINVAL, "--dtype must be fp32, fp16 or bf16 (got %s)", optarg) != LOOM_OK;
            break;
        case 'h': convert_usage(stdout); return 0;
        case ':': usage = loom_err_set(&err, LOOM_EINVAL, "option %s needs a value", argv[optind - 1]) != LOOM_OK; break;
        default: usage = loom_err_set(&err, LOOM_EINVAL, "unknown option %s", argv[optind - 1]) != LOOM_OK; break;
        }
    }
    if (!usage && optind < argc) usage = loom_err_set(&err, LOOM_EINVAL, "unexpected argument '%s'", argv[optind]) != LOOM_OK;
    if (!usage && (!o.model_dir || !o.out_dir)) usage = loom_err_set(&err, LOOM_EINVAL, "--model HF_DIR and --out DIR are required") != LOOM_OK;
    int64_t *layers = NULL;
    if (!usage && layers_s) {
        int32_t *ids;
        size_t n;
        if (loom_parse_id_list(layers_s, "--pp-layers", &ids, &n, &err) != LOOM_OK) {
            usage = 1;
        } else if ((int)n != o.pp) {
            usage = loom_err_set(&err, LOOM_EINVAL, "--pp-layers lists %zu stages but --pp is %d", n, o.pp) != LOOM_OK;
        } else if ((layers = malloc(n * sizeof *layers))) {
            for (size_t i = 0; i < n; i++) layers[i] = ids[i];
        }
        free(ids);
    }
    if (usage) {
        fprintf(stderr, "loom convert: %s (see 'loom convert --help')\n", err.msg);
        free(layers);
        return 2;
    }
    o.pp_layers = layers;
    loom_status st = loom_convert(&o, &err);
    free(layers);
    if (st != LOOM_OK) {
        fprintf(stderr, "loom convert: %s\n", err.msg);
        return 1;
    }
    fprintf(stderr, "loom convert: wrote %s (tp %d, pp %d)\n", o.out_dir, o.tp, o.pp);
    return 0;
}
