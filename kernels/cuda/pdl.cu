/* The process-wide switch for programmatic dependent launch (pdl.cuh). */
#include "ops_cuda.h"
#include "pdl.cuh"

static bool g_pdl = false;

bool pdl_enabled() { return g_pdl; }

extern "C" int loom_cuda_set_pdl(int on)
{
    int dev = 0, major = 0;
    if (on && (cudaGetDevice(&dev) != cudaSuccess || cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess))
        on = 0;
    g_pdl = on && major >= 9;
    return g_pdl ? 1 : 0;
}

extern "C" int loom_cuda_pdl_on(void) { return g_pdl ? 1 : 0; }
