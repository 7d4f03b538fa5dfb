/* One-shot all-reduce over peer-mapped staging buffers (allreduce.h). */
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "act_convert.cuh"
#include "allreduce.h"
#include "pdl.cuh"

namespace {

constexpr int kThreads = 512;

__device__ __forceinline__ void store_release_sys(uint32_t *p, uint32_t v)
{
    asm volatile("st.release.sys.global.u32 [%0], %1;" ::"l"(p), "r"(v) : "memory");
}

__device__ __forceinline__ uint32_t load_acquire_sys(const uint32_t *p)
{
    uint32_t v;
    asm volatile("ld.acquire.sys.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
    return v;
}

__device__ __forceinline__ uint64_t globaltimer()
{
    uint64_t t;
    asm volatile("mov.u64 %0, %globaltimer;" : "=l"(t));
    return t;
}

/* 16 bytes <-> V floats of T. */
template <typename T> struct Vec {
    static constexpr int V = 16 / sizeof(T);
    __device__ static void load(const uint4 &u, float *f)
    {
        const T *p = reinterpret_cast<const T *>(&u);
#pragma unroll
        for (int i = 0; i < V; i++) f[i] = to_f32<T>(p[i]);
    }
    __device__ static uint4 store(const float *f)
    {
        uint4 u;
        T *p = reinterpret_cast<T *>(&u);
#pragma unroll
        for (int i = 0; i < V; i++) p[i] = from_f32<T>(f[i]);
        return u;
    }
};

/* Block b takes the 16-byte vectors b * blockDim + t, strided by the grid,
 * and block 0 the tail (n % V elements): the same elements on every rank, so
 * block b only waits for the other ranks' block b. */
template <typename T> __global__ void __launch_bounds__(kThreads) ar_kernel(const loom_cuda_ar ar, T *buf, int64_t n)
{
    constexpr int V = Vec<T>::V;
    __shared__ uint32_t epoch_s;
    const int b = blockIdx.x, t = threadIdx.x;
    pdl_wait(); /* launched early (PDL): from here the kernel before has ended and its writes are visible */
    if (t == 0) {
        const uint32_t e = ar.counters[b] + 1;
        ar.counters[b] = e;
        epoch_s = e;
    }
    __syncthreads();
    const uint32_t epoch = epoch_s;
    const int par = epoch & 1;
    const int64_t nv = n / V, step = (int64_t)gridDim.x * blockDim.x;
    /* 1. this rank's input into its staging buffer */
    uint4 *mine = static_cast<uint4 *>(ar.stage[ar.rank][par]);
    const uint4 *in = reinterpret_cast<const uint4 *>(buf);
    for (int64_t i = (int64_t)b * blockDim.x + t; i < nv; i += step) mine[i] = in[i];
    const int64_t tail0 = nv * V;
    if (b == 0 && tail0 + t < n) static_cast<T *>(ar.stage[ar.rank][par])[tail0 + t] = buf[tail0 + t];
    /* 2. the barrier: signal every rank (this block's slot), wait for theirs */
    __syncthreads();
    if (t < ar.world) {
        __threadfence_system();
        store_release_sys(ar.flags[t] + ar.rank * LOOM_AR_MAX_BLOCKS + b, epoch);
        const uint32_t *mine_f = ar.flags[ar.rank] + t * LOOM_AR_MAX_BLOCKS + b;
        const uint64_t t0 = globaltimer(), limit = ar.timeout_ns ? ar.timeout_ns : LOOM_AR_TIMEOUT_NS;
        for (uint32_t spin = 1; (int32_t)(load_acquire_sys(mine_f) - epoch) < 0; spin++)
            if (!(spin & 1023) && globaltimer() - t0 > limit) __trap(); /* a peer that never comes: fail, do not hang */
    }
    __syncthreads();
    pdl_trigger(); /* the next kernel may be scheduled (it waits for this one's end) */
    /* 3. the sum in rank order (bypassing L1: the lines change every call) */
    for (int64_t i = (int64_t)b * blockDim.x + t; i < nv; i += step) {
        float acc[V], f[V];
#pragma unroll
        for (int k = 0; k < V; k++) acc[k] = 0.0f;
        for (int r = 0; r < ar.world; r++) {
            Vec<T>::load(__ldcg(static_cast<const uint4 *>(ar.stage[r][par]) + i), f);
#pragma unroll
            for (int k = 0; k < V; k++) acc[k] += f[k];
        }
        reinterpret_cast<uint4 *>(buf)[i] = Vec<T>::store(acc);
    }
    if (b == 0 && tail0 + t < n) {
        float acc = 0.0f;
        for (int r = 0; r < ar.world; r++) acc += to_f32<T>(__ldcg(static_cast<const T *>(ar.stage[r][par]) + tail0 + t));
        buf[tail0 + t] = from_f32<T>(acc);
    }
}

template <typename T> cudaError_t launch(const loom_cuda_ar *ar, void *buf, int64_t n, cudaStream_t st)
{
    constexpr int V = Vec<T>::V;
    const int64_t nv = n / V;
    int64_t blocks = (nv + kThreads - 1) / kThreads;
    if (blocks < 1) blocks = 1;
    if (blocks > LOOM_AR_MAX_BLOCKS) blocks = LOOM_AR_MAX_BLOCKS;
    return pdl_launch(ar_kernel<T>, dim3((unsigned)blocks), dim3(kThreads), 0, st, *ar, static_cast<T *>(buf), n);
}

} // namespace

extern "C" int loom_cuda_ar_run(const loom_cuda_ar *ar, void *buf, int64_t n, loom_dtype dt, void *stream)
{
    const size_t es = dt == LOOM_F32 ? 4 : 2;
    if (!ar || !buf || n < 0 || ((uintptr_t)buf & 15) || ar->world < 1 || ar->world > LOOM_AR_MAX_RANKS || ar->rank < 0 ||
        ar->rank >= ar->world || (size_t)n * es > ar->stage_bytes || (dt != LOOM_F32 && dt != LOOM_F16 && dt != LOOM_BF16))
        return (int)cudaErrorInvalidValue;
    if (n == 0) return 0;
    cudaStream_t st = static_cast<cudaStream_t>(stream);
    if (dt == LOOM_F32) return (int)launch<float>(ar, buf, n, st);
    if (dt == LOOM_F16) return (int)launch<__half>(ar, buf, n, st);
    return (int)launch<__nv_bfloat16>(ar, buf, n, st);
}
