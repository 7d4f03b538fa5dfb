/* The CPU model's FP8 KV cache (suite kv), the oracle of the GPU's: stories260K
 * fed the same tokens (a chunked prompt, then one token a step) with an fp32
 * cache and with loom_model_set_kv_dtype(LOOM_F8E4M3). Checks that every cached
 * K/V float of the fp8 run is an E4M3 value and those of the fp32 run mostly are
 * not; that layer 0 (whose K/V do not depend on the cache) holds exactly the
 * fp32 run's K (after RoPE) and V rounded through E4M3; that the logits differ
 * from the fp32 run's but stay close; that a paged view gives the standalone
 * cache's logits bitwise; and that other KV dtypes are refused.
 * Usage: test_kv_fp8 MODEL_DIR (tests/data/stories260K) */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/ops.h"
#include "kv/kv_cache.h"
#include "util/dtype.h"
#include "worker/model.h"
#include "../common/expect.h"

enum { N_PROMPT = 48, N_DECODE = 24, N_TOTAL = N_PROMPT + N_DECODE, CHUNK = 16 };

/* Bounds on the fp8 run's logits against the fp32 run's, at every decode
 * step. E4M3 keeps 3 mantissa bits: each K/V element moves by up to 1/16 of
 * itself, and the error passes through 5 layers. Measured on stories260K
 * (24 steps): cosine 0.99756 .. 0.99994, relative L2 0.011 .. 0.099, the same
 * argmax at all 24. The bounds leave 4x (1 - cosine), 2.5x and 10x margin; a
 * cache holding garbage lands far outside, a switch that rounds nothing
 * fails MIN_REL_L2 (and the grid check below). */
#define MIN_COSINE 0.99
#define MAX_REL_L2 0.25
#define MIN_REL_L2 1e-3 /* the fp8 run must change the logits */

static double cosine(const float *a, const float *b, int64_t n)
{
    double ab = 0, aa = 0, bb = 0;
    for (int64_t i = 0; i < n; i++) ab += (double)a[i] * b[i], aa += (double)a[i] * a[i], bb += (double)b[i] * b[i];
    return ab / sqrt(aa * bb);
}

static double rel_l2(const float *a, const float *ref, int64_t n)
{
    double d = 0, r = 0;
    for (int64_t i = 0; i < n; i++) d += ((double)a[i] - ref[i]) * ((double)a[i] - ref[i]), r += (double)ref[i] * ref[i];
    return sqrt(d / r);
}

/* The demo model's greedy continuation of BOS: realistic text to feed. */
static int load_tokens(const char *dir, int32_t *tok)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/expected_greedy.json", dir);
    json_error_t je;
    json_t *root = json_load_file(path, 0, &je);
    json_t *ids = root ? json_object_get(root, "output_ids") : NULL;
    if (!ids || json_array_size(ids) < N_TOTAL - 1) {
        fprintf(stderr, "FAIL %s: no output_ids (%s)\n", path, je.text);
        json_decref(root);
        return 0;
    }
    tok[0] = 1; /* BOS */
    for (int i = 1; i < N_TOTAL; i++) tok[i] = (int32_t)json_integer_value(json_array_get(ids, (size_t)i - 1));
    json_decref(root);
    return 1;
}

/* Feeds tok[0..N_PROMPT) in chunks, then the rest one a step, into kv;
 * logits[d] = the vocabulary logits after decode step d. */
static int feed(loom_model *m, loom_kv_cache *kv, const int32_t *tok, float *logits, const char *what)
{
    loom_err err = {{0}};
    const int64_t V = m->cfg.vocab_size;
    loom_status st = loom_model_prefill(m, kv, tok, N_PROMPT, &err);
    for (int d = 0; st == LOOM_OK && d < N_DECODE; d++) {
        st = loom_model_forward(m, kv, &tok[N_PROMPT + d], 1, &err);
        if (st == LOOM_OK) memcpy(logits + (int64_t)d * V, m->rs.logits, (size_t)V * sizeof *logits);
    }
    if (st != LOOM_OK) fprintf(stderr, "FAIL %s: %s\n", what, err.msg);
    return st == LOOM_OK;
}

/* Cached floats of positions [0, kv->len) that are not E4M3 values. */
static int64_t count_not_e4m3(const loom_kv_cache *kv, int64_t *total)
{
    const int64_t row = loom_kv_stride(kv);
    int64_t bad = 0;
    *total = 0;
    for (int64_t l = 0; l < kv->n_layers; l++)
        for (int64_t p = 0; p < kv->len; p++) {
            const float *k = loom_kv_k_row(kv, l, p), *v = loom_kv_v_row(kv, l, p);
            for (int64_t i = 0; i < row; i++) {
                bad += loom_round_e4m3(k[i]) != k[i];
                bad += loom_round_e4m3(v[i]) != v[i];
                *total += 2;
            }
        }
    return bad;
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: test_kv_fp8 MODEL_DIR\n");
        return 2;
    }
    const char *dir = argv[1];
    int32_t tok[N_TOTAL];
    if (!load_tokens(dir, tok)) return 1;
    loom_err err = {{0}};
    loom_model *m32 = loom_model_load(dir, loom_ops_cpu(), NULL, NULL, CHUNK, 1, &err);
    loom_model *m8 = m32 ? loom_model_load(dir, loom_ops_cpu(), NULL, NULL, CHUNK, 1, &err) : NULL;
    if (!m8) {
        fprintf(stderr, "FAIL %s: load: %s\n", dir, err.msg);
        loom_model_destroy(m32);
        return 1;
    }
    EXPECT(m32->kv_dtype == LOOM_F32, "a loaded model keeps an fp32 cache");
    EXPECT(loom_model_set_kv_dtype(m8, LOOM_F8E4M3, &err) == LOOM_OK && m8->kv_dtype == LOOM_F8E4M3, "fp8 accepted");
    const loom_dtype refused[] = {LOOM_F16, LOOM_BF16};
    for (size_t i = 0; i < 2; i++) {
        err.msg[0] = 0;
        EXPECT(loom_model_set_kv_dtype(m32, refused[i], &err) == LOOM_EINVAL && strstr(err.msg, loom_dtype_name(refused[i])),
               "%s refused with a message naming it: \"%s\"", loom_dtype_name(refused[i]), err.msg);
    }
    EXPECT(loom_model_set_kv_dtype(m32, LOOM_DTYPE_COUNT, &err) == LOOM_OK && m32->kv_dtype == LOOM_F32, "auto = fp32 on the CPU");

    const int64_t V = m32->cfg.vocab_size, L = m32->cfg.n_layers;
    float *lg32 = malloc((size_t)(N_DECODE * V) * sizeof *lg32), *lg8 = malloc((size_t)(N_DECODE * V) * sizeof *lg8);
    float *lgp = malloc((size_t)(N_DECODE * V) * sizeof *lgp);
    loom_kv_cache *kv32 = loom_model_kv_create(m32, N_TOTAL, &err), *kv8 = loom_model_kv_create(m8, N_TOTAL, &err);
    if (!lg32 || !lg8 || !lgp || !kv32 || !kv8 || !feed(m32, kv32, tok, lg32, "fp32 run") || !feed(m8, kv8, tok, lg8, "fp8 run")) {
        failures++;
        goto done;
    }

    /* the cache: every fp8-run float is an E4M3 value; the fp32 run's mostly are not */
    int64_t n8, n32;
    const int64_t bad8 = count_not_e4m3(kv8, &n8), bad32 = count_not_e4m3(kv32, &n32);
    EXPECT(kv8->len == N_TOTAL && n8 == 2 * L * N_TOTAL * loom_kv_stride(kv8), "the fp8 cache holds %d positions", N_TOTAL);
    EXPECT(bad8 == 0, "every cached K/V float of the fp8 run is an E4M3 value (%lld of %lld are not)", (long long)bad8, (long long)n8);
    EXPECT(bad32 > n32 / 2, "the fp32 run's cache is not (%lld of %lld floats are not E4M3 values)", (long long)bad32, (long long)n32);
    printf("cache: fp8 run %lld of %lld floats off the E4M3 grid, fp32 run %lld\n", (long long)bad8, (long long)n8, (long long)bad32);

    /* layer 0's K/V depend on the tokens only: the fp8 run's are the fp32
     * run's rounded, K after RoPE (rounding before it would leave the grid) */
    int64_t off = 0, changed = 0;
    const int64_t row = loom_kv_stride(kv8);
    for (int64_t p = 0; p < N_TOTAL; p++)
        for (int64_t i = 0; i < row; i++) {
            const float k32 = loom_kv_k_row(kv32, 0, p)[i], v32 = loom_kv_v_row(kv32, 0, p)[i];
            off += loom_kv_k_row(kv8, 0, p)[i] != loom_round_e4m3(k32);
            off += loom_kv_v_row(kv8, 0, p)[i] != loom_round_e4m3(v32);
            changed += (loom_round_e4m3(k32) != k32) + (loom_round_e4m3(v32) != v32);
        }
    EXPECT(off == 0, "layer 0: the fp8 cache is the fp32 cache rounded through E4M3 (%lld floats differ)", (long long)off);
    EXPECT(changed > 0, "layer 0: rounding changed %lld floats", (long long)changed);

    /* logits: different from the fp32 run's, but close */
    double min_cos = 1, max_rel = 0, min_rel = INFINITY;
    int same_argmax = 0;
    for (int d = 0; d < N_DECODE; d++) {
        const float *a = lg8 + (int64_t)d * V, *r = lg32 + (int64_t)d * V;
        const double c = cosine(a, r, V), e = rel_l2(a, r, V);
        min_cos = c < min_cos ? c : min_cos;
        max_rel = e > max_rel ? e : max_rel;
        min_rel = e < min_rel ? e : min_rel;
        int64_t ia = 0, ir = 0;
        for (int64_t j = 1; j < V; j++) ia = a[j] > a[ia] ? j : ia, ir = r[j] > r[ir] ? j : ir;
        same_argmax += ia == ir;
    }
    printf("logits over %d decode steps: cosine >= %.6f, relative L2 %.2e .. %.2e, same argmax %d/%d\n", N_DECODE, min_cos, min_rel, max_rel,
           same_argmax, N_DECODE);
    EXPECT(min_cos >= MIN_COSINE, "fp8 vs fp32 logits: cosine %.6f >= %g at every step", min_cos, MIN_COSINE);
    EXPECT(max_rel <= MAX_REL_L2, "fp8 vs fp32 logits: relative L2 %.3e <= %g at every step", max_rel, MAX_REL_L2);
    EXPECT(min_rel >= MIN_REL_L2, "fp8 changes the logits at every step (relative L2 %.3e >= %g)", min_rel, MIN_REL_L2);

    /* the paged path (blocks of 8 on a scattered table, as a serving worker
     * binds them) stores the same values: logits bitwise equal to the
     * standalone fp8 cache's */
    enum { B = 8, N_BLOCKS = (N_TOTAL + B - 1) / B + 3 };
    loom_kv_pool *pool = loom_kv_pool_create(L, N_BLOCKS, B, m8->n_kv_local, m8->cfg.head_dim, &err);
    if (!pool) {
        fprintf(stderr, "FAIL pool: %s\n", err.msg);
        failures++;
        goto done;
    }
    int32_t table[N_BLOCKS];
    for (int i = 0; i < N_BLOCKS; i++) table[i] = (int32_t)((i * 5 + 2) % N_BLOCKS); /* 5 is prime to N_BLOCKS = 12: a permutation */
    loom_kv_cache view;
    memset(&view, 0, sizeof view);
    loom_kv_cache_bind(&view, pool, table, (N_TOTAL + B - 1) / B, 0);
    if (feed(m8, &view, tok, lgp, "fp8 paged run")) {
        EXPECT(!memcmp(lgp, lg8, (size_t)(N_DECODE * V) * sizeof *lgp), "paged fp8 logits equal the standalone fp8 cache's bitwise");
        int64_t np;
        EXPECT(count_not_e4m3(&view, &np) == 0 && np == n8, "every paged cached float is an E4M3 value");
    } else {
        failures++;
    }
    loom_kv_pool_destroy(pool);
done:
    loom_kv_cache_destroy(kv32);
    loom_kv_cache_destroy(kv8);
    free(lg32);
    free(lg8);
    free(lgp);
    loom_model_destroy(m32);
    loom_model_destroy(m8);
    printf("%d checks, %s\n", checks, failures ? "FAIL" : "ok");
    return failures ? 1 : 0;
}
