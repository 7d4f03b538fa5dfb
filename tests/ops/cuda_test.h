/* What the CUDA op tests share: checks that end the test on a CUDA error or a
 * failed loom_cuda_* call (naming the call and the line), allocations that
 * cannot fail silently, blocking copies, and the skip (exit 77, meson's "skipped") when the
 * machine has no GPU. Header-only: each test is its own program. */
#ifndef LOOM_TESTS_OPS_CUDA_TEST_H
#define LOOM_TESTS_OPS_CUDA_TEST_H

#include <cuda_runtime_api.h>
#include <stdio.h>
#include <stdlib.h>

#define CUDA_CHECK(expr)                                                              \
    do {                                                                              \
        cudaError_t e_ = (expr);                                                      \
        if (e_ != cudaSuccess) {                                                      \
            fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #expr,             \
                    cudaGetErrorString(e_));                                          \
            exit(1);                                                                  \
        }                                                                             \
    } while (0)

/* A loom_cuda_* call: its status, then any asynchronous launch error. */
#define OP_CHECK(expr)                                                                \
    do {                                                                              \
        int st_ = (expr);                                                             \
        if (st_ != 0) {                                                               \
            fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #expr,             \
                    cudaGetErrorString((cudaError_t)st_));                            \
            exit(1);                                                                  \
        }                                                                             \
    } while (0)

static inline void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p) { fprintf(stderr, "out of memory\n"); exit(1); }
    return p;
}

/* Device allocation (16 bytes for 0) and the two blocking copies, ending the test on an error. */
static inline void *dmalloc(size_t bytes)
{
    void *d;
    CUDA_CHECK(cudaMalloc(&d, bytes ? bytes : 16));
    return d;
}
static inline void upload(void *d, const void *h, size_t bytes) { CUDA_CHECK(cudaMemcpy(d, h, bytes, cudaMemcpyHostToDevice)); }
static inline void download(void *h, const void *d, size_t bytes) { CUDA_CHECK(cudaMemcpy(h, d, bytes, cudaMemcpyDeviceToHost)); }

/* 77 after a SKIP line on stdout when no CUDA device is present; else 0. */
static inline int cuda_test_skip_without_device(void)
{
    int count = 0;
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess || count == 0) {
        printf("SKIP: no CUDA device (%s); the ops suite needs the GPU machine\n",
               e != cudaSuccess ? cudaGetErrorString(e) : "0 devices");
        return 77;
    }
    return 0;
}

#endif
