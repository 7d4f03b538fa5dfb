/* CUDA ops vs the CPU backend (suite "ops", run on the GPU machine):
 * loom_cuda_rmsnorm against loom_ops_cpu()->rmsnorm on the same (rounded)
 * inputs, fp32/fp16/bf16, awkward row counts and widths, NaN-poisoned output.
 * Exits 77 (meson "skipped") when no CUDA device is present. */
#include <cuda_runtime_api.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../kernels/cuda/rmsnorm.h"
#include "../../kernels/ops.h"
#include "cuda_test.h"

static int failures;

static uint64_t rng = 0x243f6a8885a308d3ull;
static float rnd(void)
{
    rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
    return (float)(uint32_t)(rng >> 32) / 4294967296.0f * 2.0f - 1.0f;
}

/* Stores f as dt at dst[i]; returns the value actually stored, widened. */
static float store(void *dst, loom_dtype dt, int64_t i, float f)
{
    if (dt == LOOM_F32) { ((float *)dst)[i] = f; return f; }
    uint16_t h = dt == LOOM_F16 ? loom_f32_to_f16(f) : loom_f32_to_bf16(f);
    ((uint16_t *)dst)[i] = h;
    return dt == LOOM_F16 ? loom_f16_to_f32(h) : loom_bf16_to_f32(h);
}

/* off: x, w and out start `off` elements past an aligned address, which
 * turns the kernel's 16-byte loads off. */
static void one(loom_dtype act, loom_dtype wdt, int64_t n, int64_t dim, int in_place, int off, double tol)
{
    const size_t ae = loom_dtype_size(act), we = loom_dtype_size(wdt);
    const float eps = 1e-5f;
    void *hx = xmalloc(ae * n * dim), *hw = xmalloc(we * dim), *hy = xmalloc(ae * n * dim);
    float *xf = xmalloc(sizeof(float) * n * dim), *ref = xmalloc(sizeof(float) * n * dim);
    for (int64_t i = 0; i < n * dim; i++) xf[i] = store(hx, act, i, rnd() * 3.0f);
    for (int64_t j = 0; j < dim; j++) store(hw, wdt, j, 1.0f + 0.5f * rnd());
    loom_ops_cpu()->rmsnorm(ref, xf, hw, wdt, n, dim, eps);

    unsigned char *bx, *bw, *by;
    CUDA_CHECK(cudaMalloc((void **)&bx, ae * (n * dim + off)));
    CUDA_CHECK(cudaMalloc((void **)&bw, we * (dim + off)));
    CUDA_CHECK(cudaMalloc((void **)&by, ae * (n * dim + off)));
    void *dx = bx + ae * off, *dw = bw + we * off, *dy = by + ae * off;
    CUDA_CHECK(cudaMemcpy(dx, hx, ae * n * dim, cudaMemcpyHostToDevice));
    CUDA_CHECK(cudaMemcpy(dw, hw, we * dim, cudaMemcpyHostToDevice));
    CUDA_CHECK(cudaMemset(dy, 0xff, ae * n * dim)); /* NaN in every dtype */
    void *out = in_place ? dx : dy;
    int st = loom_cuda_rmsnorm(out, dx, act, dw, wdt, n, dim, eps, NULL);
    if (st != 0) {
        fprintf(stderr, "loom_cuda_rmsnorm: %s\n", cudaGetErrorString((cudaError_t)st));
        exit(1);
    }
    CUDA_CHECK(cudaDeviceSynchronize());
    CUDA_CHECK(cudaMemcpy(hy, out, ae * n * dim, cudaMemcpyDeviceToHost));

    double num = 0, den = 0;
    for (int64_t i = 0; i < n * dim; i++) {
        float y;
        if (act == LOOM_F32) y = ((float *)hy)[i];
        else if (act == LOOM_F16) y = loom_f16_to_f32(((uint16_t *)hy)[i]);
        else y = loom_bf16_to_f32(((uint16_t *)hy)[i]);
        double d = (double)y - ref[i];
        num += d * d;
        den += (double)ref[i] * ref[i];
    }
    double err = sqrt(num / den);
    int ok = err <= tol;
    failures += !ok;
    printf("%s rmsnorm act=%s w=%s rows=%lld dim=%lld%s%s rel_l2 %.3e (tol %.0e)\n", ok ? "ok  " : "FAIL",
           loom_dtype_name(act), loom_dtype_name(wdt), (long long)n, (long long)dim,
           in_place ? " in place" : "", off ? " misaligned" : "", err, tol);
    cudaFree(bx); cudaFree(bw); cudaFree(by);
    free(hx); free(hw); free(hy); free(xf); free(ref);
}

/* Timing printout (not a check): bytes moved per second at a prefill shape. */
static void time_one(loom_dtype act, int64_t n, int64_t dim)
{
    const size_t bytes = loom_dtype_size(act) * n * dim;
    void *dx, *dw;
    CUDA_CHECK(cudaMalloc(&dx, bytes));
    CUDA_CHECK(cudaMalloc(&dw, loom_dtype_size(act) * dim));
    CUDA_CHECK(cudaMemset(dx, 0, bytes));
    CUDA_CHECK(cudaMemset(dw, 0, loom_dtype_size(act) * dim));
    cudaEvent_t e0, e1;
    CUDA_CHECK(cudaEventCreate(&e0));
    CUDA_CHECK(cudaEventCreate(&e1));
    const int reps = 50;
    loom_cuda_rmsnorm(dx, dx, act, dw, act, n, dim, 1e-5f, NULL);
    CUDA_CHECK(cudaEventRecord(e0, NULL));
    for (int i = 0; i < reps; i++) loom_cuda_rmsnorm(dx, dx, act, dw, act, n, dim, 1e-5f, NULL);
    CUDA_CHECK(cudaEventRecord(e1, NULL));
    CUDA_CHECK(cudaEventSynchronize(e1));
    float ms = 0;
    CUDA_CHECK(cudaEventElapsedTime(&ms, e0, e1));
    ms /= reps;
    printf("time rmsnorm %s rows=%lld dim=%lld: %.1f us, %.0f GB/s (read x + write out)\n",
           loom_dtype_name(act), (long long)n, (long long)dim, ms * 1e3, 2.0 * bytes / (ms * 1e-3) * 1e-9);
    cudaEventDestroy(e0); cudaEventDestroy(e1);
    cudaFree(dx); cudaFree(dw);
}

int main(void)
{
    if (cuda_test_skip_without_device()) return 77;
    const loom_dtype dts[] = {LOOM_F32, LOOM_F16, LOOM_BF16};
    const double tols[] = {1e-5, 2e-3, 1e-2};
    const int64_t rows[] = {1, 37, 2049};
    const int64_t dims[] = {64, 67, 128, 4096, 4096 + 3}; /* % 8 == 0: vector loads */
    for (int d = 0; d < 3; d++)
        for (int r = 0; r < 3; r++)
            for (int c = 0; c < 5; c++) one(dts[d], dts[d], rows[r], dims[c], 0, 0, tols[d]);
    /* fp32 activations with half-precision weights, in place, misaligned */
    one(LOOM_F32, LOOM_BF16, 37, 4096 + 3, 0, 0, 1e-5);
    one(LOOM_F32, LOOM_F16, 37, 128, 0, 0, 1e-5);
    one(LOOM_BF16, LOOM_BF16, 37, 4096 + 3, 1, 0, 1e-2);
    one(LOOM_F16, LOOM_F32, 2049, 128, 1, 0, 2e-3);
    for (int d = 0; d < 3; d++) one(dts[d], dts[d], 37, 4096, d == 1, 1, tols[d]);
    for (int d = 0; d < 3; d++) {
        time_one(dts[d], 1, 4096);
        time_one(dts[d], 8192, 4096);
    }
    printf("%d failure(s)\n", failures);
    return failures ? 1 : 0;
}
