/* Programmatic dependent launch (Hopper): a kernel launched with it may be
 * scheduled while the kernel before it on the stream is still running, which
 * hides the launch; pdl_wait() blocks until that kernel has finished and its
 * writes are visible, pdl_trigger() lets the kernel after it be scheduled
 * (else that happens when this grid exits). Both are no-ops
 * before sm_90 and in kernels launched without the attribute, so a kernel
 * that calls them is correct however it is launched. The switch is
 * process-wide (loom_cuda_set_pdl in ops_cuda.h, pdl.cu). */
#ifndef LOOM_KERNELS_CUDA_PDL_CUH
#define LOOM_KERNELS_CUDA_PDL_CUH

#include <cuda_runtime.h>

#include <utility>

__device__ __forceinline__ void pdl_wait()
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

__device__ __forceinline__ void pdl_trigger()
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

/* Whether launches through pdl_launch carry the attribute (pdl.cu). */
bool pdl_enabled();

/* kernel<<<grid, block, smem, st>>>(args...), with programmatic stream
 * serialization when pdl_enabled(). */
template <typename... KArgs, typename... Args>
cudaError_t pdl_launch(void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem, cudaStream_t st, Args &&...args)
{
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[0].val.programmaticStreamSerializationAllowed = 1;
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = grid;
    cfg.blockDim = block;
    cfg.dynamicSmemBytes = smem;
    cfg.stream = st;
    cfg.attrs = attr;
    cfg.numAttrs = pdl_enabled() ? 1 : 0;
    return cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...);
}

#endif
