/* Golden test: loom's CPU forward pass against Hugging Face transformers.
 * Usage: test_golden FIXTURE_DIR. The fixture's golden.json (written by
 * make_golden.py on the GPU machine) holds prompt ids, transformers' greedy
 * continuation and its fp32 logits at the last prompt position and at the
 * step that chose the last greedy token. Checked: logits within 1e-4
 * relative L2, identical greedy tokens, for several prefill chunk sizes. */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/ops.h"
#include "worker/generate.h"

#define TOL 1e-4

static int failures;

static double rel_l2(const float *out, const double *ref, int64_t n)
{
    double num = 0, den = 0;
    for (int64_t i = 0; i < n; i++) {
        double d = (double)out[i] - ref[i];
        num += d * d;
        den += ref[i] * ref[i];
    }
    return sqrt(num / (den > 0 ? den : 1));
}

static int64_t read_ints(json_t *arr, int32_t **out)
{
    size_t n = json_array_size(arr);
    *out = malloc((n ? n : 1) * sizeof **out);
    for (size_t i = 0; i < n; i++) (*out)[i] = (int32_t)json_integer_value(json_array_get(arr, i));
    return (int64_t)n;
}

static int64_t read_doubles(json_t *arr, double **out)
{
    size_t n = json_array_size(arr);
    *out = malloc((n ? n : 1) * sizeof **out);
    for (size_t i = 0; i < n; i++) (*out)[i] = json_number_value(json_array_get(arr, i));
    return (int64_t)n;
}

static void check(int ok, const char *what, const char *dir, int64_t chunk)
{
    if (!ok) {
        failures++;
        fprintf(stderr, "FAIL %s: %s (prefill chunk %lld)\n", dir, what, (long long)chunk);
    }
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: test_golden FIXTURE_DIR\n");
        return 2;
    }
    const char *dir = argv[1];
    char path[4096];
    snprintf(path, sizeof path, "%s/golden.json", dir);
    json_error_t je;
    json_t *g = json_load_file(path, 0, &je);
    if (!g) {
        fprintf(stderr, "cannot read %s: %s\n", path, je.text);
        return 1;
    }
    if (strcmp(json_string_value(json_object_get(g, "magic")) ? json_string_value(json_object_get(g, "magic")) : "", "loom-golden") ||
        json_integer_value(json_object_get(g, "version")) != 1) {
        fprintf(stderr, "%s: not a version-1 loom-golden file\n", path);
        return 1;
    }
    int32_t *prompt, *greedy;
    double *l_prompt, *l_final;
    int64_t n_prompt = read_ints(json_object_get(g, "prompt_ids"), &prompt);
    int64_t n_greedy = read_ints(json_object_get(g, "greedy_ids"), &greedy);
    int64_t n_lp = read_doubles(json_object_get(g, "prompt_last_logits"), &l_prompt);
    int64_t n_lf = read_doubles(json_object_get(g, "final_logits"), &l_final);

    const int64_t chunks[] = {256, 5, 1};
    for (size_t c = 0; c < sizeof chunks / sizeof chunks[0]; c++) {
        loom_err err = {{0}};
        loom_model *m = loom_model_load(dir, loom_ops_cpu(), NULL, NULL, chunks[c], 1, &err);
        if (!m) {
            fprintf(stderr, "FAIL %s: load: %s\n", dir, err.msg);
            return 1;
        }
        int64_t V = m->cfg.vocab_size;
        check(n_lp == V && n_lf == V, "logit vectors have vocab_size entries", dir, chunks[c]);
        check(n_prompt > 0 && n_greedy >= 24, "fixture has a prompt and 24+ greedy tokens", dir, chunks[c]);
        if (failures) return 1;

        /* 1. Prefill logits. */
        loom_kv_cache *kv = loom_model_kv_create(m, n_prompt + n_greedy, &err);
        if (!kv || loom_model_prefill(m, kv, prompt, n_prompt, &err) != LOOM_OK) {
            fprintf(stderr, "FAIL %s: prefill: %s\n", dir, err.msg);
            return 1;
        }
        double e1 = rel_l2(m->rs.logits, l_prompt, V);
        printf("%s chunk %lld: prompt logits rel L2 %.3g\n", dir, (long long)chunks[c], e1);
        check(e1 <= TOL, "prompt logits within 1e-4 relative L2", dir, chunks[c]);

        /* 2. Greedy continuation and the logits that chose its last token. */
        kv->len = 0;
        loom_gen_params gp = {.max_new_tokens = n_greedy, .sampling = loom_sampling_defaults(), .ignore_eos = true};
        int32_t *out = malloc((size_t)n_greedy * sizeof *out);
        int64_t n_out;
        loom_finish fin;
        if (loom_generate(m, kv, prompt, n_prompt, &gp, NULL, NULL, out, &n_out, &fin, NULL, &err) != LOOM_OK) {
            fprintf(stderr, "FAIL %s: generate: %s\n", dir, err.msg);
            return 1;
        }
        int64_t same = 0;
        while (same < n_out && same < n_greedy && out[same] == greedy[same]) same++;
        printf("%s chunk %lld: %lld/%lld greedy tokens identical\n", dir, (long long)chunks[c], (long long)same, (long long)n_greedy);
        check(n_out == n_greedy && same == n_greedy, "greedy tokens identical to transformers", dir, chunks[c]);
        double e2 = rel_l2(m->rs.logits, l_final, V);
        printf("%s chunk %lld: final logits rel L2 %.3g\n", dir, (long long)chunks[c], e2);
        check(e2 <= TOL, "final-step logits within 1e-4 relative L2", dir, chunks[c]);
        free(out);
        loom_kv_cache_destroy(kv);
        loom_model_destroy(m);
    }

    /* 3. Batched: the prompt's prefix, then the prompt, and the prompt's
     * first token alone, in one forward; the full prompt's logits must match. */
    {
        loom_err err = {{0}};
        int64_t k = n_prompt / 2 > 0 ? n_prompt / 2 : 1;
        int64_t T = k + n_prompt + 1;
        loom_model *m = loom_model_load(dir, loom_ops_cpu(), NULL, NULL, T, 3, &err);
        if (!m) {
            fprintf(stderr, "FAIL %s: load: %s\n", dir, err.msg);
            return 1;
        }
        int32_t *toks = malloc((size_t)T * sizeof *toks);
        memcpy(toks, prompt, (size_t)k * sizeof *toks);
        memcpy(toks + k, prompt, (size_t)n_prompt * sizeof *toks);
        toks[k + n_prompt] = prompt[0];
        int64_t starts[4] = {0, k, k + n_prompt, T};
        loom_kv_cache *kvs[3];
        for (int i = 0; i < 3; i++) kvs[i] = loom_model_kv_create(m, n_prompt + 1, &err);
        loom_batch b = {.n_seqs = 3, .seq_start = starts, .tokens = toks, .kv = kvs};
        if (loom_model_forward_batch(m, &b, &err) != LOOM_OK) {
            fprintf(stderr, "FAIL %s: batch: %s\n", dir, err.msg);
            return 1;
        }
        double e3 = rel_l2(m->rs.logits + m->cfg.vocab_size, l_prompt, m->cfg.vocab_size);
        printf("%s batch of 3: prompt logits rel L2 %.3g\n", dir, e3);
        check(e3 <= TOL, "batched prompt logits within 1e-4 relative L2", dir, T);
        for (int i = 0; i < 3; i++) loom_kv_cache_destroy(kvs[i]);
        free(toks);
        loom_model_destroy(m);
    }
    free(prompt);
    free(greedy);
    free(l_prompt);
    free(l_final);
    json_decref(g);
    printf("%s: %s\n", dir, failures ? "FAIL" : "ok");
    return failures ? 1 : 0;
}
