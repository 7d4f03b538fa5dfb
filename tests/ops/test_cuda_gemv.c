/* The decode GEMV (kernels/cuda/gemv.cu) against the CPU matmul on the same
 * fp16/bf16-rounded values: n = 1..8 rows, Llama-7B and awkward shapes, with
 * and without bias; relative L2 <= 2e-3 (fp16), 1e-2 (bf16); outputs poisoned
 * first. Then GB/s of W at n = 1 against a device copy measured here. */
#include <cuda_runtime_api.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../kernels/cuda/ops_cuda.h"
#include "../../kernels/ops.h"

static uint64_t rng = 0x1234567;
static float frand(void)
{
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    return (float)((rng >> 11) * 0x1.0p-53) * 2.0f - 1.0f;
}

static uint16_t to16(float v, loom_dtype dt) { return dt == LOOM_F16 ? loom_f32_to_f16(v) : loom_f32_to_bf16(v); }
static float from16(uint16_t h, loom_dtype dt) { return dt == LOOM_F16 ? loom_f16_to_f32(h) : loom_bf16_to_f32(h); }

static int check(loom_dtype dt, int64_t n, int64_t in, int64_t out, int bias)
{
    size_t nw = (size_t)(in * out), nx = (size_t)(n * in), ny = (size_t)(n * out);
    uint16_t *hw = malloc(nw * 2), *hx = malloc(nx * 2), *hb = malloc((size_t)out * 2), *hy = malloc(ny * 2);
    float *fx = malloc(nx * 4), *fw = malloc(nw * 4), *fb = malloc((size_t)out * 4), *ref = malloc(ny * 4);
    for (size_t i = 0; i < nw; i++) fw[i] = from16(hw[i] = to16(frand() / sqrtf((float)in) * 3, dt), dt);
    for (size_t i = 0; i < nx; i++) fx[i] = from16(hx[i] = to16(frand(), dt), dt);
    for (int64_t i = 0; i < out; i++) fb[i] = from16(hb[i] = to16(frand() * 0.5f, dt), dt);
    loom_ops_cpu()->matmul(ref, fx, fw, LOOM_F32, bias ? fb : NULL, n, in, out);
    void *dw, *dx, *db, *dy;
    cudaMalloc(&dw, nw * 2);
    cudaMalloc(&dx, nx * 2);
    cudaMalloc(&db, (size_t)out * 2);
    cudaMalloc(&dy, ny * 2);
    cudaMemcpy(dw, hw, nw * 2, cudaMemcpyHostToDevice);
    cudaMemcpy(dx, hx, nx * 2, cudaMemcpyHostToDevice);
    cudaMemcpy(db, hb, (size_t)out * 2, cudaMemcpyHostToDevice);
    cudaMemset(dy, 0xff, ny * 2); /* NaN */
    int rc = loom_cuda_gemv(dy, dx, dw, bias ? db : NULL, dt, n, in, out, NULL);
    cudaDeviceSynchronize();
    cudaMemcpy(hy, dy, ny * 2, cudaMemcpyDeviceToHost);
    double num = 0, den = 0;
    for (size_t i = 0; i < ny; i++) {
        double d = from16(hy[i], dt) - ref[i];
        num += d * d;
        den += (double)ref[i] * ref[i];
    }
    double rel = sqrt(num / den), tol = dt == LOOM_F16 ? 2e-3 : 1e-2;
    int ok = rc == 0 && rel <= tol;
    printf("%s gemv %s n=%lld in=%lld out=%lld bias=%d: rel L2 %.2e\n", ok ? "ok  " : "FAIL", loom_dtype_name(dt), (long long)n, (long long)in,
           (long long)out, bias, rel);
    /* loom_cuda_gemv_f32 (a TP partial): fp32, not rounded; each value rounded is gemv's */
    float *dy32, *hy32 = malloc(ny * 4);
    cudaMalloc((void **)&dy32, ny * 4);
    cudaMemset(dy32, 0xff, ny * 4); /* NaN */
    int rc32 = loom_cuda_gemv_f32(dy32, dx, dw, bias ? db : NULL, dt, n, in, out, NULL);
    cudaDeviceSynchronize();
    cudaMemcpy(hy32, dy32, ny * 4, cudaMemcpyDeviceToHost);
    size_t diff = 0;
    num = den = 0;
    for (size_t i = 0; i < ny; i++) {
        diff += from16(to16(hy32[i], dt), dt) != from16(hy[i], dt);
        const double d = (double)hy32[i] - ref[i];
        num += d * d;
        den += (double)ref[i] * ref[i];
    }
    const double rel32 = sqrt(num / den);
    const int ok32 = rc32 == 0 && diff == 0 && rel32 <= 2e-5;
    printf("%s gemv_f32 %s n=%lld in=%lld out=%lld bias=%d: rel L2 %.2e, %zu of %zu differ from gemv's once rounded\n", ok32 ? "ok  " : "FAIL",
           loom_dtype_name(dt), (long long)n, (long long)in, (long long)out, bias, rel32, diff, ny);
    ok = ok && ok32;
    cudaFree(dy32);
    free(hy32);
    cudaFree(dw), cudaFree(dx), cudaFree(db), cudaFree(dy);
    free(hw), free(hx), free(hb), free(hy), free(fx), free(fw), free(fb), free(ref);
    return !ok;
}

static double time_us(loom_dtype dt, int64_t n, int64_t in, int64_t out, int use_gemm, loom_cuda_gemm *g)
{
    /* cycle over enough copies of W that it does not sit in L2 */
    int copies = 8;
    void *w[8], *x, *y;
    for (int i = 0; i < copies; i++) cudaMalloc(&w[i], (size_t)(in * out) * 2), cudaMemset(w[i], 0, (size_t)(in * out) * 2);
    cudaMalloc(&x, (size_t)(n * in) * 2);
    cudaMalloc(&y, (size_t)(n * out) * 2);
    cudaMemset(x, 0, (size_t)(n * in) * 2);
    cudaEvent_t a, b;
    cudaEventCreate(&a), cudaEventCreate(&b);
    float best = 1e30f;
    for (int rep = 0; rep < 5; rep++) {
        cudaEventRecord(a, NULL);
        for (int k = 0; k < 40; k++) {
            if (use_gemm) loom_cuda_gemm_run(g, y, x, w[k % copies], NULL, dt, n, in, out, NULL);
            else loom_cuda_gemv(y, x, w[k % copies], NULL, dt, n, in, out, NULL);
        }
        cudaEventRecord(b, NULL);
        cudaEventSynchronize(b);
        float ms;
        cudaEventElapsedTime(&ms, a, b);
        if (ms < best) best = ms;
    }
    for (int i = 0; i < copies; i++) cudaFree(w[i]);
    cudaFree(x), cudaFree(y);
    return best * 1000.0 / 40.0;
}

int main(void)
{
    int n_dev = 0;
    if (cudaGetDeviceCount(&n_dev) != cudaSuccess || n_dev == 0) {
        printf("no CUDA device: skipped\n");
        return 77;
    }
    int fails = 0;
    const int64_t shapes[][2] = {{4096, 4096}, {4096, 11008}, {11008, 4096}, {64, 72}, {4096, 32000}, {136, 1}, {8, 3}};
    for (int d = 0; d < 2; d++)
        for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
            for (int64_t n = 1; n <= 8; n += (n < 4 ? 1 : 4))
                fails += check(d ? LOOM_BF16 : LOOM_F16, n, shapes[s][0], shapes[s][1], (int)(s % 2));
    char msg[256];
    loom_cuda_gemm *g = loom_cuda_gemm_create((size_t)32 << 20, msg, sizeof msg);
    /* copy bandwidth here */
    size_t bytes = (size_t)1 << 30;
    void *p, *q;
    cudaMalloc(&p, bytes), cudaMalloc(&q, bytes);
    cudaEvent_t a, b;
    cudaEventCreate(&a), cudaEventCreate(&b);
    float best = 1e30f;
    for (int r = 0; r < 5; r++) {
        cudaEventRecord(a, NULL);
        cudaMemcpyAsync(q, p, bytes, cudaMemcpyDeviceToDevice, NULL);
        cudaEventRecord(b, NULL);
        cudaEventSynchronize(b);
        float ms;
        cudaEventElapsedTime(&ms, a, b);
        if (ms < best) best = ms;
    }
    cudaFree(p), cudaFree(q);
    double bw = 2.0 * (double)bytes / (best / 1e3);
    printf("copy bandwidth here: %.0f GB/s\n", bw / 1e9);
    const int64_t tshapes[][2] = {{4096, 12288}, {4096, 4096}, {4096, 22016}, {11008, 4096}, {4096, 32000}};
    for (size_t s = 0; s < sizeof tshapes / sizeof tshapes[0]; s++)
        for (int64_t n = 1; n <= 8; n *= 8) {
            double t1 = time_us(LOOM_F16, n, tshapes[s][0], tshapes[s][1], 0, g), t2 = time_us(LOOM_F16, n, tshapes[s][0], tshapes[s][1], 1, g);
            double wb = (double)(tshapes[s][0] * tshapes[s][1]) * 2.0;
            printf("time n=%lld %lldx%lld: gemv %.1f us (%.0f%% of copy), cuBLASLt %.1f us (%.0f%%)\n", (long long)n, (long long)tshapes[s][0],
                   (long long)tshapes[s][1], t1, 100.0 * wb / (t1 * 1e-6) / bw, t2, 100.0 * wb / (t2 * 1e-6) / bw);
        }
    loom_cuda_gemm_destroy(g);
    printf("%d failure(s)\n", fails);
    return fails ? 1 : 0;
}
