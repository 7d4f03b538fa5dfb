/* Peer-mapped buffers for the one-shot all-reduce (custom_ar.h). */
#include "custom_ar.h"

#include <cuda_runtime_api.h>
#include <stdlib.h>
#include <string.h>

struct loom_custom_ar {
    loom_cuda_ar view;
    void *own_stage, *own_flags; /* this rank's allocations */
    void *peer_stage[LOOM_AR_MAX_RANKS], *peer_flags[LOOM_AR_MAX_RANKS]; /* opened IPC mappings (NULL for self) */
};

/* What each rank publishes. */
typedef struct {
    cudaIpcMemHandle_t stage, flags;
    int device, ok;
} ar_card;

static int all_true(MPI_Comm comm, int mine)
{
    int all = 0;
    MPI_Allreduce(&mine, &all, 1, MPI_INT, MPI_LAND, comm);
    return all;
}

loom_custom_ar *loom_custom_ar_create(MPI_Comm tp_comm, size_t stage_bytes)
{
    int rank, world, node_size = 0;
    MPI_Comm_rank(tp_comm, &rank);
    MPI_Comm_size(tp_comm, &world);
    if (world < 2 || world > LOOM_AR_MAX_RANKS || stage_bytes == 0 || stage_bytes % 16) return NULL;
    MPI_Comm node;
    MPI_Comm_split_type(tp_comm, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node);
    MPI_Comm_size(node, &node_size);
    MPI_Comm_free(&node);
    if (!all_true(tp_comm, node_size == world)) return NULL;

    loom_custom_ar *a = calloc(1, sizeof *a);
    ar_card mine;
    memset(&mine, 0, sizeof mine);
    /* the flags, then this rank's per-block counters, in one zeroed allocation */
    const size_t flag_bytes = (size_t)LOOM_AR_MAX_RANKS * LOOM_AR_MAX_BLOCKS * sizeof(uint32_t);
    const size_t sync_bytes = flag_bytes + LOOM_AR_MAX_BLOCKS * sizeof(uint32_t);
    mine.ok = a && cudaGetDevice(&mine.device) == cudaSuccess && cudaMalloc(&a->own_stage, 2 * stage_bytes) == cudaSuccess &&
              cudaMalloc(&a->own_flags, sync_bytes) == cudaSuccess && cudaMemset(a->own_flags, 0, sync_bytes) == cudaSuccess &&
              cudaDeviceSynchronize() == cudaSuccess && cudaIpcGetMemHandle(&mine.stage, a->own_stage) == cudaSuccess &&
              cudaIpcGetMemHandle(&mine.flags, a->own_flags) == cudaSuccess;
    ar_card *cards = calloc((size_t)world, sizeof *cards);
    int ok = 1;
    if (!cards) mine.ok = 0;
    if (!all_true(tp_comm, mine.ok)) goto fail;
    MPI_Allgather(&mine, sizeof mine, MPI_BYTE, cards, sizeof mine, MPI_BYTE, tp_comm);
    for (int r = 0; r < world && ok; r++) {
        if (r == rank) continue;
        int can = 0;
        ok = cards[r].device != mine.device && cudaDeviceCanAccessPeer(&can, mine.device, cards[r].device) == cudaSuccess && can &&
             cudaIpcOpenMemHandle(&a->peer_stage[r], cards[r].stage, cudaIpcMemLazyEnablePeerAccess) == cudaSuccess &&
             cudaIpcOpenMemHandle(&a->peer_flags[r], cards[r].flags, cudaIpcMemLazyEnablePeerAccess) == cudaSuccess;
    }
    if (!all_true(tp_comm, ok)) goto fail;
    free(cards);
    cards = NULL;
    a->view.rank = rank;
    a->view.world = world;
    a->view.stage_bytes = stage_bytes;
    a->view.counters = (uint32_t *)((char *)a->own_flags + flag_bytes);
    for (int r = 0; r < world; r++) {
        char *s = r == rank ? a->own_stage : a->peer_stage[r];
        a->view.stage[r][0] = s;
        a->view.stage[r][1] = s + stage_bytes;
        a->view.flags[r] = r == rank ? a->own_flags : a->peer_flags[r];
    }
    return a;
fail:
    cudaGetLastError(); /* a failed call's error is not the caller's */
    free(cards);
    loom_custom_ar_destroy(a);
    return NULL;
}

void loom_custom_ar_destroy(loom_custom_ar *a)
{
    if (!a) return;
    cudaDeviceSynchronize(); /* this rank's last call has ended */
    for (int r = 0; r < LOOM_AR_MAX_RANKS; r++) {
        if (a->peer_stage[r]) cudaIpcCloseMemHandle(a->peer_stage[r]);
        if (a->peer_flags[r]) cudaIpcCloseMemHandle(a->peer_flags[r]);
    }
    if (a->own_stage) cudaFree(a->own_stage);
    if (a->own_flags) cudaFree(a->own_flags);
    free(a);
}

const loom_cuda_ar *loom_custom_ar_view(const loom_custom_ar *a) { return &a->view; }
