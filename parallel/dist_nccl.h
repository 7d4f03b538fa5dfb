/* The GPU data plane: an NCCL communicator per TP group (all-reduce,
 * all-gather) and one per pipeline (send/receive of activations between
 * stages), built from the MPI communicators of parallel/dist_mpi.h (the NCCL
 * unique ids travel over MPI). Filled into loom_gpu_dist for the GPU model. */
#ifndef LOOM_PARALLEL_DIST_NCCL_H
#define LOOM_PARALLEL_DIST_NCCL_H

#include <mpi.h>

#include "../util/dtype.h"
#include "../util/status.h"
#include "../worker/gpu_model.h"

typedef struct loom_nccl loom_nccl;

/* Collective over tp_comm and over pp_comm. The CUDA device must be set first.
 * On error returns NULL and fills err. */
loom_nccl *loom_nccl_create(MPI_Comm tp_comm, MPI_Comm pp_comm, loom_err *err);

/* Frees the communicators; accepts NULL. */
void loom_nccl_destroy(loom_nccl *n);

/* The hooks for loom_gpu_model_load_part (valid while n lives). */
const loom_gpu_dist *loom_nccl_hooks(const loom_nccl *n);

#endif
