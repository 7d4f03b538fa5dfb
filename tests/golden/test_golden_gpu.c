/* Golden test on the GPU (suite ops): the fp16/bf16 CUDA model against
 * transformers' fp32 dumps. Checked: last-prompt-position logits with cosine
 * similarity >= 0.999 and at least 16 identical greedy tokens (all of them for
 * the demo model against llama2.c's output).
 *
 * fp8kv: the GPU model with an FP8 E4M3 KV cache, which no dump has, against
 * two CPU oracles (fp32 compute): one whose cache rounds K/V through E4M3
 * as the GPU's does (loom_model_set_kv_dtype), one without. The CPU fp8
 * oracle's greedy continuation is fed to all three (teacher forcing); at the
 * prompt and at every step the GPU's logits must be closer to the fp8 oracle
 * than the fp8 rounding itself moves them: the summed cosine distances
 * sum(1 - cos(gpu, fp8)) <= 0.5 sum(1 - cos(fp8, fp32)) (a GPU that stored
 * fp16, or rounded otherwise, scores near 1; measured on an H200: 0.02 to
 * 0.33), every cos(gpu, fp8) >= 0.95 (measured >= 0.972), and the GPU's
 * greedy choice must agree with the oracle's at >= 75% of the steps
 * (measured >= 83%). Exact greedy runs cannot be asked of a quantized cache:
 * fp16 and fp32 K/V round to different E4M3 neighbours now and then, and
 * these models move far on one such flip (the fp8 rounding itself takes
 * the random fixtures' logits to cosine 0.93 of the fp32 ones).
 *
 * Usage: test_golden_gpu DIR fp16|bf16 [fp8kv]   (exit 77 without a GPU) */
#include <cuda_runtime_api.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/ops.h"
#include "worker/generate.h"
#include "worker/gpu_model.h"
#include "worker/model.h"

static int64_t ids_of(json_t *a, int32_t **out)
{
    size_t n = json_array_size(a);
    *out = malloc((n ? n : 1) * sizeof **out);
    for (size_t i = 0; i < n; i++) (*out)[i] = (int32_t)json_integer_value(json_array_get(a, i));
    return (int64_t)n;
}

static double cosine(const float *x, const float *y, int64_t n)
{
    double dot = 0, a = 0, b = 0;
    for (int64_t i = 0; i < n; i++) {
        dot += (double)x[i] * y[i];
        a += (double)x[i] * x[i];
        b += (double)y[i] * y[i];
    }
    return dot / sqrt(a * b);
}

static int64_t argmax(const float *x, int64_t n)
{
    int64_t best = 0;
    for (int64_t i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

/* The CPU model with cache dtype kv: logits (n_ids + 1, V) at the end of the
 * prompt and after each of ids[0..n_ids) fed one by one. With gen, ids are
 * first made: its greedy continuation. Returns 0, or 1 with a message. */
static int cpu_oracle(const char *dir, loom_dtype kv_dt, const int32_t *prompt, int64_t n_prompt, int32_t *ids, int64_t n_ids, int gen,
                      float **logits, int64_t *vocab)
{
    loom_err err = {{0}};
    loom_model *m = loom_model_load(dir, loom_ops_cpu(), NULL, NULL, 256, 1, &err);
    loom_kv_cache *kv = m ? loom_model_kv_create(m, n_prompt + n_ids + 1, &err) : NULL;
    if (!m || !kv || loom_model_set_kv_dtype(m, kv_dt, &err) != LOOM_OK) goto fail;
    const int64_t V = m->cfg.vocab_size;
    if (gen) {
        loom_gen_params gp = {.max_new_tokens = n_ids, .sampling = loom_sampling_defaults(), .ignore_eos = true};
        int64_t n_out = 0;
        loom_finish fin;
        if (loom_generate(m, kv, prompt, n_prompt, &gp, NULL, NULL, ids, &n_out, &fin, NULL, &err) != LOOM_OK) goto fail;
        kv->len = 0;
    }
    *vocab = V;
    *logits = malloc((size_t)((n_ids + 1) * V) * sizeof **logits);
    if (loom_model_prefill(m, kv, prompt, n_prompt, &err) != LOOM_OK) goto fail;
    memcpy(*logits, m->rs.logits, (size_t)V * sizeof(float));
    for (int64_t i = 0; i < n_ids; i++) {
        if (loom_model_forward(m, kv, &ids[i], 1, &err) != LOOM_OK) goto fail;
        memcpy(*logits + (i + 1) * V, m->rs.logits, (size_t)V * sizeof(float));
    }
    loom_kv_cache_destroy(kv);
    loom_model_destroy(m);
    return 0;
fail:
    fprintf(stderr, "FAIL %s: CPU oracle (kv %s): %s\n", dir, loom_dtype_name(kv_dt), err.msg);
    return 1;
}

/* The GPU model of dir for one pass: pass 0 plain launches with a tight
 * sequence limit (max_len), pass 1 decode steps as CUDA graphs captured for
 * a 2048-token limit (so the decode attention plan is made for a context far
 * longer than the real one). NULL after printing why. */
static loom_gpu_model *load_pass(const char *dir, loom_dtype act, loom_dtype kv, int pass, int64_t max_len)
{
    setenv("LOOM_CUDA_GRAPHS", pass ? "1" : "0", 1);
    loom_gpu_opts o = loom_gpu_opts_default();
    o.act = act;
    o.kv = kv;
    o.max_tokens = 256;
    o.max_seqs = 1;
    o.max_seq_len = pass ? 2048 : max_len;
    o.tokens_per_block = 16;
    o.max_kv_tokens = 4096;
    loom_err err = {{0}};
    loom_gpu_model *m = loom_gpu_model_load(dir, &o, &err);
    if (!m) fprintf(stderr, "FAIL %s: %s\n", dir, err.msg);
    return m;
}

/* The fp8kv check (see the top). n_ids: steps to feed. */
static int fp8_check(const char *dir, loom_dtype act, const int32_t *prompt, int64_t n_prompt, int64_t n_ids)
{
    int32_t *ids = malloc((size_t)n_ids * sizeof *ids);
    float *l8, *l32;
    int64_t V = 0;
    if (cpu_oracle(dir, LOOM_F8E4M3, prompt, n_prompt, ids, n_ids, 1, &l8, &V) ||
        cpu_oracle(dir, LOOM_F32, prompt, n_prompt, ids, n_ids, 0, &l32, &V))
        return 1;
    float *lg = malloc((size_t)V * sizeof *lg);
    int fail = 0;
    for (int pass = 0; pass < 2; pass++) {
        loom_err err = {{0}};
        loom_gpu_model *m = load_pass(dir, act, LOOM_F8E4M3, pass, n_prompt + n_ids + 1);
        if (!m) return 1;
        int64_t slot = 0, start[2] = {0, n_prompt}, one[2] = {0, 1}, agree = 0;
        double d_gpu = 0, d_q = 0, min_cos = 1;
        int32_t id;
        for (int64_t i = 0; i <= n_ids; i++) {
            const loom_status st = i == 0 ? loom_gpu_forward(m, 1, &slot, start, prompt, &id, &err)
                                          : loom_gpu_forward(m, 1, &slot, one, &ids[i - 1], &id, &err);
            if (st != LOOM_OK || loom_gpu_logits(m, 1, lg, &err) != LOOM_OK) {
                fprintf(stderr, "FAIL %s: %s\n", dir, err.msg);
                return 1;
            }
            const double c8 = cosine(lg, l8 + i * V, V), cq = cosine(l8 + i * V, l32 + i * V, V);
            d_gpu += 1 - c8;
            d_q += 1 - cq;
            if (c8 < min_cos) min_cos = c8;
            if (i < n_ids) agree += argmax(lg, V) == ids[i];
        }
        const int ok = d_gpu <= 0.5 * d_q && min_cos >= 0.95 && agree * 4 >= n_ids * 3;
        printf("%s %s fp8 KV, %s: %lld positions: sum(1 - cos(gpu, cpu fp8)) %.3e, sum(1 - cos(cpu fp8, cpu fp32)) %.3e "
               "(ratio %.3f, need <= 0.5), min cos(gpu, cpu fp8) %.6f (need >= 0.95), greedy agreement %lld/%lld (need 75%%): %s\n",
               dir, loom_dtype_name(act), pass ? "CUDA graphs" : "no graphs", (long long)(n_ids + 1), d_gpu, d_q,
               d_q > 0 ? d_gpu / d_q : 0.0, min_cos, (long long)agree, (long long)n_ids, ok ? "ok" : "FAIL");
        fail |= !ok;
        loom_gpu_model_destroy(m);
    }
    free(ids);
    free(l8);
    free(l32);
    free(lg);
    return fail;
}

int main(int argc, char **argv)
{
    if (argc != 3 && !(argc == 4 && !strcmp(argv[3], "fp8kv"))) {
        fprintf(stderr, "usage: test_golden_gpu DIR fp16|bf16 [fp8kv]\n");
        return 2;
    }
    int n_dev = 0;
    if (cudaGetDeviceCount(&n_dev) != cudaSuccess || n_dev == 0) {
        printf("no CUDA device: skipped\n");
        return 77;
    }
    const char *dir = argv[1];
    char path[4096];
    snprintf(path, sizeof path, "%s/golden.json", dir);
    json_t *g = json_load_file(path, 0, NULL);
    int stories = 0;
    if (!g) {
        snprintf(path, sizeof path, "%s/expected_greedy.json", dir);
        g = json_load_file(path, 0, NULL);
        stories = 1;
    }
    if (!g) {
        fprintf(stderr, "no golden data in %s\n", dir);
        return 1;
    }
    int32_t *prompt, *want;
    int64_t n_prompt = ids_of(json_object_get(g, "prompt_ids"), &prompt);
    int64_t n_want = ids_of(json_object_get(g, stories ? "output_ids" : "greedy_ids"), &want);
    int fail = 0;
    if (argc == 4) {
        fail = fp8_check(dir, strcmp(argv[2], "bf16") ? LOOM_F16 : LOOM_BF16, prompt, n_prompt, n_want);
        printf("%s\n", fail ? "FAIL" : "ok");
        return fail;
    }
    /* twice: plain launches, then CUDA graphs (load_pass) */
    for (int pass = 0; pass < 2; pass++) {
    printf("%s %s: %s\n", dir, argv[2], pass ? "CUDA graphs, max_seq_len 2048" : "no graphs");
    const loom_dtype act = strcmp(argv[2], "bf16") ? LOOM_F16 : LOOM_BF16;
    loom_err err = {{0}};
    loom_gpu_model *m = load_pass(dir, act, act, pass, n_prompt + n_want + 1);
    if (!m) return 1;
    int64_t V = loom_gpu_config(m)->vocab_size, slot = 0, start[2] = {0, n_prompt};
    int32_t id;
    if (loom_gpu_forward(m, 1, &slot, start, prompt, &id, &err) != LOOM_OK) {
        fprintf(stderr, "FAIL %s: %s\n", dir, err.msg);
        return 1;
    }
    json_t *jl = json_object_get(g, "prompt_last_logits");
    if (jl) {
        float *lg = malloc((size_t)V * sizeof *lg);
        loom_gpu_logits(m, 1, lg, &err);
        double dot = 0, a = 0, b = 0;
        for (int64_t i = 0; i < V; i++) {
            double r = json_number_value(json_array_get(jl, (size_t)i));
            dot += r * lg[i];
            a += r * r;
            b += (double)lg[i] * lg[i];
        }
        double cos = dot / sqrt(a * b);
        printf("%s %s: prompt logits cosine %.6f\n", dir, argv[2], cos);
        if (!(cos >= 0.999)) fail = 1;
        free(lg);
    }
    int64_t same = 0, n_out = 0;
    int diverged = 0;
    int64_t one[2] = {0, 1};
    for (;;) {
        if (!diverged && id == want[n_out]) same++;
        else diverged = 1;
        n_out++;
        if (n_out == n_want) break;
        if (loom_gpu_forward(m, 1, &slot, one, &id, &id, &err) != LOOM_OK) {
            fprintf(stderr, "FAIL %s: %s\n", dir, err.msg);
            return 1;
        }
    }
    int64_t need = stories ? n_want : 16;
    printf("%s %s: %lld/%lld greedy tokens identical (need %lld)\n", dir, argv[2], (long long)same, (long long)n_want, (long long)need);
    if (same < need) fail = 1;
    loom_gpu_model_destroy(m);
    }
    free(prompt);
    free(want);
    json_decref(g);
    printf("%s\n", fail ? "FAIL" : "ok");
    return fail;
}
