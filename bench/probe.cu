/* The two ceilings (probe.h): device-to-device copy bandwidth (cudaMemcpyAsync
 * and a 16-byte-vector copy kernel in two launch shapes, best run of each) and
 * the cuBLASLt matmul rate at 8192^3 through loom_cuda_gemm_run, so the rate
 * is the one loom's own GEMM path reaches. Timed with CUDA events after a
 * warm-up; inputs are random, never zeros. */
extern "C" {
#include "../util/dtype.h"
#include "../util/status.h"
}

#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../kernels/cuda/ops_cuda.h"
#include "probe.h"

#define PROBE_CUDA(expr, what)                                                          \
    do {                                                                                \
        cudaError_t e_ = (expr);                                                        \
        if (e_ != cudaSuccess) {                                                        \
            st = loom_err_set(err, LOOM_EINTERNAL, "%s:%d: %s: %s", __FILE__, __LINE__, \
                              what, cudaGetErrorString(e_));                            \
            goto fail;                                                                  \
        }                                                                               \
    } while (0)

enum { PROBE_COPY_RUNS = 8, PROBE_MM_WARM = 3, PROBE_MM_RUNS = 10, PROBE_MM_DIM = 8192 };

/* One 16-byte vector per thread: as many threads as vectors. */
__global__ void probe_copy_flat(const int4 *__restrict__ src, int4 *__restrict__ dst, size_t n)
{
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) dst[i] = __ldcs(src + i);
}

/* A persistent grid: each thread keeps four independent 16-byte loads in
 * flight before the first store. */
__global__ void probe_copy_strided(const int4 *__restrict__ src, int4 *__restrict__ dst, size_t n)
{
    const size_t stride = (size_t)gridDim.x * blockDim.x;
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    for (; i + 3 * stride < n; i += 4 * stride) {
        int4 a = __ldcs(src + i), b = __ldcs(src + i + stride);
        int4 c = __ldcs(src + i + 2 * stride), d = __ldcs(src + i + 3 * stride);
        dst[i] = a;
        dst[i + stride] = b;
        dst[i + 2 * stride] = c;
        dst[i + 3 * stride] = d;
    }
    for (; i < n; i += stride) dst[i] = __ldcs(src + i);
}

/* Uniform values in [-1, 1) from a hash of the index, stored as fp16/bf16. */
__global__ void probe_fill(uint16_t *p, size_t n, uint32_t seed, int bf16)
{
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    uint32_t h = (uint32_t)i * 0x9e3779b1u ^ seed ^ (uint32_t)(i >> 32) * 0x85ebca6bu;
    h ^= h >> 16; h *= 0x7feb352du; h ^= h >> 15; h *= 0x846ca68bu; h ^= h >> 16;
    float f = (float)(h >> 8) * (1.0f / 8388608.0f) - 1.0f;
    if (bf16) {
        uint32_t u = __float_as_uint(f);
        p[i] = (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
    } else {
        p[i] = __half_as_ushort(__float2half_rn(f));
    }
}

/* Best milliseconds of PROBE_COPY_RUNS after one warm-up; kind 0 memcpy, 1 flat, 2 strided. */
static cudaError_t time_copy(int kind, void *dst, const void *src, size_t bytes, int sms, cudaEvent_t e0,
                             cudaEvent_t e1, float *best)
{
    const size_t nvec = bytes / 16;
    *best = 1e30f;
    for (int r = 0; r <= PROBE_COPY_RUNS; r++) {
        cudaError_t e = cudaEventRecord(e0, 0);
        if (e != cudaSuccess) return e;
        if (kind == 0) {
            e = cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, 0);
            if (e != cudaSuccess) return e;
        } else if (kind == 1) {
            probe_copy_flat<<<(unsigned)((nvec + 255) / 256), 256>>>((const int4 *)src, (int4 *)dst, nvec);
        } else {
            probe_copy_strided<<<sms * 4, 512>>>((const int4 *)src, (int4 *)dst, nvec);
        }
        if ((e = cudaGetLastError()) != cudaSuccess) return e;
        if ((e = cudaEventRecord(e1, 0)) != cudaSuccess) return e;
        if ((e = cudaEventSynchronize(e1)) != cudaSuccess) return e;
        float ms = 0;
        if ((e = cudaEventElapsedTime(&ms, e0, e1)) != cudaSuccess) return e;
        if (r > 0 && ms < *best) *best = ms;
    }
    return cudaSuccess;
}

loom_status loom_probe_copy_measure(size_t bytes, loom_probe_copy *out, loom_err *err)
{
    loom_status st = LOOM_OK;
    void *src = NULL, *dst = NULL;
    cudaEvent_t e0 = NULL, e1 = NULL;
    int dev = 0, sms = 0;
    float ms[3];
    if (!out) return loom_err_set(err, LOOM_EINVAL, "probe: out is NULL");
    memset(out, 0, sizeof *out);
    if (bytes == 0) bytes = (size_t)1 << 30;
    bytes &= ~(size_t)255;
    const size_t min_bytes = (size_t)64 << 20;
    if (bytes < min_bytes) bytes = min_bytes;
    for (;;) {
        if (cudaMalloc(&src, bytes) == cudaSuccess) {
            if (cudaMalloc(&dst, bytes) == cudaSuccess) break;
            cudaFree(src);
        }
        src = dst = NULL;
        (void)cudaGetLastError(); /* clear the allocation error */
        if (bytes / 2 < min_bytes)
            return loom_err_set(err, LOOM_ENOMEM, "probe: cannot allocate two %zu-byte buffers", bytes);
        bytes /= 2;
    }
    PROBE_CUDA(cudaGetDevice(&dev), "cudaGetDevice");
    PROBE_CUDA(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev), "SM count");
    PROBE_CUDA(cudaMemset(src, 0x3c, bytes), "cudaMemset");
    PROBE_CUDA(cudaMemset(dst, 0, bytes), "cudaMemset");
    PROBE_CUDA(cudaEventCreate(&e0), "cudaEventCreate");
    PROBE_CUDA(cudaEventCreate(&e1), "cudaEventCreate");
    for (int k = 0; k < 3; k++) PROBE_CUDA(time_copy(k, dst, src, bytes, sms, e0, e1, &ms[k]), "copy");
    out->bytes = bytes;
    out->memcpy_bps = 2.0 * (double)bytes / (ms[0] * 1e-3);
    out->kernel_bps = 2.0 * (double)bytes / ((ms[1] < ms[2] ? ms[1] : ms[2]) * 1e-3);
    out->best_bps = out->memcpy_bps > out->kernel_bps ? out->memcpy_bps : out->kernel_bps;
fail:
    if (e0) cudaEventDestroy(e0);
    if (e1) cudaEventDestroy(e1);
    cudaFree(src);
    cudaFree(dst);
    return st;
}

static int cmp_float(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

loom_status loom_probe_matmul_measure(loom_dtype dt, loom_probe_matmul *out, loom_err *err)
{
    loom_status st = LOOM_OK;
    const int64_t d = PROBE_MM_DIM;
    const size_t cnt = (size_t)d * d;
    uint16_t *a = NULL, *b = NULL, *c = NULL;
    cudaEvent_t e0 = NULL, e1 = NULL;
    loom_cuda_gemm *g = NULL;
    float ms[PROBE_MM_RUNS];
    char msg[256] = "";
    if (!out) return loom_err_set(err, LOOM_EINVAL, "probe: out is NULL");
    memset(out, 0, sizeof *out);
    if (dt != LOOM_F16 && dt != LOOM_BF16)
        return loom_err_set(err, LOOM_EINVAL, "probe: matmul rate needs fp16 or bf16, not %s",
                            loom_dtype_name(dt));
    g = loom_cuda_gemm_create((size_t)32 << 20, msg, sizeof msg);
    if (!g) return loom_err_set(err, LOOM_EINTERNAL, "probe: %s", msg);
    PROBE_CUDA(cudaMalloc((void **)&a, cnt * 2), "cudaMalloc");
    PROBE_CUDA(cudaMalloc((void **)&b, cnt * 2), "cudaMalloc");
    PROBE_CUDA(cudaMalloc((void **)&c, cnt * 2), "cudaMalloc");
    probe_fill<<<(unsigned)((cnt + 255) / 256), 256>>>(a, cnt, 12345u, dt == LOOM_BF16);
    probe_fill<<<(unsigned)((cnt + 255) / 256), 256>>>(b, cnt, 67890u, dt == LOOM_BF16);
    PROBE_CUDA(cudaGetLastError(), "probe_fill");
    PROBE_CUDA(cudaEventCreate(&e0), "cudaEventCreate");
    PROBE_CUDA(cudaEventCreate(&e1), "cudaEventCreate");
    for (int r = 0; r < PROBE_MM_WARM + PROBE_MM_RUNS; r++) {
        PROBE_CUDA(cudaEventRecord(e0, 0), "cudaEventRecord");
        int rc = loom_cuda_gemm_run(g, c, a, b, NULL, dt, d, d, d, NULL);
        if (rc != 0) {
            st = loom_err_set(err, LOOM_EINTERNAL, "probe: loom_cuda_gemm_run %lldx%lldx%lld %s: error %d",
                              (long long)d, (long long)d, (long long)d, loom_dtype_name(dt), rc);
            goto fail;
        }
        PROBE_CUDA(cudaEventRecord(e1, 0), "cudaEventRecord");
        PROBE_CUDA(cudaEventSynchronize(e1), "matmul");
        float t = 0;
        PROBE_CUDA(cudaEventElapsedTime(&t, e0, e1), "cudaEventElapsedTime");
        if (r >= PROBE_MM_WARM) ms[r - PROBE_MM_WARM] = t;
    }
    qsort(ms, PROBE_MM_RUNS, sizeof ms[0], cmp_float);
    {
        const double flops = 2.0 * (double)d * d * d;
        out->m = out->n = out->k = d;
        out->dt = dt;
        out->best_flops = flops / (ms[0] * 1e-3);
        out->median_flops = flops / (ms[PROBE_MM_RUNS / 2] * 1e-3);
    }
fail:
    if (e0) cudaEventDestroy(e0);
    if (e1) cudaEventDestroy(e1);
    cudaFree(a);
    cudaFree(b);
    cudaFree(c);
    loom_cuda_gemm_destroy(g);
    return st;
}

loom_status loom_probe_copy_bandwidth(double *bytes_per_s, loom_err *err)
{
    loom_probe_copy c;
    if (!bytes_per_s) return loom_err_set(err, LOOM_EINVAL, "probe: bytes_per_s is NULL");
    loom_status st = loom_probe_copy_measure(0, &c, err);
    *bytes_per_s = st == LOOM_OK ? c.best_bps : 0.0;
    return st;
}

loom_status loom_probe_matmul_rate(loom_dtype dt, double *flops_per_s, loom_err *err)
{
    loom_probe_matmul m;
    if (!flops_per_s) return loom_err_set(err, LOOM_EINVAL, "probe: flops_per_s is NULL");
    loom_status st = loom_probe_matmul_measure(dt, &m, err);
    *flops_per_s = st == LOOM_OK ? m.best_flops : 0.0;
    return st;
}
