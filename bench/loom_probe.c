/* loom-probe: prints the two ceilings of the current GPU (probe.h): the
 * device-to-device copy bandwidth and the cuBLASLt fp16/bf16 matmul rate.
 * Usage: loom-probe [--bytes N] [--json FILE] */
#include <cuda_runtime_api.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "probe.h"

int main(int argc, char **argv)
{
    size_t bytes = 0;
    const char *json = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--bytes") && i + 1 < argc) {
            char *end;
            unsigned long long v = strtoull(argv[++i], &end, 10);
            if (*end || v == 0) { fprintf(stderr, "loom-probe: bad --bytes '%s'\n", argv[i]); return 2; }
            bytes = (size_t)v;
        } else if (!strcmp(argv[i], "--json") && i + 1 < argc) {
            json = argv[++i];
        } else {
            fprintf(stderr, "usage: loom-probe [--bytes N] [--json FILE]\n");
            return 2;
        }
    }
    int count = 0;
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess || count == 0) {
        fprintf(stderr, "loom-probe: no CUDA device (%s)\n", e != cudaSuccess ? cudaGetErrorString(e) : "0 devices");
        return 1;
    }
    struct cudaDeviceProp prop;
    int dev = 0;
    if (cudaGetDevice(&dev) != cudaSuccess || cudaGetDeviceProperties(&prop, dev) != cudaSuccess) {
        fprintf(stderr, "loom-probe: cannot read the device properties\n");
        return 1;
    }

    loom_err err = {{0}};
    loom_probe_copy cp;
    loom_probe_matmul mm[2];
    const loom_dtype dts[2] = {LOOM_BF16, LOOM_F16};
    if (loom_probe_copy_measure(bytes, &cp, &err) != LOOM_OK) {
        fprintf(stderr, "loom-probe: %s\n", err.msg);
        return 1;
    }
    for (int i = 0; i < 2; i++)
        if (loom_probe_matmul_measure(dts[i], &mm[i], &err) != LOOM_OK) {
            fprintf(stderr, "loom-probe: %s\n", err.msg);
            return 1;
        }

    if (json) {
        FILE *f = fopen(json, "w");
        if (!f) { perror(json); return 1; }
        fprintf(f, "{\"device\": \"%s\", \"copy_bytes\": %zu, \"copy_memcpy_Bps\": %.6e, "
                   "\"copy_kernel_Bps\": %.6e, \"copy_Bps\": %.6e",
                prop.name, cp.bytes, cp.memcpy_bps, cp.kernel_bps, cp.best_bps);
        for (int i = 0; i < 2; i++)
            fprintf(f, ", \"matmul_%s\": {\"m\": %lld, \"n\": %lld, \"k\": %lld, \"best_flops\": %.6e, "
                       "\"median_flops\": %.6e}",
                    loom_dtype_name(mm[i].dt), (long long)mm[i].m, (long long)mm[i].n, (long long)mm[i].k,
                    mm[i].best_flops, mm[i].median_flops);
        fprintf(f, "}\n");
        if (fclose(f) != 0) { perror(json); return 1; }
    }

    printf("device: %s (%d SMs)\n", prop.name, prop.multiProcessorCount);
    printf("%-34s %12s %12s\n", "probe", "best", "median");
    printf("%-34s %9.0f GB/s\n", "copy D2D cudaMemcpyAsync (r+w)", cp.memcpy_bps * 1e-9);
    printf("%-34s %9.0f GB/s\n", "copy D2D vector kernel (r+w)", cp.kernel_bps * 1e-9);
    for (int i = 0; i < 2; i++) {
        char name[64];
        snprintf(name, sizeof name, "matmul %s %lld^3 (cuBLASLt)", loom_dtype_name(mm[i].dt), (long long)mm[i].m);
        printf("%-34s %7.0f TFLOP/s %7.0f TFLOP/s\n", name, mm[i].best_flops * 1e-12, mm[i].median_flops * 1e-12);
    }
    printf("copy bandwidth %.0f GB/s (%zu MiB copied); matmul rate bf16 %.0f TFLOP/s, fp16 %.0f TFLOP/s\n",
           cp.best_bps * 1e-9, cp.bytes >> 20, mm[0].best_flops * 1e-12, mm[1].best_flops * 1e-12);
    return 0;
}
