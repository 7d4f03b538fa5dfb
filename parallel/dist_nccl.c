/* NCCL communicators and the GPU model's data-plane hooks (see dist_nccl.h). */
#include "dist_nccl.h"

#include <cuda_runtime_api.h>
#include <nccl.h>
#include <stdlib.h>

#include "../util/gpu_env.h"
#include "custom_ar.h"

/* The one-shot all-reduce (custom_ar.h) takes sums of up to this many bytes
 * times (TP ranks - 1), the bytes each rank reads from its peers. */
#define AR_ONESHOT_BYTES ((size_t)1 << 20)

struct loom_nccl {
    ncclComm_t tp, pp;
    int tp_size, pp_rank, pp_size;
    loom_custom_ar *ar; /* NULL: NCCL for every sum */
    loom_gpu_dist hooks;
};

static ncclDataType_t nccl_type(loom_dtype dt)
{
    return dt == LOOM_F16 ? ncclHalf : dt == LOOM_BF16 ? ncclBfloat16 : ncclFloat;
}

static int hook_allreduce(void *ctx, void *buf, int64_t n, loom_dtype dt, void *stream)
{
    loom_nccl *c = ctx;
    const size_t bytes = (size_t)n * loom_dtype_size(dt);
    if (c->ar && bytes * (size_t)(c->tp_size - 1) <= AR_ONESHOT_BYTES && !((uintptr_t)buf & 15))
        return loom_cuda_ar_run(loom_custom_ar_view(c->ar), buf, n, dt, stream);
    return (int)ncclAllReduce(buf, buf, (size_t)n, nccl_type(dt), ncclSum, c->tp, (cudaStream_t)stream);
}

static int hook_allgather(void *ctx, const void *send, void *recv, int64_t n, loom_dtype dt, void *stream)
{
    loom_nccl *c = ctx;
    return (int)ncclAllGather(send, recv, (size_t)n, nccl_type(dt), c->tp, (cudaStream_t)stream);
}

static int hook_send(void *ctx, const void *buf, int64_t n, loom_dtype dt, void *stream)
{
    loom_nccl *c = ctx;
    return (int)ncclSend(buf, (size_t)n, nccl_type(dt), c->pp_rank + 1, c->pp, (cudaStream_t)stream);
}

static int hook_recv(void *ctx, void *buf, int64_t n, loom_dtype dt, void *stream)
{
    loom_nccl *c = ctx;
    return (int)ncclRecv(buf, (size_t)n, nccl_type(dt), c->pp_rank - 1, c->pp, (cudaStream_t)stream);
}

static loom_status init_comm(MPI_Comm comm, ncclComm_t *out, loom_err *err)
{
    int rank, size;
    MPI_Comm_rank(comm, &rank);
    MPI_Comm_size(comm, &size);
    ncclUniqueId id;
    if (rank == 0 && ncclGetUniqueId(&id) != ncclSuccess) return loom_err_set(err, LOOM_EIO, "ncclGetUniqueId failed");
    MPI_Bcast(&id, sizeof id, MPI_BYTE, 0, comm);
    ncclResult_t r = ncclCommInitRank(out, size, id, rank);
    if (r != ncclSuccess) return loom_err_set(err, LOOM_EIO, "NCCL communicator of %d ranks: %s", size, ncclGetErrorString(r));
    return LOOM_OK;
}

loom_nccl *loom_nccl_create(MPI_Comm tp_comm, MPI_Comm pp_comm, loom_err *err)
{
    loom_nccl *n = calloc(1, sizeof *n);
    if (!n) {
        loom_err_set(err, LOOM_ENOMEM, "out of memory");
        return NULL;
    }
    MPI_Comm_size(tp_comm, &n->tp_size);
    MPI_Comm_rank(pp_comm, &n->pp_rank);
    MPI_Comm_size(pp_comm, &n->pp_size);
    if ((n->tp_size > 1 && init_comm(tp_comm, &n->tp, err) != LOOM_OK) || (n->pp_size > 1 && init_comm(pp_comm, &n->pp, err) != LOOM_OK)) {
        loom_nccl_destroy(n);
        return NULL;
    }
    /* the same switch value on every rank (mpirun passes the environment) */
    if (n->tp_size > 1 && loom_gpu_env_int("LOOM_CUSTOM_ALLREDUCE")) n->ar = loom_custom_ar_create(tp_comm, AR_ONESHOT_BYTES);
    n->hooks = (loom_gpu_dist){.ctx = n, .allreduce = hook_allreduce, .allgather = hook_allgather, .send_next = hook_send, .recv_prev = hook_recv};
    return n;
}

void loom_nccl_destroy(loom_nccl *n)
{
    if (!n) return;
    loom_custom_ar_destroy(n->ar);
    if (n->tp) ncclCommDestroy(n->tp);
    if (n->pp) ncclCommDestroy(n->pp);
    free(n);
}

const loom_gpu_dist *loom_nccl_hooks(const loom_nccl *n) { return &n->hooks; }
