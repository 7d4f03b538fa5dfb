/* Measurement probes: the two ceilings every benchmark result is set against
 * (../shared/DEVICE.md, METHOD.md). The copy bandwidth gives the memory floor
 * (bytes that must move / bandwidth, e.g. a decode step reads every weight
 * once); the matmul rate gives the compute floor (flops / rate, e.g. prefill).
 * Both run on the current CUDA device, take a second or two, and synchronize. */
#ifndef LOOM_BENCH_PROBE_H
#define LOOM_BENCH_PROBE_H

#include <stddef.h>

#include "../util/dtype.h"
#include "../util/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct loom_probe_copy {
    size_t bytes;         /* bytes copied per run (each read once and written once) */
    double memcpy_bps;    /* cudaMemcpyAsync device-to-device: (read + written) bytes/s, best run */
    double kernel_bps;    /* a 16-byte-vector copy kernel, same measure, best run and launch shape */
    double best_bps;      /* max of the two: the bandwidth floors are computed with */
} loom_probe_copy;

typedef struct loom_probe_matmul {
    int64_t m, n, k;      /* problem: (m, k) @ (k, n), 2*m*n*k flops */
    loom_dtype dt;        /* fp16 or bf16 operands and output, fp32 accumulation */
    double best_flops;    /* FLOP/s of the fastest run */
    double median_flops;  /* FLOP/s of the median run */
} loom_probe_matmul;

/* Device-to-device copy bandwidth in bytes read plus bytes written per
 * second: the best run of cudaMemcpyAsync and of a vectorized copy kernel over
 * 1 GiB (2 GiB of traffic; less if that does not fit).
 * On error returns non-OK with a message in err and *bytes_per_s = 0. */
loom_status loom_probe_copy_bandwidth(double *bytes_per_s, loom_err *err);

/* The same with the copy size chosen (bytes; 0: 1 GiB; if two buffers of that
 * size do not fit, it halves down to 64 MiB) and every number in *out. */
loom_status loom_probe_copy_measure(size_t bytes, loom_probe_copy *out, loom_err *err);

/* Dense matmul rate through loom_cuda_gemm_run (cuBLASLt, fp32 accumulation)
 * at 8192 x 8192 x 8192 on random data (zeros run faster than real data):
 * FLOP/s of the best of several runs after a warm-up. dt: LOOM_F16 or
 * LOOM_BF16. On error returns non-OK with a message in err and *flops_per_s = 0. */
loom_status loom_probe_matmul_rate(loom_dtype dt, double *flops_per_s, loom_err *err);

/* The same with best and median in *out. */
loom_status loom_probe_matmul_measure(loom_dtype dt, loom_probe_matmul *out, loom_err *err);

#ifdef __cplusplus
}
#endif

#endif
