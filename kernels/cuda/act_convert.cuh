/* Conversions between fp32 and the activation types (float, fp16, bf16),
 * round to nearest even, of scalars and of 16-bit pairs; shared by the
 * kernels. Included by .cu files only. */
#ifndef LOOM_KERNELS_CUDA_ACT_CONVERT_CUH
#define LOOM_KERNELS_CUDA_ACT_CONVERT_CUH

#include <cuda_bf16.h>
#include <cuda_fp16.h>

template <typename T> __device__ __forceinline__ float to_f32(T v);
template <> __device__ __forceinline__ float to_f32<float>(float v) { return v; }
template <> __device__ __forceinline__ float to_f32<__half>(__half v) { return __half2float(v); }
template <> __device__ __forceinline__ float to_f32<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T from_f32(float v);
template <> __device__ __forceinline__ float from_f32<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_f32<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

/* Pairs: the two-element type of each 16-bit type, to and from float2. */
template <typename T> struct Pair;
template <> struct Pair<__half> { typedef __half2 type; };
template <> struct Pair<__nv_bfloat16> { typedef __nv_bfloat162 type; };

template <typename P> __device__ __forceinline__ float2 to_f2(const P v);
template <> __device__ __forceinline__ float2 to_f2<__half2>(const __half2 v) { return __half22float2(v); }
template <> __device__ __forceinline__ float2 to_f2<__nv_bfloat162>(const __nv_bfloat162 v) { return __bfloat1622float2(v); }

template <typename P> __device__ __forceinline__ P pack2(float a, float b);
template <> __device__ __forceinline__ __half2 pack2<__half2>(float a, float b) { return __floats2half2_rn(a, b); }
template <> __device__ __forceinline__ __nv_bfloat162 pack2<__nv_bfloat162>(float a, float b) { return __floats2bfloat162_rn(a, b); }

#endif
