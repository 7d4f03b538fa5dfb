/* loom_cuda_gemm_run (cuBLASLt) vs loom_ops_cpu()->matmul (suite "ops", GPU
 * machine): fp16 and bf16, with and without bias, token counts 1..2049 and
 * in/out widths from 64 to 11008 including odd ones, NaN-poisoned outputs, a
 * misaligned case and bad arguments. Then a timing table: TFLOP/s at decode and
 * prefill shapes, and for n = 1 the weight bytes per second beside the
 * device-to-device copy bandwidth (the decode floor).
 * Exits 77 (meson "skipped") when no CUDA device is present. */
#include <cublasLt.h>
#include <cuda_runtime_api.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../kernels/cuda/ops_cuda.h"
#include "../../kernels/ops.h"
#include "cuda_test.h"

static int failures;

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static float rnd(void)
{
    rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
    return (float)(uint32_t)(rng >> 32) / 4294967296.0f * 2.0f - 1.0f;
}

static uint16_t round_to(loom_dtype dt, float f)
{
    return dt == LOOM_F16 ? loom_f32_to_f16(f) : loom_f32_to_bf16(f);
}

static float widen(loom_dtype dt, uint16_t h)
{
    return dt == LOOM_F16 ? loom_f16_to_f32(h) : loom_bf16_to_f32(h);
}

/* Describes a gemm_run return code (0, cudaError_t > 0, -cublasStatus_t < 0). */
static const char *rc_str(int rc)
{
    if (rc < 0) return cublasLtGetStatusString((cublasStatus_t)-rc);
    return cudaGetErrorString((cudaError_t)rc);
}

/* One weight matrix (out, in) in dt on host and device, reused across n. */
typedef struct wmat {
    int64_t in_dim, out_dim;
    uint16_t *h;   /* (out, in) */
    uint16_t *hb;  /* (out) bias */
    float *bf;     /* (out) bias, widened */
    void *d, *db;  /* device copies */
} wmat;

static wmat wmat_make(loom_dtype dt, int64_t in_dim, int64_t out_dim)
{
    wmat m = {in_dim, out_dim, NULL, NULL, NULL, NULL, NULL};
    const size_t cnt = (size_t)in_dim * out_dim;
    m.h = xmalloc(2 * cnt);
    m.hb = xmalloc(2 * out_dim);
    m.bf = xmalloc(sizeof(float) * out_dim);
    const float s = 1.0f / sqrtf((float)in_dim);
    for (size_t i = 0; i < cnt; i++) m.h[i] = round_to(dt, rnd() * s);
    for (int64_t j = 0; j < out_dim; j++) {
        m.hb[j] = round_to(dt, rnd());
        m.bf[j] = widen(dt, m.hb[j]);
    }
    CUDA_CHECK(cudaMalloc(&m.d, 2 * cnt));
    CUDA_CHECK(cudaMalloc(&m.db, 2 * out_dim));
    CUDA_CHECK(cudaMemcpy(m.d, m.h, 2 * cnt, cudaMemcpyHostToDevice));
    CUDA_CHECK(cudaMemcpy(m.db, m.hb, 2 * out_dim, cudaMemcpyHostToDevice));
    return m;
}

static void wmat_free(wmat *m)
{
    free(m->h); free(m->hb); free(m->bf);
    cudaFree(m->d); cudaFree(m->db);
}

static double rel_l2(const uint16_t *y, loom_dtype dt, const float *ref, const float *bias, int64_t n,
                     int64_t out_dim)
{
    double num = 0, den = 0;
    for (int64_t i = 0; i < n; i++)
        for (int64_t j = 0; j < out_dim; j++) {
            double r = (double)ref[i * out_dim + j] + (bias ? bias[j] : 0.0f);
            double d = (double)widen(dt, y[i * out_dim + j]) - r;
            num += d * d;
            den += r * r;
        }
    return sqrt(num / den);
}

/* n tokens through m, with and without bias; `off` elements of misalignment on
 * x and y. Returns -1 when cuBLASLt reports the shape unsupported. */
static int check(loom_cuda_gemm *g, loom_dtype dt, const wmat *m, int64_t n, int off, double tol)
{
    const int64_t in_dim = m->in_dim, out_dim = m->out_dim;
    uint16_t *hx = xmalloc(2 * n * in_dim), *hy = xmalloc(2 * n * out_dim);
    float *xf = xmalloc(sizeof(float) * n * in_dim), *ref = xmalloc(sizeof(float) * n * out_dim);
    for (int64_t i = 0; i < n * in_dim; i++) {
        hx[i] = round_to(dt, rnd());
        xf[i] = widen(dt, hx[i]);
    }
    loom_ops_cpu()->matmul(ref, xf, m->h, dt, NULL, n, in_dim, out_dim);

    unsigned char *bx, *by;
    CUDA_CHECK(cudaMalloc((void **)&bx, 2 * (n * in_dim + off)));
    CUDA_CHECK(cudaMalloc((void **)&by, 2 * (n * out_dim + off)));
    void *dx = bx + 2 * off, *dy = by + 2 * off;
    unsigned char *by32;
    CUDA_CHECK(cudaMalloc((void **)&by32, 4 * (n * out_dim + off)));
    float *dy32 = (float *)(by32 + 4 * off), *hy32 = xmalloc(4 * n * out_dim);
    CUDA_CHECK(cudaMemcpy(dx, hx, 2 * n * in_dim, cudaMemcpyHostToDevice));
    int unsupported = 0;
    for (int b = 0; b < 2; b++) {
        CUDA_CHECK(cudaMemset(dy, 0xff, 2 * n * out_dim)); /* NaN in fp16 and bf16 */
        int rc = loom_cuda_gemm_run(g, dy, dx, m->d, b ? m->db : NULL, dt, n, in_dim, out_dim, NULL);
        if (rc == -(int)CUBLAS_STATUS_NOT_SUPPORTED) {
            printf("note %s n=%lld in=%lld out=%lld%s%s: cuBLASLt has no algorithm (%s)\n",
                   loom_dtype_name(dt), (long long)n, (long long)in_dim, (long long)out_dim,
                   b ? " bias" : "", off ? " misaligned" : "", rc_str(rc));
            unsupported = 1;
            continue;
        }
        if (rc != 0) {
            fprintf(stderr, "loom_cuda_gemm_run: %d (%s)\n", rc, rc_str(rc));
            exit(1);
        }
        CUDA_CHECK(cudaDeviceSynchronize());
        CUDA_CHECK(cudaMemcpy(hy, dy, 2 * n * out_dim, cudaMemcpyDeviceToHost));
        double err = rel_l2(hy, dt, ref, b ? m->bf : NULL, n, out_dim);
        int ok = err <= tol;
        failures += !ok;
        printf("%s gemm %s n=%lld in=%lld out=%lld%s%s rel_l2 %.3e (tol %.0e)\n", ok ? "ok  " : "FAIL",
               loom_dtype_name(dt), (long long)n, (long long)in_dim, (long long)out_dim,
               b ? " bias" : "", off ? " misaligned" : "", err, tol);
        /* loom_cuda_gemm_run_f32 (a TP partial): fp32 out, not rounded, so close to the fp32 reference */
        CUDA_CHECK(cudaMemset(by32, 0xff, 4 * (n * out_dim + off))); /* NaN */
        rc = loom_cuda_gemm_run_f32(g, dy32, dx, m->d, b ? m->db : NULL, dt, n, in_dim, out_dim, NULL);
        CUDA_CHECK(cudaDeviceSynchronize());
        CUDA_CHECK(cudaMemcpy(hy32, dy32, 4 * n * out_dim, cudaMemcpyDeviceToHost));
        double num = 0, den = 0;
        for (int64_t i = 0; i < n; i++)
            for (int64_t j = 0; j < out_dim; j++) {
                const double r = (double)ref[i * out_dim + j] + (b ? m->bf[j] : 0.0f), d = (double)hy32[i * out_dim + j] - r;
                num += d * d;
                den += r * r;
            }
        const double err32 = sqrt(num / den), tol32 = 2e-5;
        ok = rc == 0 && err32 <= tol32; /* (NaN fails) */
        failures += !ok;
        printf("%s gemm_f32 %s n=%lld in=%lld out=%lld%s%s rel_l2 %.3e (tol %.0e)%s\n", ok ? "ok  " : "FAIL", loom_dtype_name(dt),
               (long long)n, (long long)in_dim, (long long)out_dim, b ? " bias" : "", off ? " misaligned" : "", err32, tol32,
               rc ? " CALL FAILED" : "");
        if (rc) printf("     loom_cuda_gemm_run_f32: %d (%s)\n", rc, rc_str(rc));
    }
    cudaFree(bx); cudaFree(by); cudaFree(by32);
    free(hy32);
    free(hx); free(hy); free(xf); free(ref);
    return unsupported ? -1 : 0;
}

static void bad_args(loom_cuda_gemm *g)
{
    void *p;
    CUDA_CHECK(cudaMalloc(&p, 4096));
    struct { const char *what; int rc, want; } cases[] = {
        {"NULL handle", loom_cuda_gemm_run(NULL, p, p, p, NULL, LOOM_F16, 1, 8, 8, NULL), cudaErrorInvalidValue},
        {"NULL y", loom_cuda_gemm_run(g, NULL, p, p, NULL, LOOM_F16, 1, 8, 8, NULL), cudaErrorInvalidValue},
        {"fp32 act", loom_cuda_gemm_run(g, p, p, p, NULL, LOOM_F32, 1, 8, 8, NULL), cudaErrorInvalidValue},
        {"in_dim 0", loom_cuda_gemm_run(g, p, p, p, NULL, LOOM_F16, 1, 0, 8, NULL), cudaErrorInvalidValue},
        {"n < 0", loom_cuda_gemm_run(g, p, p, p, NULL, LOOM_BF16, -1, 8, 8, NULL), cudaErrorInvalidValue},
        {"n = 0 (no-op)", loom_cuda_gemm_run(g, p, p, p, NULL, LOOM_BF16, 0, 8, 8, NULL), 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int ok = cases[i].rc == cases[i].want;
        failures += !ok;
        printf("%s gemm bad argument: %s -> %d (want %d)\n", ok ? "ok  " : "FAIL", cases[i].what,
               cases[i].rc, cases[i].want);
    }
    CUDA_CHECK(cudaDeviceSynchronize());
    cudaFree(p);
}

/* ---- timing ------------------------------------------------------------- */

#define COLD_BYTES ((size_t)512 << 20) /* well past the 50-60 MB L2 of H100/H200 */

static int cmp_f(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

/* Device-to-device cudaMemcpyAsync bandwidth, bytes read + written per second, best of 5. */
static double copy_bandwidth(void)
{
    const size_t bytes = (size_t)1 << 30;
    void *a, *b;
    if (cudaMalloc(&a, bytes) != cudaSuccess) return 0;
    if (cudaMalloc(&b, bytes) != cudaSuccess) { cudaFree(a); return 0; }
    CUDA_CHECK(cudaMemset(a, 0x5a, bytes));
    cudaEvent_t e0, e1;
    CUDA_CHECK(cudaEventCreate(&e0));
    CUDA_CHECK(cudaEventCreate(&e1));
    float best = 1e30f;
    for (int r = 0; r < 6; r++) {
        CUDA_CHECK(cudaEventRecord(e0, NULL));
        CUDA_CHECK(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice, NULL));
        CUDA_CHECK(cudaEventRecord(e1, NULL));
        CUDA_CHECK(cudaEventSynchronize(e1));
        float ms;
        CUDA_CHECK(cudaEventElapsedTime(&ms, e0, e1));
        if (r > 0 && ms < best) best = ms; /* r = 0 warms up */
    }
    cudaEventDestroy(e0); cudaEventDestroy(e1);
    cudaFree(a); cudaFree(b);
    return 2.0 * bytes / (best * 1e-3);
}

/* Median seconds per call of y = x W^T, cycling through enough weight copies
 * (random values, not zeros) to miss L2. */
static double time_gemm(loom_cuda_gemm *g, loom_dtype dt, int64_t n, int64_t in_dim, int64_t out_dim)
{
    const size_t wbytes = 2 * (size_t)in_dim * out_dim;
    int copies = (int)((COLD_BYTES + wbytes - 1) / wbytes);
    if (copies < 2) copies = 2;
    wmat m = wmat_make(dt, in_dim, out_dim);
    unsigned char *w;
    void *x, *y;
    CUDA_CHECK(cudaMalloc((void **)&w, wbytes * copies));
    for (int c = 0; c < copies; c++) CUDA_CHECK(cudaMemcpy(w + c * wbytes, m.d, wbytes, cudaMemcpyDeviceToDevice));
    CUDA_CHECK(cudaMalloc(&x, 2 * n * in_dim));
    CUDA_CHECK(cudaMalloc(&y, 2 * n * out_dim));
    /* x: the first rows of the weights, which are random already. */
    const size_t xbytes = 2 * (size_t)n * in_dim;
    CUDA_CHECK(cudaMemcpy(x, m.d, xbytes < wbytes ? xbytes : wbytes, cudaMemcpyDeviceToDevice));
    cudaEvent_t e0, e1;
    CUDA_CHECK(cudaEventCreate(&e0));
    CUDA_CHECK(cudaEventCreate(&e1));
    for (int c = 0; c < copies; c++) {
        int rc = loom_cuda_gemm_run(g, y, x, w + c * wbytes, NULL, dt, n, in_dim, out_dim, NULL);
        if (rc) { fprintf(stderr, "gemm_run: %s\n", rc_str(rc)); exit(1); }
    }
    enum { BATCHES = 7 };
    const int reps = copies * (n >= 1024 ? 1 : 4);
    float per[BATCHES];
    for (int b = 0; b < BATCHES; b++) {
        CUDA_CHECK(cudaEventRecord(e0, NULL));
        for (int r = 0; r < reps; r++)
            loom_cuda_gemm_run(g, y, x, w + (size_t)(r % copies) * wbytes, NULL, dt, n, in_dim, out_dim, NULL);
        CUDA_CHECK(cudaEventRecord(e1, NULL));
        CUDA_CHECK(cudaEventSynchronize(e1));
        CUDA_CHECK(cudaGetLastError());
        CUDA_CHECK(cudaEventElapsedTime(&per[b], e0, e1));
        per[b] /= reps;
    }
    qsort(per, BATCHES, sizeof per[0], cmp_f);
    cudaEventDestroy(e0); cudaEventDestroy(e1);
    cudaFree(w); cudaFree(x); cudaFree(y);
    wmat_free(&m);
    return per[BATCHES / 2] * 1e-3;
}

int main(void)
{
    if (cuda_test_skip_without_device()) return 77;
    char err[256];
    loom_cuda_gemm *g = loom_cuda_gemm_create((size_t)32 << 20, err, sizeof err);
    if (!g) { fprintf(stderr, "%s\n", err); return 1; }

    bad_args(g);

    const loom_dtype dts[] = {LOOM_F16, LOOM_BF16};
    const double tols[] = {2e-3, 1e-2};
    const int64_t ns[] = {1, 7, 37, 2049};
    /* 67: an odd leading dimension (rows 134 bytes apart); 72: the nearest
     * multiple of 8 (16-byte rows), which the tensor-core kernels prefer. */
    const int64_t dims[] = {64, 67, 72, 4096, 11008};
    const int nd = (int)(sizeof dims / sizeof dims[0]);
    int unsupported = 0;
    for (int d = 0; d < 2; d++)
        for (int i = 0; i < nd; i++)
            for (int o = 0; o < nd; o++) {
                wmat m = wmat_make(dts[d], dims[i], dims[o]);
                for (int k = 0; k < 4; k++) unsupported += check(g, dts[d], &m, ns[k], 0, tols[d]) < 0;
                wmat_free(&m);
            }
    /* x and y one element past a 256-byte boundary: a different cache entry,
     * whose algorithm must accept 2-byte alignment. */
    for (int d = 0; d < 2; d++) {
        wmat m = wmat_make(dts[d], 4096, 4096);
        unsupported += check(g, dts[d], &m, 37, 1, tols[d]) < 0;
        wmat_free(&m);
    }

    /* Tuned small-n path (opt-in, LOOM_GEMM_TUNE=1): its chosen algorithms,
     * split-K variants included, must give the same results. */
    setenv("LOOM_GEMM_TUNE", "1", 1);
    loom_cuda_gemm *gt = loom_cuda_gemm_create((size_t)32 << 20, err, sizeof err);
    unsetenv("LOOM_GEMM_TUNE");
    if (!gt) { fprintf(stderr, "%s\n", err); return 1; }
    for (int d = 0; d < 2; d++)
        for (int i = 3; i < nd; i++)
            for (int o = 3; o < nd; o++) {
                wmat m = wmat_make(dts[d], dims[i], dims[o]);
                for (int k = 0; k < 3; k++) unsupported += check(gt, dts[d], &m, ns[k], 0, tols[d]) < 0;
                wmat_free(&m);
            }
    loom_cuda_gemm_destroy(gt);

    /* Timing (not a check). */
    const double bw = copy_bandwidth();
    printf("\ncopy bandwidth (cudaMemcpyAsync D2D, read + write): %.0f GB/s\n", bw * 1e-9);
    const int64_t shapes[][2] = {{4096, 4096}, {4096, 11008}, {11008, 4096}};
    const int64_t tn[] = {1, 64, 2048};
    printf("%-5s %5s %6s %6s %10s %9s %9s %10s\n", "dtype", "n", "in", "out", "us", "TFLOP/s", "W GB/s",
           "W/copy bw");
    for (int d = 0; d < 2; d++)
        for (int s = 0; s < 3; s++)
            for (int k = 0; k < 3; k++) {
                const int64_t n = tn[k], in_dim = shapes[s][0], out_dim = shapes[s][1];
                double sec = time_gemm(g, dts[d], n, in_dim, out_dim);
                double wgbs = 2.0 * in_dim * out_dim / sec * 1e-9;
                printf("%-5s %5lld %6lld %6lld %10.1f %9.1f %9.0f %9.0f%%\n", loom_dtype_name(dts[d]),
                       (long long)n, (long long)in_dim, (long long)out_dim, sec * 1e6,
                       2.0 * n * in_dim * out_dim / sec * 1e-12, wgbs, bw > 0 ? 100.0 * wgbs / (bw * 1e-9) : 0.0);
            }

    loom_cuda_gemm_destroy(g);
    printf("%d unsupported shape(s) (notes above), %d failure(s)\n", unsupported, failures);
    return failures ? 1 : 0;
}
