/* Small device helpers the GPU model needs around the ops: dtype casts (weights
 * to the activation dtype at upload, logits to fp32 for sampling), gathering
 * rows (each sequence's last token before lm_head) and deterministic random
 * weights for `loom bench --dummy-weights`. */
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "gpu_glue.h"

__device__ __forceinline__ float load_as_float(const void *p, int dt, int64_t i)
{
    if (dt == LOOM_F32) return ((const float *)p)[i];
    if (dt == LOOM_F16) return __half2float(((const __half *)p)[i]);
    return __bfloat162float(((const __nv_bfloat16 *)p)[i]);
}

__device__ __forceinline__ void store_from_float(void *p, int dt, int64_t i, float v)
{
    if (dt == LOOM_F32) ((float *)p)[i] = v;
    else if (dt == LOOM_F16) ((__half *)p)[i] = __float2half_rn(v);
    else ((__nv_bfloat16 *)p)[i] = __float2bfloat16_rn(v);
}

__global__ void cast_kernel(void *dst, int dst_dt, const void *src, int src_dt, int64_t n)
{
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        store_from_float(dst, dst_dt, i, load_as_float(src, src_dt, i));
}

__global__ void gather_rows_kernel(void *dst, const void *src, int dt, const int32_t *rows, int64_t n_rows, int64_t dim)
{
    int64_t r = blockIdx.y;
    if (r >= n_rows) return;
    int64_t s = rows[r];
    for (int64_t j = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; j < dim; j += (int64_t)gridDim.x * blockDim.x)
        store_from_float(dst, dt, r * dim + j, load_as_float(src, dt, s * dim + j));
}

/* splitmix64-style hash of (seed, i) -> uniform in [-1, 1). */
__device__ __forceinline__ float hash_uniform(uint64_t seed, uint64_t i)
{
    uint64_t z = seed + 0x9e3779b97f4a7c15ull * (i + 1);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    return (float)(z >> 40) * (2.0f / 16777216.0f) - 1.0f;
}

__global__ void fill_random_kernel(void *dst, int dt, int64_t n, float scale, float offset, uint64_t seed)
{
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        store_from_float(dst, dt, i, offset + scale * hash_uniform(seed, (uint64_t)i));
}

static unsigned grid_for(int64_t n)
{
    int64_t g = (n + 255) / 256;
    return (unsigned)(g < 1 ? 1 : g > 65535 ? 65535 : g);
}

extern "C" int loom_gpu_cast(void *dst, loom_dtype dst_dt, const void *src, loom_dtype src_dt, int64_t n, void *stream)
{
    if (n <= 0) return 0;
    cast_kernel<<<grid_for(n), 256, 0, (cudaStream_t)stream>>>(dst, dst_dt, src, src_dt, n);
    return (int)cudaGetLastError();
}

extern "C" int loom_gpu_gather_rows(void *dst, const void *src, loom_dtype dt, const int32_t *rows, int64_t n_rows, int64_t dim,
                                    void *stream)
{
    if (n_rows <= 0) return 0;
    dim3 grid((unsigned)((dim + 255) / 256 > 64 ? 64 : (dim + 255) / 256), (unsigned)n_rows);
    gather_rows_kernel<<<grid, 256, 0, (cudaStream_t)stream>>>(dst, src, dt, rows, n_rows, dim);
    return (int)cudaGetLastError();
}

extern "C" int loom_gpu_fill_random(void *dst, loom_dtype dt, int64_t n, float scale, float offset, uint64_t seed, void *stream)
{
    if (n <= 0) return 0;
    fill_random_kernel<<<grid_for(n), 256, 0, (cudaStream_t)stream>>>(dst, dt, n, scale, offset, seed);
    return (int)cudaGetLastError();
}

__global__ void gather_vocab_kernel(float *dst, const void *src, int dt, int64_t tp, int64_t S, int64_t Vl, int64_t V)
{
    int64_t s = blockIdx.y;
    for (int64_t v = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; v < V; v += (int64_t)gridDim.x * blockDim.x) {
        int64_t r = v / Vl, j = v % Vl;
        dst[s * V + v] = load_as_float(src, dt, (r * S + s) * Vl + j);
    }
}

extern "C" int loom_gpu_gather_vocab(float *dst, const void *src, loom_dtype dt, int64_t tp, int64_t n_rows, int64_t vl, int64_t vocab,
                                     void *stream)
{
    if (n_rows <= 0) return 0;
    dim3 grid((unsigned)((vocab + 255) / 256 > 256 ? 256 : (vocab + 255) / 256), (unsigned)n_rows);
    gather_vocab_kernel<<<grid, 256, 0, (cudaStream_t)stream>>>(dst, src, dt, tp, n_rows, vl, vocab);
    return (int)cudaGetLastError();
}
