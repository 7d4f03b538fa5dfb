/* loom_cuda_sample vs the CPU sampler (suite "ops", GPU machine). worker/
 * sampler.c is compiled in, so greedy ids and penalized logits are checked
 * bit-exactly against the code the CPU worker runs; for temperature, top-k and
 * top-p a reference that mirrors it gives the allowed set and probabilities:
 * every GPU draw must fall in the set, many draws (different steps) must
 * follow the probabilities (chi-square), and the same (seed, step) must give
 * the same id. Then timings at vocab 151936. Exits 77 without a CUDA device.
 * Inputs are fresh each run (seed printed; LOOM_TEST_SEED=n repeats one). */
#include <cuda_runtime_api.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "../../kernels/cuda/ops_cuda.h"
#include "../../worker/sampler.c" /* the CPU sampler itself (its statics included) */
#include "op_check.h"

static float rnorm(void)
{
    float u = 0.5f * (rnd() + 1.0f), v = 0.5f * (rnd() + 1.0f);
    if (u < 1e-7f) u = 1e-7f;
    return sqrtf(-2.0f * logf(u)) * cosf(6.2831853f * v);
}

/* ---- one batch of rows on the device ---- */

typedef struct batch {
    int64_t rows, vocab;
    float *logits;                  /* host (rows, vocab) */
    float *temp, *top_p, *pen;      /* host (rows) */
    int32_t *top_k;
    uint64_t *seed, *step;
    int32_t *hist;                  /* host flat history */
    int64_t *hoff;                  /* host (rows + 1) */
    int32_t *ids;                   /* host (rows): the result */
    float *logits_after;            /* host (rows, vocab): logits as the call left them */
} batch;

static batch *batch_new(int64_t rows, int64_t vocab, int64_t hist_cap)
{
    batch *b = xmalloc(sizeof *b);
    b->rows = rows;
    b->vocab = vocab;
    b->logits = xmalloc(sizeof(float) * rows * vocab);
    b->logits_after = NULL; /* set by callers that want the logits back */
    b->temp = xmalloc(sizeof(float) * rows);
    b->top_p = xmalloc(sizeof(float) * rows);
    b->pen = xmalloc(sizeof(float) * rows);
    b->top_k = xmalloc(sizeof(int32_t) * rows);
    b->seed = xmalloc(sizeof(uint64_t) * rows);
    b->step = xmalloc(sizeof(uint64_t) * rows);
    b->hist = xmalloc(sizeof(int32_t) * (hist_cap ? hist_cap : 1));
    b->hoff = xmalloc(sizeof(int64_t) * (rows + 1));
    b->ids = xmalloc(sizeof(int32_t) * rows);
    for (int64_t r = 0; r < rows; r++) {
        b->temp[r] = 0.0f; b->top_p[r] = 1.0f; b->pen[r] = 1.0f; b->top_k[r] = 0;
        b->seed[r] = 1234; b->step[r] = 0;
    }
    memset(b->hoff, 0, sizeof(int64_t) * (rows + 1));
    return b;
}

static void batch_free(batch *b)
{
    free(b->logits); free(b->logits_after); free(b->temp); free(b->top_p); free(b->pen); free(b->top_k);
    free(b->seed); free(b->step); free(b->hist); free(b->hoff); free(b->ids); free(b);
}

static void *dput(const void *h, size_t bytes)
{
    void *d;
    CUDA_CHECK(cudaMalloc(&d, bytes ? bytes : 4));
    if (bytes) CUDA_CHECK(cudaMemcpy(d, h, bytes, cudaMemcpyHostToDevice));
    return d;
}

/* Runs loom_cuda_sample on the batch; fills ids and logits_after. */
static void batch_run(batch *b)
{
    const int64_t R = b->rows, V = b->vocab, H = b->hoff[R];
    float *dl = dput(b->logits, sizeof(float) * R * V);
    float *dt = dput(b->temp, sizeof(float) * R), *dp = dput(b->top_p, sizeof(float) * R);
    float *dpen = dput(b->pen, sizeof(float) * R);
    int32_t *dk = dput(b->top_k, sizeof(int32_t) * R), *dh = dput(b->hist, sizeof(int32_t) * H);
    int64_t *dho = dput(b->hoff, sizeof(int64_t) * (R + 1));
    uint64_t *ds = dput(b->seed, sizeof(uint64_t) * R), *dst = dput(b->step, sizeof(uint64_t) * R);
    int32_t *dout;
    CUDA_CHECK(cudaMalloc((void **)&dout, sizeof(int32_t) * R));
    CUDA_CHECK(cudaMemset(dout, 0xff, sizeof(int32_t) * R)); /* -1: unwritten */
    const size_t sb = loom_cuda_sampling_scratch_bytes(R, V);
    void *scratch = NULL;
    if (sb) CUDA_CHECK(cudaMalloc(&scratch, sb));
    int st = loom_cuda_sample(dout, dl, R, V, dt, dk, dp, dpen, dh, dho, ds, dst, scratch, NULL);
    if (st) { fprintf(stderr, "loom_cuda_sample: %s\n", cudaGetErrorString((cudaError_t)st)); exit(1); }
    CUDA_CHECK(cudaDeviceSynchronize());
    CUDA_CHECK(cudaMemcpy(b->ids, dout, sizeof(int32_t) * R, cudaMemcpyDeviceToHost));
    if (b->logits_after)
        CUDA_CHECK(cudaMemcpy(b->logits_after, dl, sizeof(float) * R * V, cudaMemcpyDeviceToHost));
    cudaFree(dl); cudaFree(dt); cudaFree(dp); cudaFree(dpen); cudaFree(dk); cudaFree(dh); cudaFree(dho);
    cudaFree(ds); cudaFree(dst); cudaFree(dout); cudaFree(scratch);
}

/* The CPU sampler on one row (a copy of its logits) with its own generator
 * seeded by `seed`; returns the id, and the logits as it left them in `after`
 * when given. */
static int32_t cpu_sample(const batch *b, int64_t r, float *after, uint64_t seed)
{
    const int64_t V = b->vocab;
    loom_sampling_params p = {.temperature = b->temp[r], .top_k = b->top_k[r], .top_p = b->top_p[r],
                              .repetition_penalty = b->pen[r], .seed = seed};
    loom_err err;
    loom_sampler *s = loom_sampler_create(V, &p, &err);
    if (!s) { fprintf(stderr, "sampler: %s\n", err.msg); exit(1); }
    float *l = after ? after : xmalloc(sizeof(float) * V);
    memcpy(l, b->logits + r * V, sizeof(float) * V);
    const int32_t id = loom_sampler_sample(s, l, b->hist + b->hoff[r], b->hoff[r + 1] - b->hoff[r]);
    if (!after) free(l);
    loom_sampler_destroy(s);
    return id;
}

/* The allowed set of row r, mirroring loom_sampler_sample step by step
 * (penalty, temperature, top-k with ties, softmax, top-p prefix): ids[] and
 * normalized probs[]; returns its size. slack > 1 widens the top-p cut, a
 * superset that tolerates the GPU summing the same mass in another order. */
static int64_t ref_allowed(const batch *b, int64_t r, double slack, int32_t *ids, double *probs)
{
    const int64_t V = b->vocab;
    float *l = xmalloc(sizeof(float) * V);
    memcpy(l, b->logits + r * V, sizeof(float) * V);
    const float pen = b->pen[r];
    if (pen != 1.0f) {
        uint8_t *seen = calloc((size_t)V, 1);
        for (int64_t i = b->hoff[r]; i < b->hoff[r + 1]; i++) {
            const int32_t t = b->hist[i];
            if (t < 0 || t >= V || seen[t]) continue;
            seen[t] = 1;
            l[t] = l[t] < 0 ? l[t] * pen : l[t] / pen;
        }
        free(seen);
    }
    for (int64_t i = 0; i < V; i++) l[i] /= b->temp[r];
    for (int64_t i = 0; i < V; i++) ids[i] = (int32_t)i;
    qsort_r(ids, (size_t)V, sizeof *ids, by_logit_desc, l);
    int64_t n = V;
    const int32_t k = b->top_k[r];
    if (k > 0 && k < n) {
        const float kth = l[ids[k - 1]];
        n = k;
        while (n < V && l[ids[n]] >= kth) n++;
    }
    const float mx = l[ids[0]];
    double sum = 0;
    for (int64_t i = 0; i < n; i++) { probs[i] = expf(l[ids[i]] - mx); sum += probs[i]; }
    if (b->top_p[r] < 1.0f) {
        double cum = 0, want = b->top_p[r] * sum * slack;
        int64_t keep = 0;
        while (keep < n) {
            cum += probs[keep++];
            if (cum >= want) break;
        }
        n = keep;
        sum = cum;
    }
    for (int64_t i = 0; i < n; i++) probs[i] /= sum;
    free(l);
    return n;
}

static int in_set(const int32_t *ids, int64_t n, int32_t id)
{
    for (int64_t i = 0; i < n; i++)
        if (ids[i] == id) return 1;
    return 0;
}

/* Random logits; bf16-rounded rows have many exact ties, as logits from a
 * bf16 lm_head do. dup_max puts the maximum at two positions. */
static void fill_logits(float *l, int64_t V, float scale, int bf16, int dup_max)
{
    for (int64_t i = 0; i < V; i++) {
        float x = scale * rnorm();
        l[i] = bf16 ? loom_bf16_to_f32(loom_f32_to_bf16(x)) : x;
    }
    if (dup_max && V >= 2) {
        float mx = l[0];
        for (int64_t i = 1; i < V; i++) mx = l[i] > mx ? l[i] : mx;
        const int64_t a = rndu((uint32_t)V), c = rndu((uint32_t)V);
        l[a] = l[c] = mx + 1.0f;
    }
}

/* ---- greedy, and top-k 1 == greedy ---- */

static void check_greedy(int64_t V, int64_t R, int via_top_k1)
{
    batch *b = batch_new(R, V, 0);
    for (int64_t r = 0; r < R; r++) {
        fill_logits(b->logits + r * V, V, 4.0f, r % 2, r % 3 == 0);
        if (via_top_k1) { b->temp[r] = 0.8f; b->top_k[r] = 1; b->top_p[r] = 0.9f; }
    }
    batch_run(b);
    int64_t bad = 0;
    for (int64_t r = 0; r < R; r++) bad += cpu_sample(b, r, NULL, 0) != b->ids[r]; /* greedy there too */
    verdict(bad == 0, "%s vocab=%lld rows=%lld: %lld of %lld ids differ from the CPU argmax",
            via_top_k1 ? "top-k 1" : "greedy", (long long)V, (long long)R, (long long)bad, (long long)R);
    batch_free(b);
}

/* ---- repetition penalty: exactly the listed ids change, bit-exact ---- */

static void check_penalty(int64_t V, int64_t R)
{
    const int64_t cap = R * 400;
    batch *b = batch_new(R, V, cap);
    b->logits_after = xmalloc(sizeof(float) * R * V);
    int64_t h = 0;
    for (int64_t r = 0; r < R; r++) {
        fill_logits(b->logits + r * V, V, 4.0f, 0, 0);
        const float pens[] = {1.0f, 1.3f, 0.7f, 2.0f};
        b->pen[r] = pens[r % 4];
        const int64_t len = r % 5 == 0 ? 0 : rndu(400);
        b->hoff[r] = h;
        for (int64_t i = 0; i < len; i++) {
            int32_t t = (int32_t)rndu(i > 10 && rndu(4) == 0 ? 16 : (uint32_t)V); /* repeats */
            if (rndu(50) == 0) t = rndu(2) ? -1 : (int32_t)(V + 5); /* out of range: ignored */
            b->hist[h++] = t;
        }
        b->hoff[r + 1] = h;
        /* the maximum sometimes sits on a penalized id, so the penalty changes the argmax */
        if (len > 0 && r % 2) {
            const int32_t t = b->hist[b->hoff[r]];
            if (t >= 0 && t < V) b->logits[r * V + t] = 20.0f;
        }
    }
    batch_run(b);
    int64_t bad_ids = 0, bad_logits = 0;
    float *after = xmalloc(sizeof(float) * V);
    for (int64_t r = 0; r < R; r++) {
        bad_ids += cpu_sample(b, r, after, 0) != b->ids[r];
        bad_logits += memcmp(after, b->logits_after + r * V, sizeof(float) * V) != 0;
    }
    free(after);
    verdict(bad_ids == 0 && bad_logits == 0,
            "repetition penalty vocab=%lld rows=%lld (greedy): %lld ids, %lld rows of logits differ from the CPU",
            (long long)V, (long long)R, (long long)bad_ids, (long long)bad_logits);
    batch_free(b);
}

/* ---- every draw inside the CPU's allowed set; determinism ---- */

static void check_allowed(int64_t V, int64_t R, int steps)
{
    batch *b = batch_new(R, V, R * 64);
    /* T = 0.1 puts most of a row more than 32 nats below the maximum (zero
     * mass); rows 11 and 23 pair it with top-k 20000, whose k-th logit lies there. */
    const float temps[] = {0.6f, 1.0f, 1.7f, 0.1f};
    const int32_t ks[] = {0, 2, 50, 3000, 6000, 20000};
    const float ps[] = {1.0f, 0.95f, 0.5f, 0.1f};
    int64_t h = 0;
    for (int64_t r = 0; r < R; r++) {
        fill_logits(b->logits + r * V, V, 3.0f, r % 2, 0);
        b->temp[r] = temps[r % 4];
        b->top_k[r] = ks[r % 6];
        b->top_p[r] = ps[(r / 2) % 4];
        b->pen[r] = r % 7 == 3 ? 1.2f : 1.0f;
        b->seed[r] = 1000 + (uint64_t)r;
        b->hoff[r] = h;
        for (int i = 0; i < (r % 7 == 3 ? 64 : 0); i++) b->hist[h++] = (int32_t)rndu((uint32_t)V);
        b->hoff[r + 1] = h;
    }
    /* The last two rows repeat the first two exactly: same seed, same id. */
    for (int64_t r = R - 2; r < R && R >= 4; r++) {
        const int64_t s = r - (R - 2);
        memcpy(b->logits + r * V, b->logits + s * V, sizeof(float) * V);
        b->temp[r] = b->temp[s]; b->top_k[r] = b->top_k[s]; b->top_p[r] = b->top_p[s];
        b->pen[r] = 1.0f; b->pen[s] = 1.0f; b->seed[r] = b->seed[s];
    }
    int32_t *ids = xmalloc(sizeof(int32_t) * V), *ids_exact = xmalloc(sizeof(int32_t) * V);
    double *probs = xmalloc(sizeof(double) * V);
    int64_t *n_sup = xmalloc(sizeof(int64_t) * R), *n_ex = xmalloc(sizeof(int64_t) * R);
    int32_t **sets = xmalloc(sizeof(int32_t *) * R), **exact = xmalloc(sizeof(int32_t *) * R);
    int64_t ref_bad = 0;
    for (int64_t r = 0; r < R; r++) {
        n_sup[r] = ref_allowed(b, r, 1.0 + 1e-5, ids, probs);
        sets[r] = xmalloc(sizeof(int32_t) * n_sup[r]);
        memcpy(sets[r], ids, sizeof(int32_t) * n_sup[r]);
        n_ex[r] = ref_allowed(b, r, 1.0, ids_exact, probs);
        exact[r] = xmalloc(sizeof(int32_t) * n_ex[r]);
        memcpy(exact[r], ids_exact, sizeof(int32_t) * n_ex[r]);
        /* the reference agrees with the CPU sampler's own draws */
        for (int s = 0; s < 4; s++) ref_bad += !in_set(exact[r], n_ex[r], cpu_sample(b, r, NULL, b->seed[r] * 31 + s));
    }
    int64_t outside = 0, outside_exact = 0, draws = 0, nondet = 0, twin = 0;
    int32_t *first = xmalloc(sizeof(int32_t) * R);
    for (int s = 0; s < steps; s++) {
        for (int64_t r = 0; r < R; r++) b->step[r] = (uint64_t)s;
        batch_run(b);
        for (int64_t r = 0; r < R; r++) {
            outside += !in_set(sets[r], n_sup[r], b->ids[r]);
            outside_exact += !in_set(exact[r], n_ex[r], b->ids[r]);
            draws++;
        }
        if (R >= 4) twin += b->ids[R - 2] != b->ids[0] || b->ids[R - 1] != b->ids[1];
        if (s == 0) memcpy(first, b->ids, sizeof(int32_t) * R);
    }
    for (int64_t r = 0; r < R; r++) b->step[r] = 0;
    batch_run(b);
    for (int64_t r = 0; r < R; r++) nondet += b->ids[r] != first[r];
    int64_t min_set = V, max_set = 0;
    for (int64_t r = 0; r < R; r++) {
        min_set = n_ex[r] < min_set ? n_ex[r] : min_set;
        max_set = n_ex[r] > max_set ? n_ex[r] : max_set;
    }
    verdict(outside == 0 && ref_bad == 0,
            "allowed set vocab=%lld rows=%lld x %d steps: %lld of %lld draws outside (%lld outside the exact set; "
            "sets of %lld..%lld ids; reference vs CPU sampler: %lld misses)",
            (long long)V, (long long)R, steps, (long long)outside, (long long)draws, (long long)outside_exact,
            (long long)min_set, (long long)max_set, (long long)ref_bad);
    verdict(nondet == 0 && twin == 0, "determinism vocab=%lld: %lld rows changed on a rerun, %lld twin-row mismatches",
            (long long)V, (long long)nondet, (long long)twin);
    for (int64_t r = 0; r < R; r++) { free(sets[r]); free(exact[r]); }
    free(sets); free(exact); free(n_sup); free(n_ex); free(ids); free(ids_exact); free(probs); free(first);
    batch_free(b);
}

/* ---- the distribution over many draws ---- */

/* N rows of the same logits and parameters, steps 0..N-1: the histogram of
 * ids against the reference probabilities. Ids past `lump` are pooled into
 * one bin (for a long tail of small probabilities). */
static void check_distribution(const char *what, const float *logits, int64_t V, float T, int32_t k, float p,
                               float pen, const int32_t *hist, int64_t nh, int64_t lump)
{
    const int64_t N = V > 1000 ? 20000 : 40000;
    batch *b = batch_new(N, V, N * nh);
    for (int64_t r = 0; r < N; r++) {
        memcpy(b->logits + r * V, logits, sizeof(float) * V);
        b->temp[r] = T; b->top_k[r] = k; b->top_p[r] = p; b->pen[r] = pen;
        b->seed[r] = 77; b->step[r] = (uint64_t)r;
        b->hoff[r] = r * nh;
        if (nh) memcpy(b->hist + r * nh, hist, sizeof(int32_t) * nh);
    }
    b->hoff[N] = N * nh;
    batch_run(b);
    int32_t *ids = xmalloc(sizeof(int32_t) * V);
    double *probs = xmalloc(sizeof(double) * V), *expect = calloc((size_t)lump + 1, sizeof(double));
    int64_t *count = calloc((size_t)lump + 1, sizeof(int64_t));
    const int64_t n = ref_allowed(b, 0, 1.0, ids, probs);
    uint8_t *allowed = calloc((size_t)V, 1);
    for (int64_t i = 0; i < n; i++) {
        allowed[ids[i]] = 1;
        expect[ids[i] < lump ? ids[i] : lump] += probs[i] * N;
    }
    int64_t outside = 0;
    for (int64_t r = 0; r < N; r++) {
        const int32_t id = b->ids[r];
        if (id < 0 || id >= V || !allowed[id]) { outside++; continue; }
        count[id < lump ? id : lump]++;
    }
    double chi2 = 0;
    int df = -1;
    for (int64_t i = 0; i <= lump; i++) {
        if (expect[i] <= 0) continue;
        df++;
        chi2 += (count[i] - expect[i]) * (count[i] - expect[i]) / expect[i];
    }
    const double limit = df + 6.0 * sqrt(2.0 * (df > 0 ? df : 1)) + 6.0;
    verdict(outside == 0 && chi2 <= limit, "distribution %s vocab=%lld T=%.2f k=%d p=%.2f: %lld draws, %lld allowed ids, "
            "chi2 %.1f (df %d, limit %.1f), %lld outside", what, (long long)V, T, k, p, (long long)N, (long long)n,
            chi2, df, limit, (long long)outside);
    free(ids); free(probs); free(expect); free(count); free(allowed);
    batch_free(b);
}

static void check_distributions(void)
{
    const float a[10] = {2.5f, 2.0f, 1.5f, 1.0f, 1.0f, 1.0f, 0.2f, -1.0f, -2.0f, 0.5f};
    check_distribution("pure temperature", a, 10, 0.9f, 0, 1.0f, 1.0f, NULL, 0, 10);
    check_distribution("top-k tie at k-th", a, 10, 0.7f, 4, 1.0f, 1.0f, NULL, 0, 10);
    const float c[10] = {3.0f, 2.0f, 2.0f, 2.0f, 1.0f, 0.5f, -1.0f, -2.0f, -3.0f, -4.0f};
    check_distribution("top-p cut inside a tie", c, 10, 1.0f, 0, 0.6f, 1.0f, NULL, 0, 10);
    const int32_t hist[] = {0, 3, 3, 9, 0};
    check_distribution("penalty + top-k + top-p", c, 10, 1.3f, 6, 0.8f, 1.5f, hist, 5, 10);
    /* Over 4096 tokens of non-zero mass: the row path (no compaction). */
    const int64_t V = 8000;
    float *big = xmalloc(sizeof(float) * V);
    for (int64_t i = 0; i < V; i++) big[i] = 0.0f;
    big[0] = 12.0f; big[1] = 10.0f; big[2] = 12.0f; big[3] = 11.0f;
    check_distribution("large support", big, V, 1.0f, 0, 1.0f, 1.0f, NULL, 0, 4);
    check_distribution("large support, top-p", big, V, 1.0f, 0, 0.97f, 1.0f, NULL, 0, 4);
    check_distribution("large support, top-k ties", big, V, 1.0f, 5000, 1.0f, 1.0f, NULL, 0, 4);
    free(big);
}

/* ---- bad arguments ---- */

static void check_bad_args(void)
{
    int ok = 1;
    ok &= loom_cuda_sample(NULL, NULL, 1, 10, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL) != 0;
    ok &= loom_cuda_sample((int32_t *)16, (float *)16, 1, 0, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL) != 0;
    ok &= loom_cuda_sample((int32_t *)16, (float *)16, 1, (int64_t)1 << 23, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
                           NULL) != 0;
    ok &= loom_cuda_sample(NULL, NULL, 0, 10, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL) == 0;
    verdict(ok, "bad arguments rejected, zero rows accepted");
}

/* ---- timings ---- */

static void time_sampling(int64_t R, const char *what, float T, int32_t k, float p)
{
    const int64_t V = 151936;
    batch *b = batch_new(R, V, 0);
    for (int64_t r = 0; r < R; r++) {
        fill_logits(b->logits + r * V, V, 3.0f, 0, 0);
        b->temp[r] = T; b->top_k[r] = k; b->top_p[r] = p;
    }
    float *pristine = dput(b->logits, sizeof(float) * R * V), *dl;
    CUDA_CHECK(cudaMalloc((void **)&dl, sizeof(float) * R * V));
    float *dt = dput(b->temp, sizeof(float) * R), *dp = dput(b->top_p, sizeof(float) * R);
    int32_t *dk = dput(b->top_k, sizeof(int32_t) * R), *dout;
    uint64_t *ds = dput(b->seed, sizeof(uint64_t) * R), *dst = dput(b->step, sizeof(uint64_t) * R);
    CUDA_CHECK(cudaMalloc((void **)&dout, sizeof(int32_t) * R));
    cudaEvent_t e0, e1;
    CUDA_CHECK(cudaEventCreate(&e0));
    CUDA_CHECK(cudaEventCreate(&e1));
    float t[21];
    for (int i = 0; i < 21; i++) {
        CUDA_CHECK(cudaMemcpyAsync(dl, pristine, sizeof(float) * R * V, cudaMemcpyDeviceToDevice, NULL));
        CUDA_CHECK(cudaEventRecord(e0, NULL));
        int st = loom_cuda_sample(dout, dl, R, V, dt, dk, dp, NULL, NULL, NULL, ds, dst, NULL, NULL);
        if (st) { fprintf(stderr, "loom_cuda_sample: %s\n", cudaGetErrorString((cudaError_t)st)); exit(1); }
        CUDA_CHECK(cudaEventRecord(e1, NULL));
        CUDA_CHECK(cudaEventSynchronize(e1));
        CUDA_CHECK(cudaEventElapsedTime(&t[i], e0, e1));
    }
    for (int i = 1; i < 21; i++) /* t[0] is the warm-up */
        for (int j = i + 1; j < 21; j++)
            if (t[j] < t[i]) { float x = t[i]; t[i] = t[j]; t[j] = x; }
    printf("time sample %s vocab=%lld rows=%lld: %.1f us (median of 20; logits read once = %.1f us at 4.25 TB/s)\n",
           what, (long long)V, (long long)R, t[10] * 1e3, 4.0 * R * V / 4.25e12 * 1e6);
    cudaEventDestroy(e0); cudaEventDestroy(e1);
    cudaFree(pristine); cudaFree(dl); cudaFree(dt); cudaFree(dp); cudaFree(dk); cudaFree(ds); cudaFree(dst);
    cudaFree(dout);
    batch_free(b);
}

int main(void)
{
    if (cuda_test_skip_without_device()) return 77;
    const char *seed_env = getenv("LOOM_TEST_SEED");
    uint64_t seed = seed_env ? strtoull(seed_env, NULL, 10) : (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
    rng = seed ? seed : 1;
    printf("seed %llu\n", (unsigned long long)seed);

    const int64_t vocabs[] = {1, 7, 32000, 151936};
    for (int v = 0; v < 4; v++) {
        check_greedy(vocabs[v], 1, 0);
        check_greedy(vocabs[v], 37, 0);
        check_greedy(vocabs[v], 37, 1);
    }
    check_penalty(32000, 37);
    check_penalty(151936, 5);
    check_allowed(7, 37, 6);
    check_allowed(32000, 37, 6);
    check_allowed(151936, 37, 3);
    check_distributions();
    check_bad_args();

    const struct { const char *what; float T; int32_t k; float p; } cfg[] = {
        {"greedy", 0.0f, 0, 1.0f},
        {"T=0.7 top-k 50 top-p 0.9", 0.7f, 50, 0.9f},
        {"T=1 top-p 0.95", 1.0f, 0, 0.95f},
        {"T=1 (full vocab)", 1.0f, 0, 1.0f},
    };
    for (int c = 0; c < 4; c++) {
        time_sampling(1, cfg[c].what, cfg[c].T, cfg[c].k, cfg[c].p);
        time_sampling(64, cfg[c].what, cfg[c].T, cfg[c].k, cfg[c].p);
    }
    printf("%d failure(s)\n", failures);
    return failures ? 1 : 0;
}
