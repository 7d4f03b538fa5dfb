/* The MPI data plane: a communicator per TP group and one per pipeline (the
 * workers with the same TP rank), and the loom_dist hooks the forward pass
 * calls (all-reduce, gather to TP rank 0, stage-to-stage send/receive). Used
 * on the CPU backend; NCCL takes the same hooks on GPUs. */
#ifndef LOOM_PARALLEL_DIST_MPI_H
#define LOOM_PARALLEL_DIST_MPI_H

#include <mpi.h>

#include "../worker/model.h"
#include "topology.h"

typedef struct loom_mpi_dist loom_mpi_dist;

/* Splits `workers` (exactly tp*pp ranks, worker index = rank in it) into TP
 * and PP communicators. Collective over `workers`. Returns NULL and fills err
 * on failure. */
loom_mpi_dist *loom_mpi_dist_create(MPI_Comm workers, int tp, int pp, loom_err *err);

/* Frees the communicators; accepts NULL. Collective over the workers. */
void loom_mpi_dist_destroy(loom_mpi_dist *d);

/* The hooks for loom_model_load / the forward pass (valid while d lives). */
const loom_dist *loom_mpi_dist_hooks(const loom_mpi_dist *d);

/* This rank's place in the layout. */
const loom_topo *loom_mpi_dist_topo(const loom_mpi_dist *d);

/* The TP group's and the pipeline's communicators. */
MPI_Comm loom_mpi_dist_tp_comm(const loom_mpi_dist *d);
MPI_Comm loom_mpi_dist_pp_comm(const loom_mpi_dist *d);

/* True when every TP group's ranks share a node (checked at create). */
int loom_mpi_dist_tp_local(const loom_mpi_dist *d);

#endif
