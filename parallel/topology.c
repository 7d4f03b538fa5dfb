/* Rank topology arithmetic (see topology.h). */
#include "topology.h"

loom_status loom_topo_make(int tp, int pp, int worker, loom_topo *t, loom_err *err)
{
    if (tp < 1 || tp > 4096) return loom_err_set(err, LOOM_EINVAL, "--tp must be between 1 and 4096 (got %d)", tp);
    if (pp < 1 || pp > 4096) return loom_err_set(err, LOOM_EINVAL, "--pp must be between 1 and 4096 (got %d)", pp);
    if (worker < 0 || worker >= tp * pp)
        return loom_err_set(err, LOOM_EINVAL, "worker %d is outside a %d x %d layout", worker, tp, pp);
    t->tp = tp;
    t->pp = pp;
    t->worker = worker;
    t->tp_rank = worker % tp;
    t->pp_rank = worker / tp;
    return LOOM_OK;
}

loom_status loom_topo_check_world(int tp, int pp, int world_size, loom_err *err)
{
    if (tp < 1 || pp < 1) return loom_err_set(err, LOOM_EINVAL, "--tp and --pp must be at least 1");
    if (world_size != 1 + tp * pp)
        return loom_err_set(err, LOOM_EINVAL, "--tp %d --pp %d needs 1 coordinator + %d workers: launch with mpirun -n %d (this job has %d ranks)",
                            tp, pp, tp * pp, 1 + tp * pp, world_size);
    return LOOM_OK;
}
