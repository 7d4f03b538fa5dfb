/* Rank topology: which tensor-parallel rank and pipeline stage an MPI worker
 * is. Worker w (world rank w + 1; rank 0 is the coordinator) is stage
 * w / tp, TP rank w % tp, so each TP group is tp consecutive ranks and stays
 * inside a node when the hostfile gives each node a multiple of tp slots. */
#ifndef LOOM_PARALLEL_TOPOLOGY_H
#define LOOM_PARALLEL_TOPOLOGY_H

#include "../util/status.h"

typedef struct loom_topo {
    int tp, pp;       /* group sizes */
    int worker;       /* 0 .. tp*pp-1 */
    int tp_rank;      /* worker % tp */
    int pp_rank;      /* worker / tp */
} loom_topo;

/* Fills t for worker index `worker` of a tp x pp layout. Errors name the
 * flag that is out of range. */
loom_status loom_topo_make(int tp, int pp, int worker, loom_topo *t, loom_err *err);

/* Checks that an MPI world of world_size ranks fits 1 coordinator + tp*pp
 * workers; the message gives the mpirun -n to use. */
loom_status loom_topo_check_world(int tp, int pp, int world_size, loom_err *err);

/* Worker index of (pp_rank, tp_rank). */
static inline int loom_topo_worker(int tp, int pp_rank, int tp_rank) { return pp_rank * tp + tp_rank; }

#endif
