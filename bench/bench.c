/* `loom bench`: static-batch benchmark on one GPU, like TensorRT-LLM's
 * gptSessionBenchmark. For each batch size and input/output length it runs
 * prefill (timed as TTFT) and greedy decode, and prints latency, TTFT, decode
 * tokens/s and GPU memory beside the floors measured in the same run: weight +
 * KV bytes over the measured copy bandwidth (decode), prefill FLOPs over the
 * measured cuBLASLt matmul rate. --json FILE writes every number. */
#include <cuda_runtime_api.h>
#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../coordinator/commands.h"
#include "../util/clock.h"
#include "../util/fileutil.h"
#include "../util/json_util.h"
#include "../util/parse.h"
#include "../worker/config.h"
#include "../worker/gpu_model.h"
#include "probe.h"

#define MAX_CASES 32

typedef struct preset {
    const char *name;
    int64_t hidden, layers, heads, kv_heads, inter, vocab, max_pos;
    double theta;
} preset;

static const preset presets[] = {
    {"llama-7b", 4096, 32, 32, 32, 11008, 32000, 4096, 10000.0},
    {"llama3-8b", 4096, 32, 32, 8, 14336, 128256, 8192, 500000.0},
    {"llama-13b", 5120, 40, 40, 40, 13824, 32000, 4096, 10000.0},
    {"llama-70b", 8192, 80, 64, 8, 28672, 32000, 4096, 10000.0},
};

static void bench_usage(FILE *f)
{
    fprintf(f,
            "usage: loom bench (--dummy-weights PRESET|CONFIG.json | --model DIR) [options]\n"
            "\n"
            "Static-batch prefill + greedy decode on one GPU, with the floors measured in the same run.\n"
            "  --dummy-weights P          random weights: llama-7b, llama3-8b, llama-13b, llama-70b, or a config.json\n"
            "  --model DIR                a Hugging Face directory (real weights)\n"
            "  --batch-size \"1;8;64\"      batch sizes\n"
            "  --input-output-len \"128,256;2048,256\"  input,output lengths\n"
            "  --dtype fp16|bf16          activation and weight dtype (default fp16)\n"
            "  --max-num-tokens N         tokens per prefill forward (default 8192)\n"
            "  --kv-cache-free-gpu-mem-fraction F  of the memory free after weights (default 0.9)\n"
            "  --max-tokens-in-paged-kv-cache N    cap the KV pool\n"
            "  --multi-block auto|on|off  split long decode contexts over several blocks (default auto)\n"
            "  --json FILE                write all numbers\n");
}

/* A config from a preset name (4.x-style keys are enough for the loader). */
static loom_status preset_config(const char *name, const char *tmpdir, loom_config *cfg, loom_err *err)
{
    for (size_t i = 0; i < sizeof presets / sizeof presets[0]; i++) {
        const preset *p = &presets[i];
        if (strcmp(name, p->name)) continue;
        char path[4096];
        LOOM_CHECK(loom_path_join(path, sizeof path, tmpdir, "config.json", err));
        FILE *f = fopen(path, "w");
        if (!f) return loom_err_set(err, LOOM_EIO, "cannot write %s", path);
        fprintf(f,
                "{\"architectures\":[\"LlamaForCausalLM\"],\"hidden_size\":%lld,\"num_hidden_layers\":%lld,"
                "\"num_attention_heads\":%lld,\"num_key_value_heads\":%lld,\"intermediate_size\":%lld,\"vocab_size\":%lld,"
                "\"max_position_embeddings\":%lld,\"rope_theta\":%g,\"rms_norm_eps\":1e-5,\"hidden_act\":\"silu\",\"torch_dtype\":\"float16\"}\n",
                (long long)p->hidden, (long long)p->layers, (long long)p->heads, (long long)p->kv_heads, (long long)p->inter,
                (long long)p->vocab, (long long)p->max_pos, p->theta);
        fclose(f);
        return loom_config_load(tmpdir, cfg, err);
    }
    return loom_err_set(err, LOOM_EINVAL, "unknown preset %s (llama-7b, llama3-8b, llama-13b, llama-70b, or a path to a config.json)", name);
}

static loom_status parse_list(const char *s, const char *what, int64_t *out, int *n, int per, loom_err *err)
{
    /* "a;b;c" (per = 1) or "a,b;c,d" (per = 2) */
    char *copy = strdup(s), *save = NULL;
    if (!copy) return loom_err_set(err, LOOM_ENOMEM, "out of memory");
    *n = 0;
    loom_status st = LOOM_OK;
    for (char *tok = strtok_r(copy, ";", &save); tok && st == LOOM_OK; tok = strtok_r(NULL, ";", &save)) {
        if (*n >= MAX_CASES) {
            st = loom_err_set(err, LOOM_EINVAL, "%s: at most %d entries", what, MAX_CASES);
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
            st = loom_parse_i64(tok, 1, 1 << 20, what, &out[2 * *n], err);
            if (st == LOOM_OK) st = loom_parse_i64(comma + 1, 1, 1 << 20, what, &out[2 * *n + 1], err);
        }
        (*n)++;
    }
    free(copy);
    if (st == LOOM_OK && *n == 0) st = loom_err_set(err, LOOM_EINVAL, "%s is empty", what);
    return st;
}

int loom_cmd_bench(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"dummy-weights", required_argument, 0, 'w'}, {"model", required_argument, 0, 'm'},
        {"batch-size", required_argument, 0, 'b'},    {"input-output-len", required_argument, 0, 'l'},
        {"dtype", required_argument, 0, 'd'},         {"max-num-tokens", required_argument, 0, 't'},
        {"kv-cache-free-gpu-mem-fraction", required_argument, 0, 'f'},
        {"max-tokens-in-paged-kv-cache", required_argument, 0, 'k'},
        {"multi-block", required_argument, 0, 'x'},   {"json", required_argument, 0, 'j'},
        {"help", no_argument, 0, 'h'},                {0, 0, 0, 0},
    };
    const char *dummy = NULL, *model = NULL, *json_path = NULL, *bs_s = "1;8;64", *io_s = "128,256;2048,256";
    loom_gpu_opts go = loom_gpu_opts_default();
    loom_err err = {{0}};
    int c, bad = 0;
    optind = 1;
    opterr = 0;
    while (!bad && (c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        float fv;
        switch (c) {
        case 'w': dummy = optarg; break;
        case 'm': model = optarg; break;
        case 'b': bs_s = optarg; break;
        case 'l': io_s = optarg; break;
        case 'd':
            if (!strcmp(optarg, "fp16")) go.act = LOOM_F16;
            else if (!strcmp(optarg, "bf16")) go.act = LOOM_BF16;
            else bad = loom_err_set(&err, LOOM_EINVAL, "--dtype must be fp16 or bf16") != LOOM_OK;
            break;
        case 't': bad = loom_parse_i64(optarg, 1, 1 << 20, "--max-num-tokens", &go.max_tokens, &err) != LOOM_OK; break;
        case 'f':
            bad = loom_parse_f32(optarg, "--kv-cache-free-gpu-mem-fraction", &fv, &err) != LOOM_OK;
            if (!bad && !(fv > 0 && fv <= 1)) bad = loom_err_set(&err, LOOM_EINVAL, "--kv-cache-free-gpu-mem-fraction must be in (0, 1]") != LOOM_OK;
            go.kv_free_fraction = fv;
            break;
        case 'k': bad = loom_parse_i64(optarg, 1, INT32_MAX, "--max-tokens-in-paged-kv-cache", &go.max_kv_tokens, &err) != LOOM_OK; break;
        case 'x':
            go.multi_block = !strcmp(optarg, "on") ? 1 : !strcmp(optarg, "off") ? 0 : !strcmp(optarg, "auto") ? -1 : -2;
            if (go.multi_block == -2) bad = loom_err_set(&err, LOOM_EINVAL, "--multi-block must be auto, on or off") != LOOM_OK;
            break;
        case 'j': json_path = optarg; break;
        case 'h': bench_usage(stdout); return 0;
        default: bad = loom_err_set(&err, LOOM_EINVAL, "unknown option %s", argv[optind - 1]) != LOOM_OK; break;
        }
    }
    int64_t bss[MAX_CASES], ios[2 * MAX_CASES];
    int n_bs = 0, n_io = 0;
    if (!bad && !dummy == !model) bad = loom_err_set(&err, LOOM_EINVAL, "give exactly one of --dummy-weights or --model") != LOOM_OK;
    if (!bad) bad = parse_list(bs_s, "--batch-size", bss, &n_bs, 1, &err) != LOOM_OK;
    if (!bad) bad = parse_list(io_s, "--input-output-len", ios, &n_io, 2, &err) != LOOM_OK;
    if (bad) {
        fprintf(stderr, "loom bench: %s (see 'loom bench --help')\n", err.msg);
        return 2;
    }
    int64_t max_b = 1, max_len = 1;
    for (int i = 0; i < n_bs; i++) max_b = bss[i] > max_b ? bss[i] : max_b;
    for (int i = 0; i < n_io; i++) max_len = ios[2 * i] + ios[2 * i + 1] > max_len ? ios[2 * i] + ios[2 * i + 1] : max_len;
    go.max_seqs = max_b;
    go.max_seq_len = max_len;

    int n_dev = 0;
    if (cudaGetDeviceCount(&n_dev) != cudaSuccess || n_dev == 0) {
        fprintf(stderr, "loom bench: no CUDA device found (bench measures GPU runs; the CPU backend has no benchmark yet)\n");
        return 1;
    }
    /* Floors first, on an idle GPU. */
    double bw = 0, rate = 0;
    if (loom_probe_copy_bandwidth(&bw, &err) != LOOM_OK || loom_probe_matmul_rate(go.act, &rate, &err) != LOOM_OK) {
        fprintf(stderr, "loom bench: %s\n", err.msg);
        return 1;
    }
    fprintf(stderr, "loom bench: measured copy bandwidth %.2f TB/s, %s matmul rate %.0f TFLOP/s\n", bw / 1e12, loom_dtype_name(go.act), rate / 1e12);

    loom_config cfg = {0};
    loom_gpu_model *m = NULL;
    char tmpdir[] = "/tmp/loom-bench-XXXXXX";
    if (dummy) {
        loom_status st;
        if (loom_file_exists(dummy)) {
            char dir[4096];
            snprintf(dir, sizeof dir, "%s", dummy);
            char *slash = strrchr(dir, '/');
            if (slash) *slash = '\0';
            else snprintf(dir, sizeof dir, ".");
            st = loom_config_load(dir, &cfg, &err);
        } else if (!mkdtemp(tmpdir)) {
            st = loom_err_set(&err, LOOM_EIO, "cannot create a temporary directory");
        } else {
            st = preset_config(dummy, tmpdir, &cfg, &err);
        }
        if (st == LOOM_OK) m = loom_gpu_model_dummy(&cfg, &go, 1234, &err);
    } else {
        m = loom_gpu_model_load(model, &go, &err);
    }
    if (!m) {
        fprintf(stderr, "loom bench: %s\n", err.msg);
        loom_config_free(&cfg);
        return 1;
    }
    const loom_config *mc = loom_gpu_config(m);
    loom_gpu_mem mem = loom_gpu_model_mem(m);
    fprintf(stderr, "loom bench: weights %.2f GiB, KV pool %.2f GiB (%lld tokens), workspace %.2f GiB, free %.2f GiB of %.2f\n",
            (double)mem.weights / (1 << 30), (double)mem.kv / (1 << 30), (long long)mem.kv_tokens, (double)mem.workspace / (1 << 30),
            (double)mem.free_after / (1 << 30), (double)mem.total / (1 << 30));
    const double es = 2.0;
    const double params = (double)loom_gpu_weight_bytes(m) / es;
    const double kv_per_token = 2.0 * (double)mc->n_layers * (double)mc->n_kv_heads * (double)mc->head_dim * es;

    json_t *jcases = json_array();
    printf("%-6s %-11s %10s %10s %12s %12s %10s %12s %8s\n", "batch", "in/out", "latency_ms", "ttft_ms", "decode_tok/s", "step_ms", "floor_ms",
           "prefill_%mm", "mem_GiB");
    int rc = 0;
    int32_t *tokens = malloc((size_t)go.max_tokens * sizeof *tokens), *ids = malloc((size_t)max_b * sizeof *ids);
    int32_t *next = malloc((size_t)max_b * sizeof *next);
    int64_t *slots = malloc((size_t)max_b * sizeof *slots), *start = malloc((size_t)(max_b + 1) * sizeof *start);
    /* Warm-up per batch size: a short prefill and a few decode steps, so
     * cuBLASLt's heuristic calls and the decode graph capture are not timed. */
    for (int bi = 0; bi < n_bs && !rc; bi++) {
        int64_t B = bss[bi];
        for (int64_t s = 0; s < B; s++) {
            loom_gpu_seq_reset(m, s);
            slots[s] = s;
            start[s] = s;
            tokens[s] = 5;
        }
        start[B] = B;
        for (int k = 0; k < 4 && !rc; k++)
            if (loom_gpu_forward(m, B, slots, start, tokens, ids, &err) != LOOM_OK) rc = 1;
        for (int64_t s = 0; s < B; s++) loom_gpu_seq_reset(m, s);
    }
    for (int bi = 0; bi < n_bs && !rc; bi++) {
        for (int ii = 0; ii < n_io && !rc; ii++) {
            int64_t B = bss[bi], in = ios[2 * ii], out = ios[2 * ii + 1];
            for (int64_t s = 0; s < B; s++) loom_gpu_seq_reset(m, s);
            uint64_t rng = 88172645463325252ull;
            double t0 = loom_now_s();
            /* prefill: whole prompts, or chunks of one, within max_tokens per forward */
            for (int64_t s = 0; s < B && !rc;) {
                int64_t n_seqs = 0, used = 0;
                start[0] = 0;
                while (s + n_seqs < B && n_seqs < B) {
                    int64_t left = in - loom_gpu_seq_len(m, s + n_seqs);
                    int64_t take = left < go.max_tokens - used ? left : go.max_tokens - used;
                    if (take <= 0) break;
                    for (int64_t k = 0; k < take; k++) {
                        rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
                        tokens[used + k] = (int32_t)(3 + rng % (uint64_t)(mc->vocab_size - 3));
                    }
                    slots[n_seqs] = s + n_seqs;
                    used += take;
                    start[++n_seqs] = used;
                    if (take < left) break; /* this sequence continues next forward */
                }
                if (loom_gpu_forward(m, n_seqs, slots, start, tokens, ids, &err) != LOOM_OK) rc = 1;
                for (int64_t i = 0; i < n_seqs && !rc; i++)
                    if (loom_gpu_seq_len(m, slots[i]) == in) next[slots[i]] = ids[i]; /* its first generated token */
                while (s < B && loom_gpu_seq_len(m, s) == in) s++;
            }
            double t1 = loom_now_s();
            /* decode: out - 1 steps of one token per sequence */
            for (int64_t s = 0; s < B; s++) {
                slots[s] = s;
                start[s] = s;
            }
            start[B] = B;
            memcpy(ids, next, (size_t)B * sizeof *ids);
            for (int64_t step = 1; step < out && !rc; step++) {
                memcpy(tokens, ids, (size_t)B * sizeof *ids);
                if (loom_gpu_forward(m, B, slots, start, tokens, ids, &err) != LOOM_OK) rc = 1;
            }
            double t2 = loom_now_s();
            if (rc) break;
            double ttft = t1 - t0, dec = t2 - t1, steps = (double)(out - 1);
            double step_s = steps > 0 ? dec / steps : 0;
            double mean_ctx = (double)in + (double)out / 2.0;
            double floor_s = ((double)loom_gpu_weight_bytes(m) + (double)B * mean_ctx * kv_per_token) / bw;
            double prefill_flops = 2.0 * params * (double)(B * in) + 4.0 * (double)mc->n_layers * (double)(B * in) * (double)in / 2.0 *
                                                                          (double)(mc->n_heads * mc->head_dim);
            double prefill_pct = 100.0 * prefill_flops / ttft / rate;
            size_t fr = mem.free_after;
            double mem_gib = (double)(mem.total - fr) / (1 << 30);
            char io[32];
            snprintf(io, sizeof io, "%lld/%lld", (long long)in, (long long)out);
            printf("%-6lld %-11s %10.1f %10.1f %12.1f %12.3f %10.3f %12.1f %8.1f\n", (long long)B, io, (ttft + dec) * 1e3, ttft * 1e3,
                   steps > 0 ? (double)B * steps / dec : 0.0, step_s * 1e3, floor_s * 1e3, prefill_pct, mem_gib);
            fflush(stdout);
            json_t *jc = json_object();
            json_object_set_new(jc, "batch_size", json_integer(B));
            json_object_set_new(jc, "input_len", json_integer(in));
            json_object_set_new(jc, "output_len", json_integer(out));
            json_object_set_new(jc, "latency_ms", json_real((ttft + dec) * 1e3));
            json_object_set_new(jc, "ttft_ms", json_real(ttft * 1e3));
            json_object_set_new(jc, "decode_tokens_per_s", json_real(steps > 0 ? (double)B * steps / dec : 0.0));
            json_object_set_new(jc, "decode_step_ms", json_real(step_s * 1e3));
            json_object_set_new(jc, "decode_floor_ms", json_real(floor_s * 1e3));
            json_object_set_new(jc, "decode_step_over_floor", json_real(floor_s > 0 ? step_s / floor_s : 0.0));
            json_object_set_new(jc, "prefill_flops", json_real(prefill_flops));
            json_object_set_new(jc, "prefill_fraction_of_matmul_rate", json_real(prefill_pct / 100.0));
            json_object_set_new(jc, "gpu_mem_used_gib", json_real(mem_gib));
            json_array_append_new(jcases, jc);
        }
    }
    if (rc) fprintf(stderr, "loom bench: %s\n", err.msg);
    if (json_path && !rc) {
        json_t *root = json_object();
        json_object_set_new(root, "model", json_string(dummy ? dummy : model));
        json_object_set_new(root, "dtype", json_string(loom_dtype_name(go.act)));
        json_object_set_new(root, "copy_bandwidth_bytes_per_s", json_real(bw));
        json_object_set_new(root, "matmul_flops_per_s", json_real(rate));
        json_object_set_new(root, "weight_bytes", json_integer((json_int_t)loom_gpu_weight_bytes(m)));
        json_object_set_new(root, "kv_pool_tokens", json_integer(mem.kv_tokens));
        json_object_set_new(root, "cases", jcases);
        if (json_dump_file(root, json_path, JSON_INDENT(2)) != 0) {
            fprintf(stderr, "loom bench: cannot write %s\n", json_path);
            rc = 1;
        }
        json_decref(root);
    } else {
        json_decref(jcases);
    }
    free(tokens);
    free(ids);
    free(next);
    free(slots);
    free(start);
    loom_gpu_model_destroy(m);
    loom_config_free(&cfg);
    if (tmpdir[sizeof tmpdir - 7] != 'X') {
        char p[4200];
        snprintf(p, sizeof p, "%s/config.json", tmpdir);
        remove(p);
        remove(tmpdir);
    }
    return rc;
}
