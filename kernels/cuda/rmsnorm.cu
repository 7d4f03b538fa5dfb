/* CUDA RMSNorm, HF LlamaRMSNorm semantics with fp32 math: one block per row,
 * each thread sums squares over a strided slice, a warp-shuffle tree plus one
 * shared-memory hop reduce them, then the same threads scale and store.
 * Rows whose width is a multiple of 8 (at 16-byte aligned addresses) move 8
 * elements per load; others go one element at a time. */
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "rmsnorm.h"

namespace {

constexpr int kMaxThreads = 1024;

template <typename T> __device__ __forceinline__ float to_f32(T v);
template <> __device__ __forceinline__ float to_f32<float>(float v) { return v; }
template <> __device__ __forceinline__ float to_f32<__half>(__half v) { return __half2float(v); }
template <> __device__ __forceinline__ float to_f32<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T from_f32(float v);
template <> __device__ __forceinline__ float from_f32<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_f32<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

/* 8 consecutive elements <-> 8 floats, in 16-byte (32 for fp32) loads. */
__device__ __forceinline__ void load8(const float *p, float *f)
{
    float4 a = reinterpret_cast<const float4 *>(p)[0], b = reinterpret_cast<const float4 *>(p)[1];
    f[0] = a.x; f[1] = a.y; f[2] = a.z; f[3] = a.w; f[4] = b.x; f[5] = b.y; f[6] = b.z; f[7] = b.w;
}
__device__ __forceinline__ void load8(const __half *p, float *f)
{
    uint4 u = *reinterpret_cast<const uint4 *>(p);
    const __half2 *h = reinterpret_cast<const __half2 *>(&u);
    for (int i = 0; i < 4; i++) {
        float2 t = __half22float2(h[i]);
        f[2 * i] = t.x; f[2 * i + 1] = t.y;
    }
}
__device__ __forceinline__ void load8(const __nv_bfloat16 *p, float *f)
{
    uint4 u = *reinterpret_cast<const uint4 *>(p);
    const __nv_bfloat162 *h = reinterpret_cast<const __nv_bfloat162 *>(&u);
    for (int i = 0; i < 4; i++) {
        float2 t = __bfloat1622float2(h[i]);
        f[2 * i] = t.x; f[2 * i + 1] = t.y;
    }
}
__device__ __forceinline__ void store8(float *p, const float *f)
{
    reinterpret_cast<float4 *>(p)[0] = make_float4(f[0], f[1], f[2], f[3]);
    reinterpret_cast<float4 *>(p)[1] = make_float4(f[4], f[5], f[6], f[7]);
}
__device__ __forceinline__ void store8(__half *p, const float *f)
{
    uint4 u;
    __half2 *h = reinterpret_cast<__half2 *>(&u);
    for (int i = 0; i < 4; i++) h[i] = __floats2half2_rn(f[2 * i], f[2 * i + 1]);
    *reinterpret_cast<uint4 *>(p) = u;
}
__device__ __forceinline__ void store8(__nv_bfloat16 *p, const float *f)
{
    uint4 u;
    __nv_bfloat162 *h = reinterpret_cast<__nv_bfloat162 *>(&u);
    for (int i = 0; i < 4; i++) h[i] = __floats2bfloat162_rn(f[2 * i], f[2 * i + 1]);
    *reinterpret_cast<uint4 *>(p) = u;
}

__device__ __forceinline__ float warp_sum(float v)
{
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

/* Sum over the block, returned to every thread. */
__device__ __forceinline__ float block_sum(float v)
{
    __shared__ float partial[kMaxThreads / 32];
    __shared__ float total;
    v = warp_sum(v);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    if (warp == 0) {
        float t = lane < (int)(blockDim.x / 32) ? partial[lane] : 0.0f;
        t = warp_sum(t);
        if (lane == 0) total = t;
    }
    __syncthreads();
    return total;
}

/* grid (n), block (threads, a multiple of 32). VEC: dim % 8 == 0 and every
 * pointer 16-byte aligned, so each thread moves 8 elements at a time. */
template <typename TA, typename TW, bool VEC>
__global__ void rmsnorm_kernel(TA *out, const TA *x, const TW *w, int64_t dim, float eps)
{
    const TA *xr = x + (int64_t)blockIdx.x * dim;
    TA *yr = out + (int64_t)blockIdx.x * dim;

    float ss = 0.0f;
    if constexpr (VEC) {
        for (int64_t j = 8 * (int64_t)threadIdx.x; j < dim; j += 8 * (int64_t)blockDim.x) {
            float v[8];
            load8(xr + j, v);
            for (int i = 0; i < 8; i++) ss += v[i] * v[i];
        }
    } else {
        for (int64_t j = threadIdx.x; j < dim; j += blockDim.x) {
            float v = to_f32(xr[j]);
            ss += v * v;
        }
    }
    /* block_sum's barriers also order every read of xr before any write of
     * yr, so out may alias x. */
    const float r = rsqrtf(block_sum(ss) / (float)dim + eps);
    if constexpr (VEC) {
        for (int64_t j = 8 * (int64_t)threadIdx.x; j < dim; j += 8 * (int64_t)blockDim.x) {
            float v[8], g[8];
            load8(xr + j, v);
            load8(w + j, g);
            for (int i = 0; i < 8; i++) v[i] = g[i] * (v[i] * r);
            store8(yr + j, v);
        }
    } else {
        for (int64_t j = threadIdx.x; j < dim; j += blockDim.x)
            yr[j] = from_f32<TA>(to_f32(w[j]) * (to_f32(xr[j]) * r));
    }
}

bool aligned16(const void *p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

template <typename TA, typename TW>
cudaError_t launch(void *out, const void *x, const void *w, int64_t n, int64_t dim,
                   float eps, cudaStream_t stream)
{
    const bool vec = dim % 8 == 0 && aligned16(out) && aligned16(x) && aligned16(w);
    const int64_t lanes = vec ? dim / 8 : dim; /* work items per row */
    int threads = 32;
    while (threads < kMaxThreads && threads < lanes) threads *= 2;
    /* Short rows want fewer threads; long rows want enough loads in flight. */
    if (threads > 256 && lanes < 4 * 256) threads = 256;
    TA *o = static_cast<TA *>(out);
    const TA *xi = static_cast<const TA *>(x);
    const TW *wi = static_cast<const TW *>(w);
    if (vec)
        rmsnorm_kernel<TA, TW, true><<<(unsigned)n, threads, 0, stream>>>(o, xi, wi, dim, eps);
    else
        rmsnorm_kernel<TA, TW, false><<<(unsigned)n, threads, 0, stream>>>(o, xi, wi, dim, eps);
    return cudaGetLastError();
}

template <typename TA>
cudaError_t launch_w(void *out, const void *x, const void *w, loom_dtype w_dt, int64_t n,
                     int64_t dim, float eps, cudaStream_t stream)
{
    switch (w_dt) {
    case LOOM_F32: return launch<TA, float>(out, x, w, n, dim, eps, stream);
    case LOOM_F16: return launch<TA, __half>(out, x, w, n, dim, eps, stream);
    case LOOM_BF16: return launch<TA, __nv_bfloat16>(out, x, w, n, dim, eps, stream);
    default: return cudaErrorInvalidValue;
    }
}

} // namespace

extern "C" int loom_cuda_rmsnorm(void *out, const void *x, loom_dtype act_dt,
                                 const void *w, loom_dtype w_dt,
                                 int64_t n, int64_t dim, float eps, void *stream)
{
    if (n < 0 || dim < 0 || n > 0x7fffffff) return (int)cudaErrorInvalidValue;
    if (n == 0 || dim == 0) return (int)cudaSuccess;
    cudaStream_t s = static_cast<cudaStream_t>(stream);
    switch (act_dt) {
    case LOOM_F32: return (int)launch_w<float>(out, x, w, w_dt, n, dim, eps, s);
    case LOOM_F16: return (int)launch_w<__half>(out, x, w, w_dt, n, dim, eps, s);
    case LOOM_BF16: return (int)launch_w<__nv_bfloat16>(out, x, w, w_dt, n, dim, eps, s);
    default: return (int)cudaErrorInvalidValue;
    }
}
