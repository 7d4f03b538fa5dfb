/* Unit tests of the CPU op table against naive, obviously-correct references
 * written here in double precision (triple-loop matmul, softmax over an
 * explicit mask matrix, ...), on random inputs with awkward sizes, weights in
 * every dtype at misaligned addresses, and NaN-poisoned outputs.
 * Usage: test_ops_cpu [op ...]   (no args: every op) */
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../kernels/cpu/matmul.h" /* loom_cpu_matmul_allow_simd */
#include "../../kernels/ops.h"

#define TOL 1e-5

static const loom_ops *ops;
static int failures;

/* --- helpers ------------------------------------------------------------- */

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static uint32_t rnd_u32(void)
{
    rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
    return (uint32_t)(rng >> 32);
}
static float rnd(void) { return (float)rnd_u32() / 4294967296.0f * 2.0f - 1.0f; } /* [-1, 1) */

static void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p) { fprintf(stderr, "out of memory\n"); exit(1); }
    return p;
}

static float *rand_floats(int64_t n, float scale)
{
    float *p = xmalloc(sizeof(float) * (size_t)n);
    for (int64_t i = 0; i < n; i++) p[i] = rnd() * scale;
    return p;
}

static float *poisoned(int64_t n)
{
    float *p = xmalloc(sizeof(float) * (size_t)n);
    for (int64_t i = 0; i < n; i++) p[i] = NAN;
    return p;
}

/* Weights of dtype dt stored `offset` bytes past a malloc'd address, and the
 * exact fp32 values they hold (what the reference computes with). */
typedef struct weights {
    unsigned char *alloc;
    void *data;   /* alloc + offset */
    float *exact; /* (count) */
} weights;

static weights make_weights(loom_dtype dt, int64_t count, int offset, float scale)
{
    weights w;
    size_t esz = loom_dtype_size(dt);
    w.alloc = xmalloc(esz * (size_t)count + (size_t)offset);
    w.data = w.alloc + offset;
    w.exact = xmalloc(sizeof(float) * (size_t)count);
    for (int64_t i = 0; i < count; i++) {
        float f = rnd() * scale;
        unsigned char *dst = (unsigned char *)w.data + esz * (size_t)i;
        if (dt == LOOM_F32) {
            memcpy(dst, &f, 4);
            w.exact[i] = f;
        } else {
            uint16_t h = dt == LOOM_F16 ? loom_f32_to_f16(f) : loom_f32_to_bf16(f);
            memcpy(dst, &h, 2);
            w.exact[i] = dt == LOOM_F16 ? loom_f16_to_f32(h) : loom_bf16_to_f32(h);
        }
    }
    return w;
}

static void free_weights(weights *w) { free(w->alloc); free(w->exact); }

/* ||out - ref|| / ||ref||; NaN if any out is NaN (an unwritten element). */
static double rel_l2(const float *out, const double *ref, int64_t n)
{
    double num = 0, den = 0;
    for (int64_t i = 0; i < n; i++) {
        double d = (double)out[i] - ref[i];
        num += d * d;
        den += ref[i] * ref[i];
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

static void check(const char *what, double err, double tol)
{
    int ok = err <= tol; /* false for NaN */
    if (!ok) failures++;
    printf("%s %-64s rel_l2 %.3e (tol %.0e)\n", ok ? "ok  " : "FAIL", what, err, tol);
}

static const loom_dtype all_dt[] = {LOOM_F32, LOOM_F16, LOOM_BF16};

/* --- matmul -------------------------------------------------------------- */

static void ref_matmul(double *y, const float *x, const float *w, const float *b,
                       int64_t n, int64_t k, int64_t m)
{
    for (int64_t i = 0; i < n; i++)
        for (int64_t o = 0; o < m; o++) {
            double s = b ? b[o] : 0.0;
            for (int64_t j = 0; j < k; j++) s += (double)x[i * k + j] * w[o * k + j];
            y[i * m + o] = s;
        }
}

static int simd = 1; /* matmul micro-kernel in use: 1 AVX2 (if the CPU has it), 0 portable C */

static void one_matmul(loom_dtype dt, int offset, int bias, int64_t n, int64_t k, int64_t m)
{
    weights w = make_weights(dt, m * k, offset, 0.5f);
    weights b = make_weights(dt, m, offset, 1.0f);
    float *x = rand_floats(n * k, 1.0f), *y = poisoned(n * m);
    double *ref = xmalloc(sizeof(double) * (size_t)(n * m));
    ops->matmul(y, x, w.data, dt, bias ? b.data : NULL, n, k, m);
    ref_matmul(ref, x, w.exact, bias ? b.exact : NULL, n, k, m);
    char what[128];
    snprintf(what, sizeof what, "matmul%s %s+%d%s n=%lld k=%lld m=%lld", simd ? "" : "[C]",
             loom_dtype_name(dt), offset, bias ? " bias" : "", (long long)n, (long long)k, (long long)m);
    check(what, rel_l2(y, ref, n * m), TOL);
    free_weights(&w); free_weights(&b); free(x); free(y); free(ref);
}

static void test_matmul(void)
{
    /* (n, in_dim, out_dim): odd sizes, K crossing the 512-column tile, rows
     * not a multiple of the 16-row block, tokens crossing the 64-token task */
    static const int64_t shapes[][3] = {
        {1, 1, 1}, {1, 7, 67}, {7, 67, 173}, {2, 173, 7}, {3, 1100, 35},
        {67, 173, 67}, {130, 1100, 173}, {1, 4099, 33}, {5, 0, 9},
    };
    for (simd = 1; simd >= 0; simd--) {
        loom_cpu_matmul_allow_simd(simd);
        for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
            for (int d = 0; d < 3; d++)
                for (int off = 0; off <= 2; off++)
                    one_matmul(all_dt[d], off, (int)((s + off) % 2), shapes[s][0], shapes[s][1], shapes[s][2]);
    }
    simd = 1;
    loom_cpu_matmul_allow_simd(1);
}

/* Neither the thread count nor the other tokens in the batch may change a
 * result: each element is summed in the same order (checked to 1e-6; the
 * kernel in fact gives identical bits). */
static void test_matmul_threads(void)
{
    const int64_t n = 130, k = 1100, m = 173;
    const int saved = omp_get_max_threads();
    for (simd = 1; simd >= 0; simd--) {
        loom_cpu_matmul_allow_simd(simd);
        for (int d = 0; d < 3; d++) {
            weights w = make_weights(all_dt[d], m * k, 2, 0.5f);
            float *x = rand_floats(n * k, 1.0f);
            float *y1 = poisoned(n * m);
            omp_set_num_threads(1);
            ops->matmul(y1, x, w.data, all_dt[d], NULL, n, k, m);
            double *r1 = xmalloc(sizeof(double) * (size_t)(n * m));
            for (int64_t i = 0; i < n * m; i++) r1[i] = y1[i];
            char what[128];
            for (int t = 2; t <= 5; t++) {
                float *yt = poisoned(n * m);
                omp_set_num_threads(t);
                ops->matmul(yt, x, w.data, all_dt[d], NULL, n, k, m);
                snprintf(what, sizeof what, "matmul%s %s threads 1 vs %d", simd ? "" : "[C]",
                         loom_dtype_name(all_dt[d]), t);
                check(what, rel_l2(yt, r1, n * m), 1e-6);
                free(yt);
            }
            omp_set_num_threads(saved);
            /* the same tokens one at a time (decode) and in a batch of 7 */
            float *yb = poisoned(n * m);
            for (int64_t i = 0; i < n; i++) ops->matmul(yb + i * m, x + i * k, w.data, all_dt[d], NULL, 1, k, m);
            snprintf(what, sizeof what, "matmul%s %s batch %lld vs one token at a time", simd ? "" : "[C]",
                     loom_dtype_name(all_dt[d]), (long long)n);
            check(what, rel_l2(yb, r1, n * m), 1e-6);
            for (int64_t i = 0; i < n * m; i++) yb[i] = NAN;
            for (int64_t i = 0; i < n; i += 7)
                ops->matmul(yb + i * m, x + i * k, w.data, all_dt[d], NULL, n - i < 7 ? n - i : 7, k, m);
            snprintf(what, sizeof what, "matmul%s %s batch %lld vs batches of 7", simd ? "" : "[C]",
                     loom_dtype_name(all_dt[d]), (long long)n);
            check(what, rel_l2(yb, r1, n * m), 1e-6);
            free(yb);
            free_weights(&w); free(x); free(y1); free(r1);
        }
    }
    simd = 1;
    loom_cpu_matmul_allow_simd(1);
}

/* --- embedding ----------------------------------------------------------- */

static void test_embedding(void)
{
    const int64_t vocab = 173;
    const int64_t dims[] = {1, 7, 67};
    const int64_t ns[] = {1, 17, 300};
    for (int d = 0; d < 3; d++)
        for (int off = 0; off <= 2; off++)
            for (int di = 0; di < 3; di++) {
                int64_t dim = dims[di], n = ns[di];
                weights t = make_weights(all_dt[d], vocab * dim, off, 1.0f);
                int32_t *ids = xmalloc(sizeof(int32_t) * (size_t)n);
                for (int64_t i = 0; i < n; i++) ids[i] = (int32_t)(rnd_u32() % vocab);
                ids[0] = (int32_t)vocab - 1;
                float *out = poisoned(n * dim);
                double *ref = xmalloc(sizeof(double) * (size_t)(n * dim));
                ops->embedding(out, t.data, all_dt[d], ids, n, dim);
                for (int64_t i = 0; i < n; i++)
                    for (int64_t j = 0; j < dim; j++) ref[i * dim + j] = t.exact[ids[i] * dim + j];
                char what[128];
                snprintf(what, sizeof what, "embedding %s+%d n=%lld dim=%lld", loom_dtype_name(all_dt[d]),
                         off, (long long)n, (long long)dim);
                check(what, rel_l2(out, ref, n * dim), 0.0); /* a copy: exact */
                free_weights(&t); free(ids); free(out); free(ref);
            }
}

/* --- rmsnorm ------------------------------------------------------------- */

static void test_rmsnorm(void)
{
    static const int64_t shapes[][2] = {{1, 1}, {1, 7}, {7, 67}, {67, 173}, {3, 4099}, {33, 4096}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
        for (int d = 0; d < 3; d++)
            for (int off = 0; off <= 2; off++)
                for (int alias = 0; alias <= 1; alias++) {
                    int64_t n = shapes[s][0], dim = shapes[s][1];
                    float eps = alias ? 1e-6f : 1e-5f;
                    weights w = make_weights(all_dt[d], dim, off, 1.5f);
                    float *x = rand_floats(n * dim, 3.0f);
                    double *ref = xmalloc(sizeof(double) * (size_t)(n * dim));
                    for (int64_t i = 0; i < n; i++) {
                        double ss = 0;
                        for (int64_t j = 0; j < dim; j++) ss += (double)x[i * dim + j] * x[i * dim + j];
                        double r = 1.0 / sqrt(ss / dim + eps);
                        for (int64_t j = 0; j < dim; j++) ref[i * dim + j] = w.exact[j] * (x[i * dim + j] * r);
                    }
                    float *out = alias ? x : poisoned(n * dim);
                    ops->rmsnorm(out, x, w.data, all_dt[d], n, dim, eps);
                    char what[128];
                    snprintf(what, sizeof what, "rmsnorm %s+%d n=%lld dim=%lld%s", loom_dtype_name(all_dt[d]),
                             off, (long long)n, (long long)dim, alias ? " in place" : "");
                    check(what, rel_l2(out, ref, n * dim), TOL);
                    if (!alias) free(out);
                    free_weights(&w); free(x); free(ref);
                }
}

/* --- rope ---------------------------------------------------------------- */

static void test_rope(void)
{
    static const int64_t shapes[][3] = {{1, 1, 2}, {7, 3, 64}, {17, 7, 66}, {5, 32, 128}, {2, 5, 256}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        int64_t n = shapes[s][0], nh = shapes[s][1], hd = shapes[s][2], half = hd / 2;
        float *inv = xmalloc(sizeof(float) * (size_t)half);
        for (int64_t d = 0; d < half; d++) inv[d] = (float)(1.0 / pow(500000.0, 2.0 * d / hd));
        int32_t *pos = xmalloc(sizeof(int32_t) * (size_t)n);
        for (int64_t i = 0; i < n; i++) pos[i] = i == 0 ? 0 : (int32_t)(rnd_u32() % 131072);
        float *x = rand_floats(n * nh * hd, 2.0f);
        double *ref = xmalloc(sizeof(double) * (size_t)(n * nh * hd));
        for (int64_t i = 0; i < n; i++)
            for (int64_t h = 0; h < nh; h++)
                for (int64_t d = 0; d < hd; d++) {
                    const float *xh = x + (i * nh + h) * hd;
                    float f = (float)pos[i] * inv[d % half]; /* fp32 angle, as HF */
                    double c = cos((double)f), sn = sin((double)f);
                    double rot = d < half ? -(double)xh[d + half] : (double)xh[d - half];
                    ref[(i * nh + h) * hd + d] = xh[d] * c + rot * sn;
                }
        ops->rope(x, pos, n, nh, hd, inv);
        char what[128];
        snprintf(what, sizeof what, "rope n=%lld heads=%lld head_dim=%lld", (long long)n, (long long)nh,
                 (long long)hd);
        check(what, rel_l2(x, ref, n * nh * hd), TOL);
        free(inv); free(pos); free(x); free(ref);
    }
}

/* --- attention ----------------------------------------------------------- */

typedef struct att_case {
    int64_t n_q, kv_len, n_heads, n_kv_heads, head_dim, window, stride_pad, q_pos0;
    float scale_mul; /* scale = scale_mul / sqrt(head_dim) */
} att_case;

/* Naive: explicit mask matrix, full softmax in double. */
static void ref_attention(double *out, const float *q, const float *k, const float *v,
                          const int32_t *q_pos, const att_case *c, int64_t kv_stride, double scale)
{
    const int64_t nq = c->n_q, L = c->kv_len, H = c->n_heads, D = c->head_dim;
    unsigned char *mask = xmalloc((size_t)(nq * L));
    double *sc = xmalloc(sizeof(double) * (size_t)L);
    for (int64_t i = 0; i < nq; i++)
        for (int64_t j = 0; j < L; j++)
            mask[i * L + j] = j <= q_pos[i] && (c->window <= 0 || j > q_pos[i] - c->window);
    for (int64_t i = 0; i < nq; i++)
        for (int64_t h = 0; h < H; h++) {
            int64_t g = h / (H / c->n_kv_heads);
            const float *qh = q + (i * H + h) * D;
            double mx = -INFINITY, sum = 0;
            for (int64_t j = 0; j < L; j++) {
                if (!mask[i * L + j]) continue;
                double s = 0;
                for (int64_t d = 0; d < D; d++) s += (double)qh[d] * k[j * kv_stride + g * D + d];
                sc[j] = s * scale;
                if (sc[j] > mx) mx = sc[j];
            }
            for (int64_t j = 0; j < L; j++)
                if (mask[i * L + j]) { sc[j] = exp(sc[j] - mx); sum += sc[j]; }
            for (int64_t d = 0; d < D; d++) {
                double o = 0;
                for (int64_t j = 0; j < L; j++)
                    if (mask[i * L + j]) o += sc[j] * v[j * kv_stride + g * D + d];
                out[(i * H + h) * D + d] = o / sum;
            }
        }
    free(mask); free(sc);
}

static void one_attention(const att_case *c)
{
    const int64_t kv_stride = c->n_kv_heads * c->head_dim + c->stride_pad;
    const int64_t nqe = c->n_q * c->n_heads * c->head_dim;
    float *q = rand_floats(nqe, 1.0f);
    float *k = rand_floats(c->kv_len * kv_stride, 1.0f);
    float *v = rand_floats(c->kv_len * kv_stride, 1.0f);
    int32_t *pos = xmalloc(sizeof(int32_t) * (size_t)c->n_q);
    for (int64_t i = 0; i < c->n_q; i++) pos[i] = (int32_t)(c->q_pos0 + i);
    const float scale = c->scale_mul / sqrtf((float)c->head_dim);
    float *out = poisoned(nqe);
    double *ref = xmalloc(sizeof(double) * (size_t)nqe);
    ops->attention(out, q, k, v, pos, c->n_q, c->kv_len, kv_stride, c->n_heads, c->n_kv_heads,
                   c->head_dim, c->window, scale);
    ref_attention(ref, q, k, v, pos, c, kv_stride, scale);
    char what[160];
    snprintf(what, sizeof what, "attention q=%lld@%lld kv=%lld h=%lld/%lld d=%lld win=%lld pad=%lld x%g",
             (long long)c->n_q, (long long)c->q_pos0, (long long)c->kv_len, (long long)c->n_heads,
             (long long)c->n_kv_heads, (long long)c->head_dim, (long long)c->window,
             (long long)c->stride_pad, c->scale_mul);
    check(what, rel_l2(out, ref, nqe), TOL);
    free(q); free(k); free(v); free(pos); free(out); free(ref);
}

static void test_attention(void)
{
    static const att_case cases[] = {
        /* n_q kv_len heads kv d win pad pos0 scale: prefill, GQA 1/4/8, MQA */
        {1, 1, 1, 1, 7, 0, 0, 0, 1},
        {2, 2, 4, 4, 64, 0, 0, 0, 1},
        {17, 17, 8, 2, 67, 0, 0, 0, 1},
        {17, 17, 16, 2, 64, 5, 3, 0, 1},
        {17, 17, 6, 1, 128, 0, 0, 0, 1},
        {17, 17, 12, 1, 32, 16, 5, 0, 1},  /* MQA, group 12 > one task's 8 */
        {2049, 2049, 4, 1, 32, 0, 0, 0, 1},
        {2049, 2049, 8, 2, 16, 700, 7, 0, 1},
        /* decode and chunked prefill against a cache, q_pos not from 0 */
        {1, 2049, 32, 8, 128, 0, 0, 2048, 1},
        {1, 2049, 8, 1, 67, 1000, 11, 2048, 1},
        {1, 100, 4, 4, 256, 0, 0, 57, 1},   /* cache longer than the query sees */
        {17, 100, 8, 1, 64, 0, 9, 83, 1},
        {17, 130, 8, 2, 64, 20, 0, 100, 1},
        {3, 9, 2, 1, 512, 0, 1, 6, 1},      /* largest head_dim */
        /* huge scores: exp overflows without the running max */
        {17, 300, 4, 2, 64, 0, 0, 283, 400},
        {65, 65, 2, 2, 8, 1, 0, 0, 1},      /* window 1: only the diagonal */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) one_attention(&cases[i]);
}

/* --- swiglu, add --------------------------------------------------------- */

static void test_elementwise(void)
{
    const int64_t ns[] = {1, 7, 67, 200003};
    for (int ni = 0; ni < 4; ni++)
        for (int alias = 0; alias <= 1; alias++) {
            int64_t n = ns[ni];
            float *g = rand_floats(n, 8.0f), *u = rand_floats(n, 2.0f);
            double *ref = xmalloc(sizeof(double) * (size_t)n);
            for (int64_t i = 0; i < n; i++) ref[i] = g[i] / (1.0 + exp(-(double)g[i])) * u[i];
            float *out = alias ? g : poisoned(n);
            ops->swiglu(out, g, u, n);
            char what[96];
            snprintf(what, sizeof what, "swiglu n=%lld%s", (long long)n, alias ? " in place" : "");
            check(what, rel_l2(out, ref, n), TOL);
            if (!alias) free(out);
            free(g); free(u); free(ref);
        }
    for (int ni = 0; ni < 4; ni++) {
        int64_t n = ns[ni];
        float *y = rand_floats(n, 1.0f), *x = rand_floats(n, 1.0f);
        double *ref = xmalloc(sizeof(double) * (size_t)n);
        for (int64_t i = 0; i < n; i++) ref[i] = (double)y[i] + x[i];
        ops->add(y, x, n);
        char what[96];
        snprintf(what, sizeof what, "add n=%lld", (long long)n);
        check(what, rel_l2(y, ref, n), TOL);
        free(y); free(x); free(ref);
    }
}

/* ------------------------------------------------------------------------- */

static const struct { const char *name; void (*fn)(void); } tests[] = {
    {"matmul", test_matmul},       {"matmul_threads", test_matmul_threads},
    {"embedding", test_embedding}, {"rmsnorm", test_rmsnorm},
    {"rope", test_rope},           {"attention", test_attention},
    {"elementwise", test_elementwise},
};

int main(int argc, char **argv)
{
    ops = loom_ops_cpu();
    if (!ops || strcmp(ops->name, "cpu") != 0) {
        fprintf(stderr, "loom_ops_cpu() returned no cpu table\n");
        return 1;
    }
    const size_t nt = sizeof tests / sizeof tests[0];
    for (size_t i = 0; i < nt; i++) {
        int run = argc == 1;
        for (int a = 1; a < argc; a++) run |= !strcmp(argv[a], tests[i].name);
        if (run) tests[i].fn();
    }
    for (int a = 1; a < argc; a++) {
        int known = 0;
        for (size_t i = 0; i < nt; i++) known |= !strcmp(argv[a], tests[i].name);
        if (!known) { fprintf(stderr, "unknown test '%s'\n", argv[a]); return 1; }
    }
    printf("%d failure(s)\n", failures);
    return failures ? 1 : 0;
}
