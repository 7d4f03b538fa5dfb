/* Unit tests of util/: fp16/bf16 conversions, strict flag parsing, and the
 * sampler's filters (top-k, top-p, repetition penalty, seeding). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/dtype.h"
#include "util/parse.h"
#include "worker/sampler.h"
#include "../common/expect.h"

static void test_f16(void)
{
    /* Every finite fp16 survives fp16 -> fp32 -> fp16. */
    for (uint32_t h = 0; h < 65536; h++) {
        if (((h >> 10) & 0x1f) == 0x1f) continue; /* inf/NaN */
        float f = loom_f16_to_f32((uint16_t)h);
        EXPECT(loom_f32_to_f16(f) == h, "fp16 0x%04x -> %g -> 0x%04x", h, f, loom_f32_to_f16(f));
    }
    EXPECT(loom_f16_to_f32(0x3c00) == 1.0f, "fp16 one");
    EXPECT(loom_f16_to_f32(0xc000) == -2.0f, "fp16 minus two");
    EXPECT(loom_f16_to_f32(0x0001) == 0x1p-24f, "smallest subnormal");
    EXPECT(loom_f32_to_f16(65520.0f) == 0x7c00, "overflow to inf");
    EXPECT(loom_f32_to_f16(1.0f + 0x1p-11f) == 0x3c00, "tie rounds to even (down)");
    EXPECT(loom_f32_to_f16(1.0f + 3 * 0x1p-11f) == 0x3c02, "tie rounds to even (up)");
    EXPECT(isnan(loom_f16_to_f32(loom_f32_to_f16(NAN))), "NaN stays NaN");
}

static void test_bf16(void)
{
    for (uint32_t h = 0; h < 65536; h++) {
        if (((h >> 7) & 0xff) == 0xff) continue;
        float f = loom_bf16_to_f32((uint16_t)h);
        EXPECT(loom_f32_to_bf16(f) == h, "bf16 0x%04x round trip", h);
    }
    EXPECT(loom_f32_to_bf16(1.0f + 0x1p-8f) == 0x3f80, "bf16 tie to even");
    unsigned char buf[7] = {0};
    uint16_t one = 0x3f80;
    memcpy(buf + 1, &one, 2); /* misaligned */
    float out;
    loom_dtype_to_f32(&out, buf + 1, LOOM_BF16, 1);
    EXPECT(out == 1.0f, "misaligned bf16 widen");
}

static void test_parse(void)
{
    loom_err err;
    int64_t v;
    EXPECT(loom_parse_i64("42", 0, 100, "x", &v, &err) == LOOM_OK && v == 42, "parse 42");
    EXPECT(loom_parse_i64("4x", 0, 100, "x", &v, &err) != LOOM_OK, "reject 4x");
    EXPECT(loom_parse_i64("", 0, 100, "x", &v, &err) != LOOM_OK, "reject empty");
    EXPECT(loom_parse_i64("101", 0, 100, "x", &v, &err) != LOOM_OK && strstr(err.msg, "out of range"), "range");
    float f;
    EXPECT(loom_parse_f32("0.5", "t", &f, &err) == LOOM_OK && f == 0.5f, "parse 0.5");
    EXPECT(loom_parse_f32("nan", "t", &f, &err) != LOOM_OK, "reject nan");
    int32_t *ids;
    size_t n;
    EXPECT(loom_parse_id_list("1, 2,3", "p", &ids, &n, &err) == LOOM_OK && n == 3 && ids[2] == 3, "id list");
    free(ids);
    const char *bad[] = {"", ",", "1,", "a", "1 2", "-1", "2147483648"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        EXPECT(loom_parse_id_list(bad[i], "p", &ids, &n, &err) != LOOM_OK, "reject id list \"%s\"", bad[i]);
    /* --kv-cache-dtype: auto and fp8 always; fp16/bf16 only as the activations (then "auto") */
    loom_dtype kv;
    EXPECT(loom_parse_kv_dtype("auto", &kv, &err) == LOOM_OK && kv == LOOM_DTYPE_COUNT, "kv auto");
    EXPECT(loom_parse_kv_dtype("fp8", &kv, &err) == LOOM_OK && kv == LOOM_F8E4M3, "kv fp8");
    const char *bad_kv[] = {"", "FP8", "fp32", "e4m3", "fp8 ", "int8"};
    for (size_t i = 0; i < sizeof bad_kv / sizeof bad_kv[0]; i++)
        EXPECT(loom_parse_kv_dtype(bad_kv[i], &kv, &err) == LOOM_EINVAL && strstr(err.msg, "--kv-cache-dtype"), "reject kv dtype \"%s\"", bad_kv[i]);
    kv = LOOM_F8E4M3;
    EXPECT(loom_kv_dtype_check(&kv, LOOM_BF16, "--dtype", NULL, &err) == LOOM_OK && kv == LOOM_F8E4M3, "fp8 with bf16 activations");
    kv = LOOM_BF16;
    EXPECT(loom_kv_dtype_check(&kv, LOOM_BF16, "--dtype", NULL, &err) == LOOM_OK && kv == LOOM_DTYPE_COUNT, "bf16 = the activations");
    kv = LOOM_BF16;
    EXPECT(loom_kv_dtype_check(&kv, LOOM_F16, "--dtype", NULL, &err) == LOOM_EINVAL &&
               strstr(err.msg, "--kv-cache-dtype bf16 needs --dtype bf16: the KV cache holds activations or fp8"),
           "bf16 KV with fp16 activations: \"%s\"", err.msg);
    kv = LOOM_F16;
    EXPECT(loom_kv_dtype_check(&kv, LOOM_F32, NULL, "the CPU backend", &err) == LOOM_EINVAL && strstr(err.msg, "the CPU backend computes in fp32"),
           "fp16 KV on the CPU: \"%s\"", err.msg);
}

/* Empirical distribution of many draws (fresh sampler per draw, seed i). */
static void histogram(const float *logits, int64_t V, loom_sampling_params p, int draws, int *hist)
{
    float *l = malloc((size_t)V * sizeof *l);
    memset(hist, 0, (size_t)V * sizeof *hist);
    for (int i = 0; i < draws; i++) {
        p.seed = (uint64_t)i;
        loom_sampler *s = loom_sampler_create(V, &p, NULL);
        memcpy(l, logits, (size_t)V * sizeof *l);
        hist[loom_sampler_sample(s, l, NULL, 0)]++;
        loom_sampler_destroy(s);
    }
    free(l);
}

static void test_sampler(void)
{
    enum { V = 5 };
    const float logits[V] = {2.0f, 1.0f, 0.5f, 0.0f, -1.0f};
    int hist[V];
    loom_sampling_params p = loom_sampling_defaults();
    histogram(logits, V, p, 50, hist);
    EXPECT(hist[0] == 50, "greedy picks the argmax");
    p.temperature = 1.0f;
    p.top_k = 2;
    histogram(logits, V, p, 4000, hist);
    EXPECT(hist[2] == 0 && hist[3] == 0 && hist[4] == 0, "top-k 2 keeps two tokens");
    double want0 = 1.0 / (1.0 + exp(-1.0));
    EXPECT(fabs(hist[0] / 4000.0 - want0) < 0.03, "top-k 2 probabilities: %g vs %g", hist[0] / 4000.0, want0);
    p.top_k = 0;
    p.top_p = 0.5f; /* p(token 0) = 0.55 >= 0.5: only it survives */
    histogram(logits, V, p, 500, hist);
    EXPECT(hist[0] == 500, "top-p 0.5 keeps one token here (got %d)", hist[0]);
    p.top_p = 0.8f; /* 0.55 + 0.20 = 0.75 < 0.8, + 0.12: three tokens */
    histogram(logits, V, p, 4000, hist);
    EXPECT(hist[3] == 0 && hist[4] == 0 && hist[2] > 0, "top-p 0.8 keeps three tokens");
    /* Same seed, same draw; the stream differs across seeds. */
    p = loom_sampling_defaults();
    p.temperature = 1.0f;
    p.seed = 3;
    loom_sampler *a = loom_sampler_create(V, &p, NULL), *b = loom_sampler_create(V, &p, NULL);
    float la[V], lb[V];
    int diff = 0;
    for (int i = 0; i < 100; i++) {
        memcpy(la, logits, sizeof la);
        memcpy(lb, logits, sizeof lb);
        diff += loom_sampler_sample(a, la, NULL, 0) != loom_sampler_sample(b, lb, NULL, 0);
    }
    EXPECT(diff == 0, "same seed, same tokens");
    loom_sampler_destroy(a);
    loom_sampler_destroy(b);
    /* Repetition penalty: positive logits divided, negative multiplied, once per id. */
    p = loom_sampling_defaults();
    p.repetition_penalty = 2.0f;
    loom_sampler *s = loom_sampler_create(V, &p, NULL);
    float l[V];
    memcpy(l, logits, sizeof l);
    int32_t hist_ids[] = {0, 0, 4};
    int32_t pick = loom_sampler_sample(s, l, hist_ids, 3);
    EXPECT(l[0] == 1.0f && l[4] == -2.0f && l[1] == 1.0f, "penalty applied once: %g %g", l[0], l[4]);
    EXPECT(pick == 0, "tie between ids 0 and 1 goes to the lower id (torch.argmax)");
    loom_sampler_destroy(s);
    loom_err err;
    p = loom_sampling_defaults();
    p.top_p = 0.0f;
    EXPECT(loom_sampler_create(V, &p, &err) == NULL && strstr(err.msg, "top_p"), "reject top_p 0");
}

int main(void)
{
    test_f16();
    test_bf16();
    test_parse();
    test_sampler();
    printf("%s\n", failures ? "FAIL" : "ok");
    return failures ? 1 : 0;
}
