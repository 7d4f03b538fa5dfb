/* FP8 E4M3 elements of the KV cache (LOOM_F8E4M3, unit scale): device
 * conversions of scalars and of 8-element rows (8 bytes) to and from fp32,
 * fp32 -> E4M3 rounding to nearest even and saturating to +-448 (as
 * util/dtype.c's loom_f32_to_e4m3, the CPU oracle's). E4M3 -> fp16 is exact
 * (every E4M3 value is an fp16 value), so rows widen through the hardware's
 * paired fp8 -> fp16 conversion. Included by .cu files only. */
#ifndef LOOM_KERNELS_CUDA_KV_FP8_CUH
#define LOOM_KERNELS_CUDA_KV_FP8_CUH

#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <cstdint>

#include "act_convert.cuh"

typedef __nv_fp8_e4m3 kv_fp8; /* one byte */

__device__ __forceinline__ uint8_t e4m3_from_f32(float x)
{
    return (uint8_t)__nv_cvt_float_to_fp8(x, __NV_SATFINITE, __NV_E4M3);
}

__device__ __forceinline__ float e4m3_to_f32(uint8_t v)
{
    const __half_raw h = __nv_cvt_fp8_to_halfraw((__nv_fp8_storage_t)v, __NV_E4M3);
    return __half2float(__half(h));
}

/* One pool element of either kind widens through to_f32 (act_convert.cuh). */
template <> __device__ __forceinline__ float to_f32<kv_fp8>(kv_fp8 v) { return e4m3_to_f32(v.__x); }

/* Two E4M3 values (low byte first) -> fp16 pair, exact. */
__device__ __forceinline__ __half2 e4m3x2_to_half2(uint16_t v)
{
    const __half2_raw h = __nv_cvt_fp8x2_to_halfraw2((__nv_fp8x2_storage_t)v, __NV_E4M3);
    return __half2(h);
}

/* 8 E4M3 values in 8 bytes -> fp32. */
__device__ __forceinline__ void e4m3x8_to_f32(const uint2 u, float f[8])
{
    const uint32_t w[2] = {u.x, u.y};
#pragma unroll
    for (int i = 0; i < 2; i++) {
        const float2 a = __half22float2(e4m3x2_to_half2((uint16_t)(w[i] & 0xffffu)));
        const float2 b = __half22float2(e4m3x2_to_half2((uint16_t)(w[i] >> 16)));
        f[4 * i] = a.x;
        f[4 * i + 1] = a.y;
        f[4 * i + 2] = b.x;
        f[4 * i + 3] = b.y;
    }
}

/* 8 fp32 -> 8 E4M3 values in 8 bytes. */
__device__ __forceinline__ uint2 e4m3x8_from_f32(const float f[8])
{
    uint32_t w[2];
#pragma unroll
    for (int i = 0; i < 2; i++) {
        const uint32_t lo = __nv_cvt_float2_to_fp8x2(make_float2(f[4 * i], f[4 * i + 1]), __NV_SATFINITE, __NV_E4M3);
        const uint32_t hi = __nv_cvt_float2_to_fp8x2(make_float2(f[4 * i + 2], f[4 * i + 3]), __NV_SATFINITE, __NV_E4M3);
        w[i] = (lo & 0xffffu) | (hi << 16);
    }
    return make_uint2(w[0], w[1]);
}

#endif
