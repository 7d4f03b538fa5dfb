/* `loom bench`: static-batch benchmark, like TensorRT-LLM's gptSessionBenchmark.
 * For each batch size and input/output length it runs prefill (timed as TTFT)
 * and greedy decode, and prints latency, TTFT, decode tokens/s and GPU memory
 * beside the floors measured in the same run: weight + KV bytes over the
 * measured copy bandwidth (decode), prefill FLOPs over the measured cuBLASLt
 * matmul rate. --json FILE writes every number.
 * With --tp/--pp it runs under mpirun, one rank per GPU, each holding one
 * partition (random weights or its slice of --model); all ranks run the same
 * batches in lockstep and rank 0 reports, with every rank's memory. */
#include <cuda_runtime_api.h>
#include <jansson.h>
#include <mpi.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../coordinator/commands.h"
#include "../parallel/dist_mpi.h"
#include "../util/clock.h"
#include "../util/fileutil.h"
#include "../util/json_util.h"
#include "../worker/config.h"
#include "../util/gpu_env.h"
#include "../worker/gpu_model.h"
#include "../worker/model.h"
#include "bench_args.h"
#include "probe.h"
#ifdef LOOM_HAVE_NCCL
#include "../parallel/dist_nccl.h"
#endif

#define GIB ((double)(1 << 30))

typedef struct preset {
    const char *name;
    int64_t hidden, layers, heads, kv_heads, inter, vocab, max_pos;
    double theta;
} preset;

static const preset presets[] = {
    {"llama-7b", 4096, 32, 32, 32, 11008, 32000, 4096, 10000.0},
    {"llama3-8b", 4096, 32, 32, 8, 14336, 128256, 8192, 500000.0},
    {"llama-13b", 5120, 40, 40, 40, 13824, 32000, 4096, 10000.0},
    {"llama-70b", 8192, 80, 64, 8, 28672, 32000, 4096, 10000.0},
};

/* NCCL settings that change how ranks talk (transport, algorithm); the JSON
 * records their values so runs can be compared. */
static const char *const nccl_env[] = {
    "NCCL_P2P_DISABLE", "NCCL_SHM_DISABLE", "NCCL_NVLS_ENABLE", "NCCL_IB_DISABLE", "NCCL_P2P_LEVEL", "NCCL_ALGO", "NCCL_PROTO",
};

/* How the multi-GPU floors are computed (also written into the JSON). */
#define DECODE_FLOOR_MODEL                                                                                                     \
    "sum over pipeline stages of the max over the stage's TP ranks of (the rank's weight bytes a step reads + its KV bytes "   \
    "at the mean context) / the rank's measured copy bandwidth: TP ranks read in parallel, stages one after another (no "      \
    "micro-batching); communication not counted. Equal stages: pp x (one rank's weights + KV) / bandwidth"
#define PREFILL_FLOOR_MODEL                                                                                                    \
    "per pipeline stage, the max over its TP ranks of the rank's prefill FLOPs / its measured matmul rate (F_s); the prefill "  \
    "runs in n forwards of at most max-num-tokens tokens, which overlap across stages, so the floor is max F_s + "             \
    "(sum F_s - max F_s) / n (the slowest stage's work plus the pipeline's fill and drain; sum F_s for one forward); "        \
    "prefill_fraction_of_matmul_rate = that floor / TTFT"

/* The run's ranks and this one's place among them. tp = pp = 1 outside
 * mpirun is the single-GPU benchmark: no MPI, the current device. */
typedef struct layout {
    int tp, pp, world, rank;
    bool mpi;                   /* MPI_Init was called */
    int gpu;                    /* CUDA device ordinal (-1: the current device) */
    loom_shard shard;           /* this rank's partition */
    loom_mpi_dist *dist;        /* TP and PP communicators (world > 1) */
    MPI_Comm pp_comm;           /* this rank's pipeline: the ids go back over it */
    const loom_gpu_dist *hooks; /* NCCL data plane (world > 1) */
#ifdef LOOM_HAVE_NCCL
    loom_nccl *nccl;
#endif
} layout;

/* One rank's numbers after load, gathered to rank 0 (doubles only: one MPI_DOUBLE gather). */
typedef struct rank_info {
    double bw, rate;                   /* measured copy bytes/s, matmul FLOP/s */
    double weight_bytes;               /* bytes of weights a decode step reads */
    double kv_bytes, kv_tokens, kv_blocks, kv_per_token; /* the pool; bytes per token on this rank */
    double workspace, total, free_after;                 /* bytes */
    double gpu, tp_rank, pp_rank, layer_begin, layer_end, heads_local;
} rank_info;

/* One rank's numbers of one case. */
typedef struct case_info {
    double used;          /* bytes in use on the GPU after the case (cudaMemGetInfo: includes the whole KV pool) */
    double need;          /* used - KV pool + the KV blocks this case held: what the case needed */
    double decode_floor;  /* s: (weight bytes + KV bytes at the mean context) / bandwidth */
    double prefill_flops; /* this rank's prefill FLOPs */
    double prefill_floor; /* s: prefill_flops / matmul rate */
} case_info;

/* A config from a preset name (4.x-style keys are enough for the loader). */
static loom_status preset_config(const char *name, const char *tmpdir, loom_config *cfg, loom_err *err)
{
    for (size_t i = 0; i < sizeof presets / sizeof presets[0]; i++) {
        const preset *p = &presets[i];
        if (strcmp(name, p->name)) continue;
        char path[4096];
        LOOM_CHECK(loom_path_join(path, sizeof path, tmpdir, "config.json", err));
        FILE *f = fopen(path, "w");
        if (!f) return loom_err_set(err, LOOM_EIO, "cannot write %s", path);
        fprintf(f,
                "{\"architectures\":[\"LlamaForCausalLM\"],\"hidden_size\":%lld,\"num_hidden_layers\":%lld,"
                "\"num_attention_heads\":%lld,\"num_key_value_heads\":%lld,\"intermediate_size\":%lld,\"vocab_size\":%lld,"
                "\"max_position_embeddings\":%lld,\"rope_theta\":%g,\"rms_norm_eps\":1e-5,\"hidden_act\":\"silu\",\"torch_dtype\":\"float16\"}\n",
                (long long)p->hidden, (long long)p->layers, (long long)p->heads, (long long)p->kv_heads, (long long)p->inter,
                (long long)p->vocab, (long long)p->max_pos, p->theta);
        fclose(f);
        return loom_config_load(tmpdir, cfg, err);
    }
    return loom_err_set(err, LOOM_EINVAL, "unknown preset %s (llama-7b, llama3-8b, llama-13b, llama-70b, or a path to a config.json)", name);
}

/* The config of --dummy-weights (a preset written to tmpdir, or a config.json's directory) or of --model. */
static loom_status load_config(const loom_bench_args *a, char *tmpdir, loom_config *cfg, loom_err *err)
{
    if (a->model) return loom_config_load(a->model, cfg, err);
    if (loom_file_exists(a->dummy)) {
        char dir[4096];
        snprintf(dir, sizeof dir, "%s", a->dummy);
        char *slash = strrchr(dir, '/');
        if (slash) *slash = '\0';
        else snprintf(dir, sizeof dir, ".");
        return loom_config_load(dir, cfg, err);
    }
    if (!mkdtemp(tmpdir)) return loom_err_set(err, LOOM_EIO, "cannot create a temporary directory");
    return preset_config(a->dummy, tmpdir, cfg, err);
}

/* Parameters of the whole model (embeddings, layers, final norm, lm_head
 * unless tied; biases left out): the seed of the per-GPU weight estimate. */
static double model_params(const loom_config *c)
{
    const double H = (double)c->hidden_size, hd = (double)c->head_dim, QD = (double)c->n_heads * hd, KD = (double)c->n_kv_heads * hd;
    const double layer = 2 * H + H * (QD + 2 * KD) + QD * H + 3 * (double)c->intermediate_size * H;
    return (double)c->vocab_size * H * (c->tie_word_embeddings ? 1 : 2) + (double)c->n_layers * layer + H;
}

/* Started by mpirun or srun (Open MPI, PMIx, PMI/PMI2, MVAPICH): then
 * MPI is initialised even at tp = pp = 1, so a job of several ranks is refused
 * instead of running copies of the benchmark on one GPU. Without a launcher,
 * --tp/--pp above 1 are refused before MPI starts. */
static bool launched_by_mpi(void)
{
    static const char *const vars[] = {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK", "PMI_SIZE", "MV2_COMM_WORLD_SIZE"};
    for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++)
        if (getenv(vars[i])) return true;
    return false;
}

/* Every rank agrees whether a collective step worked. */
static bool all_ok(const layout *L, bool ok)
{
    if (!L->mpi) return ok;
    int mine = ok, all = 0;
    MPI_Allreduce(&mine, &all, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
    return all;
}

/* An error of this rank: with several ranks the message says which. */
static void report(const layout *L, const loom_err *err)
{
    if (L->world > 1) fprintf(stderr, "loom bench: rank %d: %s\n", L->rank, err->msg);
    else fprintf(stderr, "loom bench: %s\n", err->msg);
}

/* A forward failed. One GPU: the caller stops. Several: the other ranks may
 * wait in a collective for this one, so after the message the job ends. */
static void step_failed(const layout *L, const loom_err *err)
{
    if (L->world == 1) return;
    report(L, err);
    fflush(stderr);
    MPI_Abort(MPI_COMM_WORLD, 1);
}

/* Buffers of one case's forwards (host). */
typedef struct step_bufs {
    int32_t *tokens, *ids, *next; /* (max_tokens), (B), (B): next = each sequence's first generated token */
    int64_t *slots, *start;       /* (B), (B + 1) */
    uint64_t rng;                 /* xorshift state for the random prompt tokens */
} step_bufs;

/* Prefills sequences 0..B-1 (slots 0..B-1) until each holds `len` tokens of
 * random ids, in forwards of at most max_tokens tokens (whole prompts packed,
 * or chunks of one). Returns 0, or 1 after a failed forward (message in err). */
static int prefill_to(loom_gpu_model *m, const layout *L, step_bufs *b, int64_t B, int64_t len, int64_t max_tokens, int64_t vocab,
                      loom_err *err)
{
    for (int64_t s = 0; s < B;) {
        int64_t n_seqs = 0, used = 0;
        b->start[0] = 0;
        while (s + n_seqs < B) {
            int64_t left = len - loom_gpu_seq_len(m, s + n_seqs);
            int64_t take = left < max_tokens - used ? left : max_tokens - used;
            if (take <= 0) break;
            for (int64_t k = 0; k < take; k++) {
                b->rng ^= b->rng << 13, b->rng ^= b->rng >> 7, b->rng ^= b->rng << 17;
                b->tokens[used + k] = (int32_t)(3 + b->rng % (uint64_t)(vocab - 3));
            }
            b->slots[n_seqs] = s + n_seqs;
            used += take;
            b->start[++n_seqs] = used;
            if (take < left) break; /* this sequence continues next forward */
        }
        if (n_seqs == 0) break;
        if (loom_gpu_forward(m, n_seqs, b->slots, b->start, b->tokens, b->ids, err) != LOOM_OK) {
            step_failed(L, err);
            return 1;
        }
        for (int64_t i = 0; i < n_seqs; i++)
            if (loom_gpu_seq_len(m, b->slots[i]) == len) b->next[b->slots[i]] = b->ids[i]; /* its first generated token */
        while (s < B && loom_gpu_seq_len(m, s) == len) s++;
    }
    return 0;
}

/* MPI, the world-size check and this rank's GPU (world > 1 or under mpirun).
 * Returns 0 to go on, else the exit code (the message is printed). */
static int layout_start(layout *L, const loom_bench_args *a, int *argc, char ***argv)
{
    L->tp = a->tp;
    L->pp = a->pp;
    L->world = 1;
    L->gpu = -1;
    L->pp_comm = MPI_COMM_NULL;
    const int n = a->tp * a->pp;
    const bool launched = launched_by_mpi();
    if (n == 1 && !launched) return 0;
    if (!launched) {
        fprintf(stderr, "loom bench: --tp %d --pp %d runs %d ranks, one per GPU: launch with mpirun -n %d loom bench ...\n", a->tp, a->pp, n, n);
        return 2;
    }
    int provided;
    MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided);
    L->mpi = true;
    MPI_Comm_rank(MPI_COMM_WORLD, &L->rank);
    MPI_Comm_size(MPI_COMM_WORLD, &L->world);
    if (L->world != n) {
        if (L->rank == 0)
            fprintf(stderr, "loom bench: --tp %d --pp %d runs %d rank%s, one per GPU: launch with mpirun -n %d (this job has %d)\n", a->tp, a->pp, n,
                    n > 1 ? "s" : "", n, L->world);
        return 2;
    }
    /* the GPU: node-local rank modulo the devices this rank sees (all of the
     * node's, or one each when the launcher binds them) */
    MPI_Comm node;
    int local = 0, on_node = 1, n_dev = 0;
    MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node);
    MPI_Comm_rank(node, &local);
    MPI_Comm_size(node, &on_node);
    bool ok = cudaGetDeviceCount(&n_dev) == cudaSuccess && n_dev > 0;
    char bus[32] = "";
    if (!ok) {
        cudaGetLastError();
        loom_err e;
        loom_err_set(&e, LOOM_EIO, "no CUDA device found (bench measures GPU runs; the CPU backend has no benchmark yet)");
        report(L, &e);
    } else {
        L->gpu = local % n_dev;
        ok = cudaSetDevice(L->gpu) == cudaSuccess && cudaDeviceGetPCIBusId(bus, sizeof bus, L->gpu) == cudaSuccess;
        if (!ok) fprintf(stderr, "loom bench: rank %d: cannot use CUDA device %d: %s\n", L->rank, L->gpu, cudaGetErrorString(cudaGetLastError()));
    }
    /* two ranks on one GPU would make NCCL fail: say so first */
    char *buses = calloc((size_t)on_node, sizeof bus);
    if (buses) {
        MPI_Allgather(bus, (int)sizeof bus, MPI_CHAR, buses, (int)sizeof bus, MPI_CHAR, node);
        for (int i = 0; ok && i < local; i++)
            if (!strcmp(buses + (size_t)i * sizeof bus, bus)) {
                fprintf(stderr, "loom bench: rank %d would share GPU %s with another rank (%d ranks on this node, %d GPUs visible to each): "
                                "each rank needs its own GPU\n", L->rank, bus, on_node, n_dev);
                ok = false;
            }
    }
    free(buses);
    MPI_Comm_free(&node);
    return all_ok(L, ok) ? 0 : 1;
}

/* This rank's shard (world > 1): its TP rank, stage and layers. The same
 * check on every rank, so rank 0 alone reports a failure. */
static loom_status layout_shard(layout *L, const loom_config *cfg, loom_err *err)
{
    loom_topo t;
    LOOM_CHECK(loom_topo_make(L->tp, L->pp, L->rank, &t, err)); /* world rank = worker index, as loom_mpi_dist_create lays them out */
    loom_shard *sh = &L->shard;
    *sh = (loom_shard){.tp_rank = t.tp_rank, .tp_size = L->tp, .pp_rank = t.pp_rank, .pp_size = L->pp};
    const int64_t *layers = cfg->conv_pp == L->pp ? cfg->conv_pp_layers : NULL; /* a `loom convert` directory's split */
    LOOM_CHECK(loom_shard_layers(cfg->n_layers, L->pp, layers, sh->pp_rank, &sh->layer_begin, &sh->layer_end, err));
    loom_shard_dims d;
    return loom_shard_dims_make(cfg, sh, &d, err);
}

/* TP/PP communicators and the NCCL data plane (world > 1). Collective. */
static loom_status layout_connect(layout *L, loom_err *err)
{
#ifdef LOOM_HAVE_NCCL
    L->dist = loom_mpi_dist_create(MPI_COMM_WORLD, L->tp, L->pp, err);
    if (!L->dist) return LOOM_EINVAL;
    L->pp_comm = loom_mpi_dist_pp_comm(L->dist);
    L->nccl = loom_nccl_create(loom_mpi_dist_tp_comm(L->dist), L->pp_comm, err);
    if (!L->nccl) return LOOM_EIO;
    L->hooks = loom_nccl_hooks(L->nccl);
    return LOOM_OK;
#else
    return loom_err_set(err, LOOM_EUNSUPPORTED, "this loom was built without NCCL; --tp/--pp above 1 need it");
#endif
}

/* Removes the preset's temporary config directory, if one was made. */
static void remove_tmpdir(char *tmpdir, size_t len)
{
    if (tmpdir[len - 7] == 'X') return; /* mkdtemp never ran */
    char p[4200];
    snprintf(p, sizeof p, "%s/config.json", tmpdir);
    remove(p);
    remove(tmpdir);
}

static void layout_end(layout *L)
{
#ifdef LOOM_HAVE_NCCL
    loom_nccl_destroy(L->nccl);
#endif
    loom_mpi_dist_destroy(L->dist);
    if (L->mpi) MPI_Finalize();
}

/* Max / min of v[0], v[stride], ... (n values): a field of an array of structs of doubles. */
static double max_of(const double *v, int stride, int n)
{
    double m = v[0];
    for (int i = 1; i < n; i++) m = v[i * stride] > m ? v[i * stride] : m;
    return m;
}

static double min_of(const double *v, int stride, int n)
{
    double m = v[0];
    for (int i = 1; i < n; i++) m = v[i * stride] < m ? v[i * stride] : m;
    return m;
}

/* Sum over stages of the max over each stage's TP ranks of v[rank]
 * (rank = stage * tp + tp rank, as parallel/topology.h lays them out). */
static double stage_floor(const double *v, int stride, int tp, int pp)
{
    double sum = 0;
    for (int s = 0; s < pp; s++) {
        double m = 0;
        for (int r = s * tp; r < (s + 1) * tp; r++) m = v[r * stride] > m ? v[r * stride] : m;
        sum += m;
    }
    return sum;
}

/* The prefill floor of a pipeline whose n_fwd forwards overlap across stages:
 * the slowest stage's work plus the others' share of one forward (fill and
 * drain). One forward: the stages' sum, as for a decode step. */
static double pipelined_floor(const double *v, int stride, int tp, int pp, double n_fwd)
{
    double sum = stage_floor(v, stride, tp, pp), mx = 0;
    for (int s = 0; s < pp; s++) {
        double one = stage_floor(v + (size_t)s * tp * stride, stride, tp, 1);
        mx = one > mx ? one : mx;
    }
    return mx + (sum - mx) / (n_fwd >= 1 ? n_fwd : 1);
}

static json_t *json_reals(const double *v, int stride, int n, double scale)
{
    json_t *a = json_array();
    for (int i = 0; i < n; i++) json_array_append_new(a, json_real(v[i * stride] * scale));
    return a;
}

/* The multi-GPU header lines (rank 0, stderr): layout, estimate, each rank. */
static void print_ranks(const layout *L, const rank_info *ri, double params, loom_dtype act, loom_dtype kv)
{
    fprintf(stderr, "loom bench: tp %d x pp %d = %d GPUs (pipeline without micro-batching); weights per GPU estimate %.2f GiB (%.2fB params x 2 bytes / %d); "
            "KV cache %s",
            L->tp, L->pp, L->world, params * 2 / (L->tp * L->pp) / GIB, params / 1e9, L->tp * L->pp, loom_dtype_name(kv));
    for (size_t i = 0; i < sizeof nccl_env / sizeof nccl_env[0]; i++)
        if (getenv(nccl_env[i])) fprintf(stderr, " %s=%s", nccl_env[i], getenv(nccl_env[i]));
    fprintf(stderr, "\n");
    for (int r = 0; r < L->world; r++) {
        const rank_info *x = &ri[r];
        fprintf(stderr,
                "loom bench: rank %d (stage %d, tp %d, layers %.0f-%.0f, GPU %.0f): copy %.2f TB/s, %s matmul %.0f TFLOP/s; weights %.2f GiB, KV pool %.2f GiB "
                "(%.0f tokens), workspace %.2f GiB, free %.2f GiB of %.2f\n",
                r, (int)x->pp_rank, (int)x->tp_rank, x->layer_begin, x->layer_end - 1, x->gpu, x->bw / 1e12, loom_dtype_name(act), x->rate / 1e12,
                x->weight_bytes / GIB, x->kv_bytes / GIB, x->kv_tokens, x->workspace / GIB, x->free_after / GIB, x->total / GIB);
    }
}

int loom_cmd_bench(int argc, char **argv)
{
    loom_bench_args a;
    int prc = loom_bench_parse(argc, argv, &a);
    if (prc) return prc == 1 ? 0 : 2;
    loom_gpu_opts go = loom_gpu_opts_default();
    loom_err err = {{0}};
    go.act = a.act;
    go.kv = a.kv;
    if (a.max_tokens) go.max_tokens = a.max_tokens;
    if (a.kv_fraction > 0) go.kv_free_fraction = a.kv_fraction;
    go.max_kv_tokens = a.max_kv_tokens;
    go.multi_block = a.multi_block;
    const int64_t *bss = a.batch, *ios = a.io;
    const int n_bs = a.n_batch, n_io = a.n_io;
    int64_t max_b = 1, max_len = 1;
    for (int i = 0; i < n_bs; i++) max_b = bss[i] > max_b ? bss[i] : max_b;
    for (int i = 0; i < n_io; i++) {
        const int64_t len = a.prefix[i] + ios[2 * i] + ios[2 * i + 1];
        max_len = len > max_len ? len : max_len;
    }
    go.max_seqs = max_b;
    go.max_seq_len = max_len;

    layout L = {0};
    int rc = layout_start(&L, &a, &argc, &argv);
    if (rc) {
        layout_end(&L);
        return rc;
    }
    const bool multi = L.world > 1, root = L.rank == 0;
    if (!multi) {
        int n_dev = 0;
        if (cudaGetDeviceCount(&n_dev) != cudaSuccess || n_dev == 0) {
            fprintf(stderr, "loom bench: no CUDA device found (bench measures GPU runs; the CPU backend has no benchmark yet)\n");
            layout_end(&L);
            return 1;
        }
    }
    /* Floors first, on an idle GPU (every rank its own). */
    double bw = 0, rate = 0;
    bool ok = loom_probe_copy_bandwidth(&bw, &err) == LOOM_OK && loom_probe_matmul_rate(go.act, &rate, &err) == LOOM_OK;
    if (!ok) report(&L, &err);
    if (!all_ok(&L, ok)) {
        layout_end(&L);
        return 1;
    }
    if (!multi)
        fprintf(stderr, "loom bench: measured copy bandwidth %.2f TB/s, %s matmul rate %.0f TFLOP/s\n", bw / 1e12, loom_dtype_name(go.act), rate / 1e12);

    loom_config cfg = {0};
    loom_gpu_model *m = NULL;
    char tmpdir[] = "/tmp/loom-bench-XXXXXX";
    loom_status st = LOOM_OK;
    if (a.dummy || multi) st = load_config(&a, tmpdir, &cfg, &err);
    if (st == LOOM_OK && multi) st = layout_shard(&L, &cfg, &err);
    /* a bad config or layout fails alike on every rank: rank 0 says so, others only for a failure of their own */
    int root_ok = st == LOOM_OK;
    if (multi) MPI_Bcast(&root_ok, 1, MPI_INT, 0, MPI_COMM_WORLD);
    if (st != LOOM_OK && (root || root_ok)) report(&L, &err);
    bool go_on = all_ok(&L, st == LOOM_OK);
    if (go_on && multi) {
        st = layout_connect(&L, &err);
        if (st != LOOM_OK) report(&L, &err);
        go_on = all_ok(&L, st == LOOM_OK);
    }
    if (go_on) {
        if (a.dummy) m = loom_gpu_model_dummy_part(&cfg, &go, multi ? &L.shard : NULL, L.hooks, 1234, &err);
        else if (multi) m = loom_gpu_model_load_part(a.model, &go, &L.shard, L.hooks, &err);
        else m = loom_gpu_model_load(a.model, &go, &err);
        if (!m) report(&L, &err);
    }
    if (!all_ok(&L, m != NULL)) {
        loom_gpu_model_destroy(m);
        loom_config_free(&cfg);
        remove_tmpdir(tmpdir, sizeof tmpdir);
        layout_end(&L);
        return 1;
    }
    const loom_config *mc = loom_gpu_config(m);
    loom_gpu_mem mem = loom_gpu_model_mem(m);
    const loom_dtype kv_dt = mem.kv_dtype; /* the KV cache's elements: the activations' dtype, or fp8 */
    const double es = 2.0;
    const double params = (double)loom_gpu_weight_bytes(m) / es;
    const double kv_per_token = 2.0 * (double)mc->n_layers * (double)mc->n_kv_heads * (double)mc->head_dim * (double)loom_dtype_size(kv_dt);
    const double model_p = model_params(mc);
    if (!multi) L.shard = loom_shard_single(mc);

    /* Every rank's numbers on rank 0. */
    loom_shard_dims dims;
    loom_shard_dims_make(mc, &L.shard, &dims, &err); /* cannot fail: the model was made from this shard */
    rank_info mine = {.bw = bw, .rate = rate, .weight_bytes = (double)loom_gpu_weight_bytes(m), .kv_bytes = (double)mem.kv,
                      .kv_tokens = (double)mem.kv_tokens, .kv_blocks = (double)mem.kv_blocks,
                      .kv_per_token = mem.kv_tokens ? (double)mem.kv / (double)mem.kv_tokens : 0, .workspace = (double)mem.workspace,
                      .total = (double)mem.total, .free_after = (double)mem.free_after, .gpu = L.gpu, .tp_rank = L.shard.tp_rank,
                      .pp_rank = L.shard.pp_rank, .layer_begin = (double)L.shard.layer_begin, .layer_end = (double)L.shard.layer_end,
                      .heads_local = (double)dims.n_heads_local};
    const int n_ri = (int)(sizeof mine / sizeof(double)), n_ci = (int)(sizeof(case_info) / sizeof(double));
    rank_info *ri = calloc((size_t)L.world, sizeof *ri);
    case_info *ci = calloc((size_t)L.world, sizeof *ci);
    if (!ri || !ci) {
        fprintf(stderr, "loom bench: out of memory\n");
        if (multi) MPI_Abort(MPI_COMM_WORLD, 1);
        free(ri);
        free(ci);
        loom_gpu_model_destroy(m);
        loom_config_free(&cfg);
        layout_end(&L);
        return 1;
    }
    if (multi) MPI_Gather(&mine, n_ri, MPI_DOUBLE, ri, n_ri, MPI_DOUBLE, 0, MPI_COMM_WORLD);
    else ri[0] = mine;
    /* the smallest pool bounds every case: each token needs room on every rank */
    double min_blocks = mine.kv_blocks;
    if (multi) MPI_Allreduce(&mine.kv_blocks, &min_blocks, 1, MPI_DOUBLE, MPI_MIN, MPI_COMM_WORLD);
    if (!multi)
        fprintf(stderr, "loom bench: weights %.2f GiB, KV pool %.2f GiB (%lld tokens, %s), workspace %.2f GiB, free %.2f GiB of %.2f\n",
                (double)mem.weights / GIB, (double)mem.kv / GIB, (long long)mem.kv_tokens, loom_dtype_name(kv_dt), (double)mem.workspace / GIB,
                (double)mem.free_after / GIB, (double)mem.total / GIB);
    else if (root)
        print_ranks(&L, ri, model_p, go.act, kv_dt);

    json_t *jcases = json_array();
    if (root && !multi)
        printf("%-6s %-11s %10s %10s %12s %12s %10s %12s %8s\n", "batch", "in/out", "latency_ms", "ttft_ms", "decode_tok/s", "step_ms", "floor_ms",
               "prefill_%mm", "mem_GiB");
    else if (root)
        printf("%-6s %-11s %10s %10s %12s %12s %10s %12s %8s %8s %8s  %s\n", "batch", "in/out", "latency_ms", "ttft_ms", "decode_tok/s", "step_ms",
               "floor_ms", "prefill_%mm", "mem_GiB", "need_GiB", "est_GiB", "need_per_gpu_GiB");
    fflush(stdout);
    int n_skipped = 0;
    double peak_used = 0;
    int32_t *tokens = malloc((size_t)go.max_tokens * sizeof *tokens), *ids = calloc((size_t)max_b, sizeof *ids);
    int32_t *next = calloc((size_t)max_b, sizeof *next);
    int64_t *slots = malloc((size_t)max_b * sizeof *slots), *start = malloc((size_t)(max_b + 1) * sizeof *start);
    if (!all_ok(&L, tokens && ids && next && slots && start)) rc = loom_err_set(&err, LOOM_ENOMEM, "out of host memory") != LOOM_OK;
    step_bufs sb = {.tokens = tokens, .ids = ids, .next = next, .slots = slots, .start = start};
    /* ids go back from the last stage to the first over each pipeline (its
     * TP rank's); with one stage every rank samples them itself */
    const bool feedback = L.pp > 1;
    /* Warm-up per batch size: a short prefill and a few decode steps, so
     * cuBLASLt's heuristic calls and the decode graph capture are not timed. */
    for (int bi = 0; bi < n_bs && !rc; bi++) {
        int64_t B = bss[bi];
        if ((double)B > min_blocks) continue; /* its cases are skipped below */
        for (int64_t s = 0; s < B; s++) {
            loom_gpu_seq_reset(m, s);
            slots[s] = s;
            start[s] = s;
            tokens[s] = 5;
        }
        start[B] = B;
        for (int k = 0; k < 4 && !rc; k++)
            if (loom_gpu_forward(m, B, slots, start, tokens, ids, &err) != LOOM_OK) rc = 1, step_failed(&L, &err);
        for (int64_t s = 0; s < B; s++) loom_gpu_seq_reset(m, s);
    }
    for (int bi = 0; bi < n_bs && !rc; bi++) {
        for (int ii = 0; ii < n_io && !rc; ii++) {
            int64_t B = bss[bi], in = ios[2 * ii], out = ios[2 * ii + 1], pre = a.prefix[ii];
            char io[48];
            if (pre) snprintf(io, sizeof io, "%lld+%lld/%lld", (long long)pre, (long long)in, (long long)out);
            else snprintf(io, sizeof io, "%lld/%lld", (long long)in, (long long)out);
            /* the case's KV must fit the smallest pool (all ranks decide alike) */
            const int64_t tpb = go.tokens_per_block, blocks_used = B * ((pre + in + out - 1 + tpb - 1) / tpb);
            if ((double)blocks_used > min_blocks) {
                if (root)
                    fprintf(stderr,
                            "loom bench: batch %lld %s skipped: it needs %lld KV blocks of %lld tokens%s, the KV pool holds %.0f "
                            "(raise --kv-cache-free-gpu-mem-fraction or --max-tokens-in-paged-kv-cache, use more GPUs, or drop the case)\n",
                            (long long)B, io, (long long)blocks_used, (long long)tpb, multi ? " on every GPU" : "", min_blocks);
                json_t *jc = json_object();
                json_object_set_new(jc, "batch_size", json_integer(B));
                json_object_set_new(jc, "prefix_cached", json_integer(pre));
                json_object_set_new(jc, "input_len", json_integer(in));
                json_object_set_new(jc, "output_len", json_integer(out));
                json_object_set_new(jc, "skipped", json_string("the KV pool is too small for this case"));
                json_object_set_new(jc, "kv_blocks_needed", json_integer(blocks_used));
                json_object_set_new(jc, "kv_blocks_available", json_integer((json_int_t)min_blocks));
                json_array_append_new(jcases, jc);
                n_skipped++;
                continue;
            }
            /* Warm-up: the case's own prefill shapes once, untimed, so that
             * cuBLASLt's heuristic (and its tuning of small-n shapes) and the
             * first launch of each kernel stay out of TTFT. */
            for (int64_t s = 0; s < B; s++) loom_gpu_seq_reset(m, s);
            sb.rng = 88172645463325252ull;
            if (pre) rc = prefill_to(m, &L, &sb, B, pre, go.max_tokens, mc->vocab_size, &err);
            if (!rc) rc = prefill_to(m, &L, &sb, B, pre + in, go.max_tokens, mc->vocab_size, &err);
            for (int64_t s = 0; s < B; s++) loom_gpu_seq_reset(m, s);
            /* the cached prefix (untimed): as if an earlier request left it in the pool */
            sb.rng = 88172645463325252ull;
            if (pre && !rc) rc = prefill_to(m, &L, &sb, B, pre, go.max_tokens, mc->vocab_size, &err);
            if (multi) MPI_Barrier(MPI_COMM_WORLD); /* start together */
            double t0 = loom_now_s();
            /* prefill: whole prompts, or chunks of one, within max_tokens per forward */
            if (!rc) rc = prefill_to(m, &L, &sb, B, pre + in, go.max_tokens, mc->vocab_size, &err);
            if (feedback && !rc) MPI_Bcast(next, (int)B, MPI_INT32_T, L.pp - 1, L.pp_comm); /* first tokens to the first stage */
            double t1 = loom_now_s();
            /* decode: out - 1 steps of one token per sequence */
            for (int64_t s = 0; s < B; s++) {
                slots[s] = s;
                start[s] = s;
            }
            start[B] = B;
            memcpy(ids, next, (size_t)B * sizeof *ids);
            for (int64_t step = 1; step < out && !rc; step++) {
                memcpy(tokens, ids, (size_t)B * sizeof *ids);
                if (loom_gpu_forward(m, B, slots, start, tokens, ids, &err) != LOOM_OK) rc = 1, step_failed(&L, &err);
                else if (feedback) MPI_Bcast(ids, (int)B, MPI_INT32_T, L.pp - 1, L.pp_comm);
            }
            double t2 = loom_now_s();
            if (rc) break;
            double ttft = t1 - t0, dec = t2 - t1, steps = (double)(out - 1);
            double step_s = steps > 0 ? dec / steps : 0;
            double mean_ctx = (double)(pre + in) + (double)out / 2.0;
            /* this rank's floors; one GPU: the same expressions as always */
            double floor_s = ((double)loom_gpu_weight_bytes(m) + (double)B * mean_ctx * (multi ? mine.kv_per_token : kv_per_token)) / bw;
            /* the timed tokens' FLOPs: weights, and attention over the prefix plus half the new tokens on average */
            double prefill_flops = 2.0 * params * (double)(B * in) + 4.0 * (double)(L.shard.layer_end - L.shard.layer_begin) * (double)(B * in) *
                                                                          ((double)pre + (double)in / 2.0) * (double)(dims.n_heads_local * mc->head_dim);
            double prefill_pct = 100.0 * prefill_flops / ttft / rate;
            size_t fr = mem.free_after, tot = mem.total;
            if (multi) cudaMemGetInfo(&fr, &tot); /* after the case: NCCL buffers and graphs included */
            double mem_gib = (double)(mem.total - fr) / GIB;
            case_info c1 = {.used = (double)(tot - fr),
                            .need = (double)(tot - fr) - (double)mem.kv + (double)blocks_used * (double)mem.kv / (double)mem.kv_blocks,
                            .decode_floor = floor_s,
                            .prefill_flops = prefill_flops,
                            .prefill_floor = prefill_flops / rate};
            if (multi) MPI_Gather(&c1, n_ci, MPI_DOUBLE, ci, n_ci, MPI_DOUBLE, 0, MPI_COMM_WORLD);
            else ci[0] = c1;
            if (!root) continue;
            double est_gib = 0;
            if (multi) {
                floor_s = stage_floor(&ci[0].decode_floor, n_ci, L.tp, L.pp);
                prefill_flops = 0;
                for (int r = 0; r < L.world; r++) prefill_flops += ci[r].prefill_flops;
                const double n_fwd = (double)((B * in + go.max_tokens - 1) / go.max_tokens);
                prefill_pct = 100.0 * pipelined_floor(&ci[0].prefill_floor, n_ci, L.tp, L.pp, n_fwd) / ttft;
                mem_gib = max_of(&ci[0].used, n_ci, L.world) / GIB;
                est_gib = (model_p * es + (double)B * (double)(in + out) * kv_per_token) / (L.tp * L.pp) / GIB;
                for (int r = 0; r < L.world; r++) peak_used = ci[r].used > peak_used ? ci[r].used : peak_used;
            }
            if (!multi) {
                printf("%-6lld %-11s %10.1f %10.1f %12.1f %12.3f %10.3f %12.1f %8.1f\n", (long long)B, io, (ttft + dec) * 1e3, ttft * 1e3,
                       steps > 0 ? (double)B * steps / dec : 0.0, step_s * 1e3, floor_s * 1e3, prefill_pct, mem_gib);
            } else {
                char per[1024] = "";
                for (int r = 0; r < L.world && strlen(per) < sizeof per - 16; r++)
                    snprintf(per + strlen(per), sizeof per - strlen(per), "%s%.1f", r ? "/" : "", ci[r].need / GIB);
                printf("%-6lld %-11s %10.1f %10.1f %12.1f %12.3f %10.3f %12.1f %8.1f %8.1f %8.1f  %s\n", (long long)B, io, (ttft + dec) * 1e3,
                       ttft * 1e3, steps > 0 ? (double)B * steps / dec : 0.0, step_s * 1e3, floor_s * 1e3, prefill_pct, mem_gib,
                       max_of(&ci[0].need, n_ci, L.world) / GIB, est_gib, per);
            }
            fflush(stdout);
            json_t *jc = json_object();
            json_object_set_new(jc, "batch_size", json_integer(B));
            json_object_set_new(jc, "prefix_cached", json_integer(pre));
            json_object_set_new(jc, "input_len", json_integer(in));
            json_object_set_new(jc, "output_len", json_integer(out));
            json_object_set_new(jc, "latency_ms", json_real((ttft + dec) * 1e3));
            json_object_set_new(jc, "ttft_ms", json_real(ttft * 1e3));
            json_object_set_new(jc, "decode_tokens_per_s", json_real(steps > 0 ? (double)B * steps / dec : 0.0));
            json_object_set_new(jc, "decode_step_ms", json_real(step_s * 1e3));
            json_object_set_new(jc, "decode_floor_ms", json_real(floor_s * 1e3));
            json_object_set_new(jc, "decode_step_over_floor", json_real(floor_s > 0 ? step_s / floor_s : 0.0));
            json_object_set_new(jc, "prefill_flops", json_real(prefill_flops));
            json_object_set_new(jc, "prefill_fraction_of_matmul_rate", json_real(prefill_pct / 100.0));
            json_object_set_new(jc, "gpu_mem_used_gib", json_real(mem_gib));
            if (multi) {
                /* used: what each GPU holds (the KV pool is reserved whole); needed: without the unused part of the pool */
                json_object_set_new(jc, "gpu_mem_used_gib_per_gpu", json_reals(&ci[0].used, n_ci, L.world, 1 / GIB));
                json_object_set_new(jc, "gpu_mem_needed_gib", json_real(max_of(&ci[0].need, n_ci, L.world) / GIB));
                json_object_set_new(jc, "gpu_mem_needed_gib_per_gpu", json_reals(&ci[0].need, n_ci, L.world, 1 / GIB));
                json_object_set_new(jc, "gpu_mem_estimate_gib", json_real(est_gib));
                json_object_set_new(jc, "kv_bytes_per_gpu_estimate", json_real((double)B * (double)(in + out) * kv_per_token / (L.tp * L.pp)));
                json_object_set_new(jc, "decode_floor_ms_per_gpu", json_reals(&ci[0].decode_floor, n_ci, L.world, 1e3));
            }
            json_array_append_new(jcases, jc);
        }
    }
    if (rc) fprintf(stderr, "loom bench: %s\n", err.msg);
    if (root && n_skipped) fprintf(stderr, "loom bench: %d case%s skipped (see above)\n", n_skipped, n_skipped > 1 ? "s" : "");
    if (root && a.json_path && !rc) {
        json_t *j = json_object();
        json_object_set_new(j, "model", json_string(a.dummy ? a.dummy : a.model));
        json_object_set_new(j, "dtype", json_string(loom_dtype_name(go.act)));
        json_object_set_new(j, "kv_cache_dtype", json_string(loom_dtype_name(kv_dt)));
        json_t *jv = json_object();
        size_t n_sw; /* loom's own switches of the GPU path (worker/gpu_env.c) */
        const loom_gpu_switch *sw = loom_gpu_switches(&n_sw);
        for (size_t i = 0; i < n_sw; i++)
            json_object_set_new(jv, sw[i].name, getenv(sw[i].name) ? json_string(getenv(sw[i].name)) : json_null());
        json_object_set_new(j, "loom_env", jv);
        if (!multi) {
            json_object_set_new(j, "copy_bandwidth_bytes_per_s", json_real(bw));
            json_object_set_new(j, "matmul_flops_per_s", json_real(rate));
            json_object_set_new(j, "weight_bytes", json_integer((json_int_t)loom_gpu_weight_bytes(m)));
            json_object_set_new(j, "kv_pool_tokens", json_integer(mem.kv_tokens));
        } else {
            /* whole-layout numbers: the slowest GPU's rates, all GPUs' weights, the smallest pool */
            double wsum = 0, kvt = ri[0].kv_tokens;
            for (int r = 0; r < L.world; r++) wsum += ri[r].weight_bytes, kvt = ri[r].kv_tokens < kvt ? ri[r].kv_tokens : kvt;
            json_object_set_new(j, "copy_bandwidth_bytes_per_s", json_real(min_of(&ri[0].bw, n_ri, L.world)));
            json_object_set_new(j, "matmul_flops_per_s", json_real(min_of(&ri[0].rate, n_ri, L.world)));
            json_object_set_new(j, "weight_bytes", json_integer((json_int_t)wsum));
            json_object_set_new(j, "kv_pool_tokens", json_integer((json_int_t)kvt));
            json_t *jl = json_object();
            json_object_set_new(jl, "tp", json_integer(L.tp));
            json_object_set_new(jl, "pp", json_integer(L.pp));
            json_object_set_new(jl, "world", json_integer(L.world));
            json_object_set_new(jl, "pp_microbatches", json_integer(1));
            json_object_set_new(jl, "pp_token_feedback", json_string("each step's ids go from the last stage to the first (MPI_Bcast over the pipeline) "
                                                                     "before the next step starts, as a serving coordinator's would"));
            json_object_set_new(jl, "gpu_of_rank", json_string("node-local rank % device count"));
            json_object_set_new(j, "layout", jl);
            json_t *je = json_object();
            for (size_t i = 0; i < sizeof nccl_env / sizeof nccl_env[0]; i++)
                json_object_set_new(je, nccl_env[i], getenv(nccl_env[i]) ? json_string(getenv(nccl_env[i])) : json_null());
            json_object_set_new(j, "nccl_env", je);
            json_object_set_new(j, "params", json_real(model_p));
            json_object_set_new(j, "weight_bytes_per_gpu_estimate", json_real(model_p * es / (L.tp * L.pp)));
            json_object_set_new(j, "weight_bytes_per_gpu", json_reals(&ri[0].weight_bytes, n_ri, L.world, 1));
            json_object_set_new(j, "gpu_mem_used_gib_max", json_real(peak_used / GIB));
            json_object_set_new(j, "decode_floor_model", json_string(DECODE_FLOOR_MODEL));
            json_object_set_new(j, "prefill_floor_model", json_string(PREFILL_FLOOR_MODEL));
            json_t *jr = json_array();
            for (int r = 0; r < L.world; r++) {
                const rank_info *x = &ri[r];
                json_t *o = json_object();
                json_object_set_new(o, "rank", json_integer(r));
                json_object_set_new(o, "tp_rank", json_integer((json_int_t)x->tp_rank));
                json_object_set_new(o, "pp_rank", json_integer((json_int_t)x->pp_rank));
                json_object_set_new(o, "layer_begin", json_integer((json_int_t)x->layer_begin));
                json_object_set_new(o, "layer_end", json_integer((json_int_t)x->layer_end));
                json_object_set_new(o, "gpu", json_integer((json_int_t)x->gpu));
                json_object_set_new(o, "copy_bandwidth_bytes_per_s", json_real(x->bw));
                json_object_set_new(o, "matmul_flops_per_s", json_real(x->rate));
                json_object_set_new(o, "weight_bytes", json_integer((json_int_t)x->weight_bytes));
                json_object_set_new(o, "kv_pool_bytes", json_integer((json_int_t)x->kv_bytes));
                json_object_set_new(o, "kv_pool_tokens", json_integer((json_int_t)x->kv_tokens));
                json_object_set_new(o, "kv_bytes_per_token", json_real(x->kv_per_token));
                json_object_set_new(o, "workspace_bytes", json_integer((json_int_t)x->workspace));
                json_object_set_new(o, "gpu_mem_total_bytes", json_integer((json_int_t)x->total));
                json_object_set_new(o, "gpu_mem_free_after_load_bytes", json_integer((json_int_t)x->free_after));
                json_array_append_new(jr, o);
            }
            json_object_set_new(j, "ranks", jr);
        }
        json_object_set_new(j, "cases", jcases);
        jcases = NULL;
        if (json_dump_file(j, a.json_path, JSON_INDENT(2)) != 0) {
            fprintf(stderr, "loom bench: cannot write %s\n", a.json_path);
            rc = 1;
        }
        json_decref(j);
    }
    json_decref(jcases);
    free(tokens);
    free(ids);
    free(next);
    free(slots);
    free(start);
    free(ri);
    free(ci);
    loom_gpu_model_destroy(m);
    loom_config_free(&cfg);
    remove_tmpdir(tmpdir, sizeof tmpdir);
    layout_end(&L);
    return rc ? rc : n_skipped ? 1 : 0;
}
