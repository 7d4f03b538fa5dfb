/* Distributed golden test on GPUs (suite ops; the multi-GPU machine), under
 * mpirun with tp*pp ranks, one GPU each: NCCL all-reduce/all-gather inside
 * each TP group, NCCL send/receive between stages. The last stage's TP rank 0
 * picks each greedy token and broadcasts it; it checks the tokens
 *  - against the same model on one GPU (run first, on that rank's GPU): all
 *    identical (TP sums fp32 partial products and rounds once, as one GPU's
 *    GEMM does; stages pass the residual as it is);
 *  - against transformers': at least 16 identical (the GPU golden criterion)
 *    and, for the demo model, all of llama2.c's 199.
 * Usage: mpirun -n TP*PP test_dist_gpu DIR TP PP   (exit 77 without enough GPUs) */
#include <cuda_runtime_api.h>
#include <jansson.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "parallel/dist_mpi.h"
#include "parallel/dist_nccl.h"
#include "util/parse.h"
#include "worker/gpu_model.h"
#include "worker/model.h"

static int64_t json_ids(json_t *a, int32_t **out)
{
    size_t n = json_array_size(a);
    *out = malloc((n ? n : 1) * sizeof **out);
    for (size_t i = 0; i < n; i++) (*out)[i] = (int32_t)json_integer_value(json_array_get(a, i));
    return (int64_t)n;
}

int main(int argc, char **argv)
{
    int provided, rank, size;
    MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    loom_err err = {{0}};
    int64_t tp = 0, pp = 0;
    if (argc != 4 || loom_parse_i64(argv[2], 1, 64, "tp", &tp, &err) || loom_parse_i64(argv[3], 1, 64, "pp", &pp, &err) || size != tp * pp) {
        if (rank == 0) fprintf(stderr, "usage: mpirun -n TP*PP test_dist_gpu DIR TP PP\n");
        MPI_Finalize();
        return 2;
    }
    int n_dev = 0;
    if (cudaGetDeviceCount(&n_dev) != cudaSuccess || n_dev < size) {
        if (rank == 0) printf("needs %d GPUs, found %d: skipped\n", size, n_dev);
        MPI_Finalize();
        return 77;
    }
    MPI_Comm node;
    int local = 0;
    MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node);
    MPI_Comm_rank(node, &local);
    MPI_Comm_free(&node);
    cudaSetDevice(local % n_dev);
    const char *dir = argv[1];
    char path[4096];
    snprintf(path, sizeof path, "%s/golden.json", dir);
    json_t *g = json_load_file(path, 0, NULL);
    int stories = 0;
    if (!g) {
        snprintf(path, sizeof path, "%s/expected_greedy.json", dir);
        g = json_load_file(path, 0, NULL);
        stories = 1;
    }
    int32_t *prompt, *want;
    int64_t n_prompt = json_ids(json_object_get(g, "prompt_ids"), &prompt);
    int64_t n_want = json_ids(json_object_get(g, stories ? "output_ids" : "greedy_ids"), &want);
    loom_mpi_dist *md = loom_mpi_dist_create(MPI_COMM_WORLD, (int)tp, (int)pp, &err);
    loom_nccl *nc = md ? loom_nccl_create(loom_mpi_dist_tp_comm(md), loom_mpi_dist_pp_comm(md), &err) : NULL;
    if (!nc) {
        fprintf(stderr, "rank %d: %s\n", rank, err.msg);
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    const loom_topo *t = loom_mpi_dist_topo(md);
    loom_config cfg;
    loom_config_load(dir, &cfg, &err);
    loom_shard sh = {.tp_rank = t->tp_rank, .tp_size = (int)tp, .pp_rank = t->pp_rank, .pp_size = (int)pp};
    loom_shard_layers(cfg.n_layers, (int)pp, NULL, t->pp_rank, &sh.layer_begin, &sh.layer_end, &err);
    loom_config_free(&cfg);
    loom_gpu_opts o = loom_gpu_opts_default();
    o.max_tokens = 256;
    o.max_seqs = 1;
    o.max_seq_len = n_prompt + n_want + 1;
    o.tokens_per_block = 16;
    o.max_kv_tokens = 4096;
    loom_gpu_model *m = loom_gpu_model_load_part(dir, &o, &sh, loom_nccl_hooks(nc), &err);
    if (!m) {
        fprintf(stderr, "rank %d: %s\n", rank, err.msg);
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    const int root = loom_topo_worker((int)tp, (int)pp - 1, 0);
    int64_t slot = 0, start[2] = {0, n_prompt}, one[2] = {0, 1}, same = 0, same1 = 0;
    int32_t id = 0, fail = 0, diverged = 0, diverged1 = 0;
    int32_t *solo = calloc((size_t)n_want, sizeof *solo); /* the one-GPU tokens (root) */
    if (rank == root) {
        loom_gpu_model *m1 = loom_gpu_model_load(dir, &o, &err);
        loom_status st1 = m1 ? LOOM_OK : LOOM_EIO;
        for (int64_t i = 0; st1 == LOOM_OK && i < n_want; i++) {
            st1 = loom_gpu_forward(m1, 1, &slot, i ? one : start, i ? &id : prompt, &id, &err);
            solo[i] = id;
        }
        if (st1 != LOOM_OK) {
            fprintf(stderr, "rank %d, one GPU: %s\n", rank, err.msg);
            MPI_Abort(MPI_COMM_WORLD, 1);
        }
        loom_gpu_model_destroy(m1);
    }
    for (int64_t i = 0; i < n_want; i++) {
        if (loom_gpu_forward(m, 1, &slot, i ? one : start, i ? &id : prompt, &id, &err) != LOOM_OK) {
            fprintf(stderr, "rank %d: %s\n", rank, err.msg);
            MPI_Abort(MPI_COMM_WORLD, 1);
        }
        MPI_Bcast(&id, 1, MPI_INT32_T, root, MPI_COMM_WORLD);
        if (!diverged && id == want[i]) same++;
        else diverged = 1;
        if (!diverged1 && id == solo[i]) same1++;
        else diverged1 = 1;
    }
    if (rank == root) {
        printf("%s tp=%lld pp=%lld on GPUs: %lld/%lld greedy tokens identical to transformers', %lld/%lld to one GPU's\n", dir, (long long)tp,
               (long long)pp, (long long)same, (long long)n_want, (long long)same1, (long long)n_want);
        fail = same < (stories ? n_want : 16) || same1 < n_want;
    }
    MPI_Bcast(&fail, 1, MPI_INT32_T, root, MPI_COMM_WORLD);
    loom_gpu_model_destroy(m);
    loom_nccl_destroy(nc);
    loom_mpi_dist_destroy(md);
    free(prompt);
    free(want);
    free(solo);
    json_decref(g);
    MPI_Finalize();
    return fail;
}
