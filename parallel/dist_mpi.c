/* MPI implementation of the data-plane hooks (see dist_mpi.h). Activations
 * between stages use one tag; MPI keeps messages of one (source, tag, comm)
 * in order, so stages stay in step without sequence numbers. */
#include "dist_mpi.h"

#include <limits.h>
#include <stdlib.h>

#define PP_TAG 17

struct loom_mpi_dist {
    loom_topo topo;
    MPI_Comm tp_comm, pp_comm;
    int tp_local;
    loom_dist hooks;
};

static loom_status mpi_fail(loom_err *err, int rc, const char *what)
{
    char msg[MPI_MAX_ERROR_STRING];
    int len = 0;
    MPI_Error_string(rc, msg, &len);
    return loom_err_set(err, LOOM_EIO, "MPI %s failed: %s", what, msg);
}

static loom_status count_ok(int64_t n, loom_err *err)
{
    if (n < 0 || n > INT_MAX) return loom_err_set(err, LOOM_EINTERNAL, "message of %lld floats is too large for one MPI call", (long long)n);
    return LOOM_OK;
}

static loom_status hook_allreduce(void *ctx, float *buf, int64_t n, loom_err *err)
{
    loom_mpi_dist *d = ctx;
    LOOM_CHECK(count_ok(n, err));
    int rc = MPI_Allreduce(MPI_IN_PLACE, buf, (int)n, MPI_FLOAT, MPI_SUM, d->tp_comm);
    return rc == MPI_SUCCESS ? LOOM_OK : mpi_fail(err, rc, "all-reduce");
}

static loom_status hook_gather(void *ctx, const float *local, int64_t count, float *out, loom_err *err)
{
    loom_mpi_dist *d = ctx;
    LOOM_CHECK(count_ok(count, err));
    int rc = MPI_Gather(local, (int)count, MPI_FLOAT, out, (int)count, MPI_FLOAT, 0, d->tp_comm);
    return rc == MPI_SUCCESS ? LOOM_OK : mpi_fail(err, rc, "gather");
}

static loom_status hook_send(void *ctx, const float *buf, int64_t n, loom_err *err)
{
    loom_mpi_dist *d = ctx;
    LOOM_CHECK(count_ok(n, err));
    int rc = MPI_Send(buf, (int)n, MPI_FLOAT, d->topo.pp_rank + 1, PP_TAG, d->pp_comm);
    return rc == MPI_SUCCESS ? LOOM_OK : mpi_fail(err, rc, "send to the next stage");
}

static loom_status hook_recv(void *ctx, float *buf, int64_t n, loom_err *err)
{
    loom_mpi_dist *d = ctx;
    LOOM_CHECK(count_ok(n, err));
    MPI_Status st;
    int rc = MPI_Recv(buf, (int)n, MPI_FLOAT, d->topo.pp_rank - 1, PP_TAG, d->pp_comm, &st);
    if (rc != MPI_SUCCESS) return mpi_fail(err, rc, "receive from the previous stage");
    int got = 0;
    MPI_Get_count(&st, MPI_FLOAT, &got);
    if (got != (int)n)
        return loom_err_set(err, LOOM_EINTERNAL, "stage %d received %d floats of activations, expected %lld", d->topo.pp_rank, got, (long long)n);
    return LOOM_OK;
}

loom_mpi_dist *loom_mpi_dist_create(MPI_Comm workers, int tp, int pp, loom_err *err)
{
    int rank, size;
    MPI_Comm_rank(workers, &rank);
    MPI_Comm_size(workers, &size);
    if (size != tp * pp) {
        loom_err_set(err, LOOM_EINVAL, "%d worker ranks cannot form tp %d x pp %d", size, tp, pp);
        return NULL;
    }
    loom_mpi_dist *d = calloc(1, sizeof *d);
    if (!d) {
        loom_err_set(err, LOOM_ENOMEM, "out of memory");
        return NULL;
    }
    d->tp_comm = d->pp_comm = MPI_COMM_NULL;
    if (loom_topo_make(tp, pp, rank, &d->topo, err) != LOOM_OK) goto fail;
    int rc = MPI_Comm_split(workers, d->topo.pp_rank, d->topo.tp_rank, &d->tp_comm);
    if (rc == MPI_SUCCESS) rc = MPI_Comm_split(workers, d->topo.tp_rank, d->topo.pp_rank, &d->pp_comm);
    if (rc != MPI_SUCCESS) {
        mpi_fail(err, rc, "communicator split");
        goto fail;
    }
    /* Does each TP group live on one node? (All-reduce traffic should not cross nodes.) */
    MPI_Comm node;
    MPI_Comm_split_type(d->tp_comm, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node);
    int node_size = 0, all_local = 0;
    MPI_Comm_size(node, &node_size);
    int mine = node_size == tp;
    MPI_Allreduce(&mine, &all_local, 1, MPI_INT, MPI_LAND, workers);
    MPI_Comm_free(&node);
    d->tp_local = all_local;
    d->hooks = (loom_dist){
        .ctx = d,
        .tp_allreduce = hook_allreduce,
        .tp_gather = hook_gather,
        .pp_send = hook_send,
        .pp_recv = hook_recv,
    };
    return d;
fail:
    loom_mpi_dist_destroy(d);
    return NULL;
}

void loom_mpi_dist_destroy(loom_mpi_dist *d)
{
    if (!d) return;
    if (d->tp_comm != MPI_COMM_NULL) MPI_Comm_free(&d->tp_comm);
    if (d->pp_comm != MPI_COMM_NULL) MPI_Comm_free(&d->pp_comm);
    free(d);
}

const loom_dist *loom_mpi_dist_hooks(const loom_mpi_dist *d) { return &d->hooks; }
const loom_topo *loom_mpi_dist_topo(const loom_mpi_dist *d) { return &d->topo; }
MPI_Comm loom_mpi_dist_tp_comm(const loom_mpi_dist *d) { return d->tp_comm; }
MPI_Comm loom_mpi_dist_pp_comm(const loom_mpi_dist *d) { return d->pp_comm; }
int loom_mpi_dist_tp_local(const loom_mpi_dist *d) { return d->tp_local; }
