/* Skinny GEMM for decode (n <= 8 rows of x): y (n, out) = x (n, in) @ W^T
 * (+ bias). At these sizes the step is a stream over W, so the kernel is built
 * for bandwidth: one warp per output row, 16-byte loads of W with several in
 * flight, x read through the cache (it is small and reused by every warp),
 * fp32 accumulation and a shuffle reduction. cuBLASLt reaches 58-83% of the
 * copy bandwidth at n = 1 on these shapes (bench/results); this aims at ~90%. */
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "ops_cuda.h"

#define ROWS_PER_BLOCK 4

template <typename T> __device__ __forceinline__ float2 to_f2(const T v);
template <> __device__ __forceinline__ float2 to_f2<__half2>(const __half2 v) { return __half22float2(v); }
template <> __device__ __forceinline__ float2 to_f2<__nv_bfloat162>(const __nv_bfloat162 v) { return __bfloat1622float2(v); }
template <typename S> __device__ __forceinline__ S from_f(float v);
template <> __device__ __forceinline__ __half from_f<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
template <typename S> __device__ __forceinline__ float s_to_f(S v);
template <> __device__ __forceinline__ float s_to_f<__half>(__half v) { return __half2float(v); }
template <> __device__ __forceinline__ float s_to_f<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }

/* S: scalar type, P: its pair type; N rows of x. in % 8 == 0, 16-byte aligned rows. */
template <typename S, typename P, int N>
__global__ void __launch_bounds__(32 * ROWS_PER_BLOCK) gemv_kernel(S *__restrict__ y, const S *__restrict__ x, const S *__restrict__ w,
                                                                 const S *__restrict__ bias, int in, int out)
{
    const int row = blockIdx.x * ROWS_PER_BLOCK + threadIdx.y;
    const int lane = threadIdx.x;
    if (row >= out) return;
    const uint4 *wr = reinterpret_cast<const uint4 *>(w + (size_t)row * in);
    const int n8 = in / 8;
    float acc[N];
#pragma unroll
    for (int j = 0; j < N; j++) acc[j] = 0.0f;
    int i = lane;
    /* four 16-byte loads of W in flight per lane */
    for (; i + 96 < n8; i += 128) {
        uint4 wv[4];
#pragma unroll
        for (int u = 0; u < 4; u++) wv[u] = __ldcs(wr + i + 32 * u); /* streamed once: do not keep in L1/L2 */
#pragma unroll
        for (int u = 0; u < 4; u++) {
            const P *wp = reinterpret_cast<const P *>(&wv[u]);
#pragma unroll
            for (int j = 0; j < N; j++) {
                uint4 xv = __ldg(reinterpret_cast<const uint4 *>(x + (size_t)j * in) + i + 32 * u);
                const P *xp = reinterpret_cast<const P *>(&xv);
#pragma unroll
                for (int k = 0; k < 4; k++) {
                    float2 a = to_f2<P>(wp[k]), b = to_f2<P>(xp[k]);
                    acc[j] += a.x * b.x + a.y * b.y;
                }
            }
        }
    }
    for (; i < n8; i += 32) {
        uint4 wv = __ldcs(wr + i);
        const P *wp = reinterpret_cast<const P *>(&wv);
#pragma unroll
        for (int j = 0; j < N; j++) {
            uint4 xv = __ldg(reinterpret_cast<const uint4 *>(x + (size_t)j * in) + i);
            const P *xp = reinterpret_cast<const P *>(&xv);
#pragma unroll
            for (int k = 0; k < 4; k++) {
                float2 a = to_f2<P>(wp[k]), b = to_f2<P>(xp[k]);
                acc[j] += a.x * b.x + a.y * b.y;
            }
        }
    }
#pragma unroll
    for (int j = 0; j < N; j++) {
        float v = acc[j];
        for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
        acc[j] = v;
    }
    if (lane == 0) {
        float b = bias ? s_to_f<S>(bias[row]) : 0.0f;
#pragma unroll
        for (int j = 0; j < N; j++) y[(size_t)j * out + row] = from_f<S>(acc[j] + b);
    }
}

template <typename S, typename P>
static int launch(void *y, const void *x, const void *w, const void *bias, int n, int in, int out, cudaStream_t st)
{
    dim3 block(32, ROWS_PER_BLOCK), grid((unsigned)((out + ROWS_PER_BLOCK - 1) / ROWS_PER_BLOCK));
    S *Y = (S *)y;
    const S *X = (const S *)x, *W = (const S *)w, *Bi = (const S *)bias;
    switch (n) {
    case 1: gemv_kernel<S, P, 1><<<grid, block, 0, st>>>(Y, X, W, Bi, in, out); break;
    case 2: gemv_kernel<S, P, 2><<<grid, block, 0, st>>>(Y, X, W, Bi, in, out); break;
    case 3: gemv_kernel<S, P, 3><<<grid, block, 0, st>>>(Y, X, W, Bi, in, out); break;
    case 4: gemv_kernel<S, P, 4><<<grid, block, 0, st>>>(Y, X, W, Bi, in, out); break;
    case 5: gemv_kernel<S, P, 5><<<grid, block, 0, st>>>(Y, X, W, Bi, in, out); break;
    case 6: gemv_kernel<S, P, 6><<<grid, block, 0, st>>>(Y, X, W, Bi, in, out); break;
    case 7: gemv_kernel<S, P, 7><<<grid, block, 0, st>>>(Y, X, W, Bi, in, out); break;
    case 8: gemv_kernel<S, P, 8><<<grid, block, 0, st>>>(Y, X, W, Bi, in, out); break;
    default: return (int)cudaErrorInvalidValue;
    }
    return (int)cudaGetLastError();
}

extern "C" int loom_cuda_gemv_ok(loom_dtype act, int64_t n, int64_t in_dim, const void *x, const void *w)
{
    return (act == LOOM_F16 || act == LOOM_BF16) && n >= 1 && n <= 8 && in_dim % 8 == 0 && in_dim <= (1 << 30) &&
           ((uintptr_t)x & 15) == 0 && ((uintptr_t)w & 15) == 0;
}

extern "C" int loom_cuda_gemv(void *y, const void *x, const void *w, const void *bias, loom_dtype act, int64_t n, int64_t in_dim,
                              int64_t out_dim, void *stream)
{
    if (!loom_cuda_gemv_ok(act, n, in_dim, x, w) || out_dim < 1 || out_dim > (1 << 30)) return (int)cudaErrorInvalidValue;
    cudaStream_t st = (cudaStream_t)stream;
    if (act == LOOM_F16) return launch<__half, __half2>(y, x, w, bias, (int)n, (int)in_dim, (int)out_dim, st);
    return launch<__nv_bfloat16, __nv_bfloat162>(y, x, w, bias, (int)n, (int)in_dim, (int)out_dim, st);
}

/* Reads bytes of buf (16-byte loads, grid-stride) so that the L2 holds clean
 * lines of it and nothing else: cuBLASLt's tuner (gemm.c) runs it before each
 * timed GEMM, whose weights then come from DRAM as in a real step. A write
 * would leave dirty lines whose write-back the next GEMM would pay for. */
__global__ void l2_flush_kernel(const uint4 *__restrict__ buf, size_t n16, unsigned *sink)
{
    unsigned acc = 0;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n16; i += (size_t)gridDim.x * blockDim.x) {
        const uint4 v = __ldcg(buf + i);
        acc ^= v.x ^ v.y ^ v.z ^ v.w;
    }
    if (acc == 0x9e3779b9u && sink) *sink = acc; /* keeps the loads; practically never taken */
}

extern "C" int loom_cuda_l2_flush(const void *buf, size_t bytes, void *stream)
{
    if (!buf || ((uintptr_t)buf & 15)) return (int)cudaErrorInvalidValue;
    if (bytes < 16) return 0;
    l2_flush_kernel<<<1024, 256, 0, (cudaStream_t)stream>>>((const uint4 *)buf, bytes / 16, nullptr);
    return (int)cudaGetLastError();
}
