/* One-shot all-reduce for tensor parallelism on the GPUs of one node
 * (kernels/cuda/allreduce.cu): each rank copies its input into its own
 * peer-mapped staging buffer, the ranks meet at a flag barrier (per thread
 * block, over NVLink/PCIe peer writes), then every rank reads all ranks'
 * staging buffers and sums them in fp32 in rank order, so every rank gets
 * bitwise the same sum. One kernel and one barrier per call: for the small
 * sums of a decode step, where NCCL's all-reduce is latency-bound.
 * parallel/dist_nccl.c sets the buffers up (CUDA IPC over MPI) and picks it
 * for sums small enough; NCCL does the rest. */
#ifndef LOOM_KERNELS_CUDA_ALLREDUCE_H
#define LOOM_KERNELS_CUDA_ALLREDUCE_H

#include <stddef.h>
#include <stdint.h>

#include "../../util/dtype.h"

#ifdef __cplusplus
extern "C" {
#endif

enum {
    LOOM_AR_MAX_RANKS = 8,   /* ranks of one TP group on one node */
    LOOM_AR_MAX_BLOCKS = 36, /* thread blocks of one call (each one barrier participant) */
};

/* Device pointers valid on this rank's GPU; every rank's arrays are in rank
 * order. Staging buffers come in pairs (used alternately by successive calls,
 * so one barrier per call suffices); flags[r] is rank r's array of
 * LOOM_AR_MAX_RANKS * LOOM_AR_MAX_BLOCKS uint32, zeroed once, where rank p's
 * block b signals at [p * LOOM_AR_MAX_BLOCKS + b]; counters is this rank's
 * LOOM_AR_MAX_BLOCKS uint32 (zeroed once): each block's call count. Every
 * rank must make the same sequence of calls (same n, dtype) on its stream. */
typedef struct {
    void *stage[LOOM_AR_MAX_RANKS][2];
    uint32_t *flags[LOOM_AR_MAX_RANKS];
    uint32_t *counters;
    size_t stage_bytes; /* each staging buffer's size */
    uint64_t timeout_ns;  /* a block waiting this long for a peer traps (the call fails, the CUDA context is lost)
                           * instead of hanging; 0: LOOM_AR_TIMEOUT_NS */
    int rank, world;
} loom_cuda_ar;

#define LOOM_AR_TIMEOUT_NS 60000000000ull /* 60 s: a peer that never comes (a dead rank) */

/* buf (n elements of dt: fp32, fp16 or bf16; 16-byte aligned) = the sum of
 * every rank's buf, in fp32 in rank order (rounded once to dt). Needs
 * n * size(dt) <= stage_bytes. Returns 0 or a cudaError_t
 * (cudaErrorInvalidValue for bad arguments, nothing launched). If a peer
 * does not arrive within the timeout the kernel traps: the stream's next
 * synchronization returns an error (and the context is unusable). */
int loom_cuda_ar_run(const loom_cuda_ar *ar, void *buf, int64_t n, loom_dtype dt, void *stream);

#ifdef __cplusplus
}
#endif

#endif
