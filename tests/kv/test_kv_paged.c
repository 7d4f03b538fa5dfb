/* Paged KV cache tests (suite kv). `attention`: ops->attention_paged over K/V
 * scattered on a shuffled block table (NaN everywhere else) against
 * ops->attention on the same rows laid out contiguously (bitwise, as ops.h
 * promises, and within 1e-6) and both against a naive softmax in double.
 * `forward DIR`: the forward pass of a fixture model on views bound to a pool
 * (one sequence, then three sharing one pool) against standalone caches
 * (bitwise and within 1e-6), pool blocks outside the tables left untouched.
 * `edges`: pool/cache sizes, bad shapes, a view too short for its tokens.
 * Usage: test_kv_paged attention | forward FIXTURE_DIR | edges */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/ops.h"
#include "kv/kv_cache.h"
#include "worker/model.h"
#include "../common/expect.h"

#define TOL_PAGED 1e-6 /* paged vs contiguous, both fp32 */
#define TOL_REF 1e-5   /* fp32 kernel vs the double reference */

static void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p) {
        fprintf(stderr, "out of memory (%zu bytes)\n", n);
        exit(1);
    }
    return p;
}

static uint64_t rng = 0x9E3779B97F4A7C15ull;

static uint32_t rand_u32(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)(rng >> 32);
}

static float rand_unit(void) { return (float)rand_u32() / 4294967296.0f * 2.0f - 1.0f; }

/* A random permutation of 0 .. n-1. */
static void shuffle(int32_t *a, int64_t n)
{
    for (int64_t i = 0; i < n; i++) a[i] = (int32_t)i;
    for (int64_t i = n - 1; i > 0; i--) {
        int64_t j = rand_u32() % (uint64_t)(i + 1);
        int32_t t = a[i];
        a[i] = a[j];
        a[j] = t;
    }
}

static void fill_nan(float *x, int64_t n)
{
    for (int64_t i = 0; i < n; i++) x[i] = NAN;
}

/* Relative L2 error of out against ref; NaN anywhere makes it NaN (a failure). */
static double rel_l2_f(const float *out, const float *ref, int64_t n)
{
    double num = 0, den = 0;
    for (int64_t i = 0; i < n; i++) {
        double d = (double)out[i] - ref[i];
        num += d * d;
        den += (double)ref[i] * ref[i];
    }
    return sqrt(num / (den > 0 ? den : 1));
}

static double rel_l2_d(const float *out, const double *ref, int64_t n)
{
    double num = 0, den = 0;
    for (int64_t i = 0; i < n; i++) {
        double d = (double)out[i] - ref[i];
        num += d * d;
        den += ref[i] * ref[i];
    }
    return sqrt(num / (den > 0 ? den : 1));
}

/* --- attention ----------------------------------------------------------- */

/* Naive causal (sliding-window) GQA attention in double over contiguous
 * k, v (kv_len, n_kv_heads * head_dim). */
static void ref_attention(double *out, const float *q, const float *k, const float *v, const int32_t *pos,
                          int64_t n_q, int64_t H, int64_t KVH, int64_t D, int64_t window, double scale, double *sc)
{
    const int64_t row = KVH * D;
    for (int64_t i = 0; i < n_q; i++)
        for (int64_t h = 0; h < H; h++) {
            const int64_t g = h / (H / KVH), p = pos[i];
            const int64_t lo = window > 0 && p - window + 1 > 0 ? p - window + 1 : 0;
            const float *qh = q + (i * H + h) * D;
            double mx = -INFINITY, sum = 0;
            for (int64_t j = lo; j <= p; j++) {
                double s = 0;
                for (int64_t d = 0; d < D; d++) s += (double)qh[d] * k[j * row + g * D + d];
                sc[j] = s * scale;
                mx = sc[j] > mx ? sc[j] : mx;
            }
            for (int64_t j = lo; j <= p; j++) {
                sc[j] = exp(sc[j] - mx);
                sum += sc[j];
            }
            for (int64_t d = 0; d < D; d++) {
                double o = 0;
                for (int64_t j = lo; j <= p; j++) o += sc[j] * v[j * row + g * D + d];
                out[(i * H + h) * D + d] = o / sum;
            }
        }
}

/* One shape: the reference and the contiguous op once, then the paged op for
 * each block size. */
static void attention_case(const loom_ops *ops, int64_t D, int64_t ratio, int64_t kv_len, int64_t n_q_want,
                           int64_t window)
{
    const int64_t KVH = 2, H = KVH * ratio, row = KVH * D;
    const int64_t n_q = n_q_want < kv_len ? n_q_want : kv_len;
    const int64_t nqe = n_q * H * D;
    const float scale = 1.0f / sqrtf((float)D);
    float *q = xmalloc(sizeof(float) * (size_t)nqe);
    float *k = xmalloc(sizeof(float) * (size_t)(kv_len * row));
    float *v = xmalloc(sizeof(float) * (size_t)(kv_len * row));
    int32_t *pos = xmalloc(sizeof(int32_t) * (size_t)n_q);
    float *out_c = xmalloc(sizeof(float) * (size_t)nqe), *out_p = xmalloc(sizeof(float) * (size_t)nqe);
    double *ref = xmalloc(sizeof(double) * (size_t)nqe), *sc = xmalloc(sizeof(double) * (size_t)kv_len);
    for (int64_t i = 0; i < nqe; i++) q[i] = rand_unit();
    for (int64_t i = 0; i < kv_len * row; i++) k[i] = rand_unit();
    for (int64_t i = 0; i < kv_len * row; i++) v[i] = rand_unit();
    for (int64_t i = 0; i < n_q; i++) pos[i] = (int32_t)(kv_len - n_q + i); /* the causal tail */

    char what[160];
    snprintf(what, sizeof what, "d=%lld heads %lld/%lld kv_len=%lld n_q=%lld window=%lld", (long long)D, (long long)H,
             (long long)KVH, (long long)kv_len, (long long)n_q, (long long)window);
    ref_attention(ref, q, k, v, pos, n_q, H, KVH, D, window, scale, sc);
    fill_nan(out_c, nqe);
    ops->attention(out_c, q, k, v, pos, n_q, kv_len, row, H, KVH, D, window, scale);
    double e = rel_l2_d(out_c, ref, nqe);
    EXPECT(e <= TOL_REF, "attention %s: rel L2 %.3g vs the double reference", what, e);

    static const int64_t block_sizes[] = {8, 16, 64};
    for (size_t bi = 0; bi < sizeof block_sizes / sizeof block_sizes[0]; bi++) {
        const int64_t B = block_sizes[bi], row_stride = row + 5, block_stride = B * row_stride + 7;
        const int64_t n_table = (kv_len + B - 1) / B, n_blocks = n_table + 3;
        int32_t *perm = xmalloc(sizeof(int32_t) * (size_t)n_blocks);
        shuffle(perm, n_blocks); /* the table: the first n_table of a shuffled pool */
        float *kp = xmalloc(sizeof(float) * (size_t)(n_blocks * block_stride));
        float *vp = xmalloc(sizeof(float) * (size_t)(n_blocks * block_stride));
        fill_nan(kp, n_blocks * block_stride);
        fill_nan(vp, n_blocks * block_stride);
        for (int64_t j = 0; j < kv_len; j++) {
            const int64_t off = perm[j / B] * block_stride + (j % B) * row_stride;
            memcpy(kp + off, k + j * row, sizeof(float) * (size_t)row);
            memcpy(vp + off, v + j * row, sizeof(float) * (size_t)row);
        }
        fill_nan(out_p, nqe);
        ops->attention_paged(out_p, q, kp, vp, pos, n_q, kv_len, perm, B, block_stride, row_stride, H, KVH, D,
                             window, scale);
        double ep = rel_l2_f(out_p, out_c, nqe), er = rel_l2_d(out_p, ref, nqe);
        EXPECT(ep <= TOL_PAGED, "attention_paged %s B=%lld: rel L2 %.3g vs attention", what, (long long)B, ep);
        EXPECT(!memcmp(out_p, out_c, sizeof(float) * (size_t)nqe), "attention_paged %s B=%lld: not bitwise attention's",
               what, (long long)B);
        EXPECT(er <= TOL_REF, "attention_paged %s B=%lld: rel L2 %.3g vs the double reference", what, (long long)B, er);
        free(perm);
        free(kp);
        free(vp);
    }
    free(q);
    free(k);
    free(v);
    free(pos);
    free(out_c);
    free(out_p);
    free(ref);
    free(sc);
}

static void test_attention(void)
{
    const loom_ops *ops = loom_ops_cpu();
    EXPECT(ops->attention_paged != NULL, "the cpu op table has attention_paged");
    if (!ops->attention_paged) return;
    static const int64_t dims[] = {64, 128, 40}, ratios[] = {1, 4, 8}, lens[] = {1, 17, 2049}, nqs[] = {1, 37},
                         windows[] = {0, 13};
#define N(a) (sizeof(a) / sizeof((a)[0]))
    for (size_t a = 0; a < N(dims); a++)
        for (size_t b = 0; b < N(ratios); b++)
            for (size_t c = 0; c < N(lens); c++)
                for (size_t d = 0; d < N(nqs); d++)
                    for (size_t w = 0; w < N(windows); w++)
                        attention_case(ops, dims[a], ratios[b], lens[c], nqs[d], windows[w]);
#undef N
}

/* --- forward ------------------------------------------------------------- */

typedef struct fx {
    loom_model *m;
    int64_t V, n_layers, n_kv, hd;
} fx;

static int fx_load(fx *f, const char *dir, int64_t max_tokens, int64_t max_seqs)
{
    loom_err err = {{0}};
    f->m = loom_model_load(dir, loom_ops_cpu(), NULL, NULL, max_tokens, max_seqs, &err);
    if (!f->m) {
        fprintf(stderr, "FAIL %s: load: %s\n", dir, err.msg);
        return 0;
    }
    f->V = f->m->cfg.vocab_size;
    f->n_layers = f->m->shard.layer_end - f->m->shard.layer_begin;
    f->n_kv = f->m->n_kv_local;
    f->hd = f->m->cfg.head_dim;
    return 1;
}

static int64_t argmax(const float *x, int64_t n)
{
    int64_t best = 0;
    for (int64_t i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

/* Every float of the pool outside the listed rows is still NaN: the forward
 * pass wrote nowhere but the positions it was given. used[b] counts the
 * filled slots of block b (a prefix of the block). */
static void expect_untouched(const loom_kv_pool *p, const int64_t *used, const char *what)
{
    const int64_t row = loom_kv_pool_row(p), B = p->tokens_per_block;
    int64_t bad = 0;
    for (int64_t l = 0; l < p->n_layers; l++)
        for (int64_t b = 0; b < p->n_blocks; b++)
            for (int64_t s = used[b]; s < B; s++)
                for (int64_t i = 0; i < row; i++) {
                    bad += !isnan(loom_kv_pool_k(p, l)[(b * B + s) * row + i]);
                    bad += !isnan(loom_kv_pool_v(p, l)[(b * B + s) * row + i]);
                }
    EXPECT(bad == 0, "%s: %lld pool floats outside the sequences' rows were written", what, (long long)bad);
}

/* One sequence: prompt in chunks of the model's max_tokens, then decode
 * steps; the view is rebound before every step with a table that grows just
 * enough for the step, as the serving worker does. */
static void forward_one(const char *dir, int64_t max_tokens)
{
    fx f;
    if (!fx_load(&f, dir, max_tokens, 1)) {
        failures++;
        return;
    }
    loom_model *m = f.m;
    enum { B = 8, N_PROMPT = 29, N_DECODE = 6, N_BLOCKS = 16 };
    const int64_t n_total = N_PROMPT + N_DECODE;
    loom_err err = {{0}};
    loom_kv_cache *ref = loom_model_kv_create(m, n_total, &err);
    loom_kv_pool *pool = loom_kv_pool_create(f.n_layers, N_BLOCKS, B, f.n_kv, f.hd, &err);
    EXPECT(ref && pool, "%s: create: %s", dir, err.msg);
    if (!ref || !pool) return;
    fill_nan(pool->data, loom_kv_pool_bytes(f.n_layers, N_BLOCKS, B, f.n_kv, f.hd) / (int64_t)sizeof(float));
    int32_t table[N_BLOCKS];
    shuffle(table, N_BLOCKS);
    int32_t tokens[N_PROMPT + N_DECODE];
    for (int64_t i = 0; i < N_PROMPT; i++) tokens[i] = (int32_t)(rand_u32() % (uint64_t)f.V);
    float *want = xmalloc(sizeof(float) * (size_t)f.V);
    loom_kv_cache view = {0};

    for (int64_t t = 0; t < n_total;) {
        const int64_t n = t < N_PROMPT ? (N_PROMPT - t < max_tokens ? N_PROMPT - t : max_tokens) : 1;
        loom_status s1 = loom_model_forward(m, ref, tokens + t, n, &err);
        memcpy(want, m->rs.logits, sizeof(float) * (size_t)f.V);
        loom_kv_cache_bind(&view, pool, table, (t + n + B - 1) / B, t);
        loom_status s2 = loom_model_forward(m, &view, tokens + t, n, &err);
        EXPECT(s1 == LOOM_OK && s2 == LOOM_OK, "%s: forward at %lld: %s", dir, (long long)t, err.msg);
        if (s1 != LOOM_OK || s2 != LOOM_OK) break;
        EXPECT(view.len == t + n, "%s: view len %lld after the step, want %lld", dir, (long long)view.len, (long long)(t + n));
        double e = rel_l2_f(m->rs.logits, want, f.V);
        EXPECT(e <= TOL_PAGED && !memcmp(m->rs.logits, want, sizeof(float) * (size_t)f.V),
               "%s chunk %lld: logits after %lld positions: rel L2 %.3g paged vs standalone (want bitwise equal)", dir,
               (long long)max_tokens, (long long)(t + n), e);
        t += n;
        if (t >= N_PROMPT && t < n_total) tokens[t] = (int32_t)argmax(want, f.V);
    }
    int64_t used[N_BLOCKS] = {0};
    for (int64_t p = 0; p < n_total; p++) used[table[p / B]]++;
    expect_untouched(pool, used, dir);
    printf("%s chunk %lld: one sequence on a paged cache ok\n", dir, (long long)max_tokens);
    free(want);
    loom_kv_pool_destroy(pool);
    loom_kv_cache_destroy(ref);
    loom_model_destroy(m);
}

/* Three sequences of different lengths in one batch over one pool, blocks
 * interleaved, then decode steps as batches of three; each against the same
 * sequence alone on a standalone cache. */
static void forward_batch(const char *dir)
{
    enum { S = 3, B = 8, N_BLOCKS = 20, N_DECODE = 4, MAXP = 29 };
    static const int64_t n_prompt[S] = {29, 13, 21};
    const int64_t T = 29 + 13 + 21;
    fx f;
    if (!fx_load(&f, dir, T, S)) {
        failures++;
        return;
    }
    loom_model *m = f.m;
    loom_err err = {{0}};
    loom_kv_pool *pool = loom_kv_pool_create(f.n_layers, N_BLOCKS, B, f.n_kv, f.hd, &err);
    EXPECT(pool, "%s: pool: %s", dir, err.msg);
    if (!pool) return;
    fill_nan(pool->data, loom_kv_pool_bytes(f.n_layers, N_BLOCKS, B, f.n_kv, f.hd) / (int64_t)sizeof(float));
    int32_t perm[N_BLOCKS], tables[S][N_BLOCKS];
    int64_t n_table[S];
    shuffle(perm, N_BLOCKS);
    for (int s = 0; s < S; s++) n_table[s] = (n_prompt[s] + N_DECODE + B - 1) / B;
    for (int64_t i = 0, next = 0, s = 0; next < n_table[0] + n_table[1] + n_table[2]; i++, s = (s + 1) % S)
        if (i / S < n_table[s]) tables[s][i / S] = perm[next++]; /* round robin: the sequences' blocks interleave */

    int32_t tokens[S][MAXP + N_DECODE];
    for (int s = 0; s < S; s++)
        for (int64_t i = 0; i < n_prompt[s]; i++) tokens[s][i] = (int32_t)(rand_u32() % (uint64_t)f.V);
    loom_kv_cache *ref[S];
    loom_kv_cache views[S] = {{0}};
    loom_kv_cache *vp[S];
    float *want = xmalloc(sizeof(float) * (size_t)(S * f.V));
    int32_t *flat = xmalloc(sizeof(int32_t) * (size_t)T);
    for (int s = 0; s < S; s++) {
        ref[s] = loom_model_kv_create(m, n_prompt[s] + N_DECODE, &err);
        EXPECT(ref[s], "%s: cache: %s", dir, err.msg);
        if (!ref[s]) return;
        loom_kv_cache_bind(&views[s], pool, tables[s], n_table[s], 0);
        vp[s] = &views[s];
    }
    for (int64_t step = 0; step <= N_DECODE; step++) {
        int64_t starts[S + 1] = {0};
        for (int s = 0; s < S; s++) {
            const int64_t t0 = step == 0 ? 0 : n_prompt[s] + step - 1, n = step == 0 ? n_prompt[s] : 1;
            loom_status st = loom_model_forward(m, ref[s], tokens[s] + t0, n, &err);
            EXPECT(st == LOOM_OK, "%s: reference forward: %s", dir, err.msg);
            memcpy(want + s * f.V, m->rs.logits, sizeof(float) * (size_t)f.V);
            memcpy(flat + starts[s], tokens[s] + t0, sizeof(int32_t) * (size_t)n);
            starts[s + 1] = starts[s] + n;
        }
        loom_batch b = {.n_seqs = S, .seq_start = starts, .tokens = flat, .kv = vp};
        loom_status st = loom_model_forward_batch(m, &b, &err);
        EXPECT(st == LOOM_OK, "%s: batch forward: %s", dir, err.msg);
        if (st != LOOM_OK) break;
        for (int s = 0; s < S; s++) {
            double e = rel_l2_f(m->rs.logits + s * f.V, want + s * f.V, f.V);
            EXPECT(e <= TOL_PAGED && !memcmp(m->rs.logits + s * f.V, want + s * f.V, sizeof(float) * (size_t)f.V),
                   "%s: batch step %lld sequence %d: rel L2 %.3g paged vs standalone (want bitwise equal)", dir,
                   (long long)step, s, e);
            if (step < N_DECODE) tokens[s][n_prompt[s] + step] = (int32_t)argmax(want + s * f.V, f.V);
            /* Rebind as the serving worker does every step; len carries over. */
            loom_kv_cache_bind(&views[s], pool, tables[s], n_table[s], views[s].len);
        }
    }
    int64_t used[N_BLOCKS] = {0};
    for (int s = 0; s < S; s++)
        for (int64_t p = 0; p < n_prompt[s] + N_DECODE; p++) used[tables[s][p / B]]++;
    expect_untouched(pool, used, dir);
    printf("%s: batch of 3 sharing a pool ok\n", dir);
    for (int s = 0; s < S; s++) loom_kv_cache_destroy(ref[s]);
    free(want);
    free(flat);
    loom_kv_pool_destroy(pool);
    loom_model_destroy(m);
}

/* A view whose table is too short for the step is refused, not overrun. */
static void forward_too_long(const char *dir)
{
    fx f;
    if (!fx_load(&f, dir, 8, 1)) {
        failures++;
        return;
    }
    loom_err err = {{0}};
    loom_kv_pool *pool = loom_kv_pool_create(f.n_layers, 4, 8, f.n_kv, f.hd, &err);
    if (!pool) {
        failures++;
        return;
    }
    const int32_t table[1] = {2};
    loom_kv_cache view = {0};
    loom_kv_cache_bind(&view, pool, table, 1, 6);
    const int32_t tokens[3] = {1, 2, 3};
    loom_status st = loom_model_forward(f.m, &view, tokens, 3, &err);
    EXPECT(st == LOOM_EINVAL && strstr(err.msg, "does not fit its KV cache"),
           "%s: 6 + 3 positions on an 8-position view: got %s \"%s\"", dir, loom_status_str(st), err.msg);
    EXPECT(view.len == 6, "%s: a refused step leaves len alone (%lld)", dir, (long long)view.len);
    loom_kv_pool_destroy(pool);
    loom_model_destroy(f.m);
}

/* --- edges --------------------------------------------------------------- */

static void test_edges(void)
{
    loom_err err = {{0}};
    EXPECT(loom_kv_pool_bytes(3, 5, 16, 2, 40) == 3LL * 2 * 5 * 16 * 2 * 40 * 4, "pool bytes");
    EXPECT(loom_kv_cache_bytes(3, 100, 2, 40) == 3LL * 2 * 100 * 2 * 40 * 4, "cache bytes");
    EXPECT(loom_kv_pool_bytes(3, 0, 16, 2, 40) == -1, "zero blocks -> -1");
    EXPECT(loom_kv_pool_bytes(1LL << 20, 1LL << 20, 1LL << 20, 8, 128) == -1, "overflow -> -1");

    loom_kv_pool *p = loom_kv_pool_create(2, 0, 16, 2, 8, &err);
    EXPECT(!p && strstr(err.msg, "KV pool"), "a pool of 0 blocks is refused: \"%s\"", err.msg);
    loom_kv_pool_destroy(p);
    err.msg[0] = 0;
    p = loom_kv_pool_create(1LL << 20, 1LL << 20, 1LL << 20, 8, 128, &err);
    EXPECT(!p && strstr(err.msg, "too large"), "an overflowing pool is refused: \"%s\"", err.msg);
    err.msg[0] = 0;
    loom_kv_cache *kv = loom_kv_cache_create(2, 0, 2, 8, &err);
    EXPECT(!kv && strstr(err.msg, "0 positions"), "a cache of 0 positions is refused: \"%s\"", err.msg);
    loom_kv_cache_destroy(NULL);
    loom_kv_pool_destroy(NULL);

    /* A standalone cache is one block of max_seq (not a power of two):
     * position p of layer l sits where the old contiguous layout put it. */
    kv = loom_kv_cache_create(3, 37, 2, 8, &err);
    EXPECT(kv, "standalone cache: %s", err.msg);
    if (!kv) return;
    EXPECT(kv->max_seq == 37 && kv->len == 0 && kv->n_table == 1 && kv->pool == kv->own_pool &&
               kv->pool->tokens_per_block == 37 && kv->pool->n_blocks == 1,
           "standalone cache shape");
    for (int64_t l = 0; l < 3; l++)
        for (int64_t pos = 0; pos < 37; pos += 12) {
            EXPECT(loom_kv_k_row(kv, l, pos) == kv->pool->data + ((l * 2 + 0) * 37 + pos) * 16, "K row %lld/%lld", (long long)l, (long long)pos);
            EXPECT(loom_kv_v_row(kv, l, pos) == kv->pool->data + ((l * 2 + 1) * 37 + pos) * 16, "V row %lld/%lld", (long long)l, (long long)pos);
        }
    loom_kv_cache_destroy(kv);

    /* A view: rows follow the table, max_seq is n_table * B. */
    p = loom_kv_pool_create(2, 6, 4, 3, 5, &err);
    EXPECT(p, "pool: %s", err.msg);
    if (!p) return;
    const int32_t table[3] = {4, 0, 5};
    loom_kv_cache view = {0};
    loom_kv_cache_bind(&view, p, table, 3, 7);
    EXPECT(view.max_seq == 12 && view.len == 7 && view.n_layers == 2 && view.n_kv_heads == 3 && view.head_dim == 5 &&
               !view.own_pool,
           "bound view shape");
    const int64_t row = 15, layer_floats = 6 * 4 * row;
    EXPECT(loom_kv_k_row(&view, 1, 9) == p->data + (1 * 2 + 0) * layer_floats + (5 * 4 + 1) * row, "view K row");
    EXPECT(loom_kv_v_row(&view, 0, 3) == p->data + (0 * 2 + 1) * layer_floats + (4 * 4 + 3) * row, "view V row");
    loom_kv_cache_bind(&view, p, table + 1, 1, 0); /* rebinding replaces everything */
    EXPECT(view.max_seq == 4 && view.len == 0 && loom_kv_k_row(&view, 0, 2) == p->data + 2 * row, "rebound view");
    loom_kv_pool_destroy(p);
}

int main(int argc, char **argv)
{
    if (argc == 2 && !strcmp(argv[1], "attention")) {
        test_attention();
    } else if (argc == 2 && !strcmp(argv[1], "edges")) {
        test_edges();
    } else if (argc == 3 && !strcmp(argv[1], "forward")) {
        forward_one(argv[2], 64);
        forward_one(argv[2], 5);
        forward_batch(argv[2]);
        forward_too_long(argv[2]);
    } else {
        fprintf(stderr, "usage: test_kv_paged attention | edges | forward FIXTURE_DIR\n");
        return 2;
    }
    printf("%d checks, %d failures\n", checks, failures);
    return failures ? 1 : 0;
}
