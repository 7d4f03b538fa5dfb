/* The one-shot all-reduce's set-up (kernels/cuda/allreduce.h) for a TP group
 * whose ranks share one node and can map each other's GPU memory: staging
 * buffers and flags allocated on each GPU, their CUDA IPC handles exchanged
 * over MPI and opened on every peer. Used by parallel/dist_nccl.c for small
 * sums; NCCL does the rest. */
#ifndef LOOM_PARALLEL_CUSTOM_AR_H
#define LOOM_PARALLEL_CUSTOM_AR_H

#include <mpi.h>

#include "../kernels/cuda/allreduce.h"
#include "../util/status.h"

typedef struct loom_custom_ar loom_custom_ar;

/* Collective over tp_comm (every rank calls it; the CUDA device set first).
 * Returns the set-up, or NULL when the group cannot use it (not an error:
 * NCCL then does every sum):
 * one rank, more than LOOM_AR_MAX_RANKS, ranks on different nodes, GPUs
 * without peer access, or a CUDA call failing on any rank (the decision is
 * the same on every rank). stage_bytes: each staging buffer's size. */
loom_custom_ar *loom_custom_ar_create(MPI_Comm tp_comm, size_t stage_bytes);

/* Closes the peers' mappings and frees this rank's buffers; accepts NULL. */
void loom_custom_ar_destroy(loom_custom_ar *a);

/* The kernel's view (valid while a lives). */
const loom_cuda_ar *loom_custom_ar_view(const loom_custom_ar *a);

#endif
