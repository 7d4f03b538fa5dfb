/* Matmul throughput of the CPU backend at the decode (n = 1) and prefill
 * (n = 128) shapes of a 4096-wide model, per weight dtype. "cold" cycles over
 * enough weight copies to miss the last-level cache, as decode does for real.
 * "simd" is the AVX2 micro-kernel (where the CPU has it), "C" the portable one.
 * Usage: bench_matmul [out.tsv]   (default bench_matmul.tsv) */
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../kernels/cpu/matmul.h" /* loom_cpu_matmul_allow_simd */
#include "../../kernels/ops.h"

#define COLD_BYTES ((size_t)768 << 20) /* more than any L3 we run on */

typedef struct result {
    const char *isa;
    const char *dt;
    int64_t n, k, m;
    int cold;
    double sec, gflops, gbps;
} result;

static uint64_t rng = 88172645463325252ull;
static uint32_t next_u32(void)
{
    rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
    return (uint32_t)(rng >> 32);
}
static float next_f(void) { return (float)next_u32() / 4294967296.0f * 2.0f - 1.0f; }

static void fill_w(void *w, loom_dtype dt, size_t count)
{
    for (size_t i = 0; i < count; i++) {
        float f = next_f() * 0.05f;
        if (dt == LOOM_F32) ((float *)w)[i] = f;
        else if (dt == LOOM_F16) ((uint16_t *)w)[i] = loom_f32_to_f16(f);
        else ((uint16_t *)w)[i] = loom_f32_to_bf16(f);
    }
}

static result bench(const loom_ops *ops, int simd, loom_dtype dt, int64_t n, int64_t k, int64_t m, int cold)
{
    loom_cpu_matmul_allow_simd(simd);
    size_t wbytes = (size_t)k * m * loom_dtype_size(dt);
    int copies = cold ? (int)((COLD_BYTES + wbytes - 1) / wbytes) : 1;
    unsigned char *w = malloc(wbytes * copies);
    float *x = malloc(sizeof(float) * n * k), *y = malloc(sizeof(float) * n * m);
    if (!w || !x || !y) { fprintf(stderr, "bench_matmul: out of memory\n"); exit(1); }
    fill_w(w, dt, (size_t)k * m);
    for (int c = 1; c < copies; c++) memcpy(w + c * wbytes, w, wbytes);
    for (int64_t i = 0; i < n * k; i++) x[i] = next_f();

    for (int c = 0; c < copies; c++) ops->matmul(y, x, w + c * wbytes, dt, NULL, n, k, m); /* warm up */
    int reps = 0;
    double t0 = omp_get_wtime(), t1;
    do {
        ops->matmul(y, x, w + (size_t)(reps % copies) * wbytes, dt, NULL, n, k, m);
        reps++;
        t1 = omp_get_wtime();
    } while (t1 - t0 < 1.0 || reps < 3);
    result r = {simd ? "simd" : "C", loom_dtype_name(dt), n, k, m, cold, (t1 - t0) / reps, 0, 0};
    r.gflops = 2.0 * n * k * m / r.sec * 1e-9;
    r.gbps = (double)wbytes / r.sec * 1e-9;
    free(w); free(x); free(y);
    return r;
}

int main(int argc, char **argv)
{
    const char *path = argc > 1 ? argv[1] : "bench_matmul.tsv";
    const loom_ops *ops = loom_ops_cpu();
    const loom_dtype dts[] = {LOOM_F32, LOOM_BF16, LOOM_F16};
    struct { int64_t n; int cold; } shapes[] = {{1, 0}, {1, 1}, {128, 0}};
    result res[32];
    int nres = 0;
    for (int simd = 1; simd >= 0; simd--)
        for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
            for (int d = 0; d < 3; d++)
                res[nres++] = bench(ops, simd, dts[d], shapes[s].n, 4096, 4096, shapes[s].cold);

    FILE *f = fopen(path, "w");
    if (f) {
        fprintf(f, "kernel\tdtype\tn\tin_dim\tout_dim\tcold\tthreads\tsec\tgflops\tweight_gbps\n");
        for (int i = 0; i < nres; i++)
            fprintf(f, "%s\t%s\t%lld\t%lld\t%lld\t%d\t%d\t%.6e\t%.3f\t%.3f\n", res[i].isa, res[i].dt,
                    (long long)res[i].n, (long long)res[i].k, (long long)res[i].m, res[i].cold,
                    omp_get_max_threads(), res[i].sec, res[i].gflops, res[i].gbps);
        fclose(f);
    } else {
        fprintf(stderr, "bench_matmul: cannot write %s\n", path);
    }
    printf("matmul, %d threads (full numbers in %s)\n", omp_get_max_threads(), path);
    printf("%-6s %-5s %5s %11s %5s %10s %9s %10s\n", "kernel", "dtype", "n", "k x m", "cache", "ms", "GFLOP/s", "W GB/s");
    for (int i = 0; i < nres; i++)
        printf("%-6s %-5s %5lld %5lldx%-5lld %5s %10.3f %9.2f %10.2f\n", res[i].isa, res[i].dt, (long long)res[i].n,
               (long long)res[i].k, (long long)res[i].m, res[i].cold ? "cold" : "hot",
               res[i].sec * 1e3, res[i].gflops, res[i].gbps);
    return 0;
}
