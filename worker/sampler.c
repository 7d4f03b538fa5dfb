/* Sampling (see sampler.h). Mirrors transformers' logits processors:
 * RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper,
 * TopKLogitsWarper, TopPLogitsWarper, then multinomial. */
#include "sampler.h"

#include <math.h>
#include <stdlib.h>

struct loom_sampler {
    loom_sampling_params p;
    int64_t vocab;
    uint64_t rng[4];  /* xoshiro256** state */
    int32_t *idx;     /* (vocab) candidate ids */
    uint8_t *seen;    /* (vocab) repetition-penalty marks */
};

loom_sampling_params loom_sampling_defaults(void)
{
    return (loom_sampling_params){.temperature = 0.0f, .top_k = 0, .top_p = 1.0f, .repetition_penalty = 1.0f, .seed = 0};
}

loom_status loom_sampling_validate(const loom_sampling_params *p, loom_err *err)
{
    if (!(p->temperature >= 0) || !isfinite(p->temperature))
        return loom_err_set(err, LOOM_EINVAL, "temperature must be a finite number >= 0 (0 = greedy)");
    if (p->top_k < 0) return loom_err_set(err, LOOM_EINVAL, "top_k must be >= 0 (0 = off)");
    if (!(p->top_p > 0 && p->top_p <= 1)) return loom_err_set(err, LOOM_EINVAL, "top_p must be in (0, 1]");
    if (!(p->repetition_penalty > 0) || !isfinite(p->repetition_penalty))
        return loom_err_set(err, LOOM_EINVAL, "repetition_penalty must be a finite number > 0 (1 = off)");
    return LOOM_OK;
}

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

static uint64_t next_u64(uint64_t *s)
{
    uint64_t r = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return r;
}

/* Uniform in [0, 1). */
static double next_uniform(uint64_t *s) { return (double)(next_u64(s) >> 11) * 0x1.0p-53; }

loom_sampler *loom_sampler_create(int64_t vocab, const loom_sampling_params *p, loom_err *err)
{
    if (loom_sampling_validate(p, err) != LOOM_OK) return NULL;
    loom_sampler *s = calloc(1, sizeof *s);
    if (!s) goto oom;
    s->p = *p;
    s->vocab = vocab;
    s->idx = malloc((size_t)vocab * sizeof *s->idx);
    s->seen = calloc((size_t)vocab, 1);
    if (!s->idx || !s->seen) goto oom;
    uint64_t x = p->seed;
    for (int i = 0; i < 4; i++) s->rng[i] = splitmix64(&x);
    return s;
oom:
    loom_sampler_destroy(s);
    loom_err_set(err, LOOM_ENOMEM, "out of memory for the sampler");
    return NULL;
}

loom_status loom_sampler_reset(loom_sampler *s, const loom_sampling_params *p, loom_err *err)
{
    LOOM_CHECK(loom_sampling_validate(p, err));
    s->p = *p;
    uint64_t x = p->seed;
    for (int i = 0; i < 4; i++) s->rng[i] = splitmix64(&x);
    return LOOM_OK;
}

void loom_sampler_skip(loom_sampler *s, int64_t n)
{
    if (s->p.temperature == 0.0f || s->p.top_k == 1) return; /* greedy draws nothing */
    for (int64_t i = 0; i < n; i++) next_u64(s->rng);
}

void loom_sampler_destroy(loom_sampler *s)
{
    if (!s) return;
    free(s->idx);
    free(s->seen);
    free(s);
}

static int by_logit_desc(const void *a, const void *b, void *ctx)
{
    const float *lg = ctx;
    float x = lg[*(const int32_t *)a], y = lg[*(const int32_t *)b];
    if (x > y) return -1;
    if (x < y) return 1;
    return *(const int32_t *)a - *(const int32_t *)b; /* stable: lower id first */
}

static int32_t argmax(const float *x, int64_t n)
{
    int64_t best = 0;
    for (int64_t i = 1; i < n; i++)
        if (x[i] > x[best]) best = i; /* first of equal maxima, as torch.argmax */
    return (int32_t)best;
}

int32_t loom_sampler_sample(loom_sampler *s, float *logits, const int32_t *history, int64_t n_history)
{
    const int64_t V = s->vocab;
    const loom_sampling_params *p = &s->p;
    if (p->repetition_penalty != 1.0f) {
        /* score = where(score < 0, score * penalty, score / penalty), once per distinct id */
        for (int64_t i = 0; i < n_history; i++) {
            int32_t t = history[i];
            if (t < 0 || t >= V || s->seen[t]) continue;
            s->seen[t] = 1;
            logits[t] = logits[t] < 0 ? logits[t] * p->repetition_penalty : logits[t] / p->repetition_penalty;
        }
        for (int64_t i = 0; i < n_history; i++)
            if (history[i] >= 0 && history[i] < V) s->seen[history[i]] = 0;
    }
    if (p->temperature == 0.0f || p->top_k == 1) return argmax(logits, V);

    for (int64_t i = 0; i < V; i++) logits[i] /= p->temperature;
    /* Candidates sorted by logit, best first. */
    int64_t n = V;
    for (int64_t i = 0; i < V; i++) s->idx[i] = (int32_t)i;
    qsort_r(s->idx, (size_t)V, sizeof *s->idx, by_logit_desc, logits); /* glibc */
    if (p->top_k > 0 && p->top_k < n) {
        /* keep everything tied with the k-th logit, as TopKLogitsWarper does */
        float kth = logits[s->idx[p->top_k - 1]];
        n = p->top_k;
        while (n < V && logits[s->idx[n]] >= kth) n++;
    }
    /* Softmax over the candidates (in place over their logits). */
    float mx = logits[s->idx[0]];
    double sum = 0;
    for (int64_t i = 0; i < n; i++) {
        float e = expf(logits[s->idx[i]] - mx);
        logits[s->idx[i]] = e;
        sum += e;
    }
    if (p->top_p < 1.0f) {
        /* smallest prefix whose mass reaches top_p (at least one token) */
        double cum = 0, want = p->top_p * sum;
        int64_t keep = 0;
        while (keep < n) {
            cum += logits[s->idx[keep]];
            keep++;
            if (cum >= want) break;
        }
        n = keep;
        sum = cum;
    }
    double r = next_uniform(s->rng) * sum, acc = 0;
    for (int64_t i = 0; i < n; i++) {
        acc += logits[s->idx[i]];
        if (r < acc) return s->idx[i];
    }
    return s->idx[n - 1];
}
