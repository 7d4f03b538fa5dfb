/* Skinny GEMM for decode (n <= 8 rows of x): y (n, out) = x (n, in) @ W^T
 * (+ bias). At these sizes the step is a stream over W, so the kernel is built
 * for bandwidth: one warp per output row, 16-byte loads of W with several in
 * flight, x read through the cache (it is small and reused by every warp),
 * fp32 accumulation and a shuffle reduction. cuBLASLt reaches 58-83% of the
 * copy bandwidth at n = 1 on these shapes (bench/results); this aims at ~90%. */
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "../../util/gpu_env.h"
#include "gemv1.cuh"
#include "ops_cuda.h"
#include "pdl.cuh"

#include <string.h>

#define ROWS_PER_BLOCK 4

/* S: scalar type, P: its pair type; N rows of x; Y: y's type (S, or float
 * not rounded). in % 8 == 0, 16-byte aligned rows. */
template <typename S, typename P, int N, typename Y>
__global__ void __launch_bounds__(32 * ROWS_PER_BLOCK) gemv_kernel(Y *__restrict__ y, const S *__restrict__ x, const S *__restrict__ w,
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
        float b = bias ? to_f32<S>(bias[row]) : 0.0f;
#pragma unroll
        for (int j = 0; j < N; j++) {
            if constexpr (sizeof(Y) == 4) y[(size_t)j * out + row] = acc[j] + b;
            else y[(size_t)j * out + row] = from_f32<S>(acc[j] + b);
        }
    }
}

template <typename S, typename P, typename Yt>
static int launch(void *y, const void *x, const void *w, const void *bias, int n, int in, int out, cudaStream_t st)
{
    dim3 block(32, ROWS_PER_BLOCK), grid((unsigned)((out + ROWS_PER_BLOCK - 1) / ROWS_PER_BLOCK));
    Yt *Y = (Yt *)y;
    const S *X = (const S *)x, *W = (const S *)w, *Bi = (const S *)bias;
    switch (n) {
    case 1: gemv_kernel<S, P, 1, Yt><<<grid, block, 0, st>>>(Y, X, W, Bi, in, out); break;
    case 2: gemv_kernel<S, P, 2, Yt><<<grid, block, 0, st>>>(Y, X, W, Bi, in, out); break;
    case 3: gemv_kernel<S, P, 3, Yt><<<grid, block, 0, st>>>(Y, X, W, Bi, in, out); break;
    case 4: gemv_kernel<S, P, 4, Yt><<<grid, block, 0, st>>>(Y, X, W, Bi, in, out); break;
    case 5: gemv_kernel<S, P, 5, Yt><<<grid, block, 0, st>>>(Y, X, W, Bi, in, out); break;
    case 6: gemv_kernel<S, P, 6, Yt><<<grid, block, 0, st>>>(Y, X, W, Bi, in, out); break;
    case 7: gemv_kernel<S, P, 7, Yt><<<grid, block, 0, st>>>(Y, X, W, Bi, in, out); break;
    case 8: gemv_kernel<S, P, 8, Yt><<<grid, block, 0, st>>>(Y, X, W, Bi, in, out); break;
    default: return (int)cudaErrorInvalidValue;
    }
    return (int)cudaGetLastError();
}

extern "C" int loom_cuda_gemv_ok(loom_dtype act, int64_t n, int64_t in_dim, const void *x, const void *w)
{
    return (act == LOOM_F16 || act == LOOM_BF16) && n >= 1 && n <= 8 && in_dim % 8 == 0 && in_dim <= (1 << 30) &&
           ((uintptr_t)x & 15) == 0 && ((uintptr_t)w & 15) == 0;
}

/* loom_cuda_gemv and _f32: y in act (Yh, Yb the fp16 and bf16 cases' y
 * types), or in fp32 not rounded (both float). */
template <typename Yh, typename Yb>
static int gemv_entry(void *y, const void *x, const void *w, const void *bias, loom_dtype act, int64_t n, int64_t in_dim, int64_t out_dim,
                      void *stream)
{
    if (!loom_cuda_gemv_ok(act, n, in_dim, x, w) || !y || out_dim < 1 || out_dim > (1 << 30)) return (int)cudaErrorInvalidValue;
    cudaStream_t st = (cudaStream_t)stream;
    if (act == LOOM_F16) return launch<__half, __half2, Yh>(y, x, w, bias, (int)n, (int)in_dim, (int)out_dim, st);
    return launch<__nv_bfloat16, __nv_bfloat162, Yb>(y, x, w, bias, (int)n, (int)in_dim, (int)out_dim, st);
}

extern "C" int loom_cuda_gemv(void *y, const void *x, const void *w, const void *bias, loom_dtype act, int64_t n, int64_t in_dim,
                              int64_t out_dim, void *stream)
{
    return gemv_entry<__half, __nv_bfloat16>(y, x, w, bias, act, n, in_dim, out_dim, stream);
}

extern "C" int loom_cuda_gemv_f32(float *y, const void *x, const void *w, const void *bias, loom_dtype act, int64_t n, int64_t in_dim,
                                  int64_t out_dim, void *stream)
{
    return gemv_entry<float, float>(y, x, w, bias, act, n, in_dim, out_dim, stream);
}

template <typename S, typename P, int MODE, int EPI>
__global__ void __launch_bounds__(32 * G1_WARPS, 4) gemv1_kernel(Gemv1Args a)
{
    extern __shared__ uint4 xs[]; /* the prologue's vector (in / 8 chunks), then gamma when staged */
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, n8 = a.in / 8;
    const int item0 = blockIdx.x * G1_WARPS + warp, istep = gridDim.x * G1_WARPS;
    const uint4 *x = static_cast<const uint4 *>(a.x);
    /* ADD_RMSNORM: gamma is a weight, so it goes to shared memory (after the
     * vector) before the wait, when it fits; the norm's second pass then
     * reads only shared memory. */
    const uint4 *g = static_cast<const uint4 *>(a.gamma);
    if (MODE == LOOM_GEMV_ADD_RMSNORM && a.gamma_staged) {
        for (int i = threadIdx.x; i < n8; i += blockDim.x) xs[n8 + i] = g[i];
        g = xs + n8;
    }
    pdl_wait(); /* from here on, what the kernel before wrote is visible */
    if (a.trigger == 1) pdl_trigger();
    if (MODE != LOOM_GEMV_SILU_MUL && a.row) { /* the embedding gather; a negative id reads zeros, as loom_cuda_embedding */
        const int32_t id = a.row[0];
        x = id >= 0 ? x + (int64_t)id * n8 : nullptr;
    }
    const uint4 zero = make_uint4(0, 0, 0, 0);
    if (MODE == LOOM_GEMV_PLAIN) {
        for (int i = threadIdx.x; i < n8; i += blockDim.x) xs[i] = x ? x[i] : zero;
    } else if (MODE == LOOM_GEMV_ADD_RMSNORM) { /* two passes: x + delta, then the norm in act */
        add_rmsnorm_into<P, false>(xs, x, a.delta, g, blockIdx.x == 0 ? static_cast<uint4 *>(a.x_out) : nullptr, a.in, a.eps,
                                   a.delta_f32 != 0);
    } else { /* LOOM_GEMV_SILU_MUL: x = [gate | up] */
        for (int i = threadIdx.x; i < n8; i += blockDim.x) {
            const uint4 gv = x[i], uv = x[n8 + i];
            uint4 v;
            const P *gp = reinterpret_cast<const P *>(&gv), *up = reinterpret_cast<const P *>(&uv);
            P *vp = reinterpret_cast<P *>(&v);
#pragma unroll
            for (int k = 0; k < 4; k++) {
                const float2 f = to_f2<P>(gp[k]), e = to_f2<P>(up[k]);
                vp[k] = pack2<P>(f.x / (1.0f + expf(-f.x)) * e.x, f.y / (1.0f + expf(-f.y)) * e.y); /* HF: act_fn(gate) * up */
            }
            xs[i] = v;
        }
    }
    __syncthreads();
    g1_rows<S, P, EPI>(a, xs, item0, istep, lane);
    if (a.trigger == 2) pdl_trigger();
}

#define G1_MAX_SMEM (96 << 10) /* the prologue's vector (and gamma) */
#define G1_MAX_DEVICES 16

#define G1_KERNELS(S, P)                                                                                                          \
    (const void *)gemv1_kernel<S, P, 0, EPI_STORE>, (const void *)gemv1_kernel<S, P, 1, EPI_STORE>,                              \
        (const void *)gemv1_kernel<S, P, 2, EPI_STORE>, (const void *)gemv1_kernel<S, P, 0, EPI_ROPE>,                           \
        (const void *)gemv1_kernel<S, P, 1, EPI_ROPE>, (const void *)gemv1_kernel<S, P, 0, EPI_GLU>,                             \
        (const void *)gemv1_kernel<S, P, 1, EPI_GLU>

/* SMs and the raised shared-memory limit, once per device. */
static int g1_device_setup(int *sms)
{
    static int cached_sms[G1_MAX_DEVICES];
    int dev = 0;
    cudaError_t e = cudaGetDevice(&dev);
    if (e != cudaSuccess) return (int)e;
    if (dev >= 0 && dev < G1_MAX_DEVICES && cached_sms[dev]) {
        *sms = cached_sms[dev];
        return 0;
    }
    int n = 0;
    if ((e = cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev)) != cudaSuccess) return (int)e;
    const void *kernels[] = {G1_KERNELS(__half, __half2), G1_KERNELS(__nv_bfloat16, __nv_bfloat162)};
    for (const void *k : kernels)
        if ((e = cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, G1_MAX_SMEM)) != cudaSuccess) return (int)e;
    if (dev >= 0 && dev < G1_MAX_DEVICES) cached_sms[dev] = n;
    *sms = n;
    return 0;
}

template <typename S, typename P, int EPI>
static int launch_mode(const Gemv1Args &a, int mode, dim3 grid, dim3 block, size_t smem, cudaStream_t st)
{
    if (mode == LOOM_GEMV_PLAIN) return (int)pdl_launch(gemv1_kernel<S, P, 0, EPI>, grid, block, smem, st, a);
    if (mode == LOOM_GEMV_ADD_RMSNORM) return (int)pdl_launch(gemv1_kernel<S, P, 1, EPI>, grid, block, smem, st, a);
    if (EPI == EPI_STORE) return (int)pdl_launch(gemv1_kernel<S, P, 2, EPI_STORE>, grid, block, smem, st, a);
    return (int)cudaErrorInvalidValue;
}

/* Read once (util/gpu_env.c has the ranges and defaults): blocks per SM
 * (LOOM_GEMV_BLOCKS_PER_SM; 4 measured the same as 2), where a PDL launch
 * lets the next kernel start (LOOM_PDL_TRIGGER: 0 at exit, 1 after the wait,
 * 2 after the rows), whether ADD_RMSNORM stages gamma before the wait
 * (LOOM_GEMV_GAMMA_EARLY: 3.726 against 3.770 ms a batch-1 step on an H200,
 * bench/results/2026-11-21-h200-decode-s4.md), and whether the grid is cut
 * to whole rounds of rows (LOOM_GEMV_BALANCE). */
struct G1Env {
    int bps, trigger, gamma_early, balance;
};
static const G1Env &g1_env()
{
    static G1Env e = {-1, -1, -1, -1};
    if (e.bps < 0) {
        e.balance = loom_gpu_env_int("LOOM_GEMV_BALANCE");
        e.trigger = loom_gpu_env_int("LOOM_PDL_TRIGGER");
        e.gamma_early = loom_gpu_env_int("LOOM_GEMV_GAMMA_EARLY");
        e.bps = loom_gpu_env_int("LOOM_GEMV_BLOCKS_PER_SM");
    }
    return e;
}

/* Dynamic shared memory of a launch with in_dim elements of 2 bytes in the
 * given prologue; *staged: gamma goes after the vector. */
static size_t g1_smem(int64_t in_dim, int mode, int *staged)
{
    size_t smem = (size_t)in_dim * 2;
    *staged = mode == LOOM_GEMV_ADD_RMSNORM && g1_env().gamma_early && 2 * smem <= G1_MAX_SMEM;
    return *staged ? 2 * smem : smem;
}

template <typename S, typename P>
static int launch1(const Gemv1Args &a, int mode, int epi, int sms, cudaStream_t st)
{
    const G1Env &env = g1_env();
    Gemv1Args b = a;
    b.trigger = env.trigger;
    const size_t smem = g1_smem(b.in, mode, &b.gamma_staged);
    const int blocks = g1_blocks(b.items, env.bps * sms, env.balance);
    const dim3 grid((unsigned)blocks), block(32 * G1_WARPS);
    if (epi == EPI_ROPE) return launch_mode<S, P, EPI_ROPE>(b, mode, grid, block, smem, st);
    if (epi == EPI_GLU) return launch_mode<S, P, EPI_GLU>(b, mode, grid, block, smem, st);
    return launch_mode<S, P, EPI_STORE>(b, mode, grid, block, smem, st);
}

extern "C" int loom_cuda_gemv1_fit(int64_t norm_in, int64_t max_in)
{
    int sms = 0, rc = g1_device_setup(&sms), dev = 0, per_sm = 0, per_block = 0, staged = 0;
    if (rc) return rc;
    if (norm_in < 0 || max_in < 0) return (int)cudaErrorInvalidValue;
    cudaError_t e;
    if ((e = cudaGetDevice(&dev)) != cudaSuccess || (e = cudaDeviceGetAttribute(&per_sm, cudaDevAttrMaxSharedMemoryPerMultiprocessor, dev)) ||
        (e = cudaDeviceGetAttribute(&per_block, cudaDevAttrReservedSharedMemoryPerBlock, dev)))
        return (int)e;
    size_t blk = g1_smem(max_in, LOOM_GEMV_PLAIN, &staged);
    const size_t norm = g1_smem(norm_in, LOOM_GEMV_ADD_RMSNORM, &staged);
    if (norm > blk) blk = norm;
    if (blk > G1_MAX_SMEM) blk = G1_MAX_SMEM; /* larger inputs are not launched here */
    /* two kernels' blocks (static memory: g1_block_sum's, under 64 bytes) */
    const size_t need = 2 * (size_t)g1_env().bps * (blk + 64 + (size_t)per_block);
    int pct = per_sm > 0 ? (int)((100 * need + (size_t)per_sm - 1) / (size_t)per_sm) : 100;
    if (pct > 100) pct = 100;
    const void *kernels[] = {G1_KERNELS(__half, __half2), G1_KERNELS(__nv_bfloat16, __nv_bfloat162)};
    for (const void *k : kernels)
        if ((e = cudaFuncSetAttribute(k, cudaFuncAttributePreferredSharedMemoryCarveout, pct)) != cudaSuccess) return (int)e;
    return 0;
}

extern "C" int loom_cuda_gemv1_ok(loom_dtype act, int64_t in_dim, const void *x, const void *w)
{
    return (act == LOOM_F16 || act == LOOM_BF16) && in_dim >= 8 && in_dim % 8 == 0 && in_dim * 2 <= G1_MAX_SMEM && ((uintptr_t)x & 15) == 0 &&
           ((uintptr_t)w & 15) == 0;
}

/* Checks the call and fills the arguments common to the entry points; *mode
 * gets the prologue. */
static int g1_args(Gemv1Args *a, int *mode_out, void *y, const void *x, const void *w, const void *bias, loom_dtype act, int64_t in_dim,
                   int64_t out_dim, const loom_gemv_pre *pre)
{
    const int mode = pre ? (int)pre->kind : LOOM_GEMV_PLAIN;
    *mode_out = mode;
    if (!loom_cuda_gemv1_ok(act, in_dim, x, w) || !y || out_dim < 1 || out_dim > (1 << 30) || mode < 0 || mode > 2)
        return (int)cudaErrorInvalidValue;
    if (mode == LOOM_GEMV_ADD_RMSNORM &&
        (!pre->gamma || ((uintptr_t)pre->gamma & 15) || ((uintptr_t)pre->delta & 15) || ((uintptr_t)pre->x_out & 15) || pre->x_out == x))
        return (int)cudaErrorInvalidValue;
    if (pre && pre->row && mode == LOOM_GEMV_SILU_MUL) return (int)cudaErrorInvalidValue;
    memset(a, 0, sizeof *a);
    a->y = y;
    a->x = x;
    a->w = w;
    a->bias = bias;
    a->delta = mode == LOOM_GEMV_ADD_RMSNORM ? pre->delta : nullptr;
    a->gamma = mode == LOOM_GEMV_ADD_RMSNORM ? pre->gamma : nullptr;
    a->x_out = mode == LOOM_GEMV_ADD_RMSNORM ? pre->x_out : nullptr;
    a->eps = mode == LOOM_GEMV_ADD_RMSNORM ? pre->eps : 0.0f;
    a->delta_f32 = mode == LOOM_GEMV_ADD_RMSNORM && pre->delta && pre->delta_f32;
    a->row = pre ? pre->row : nullptr;
    a->in = (int)in_dim;
    a->out = a->items = (int)out_dim;
    return 0;
}

/* loom_cuda_gemv1, _f32 and _partial: the plain-store epilogue, y in act
 * (y_f32 0), in fp32 rounded to act (1) or in fp32 not rounded (2). */
static int gemv1_store(void *y, int y_f32, const void *x, const void *w, const void *bias, loom_dtype act, int64_t in_dim, int64_t out_dim,
                       const loom_gemv_pre *pre, void *stream)
{
    Gemv1Args a;
    int mode, sms = 0, rc = g1_args(&a, &mode, y, x, w, bias, act, in_dim, out_dim, pre);
    if (rc || (rc = g1_device_setup(&sms))) return rc;
    a.y_f32 = y_f32;
    cudaStream_t st = (cudaStream_t)stream;
    if (act == LOOM_F16) return launch1<__half, __half2>(a, mode, EPI_STORE, sms, st);
    return launch1<__nv_bfloat16, __nv_bfloat162>(a, mode, EPI_STORE, sms, st);
}

extern "C" int loom_cuda_gemv1(void *y, const void *x, const void *w, const void *bias, loom_dtype act, int64_t in_dim, int64_t out_dim,
                               const loom_gemv_pre *pre, void *stream)
{
    return gemv1_store(y, 0, x, w, bias, act, in_dim, out_dim, pre, stream);
}

extern "C" int loom_cuda_gemv1_f32(float *y, const void *x, const void *w, const void *bias, loom_dtype act, int64_t in_dim,
                                   int64_t out_dim, const loom_gemv_pre *pre, void *stream)
{
    return gemv1_store(y, 1, x, w, bias, act, in_dim, out_dim, pre, stream);
}

extern "C" int loom_cuda_gemv1_partial(float *y, const void *x, const void *w, const void *bias, loom_dtype act, int64_t in_dim,
                                       int64_t out_dim, const loom_gemv_pre *pre, void *stream)
{
    return gemv1_store(y, 2, x, w, bias, act, in_dim, out_dim, pre, stream);
}

extern "C" int loom_cuda_gemv1_rope(void *y, const void *x, const void *w, const void *bias, loom_dtype act, int64_t in_dim,
                                    const loom_gemv_pre *pre, const loom_gemv_rope *rope, void *stream)
{
    if (!rope || !rope->pos || !rope->slot || !rope->inv_freq || !rope->pool || rope->n_heads < 1 || rope->n_kv_heads < 1 ||
        rope->head_dim < 2 || rope->head_dim % 2 || rope->tokens_per_block < 1 || (pre && pre->kind == LOOM_GEMV_SILU_MUL) ||
        rope->n_heads > (1 << 20) || rope->n_kv_heads > (1 << 20) || rope->head_dim > (1 << 20) || rope->tokens_per_block > (1 << 20))
        return (int)cudaErrorInvalidValue;
    Gemv1Args a;
    int mode, sms = 0, rc = g1_args(&a, &mode, y, x, w, bias, act, in_dim, (rope->n_heads + 2 * rope->n_kv_heads) * rope->head_dim, pre);
    if (rc || (rc = g1_device_setup(&sms))) return rc;
    a.items = (int)((rope->n_heads + rope->n_kv_heads) * (rope->head_dim / 2) + rope->n_kv_heads * rope->head_dim);
    a.pos = rope->pos;
    a.slot = rope->slot;
    a.inv_freq = rope->inv_freq;
    a.pool = rope->pool;
    a.n_heads = (int)rope->n_heads;
    a.n_kv_heads = (int)rope->n_kv_heads;
    a.head_dim = (int)rope->head_dim;
    a.tokens_per_block = (int)rope->tokens_per_block;
    a.half_elems = rope->tokens_per_block * rope->head_dim * rope->n_kv_heads;
    a.kv_f8 = rope->kv == LOOM_F8E4M3;
    cudaStream_t st = (cudaStream_t)stream;
    if (act == LOOM_F16) return launch1<__half, __half2>(a, mode, EPI_ROPE, sms, st);
    return launch1<__nv_bfloat16, __nv_bfloat162>(a, mode, EPI_ROPE, sms, st);
}

extern "C" int loom_cuda_gemv1_glu(void *y, const void *x, const void *w, const void *bias, loom_dtype act, int64_t in_dim, int64_t inter,
                                   const loom_gemv_pre *pre, void *stream)
{
    if (inter < 1 || inter > (1 << 29) || (pre && pre->kind == LOOM_GEMV_SILU_MUL)) return (int)cudaErrorInvalidValue;
    Gemv1Args a;
    int mode, sms = 0, rc = g1_args(&a, &mode, y, x, w, bias, act, in_dim, inter, pre); /* out = items = inter: the pairs */
    if (rc || (rc = g1_device_setup(&sms))) return rc;
    cudaStream_t st = (cudaStream_t)stream;
    if (act == LOOM_F16) return launch1<__half, __half2>(a, mode, EPI_GLU, sms, st);
    return launch1<__nv_bfloat16, __nv_bfloat162>(a, mode, EPI_GLU, sms, st);
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
