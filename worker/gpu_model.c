/* The single-GPU model (see gpu_model.h). Layout of one layer's forward:
 *   add_rmsnorm -> GEMM qkv (fused) -> rope -> kv_append -> attention
 *   -> GEMM o -> add_rmsnorm -> GEMM gate|up (fused) -> silu*mul -> GEMM down
 * The residual add of each block is fused into the next RMSNorm. Per step the
 * host packs token ids, positions, KV slots and block tables into one pinned
 * buffer and sends it with a single copy. LOOM_GPU_PROFILE=1 times each op
 * kind with CUDA events (see gpu_model.h). */
#include "gpu_model.h"

#include <cuda_runtime_api.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../kernels/cuda/ops_cuda.h"
#include "../kernels/ops.h"
#include "../util/clock.h"
#include "../util/gpu_env.h"
#include "gpu_glue.h"
#include "model.h"

#define GEMM_WORKSPACE ((size_t)32 << 20)

/* Op kinds of the per-op profile (LOOM_GPU_PROFILE=1). */
enum prof_op {
    P_UPLOAD, P_EMBED, P_NORM, P_QKV, P_ROPE, P_ATTN, P_O, P_GU, P_SILU, P_DOWN, P_COMM, P_LM_HEAD, P_STEP, P_SAMPLE, P_GRAPH, P_N
};
static const char *const prof_names[P_N] = {
    "upload", "embedding", "norms", "qkv gemm", "rope+kv append", "attention", "o gemm", "gate/up gemm", "silu*mul",
    "down gemm", "comm", "lm_head", "one-kernel step", "sampling", "graph replay",
};
enum { PROF_ROWS = 64 };

/* Accumulated per (tokens in the step, graph replay or not). The first step
 * of each is kept apart: it pays cuBLASLt's heuristic and tuning and the
 * first launch of each kernel. */
typedef struct prof_row {
    int64_t T;
    int graph;
    int64_t steps;         /* after the first */
    double ms[P_N];        /* GPU time per op kind, summed over those steps */
    double wall_ms;        /* host time of loom_gpu_forward_sampled, summed */
    double first[P_N], first_wall;
    int has_first;
} prof_row;

typedef struct gpu_prof {
    cudaEvent_t *ev;  /* one per mark; ev[0] opens the step */
    int *op;          /* op kind of the time between mark i-1 and i */
    int n, cap;       /* marks this step, events created */
    int live;         /* this step is being timed (not during a capture) */
    prof_row rows[PROF_ROWS];
    int n_rows;
    int64_t dropped;  /* steps of (T, graph) pairs past PROF_ROWS, or past cap marks */
} gpu_prof;

typedef struct gpu_layer {
    void *attn_norm, *mlp_norm;  /* (H) act */
    void *w_qkv, *b_qkv;         /* (QD + 2 KD, H), (QD + 2 KD) or NULL */
    void *w_o, *b_o;             /* (H, QD), (H) */
    void *w_gu, *b_gu;           /* (2 I, H), (2 I) */
    void *w_down, *b_down;       /* (H, I), (H) */
    void *pool;                  /* (n_blocks, 2, KVH, B, hd) */
} gpu_layer;

struct loom_gpu_model {
    loom_config cfg;
    loom_gpu_opts o;
    size_t es;                   /* bytes per activation element */
    loom_dtype kv;               /* KV pool element: o.act or LOOM_F8E4M3 */
    size_t kv_es;                /* its bytes */
    cudaStream_t stream;
    loom_cuda_gemm *gemm;
    void *embed, *final_norm, *lm_head;
    gpu_layer *layers;
    float *inv_freq;
    /* paged pool */
    int64_t n_blocks, max_blocks_per_seq;
    int32_t *free_blocks;        /* stack of free block ids (host) */
    int64_t n_free;
    int32_t *seq_blocks;         /* (max_seqs, max_blocks_per_seq) host */
    int64_t *seq_len;            /* (max_seqs) host */
    int64_t *seq_nb;             /* (max_seqs) blocks in a bound table (external mode) */
    bool external;               /* tables come from loom_gpu_seq_bind, not the free list */
    /* activations (device) */
    void *x, *xn, *qkv, *att, *o_out, *gu, *h, *mlp, *last, *logits_act;
    /* o_out and mlp, the row-parallel projections' outputs, are fp32 under TP:
     * each rank's partial product unrounded, summed in fp32 by the all-reduce
     * and rounded once by the residual add, as the one-GPU product is. */
    loom_dtype red_dt;
    void *x2;                    /* the residual's second buffer for the fused one-token step (H) */
    float *logits;
    void *attn_scratch, *samp_scratch;
    size_t attn_scratch_bytes, samp_scratch_bytes;
    /* step staging: one pinned host buffer mirrored on the device */
    void *stage_host, *stage_dev;
    size_t stage_bytes;
    int32_t *d_tokens, *d_pos, *d_slots, *d_qstart, *d_ctx, *d_bt, *d_last, *d_out;
    float *d_temp, *d_topp, *d_rep;
    int32_t *d_topk;
    uint64_t *d_seed, *d_step;
    int64_t *d_hoff;
    int32_t *d_hist;
    int32_t *h_out;
    loom_gpu_mem mem;
    size_t weight_bytes;
    /* CUDA graphs of decode steps, one per batch size (max_ctx fixed at max_seq_len) */
    struct { int64_t n_seqs; cudaGraphExec_t exec; } graphs[32];
    int n_graphs;
    int use_graphs;
    int graphs_partitioned;      /* decode graphs also for TP ranks and pipeline stages (NCCL captured) */
    int use_gemv;   /* LOOM_GEMV=0 turns the decode GEMV off (cuBLASLt for everything) */
    int use_fused;  /* LOOM_FUSED_DECODE=0 turns the fused one-token step off */
    int fused_rope; /* LOOM_FUSED_ROPE=0: RoPE + KV append as their own kernel in that step */
    int fused_glu;  /* LOOM_FUSED_GLU=0: SiLU*mul in the down GEMV's prologue, not the gate/up epilogue */
    int use_step;   /* a one-token step of a whole model as one persistent kernel (LOOM_DECODE_STEP) */
    loom_step_layer *step_layers; /* device (nl): that kernel's view of the layers */
    void *step_scratch;
    size_t step_scratch_bytes;
    /* this partition: local heads, kv heads, MLP width, layers [l0, l0 + nl), vocab rows */
    int64_t nh, nkv, inter, nl, l0;
    int64_t vl, vrows;          /* padded vocab slice per TP rank, rows this rank holds */
    int tp, tp_rank, is_first, is_last;
    const loom_gpu_dist *dist;
    void *gathered;             /* (tp, max_seqs, vl) all-gathered logits */
    void **allocs;
    int n_allocs, cap_allocs;
    gpu_prof *prof;             /* LOOM_GPU_PROFILE=1, else NULL */
};

/* ---- per-op profile ---- */

/* Opens a timed step, unless the stream is capturing (events would become
 * graph nodes) or the events cannot be had. */
static void prof_begin(loom_gpu_model *m)
{
    gpu_prof *p = m->prof;
    p->live = 0;
    p->n = 0;
    enum cudaStreamCaptureStatus cs = cudaStreamCaptureStatusNone;
    if (cudaStreamIsCapturing(m->stream, &cs) != cudaSuccess || cs != cudaStreamCaptureStatusNone) {
        cudaGetLastError();
        return;
    }
    if (!p->ev) {
        int cap = (int)(16 * m->nl + 32);
        p->ev = calloc((size_t)cap, sizeof *p->ev);
        p->op = calloc((size_t)cap, sizeof *p->op);
        if (!p->ev || !p->op) return;
        for (int i = 0; i < cap; i++) {
            if (cudaEventCreate(&p->ev[i]) != cudaSuccess) break;
            p->cap = i + 1;
        }
    }
    if (p->cap < 2 || cudaEventRecord(p->ev[0], m->stream) != cudaSuccess) return;
    p->n = 1;
    p->live = 1;
}

/* Closes the op that ran since the last mark as kind op. */
static void prof_mark(loom_gpu_model *m, int op)
{
    gpu_prof *p = m->prof;
    if (p->n >= p->cap) {
        p->live = 0;
        p->dropped++;
        return;
    }
    cudaEventRecord(p->ev[p->n], m->stream);
    p->op[p->n++] = op;
}

#define PROF(op)                                                               \
    do {                                                                       \
        if (m->prof && m->prof->live) prof_mark(m, op);                        \
    } while (0)

/* After the step's stream sync: adds the step's op times to its row. */
static void prof_end(loom_gpu_model *m, int64_t T, int graph, double wall_ms)
{
    gpu_prof *p = m->prof;
    if (!p->live) return;
    p->live = 0;
    int r = 0;
    while (r < p->n_rows && !(p->rows[r].T == T && p->rows[r].graph == graph)) r++;
    if (r == p->n_rows) {
        if (r == PROF_ROWS) {
            p->dropped++;
            return;
        }
        memset(&p->rows[r], 0, sizeof p->rows[r]);
        p->rows[r].T = T;
        p->rows[r].graph = graph;
        p->n_rows++;
    }
    prof_row *row = &p->rows[r];
    const int first = !row->has_first;
    double *acc = first ? row->first : row->ms;
    for (int i = 1; i < p->n; i++) {
        float ms = 0;
        if (cudaEventElapsedTime(&ms, p->ev[i - 1], p->ev[i]) == cudaSuccess) acc[p->op[i]] += ms;
    }
    cudaGetLastError();
    if (first) {
        row->has_first = 1;
        row->first_wall = wall_ms;
    } else {
        row->steps++;
        row->wall_ms += wall_ms;
    }
}

/* One block per (T, graph) row: mean ms per step of each op kind, its share,
 * and the host's wall time per step. */
static void prof_print(const loom_gpu_model *m)
{
    const gpu_prof *p = m->prof;
    fprintf(stderr, "== loom GPU profile (LOOM_GPU_PROFILE=1): mean per step, CUDA events around each op kind ==\n");
    for (int r = 0; r < p->n_rows; r++) {
        const prof_row *row = &p->rows[r];
        const int only_first = row->steps == 0;
        const double *ms = only_first ? row->first : row->ms;
        const double n = only_first ? 1.0 : (double)row->steps;
        double tot = 0, tot1 = 0;
        for (int i = 0; i < P_N; i++) tot += ms[i], tot1 += row->first[i];
        fprintf(stderr, "T=%lld tokens%s: %s%lld steps, GPU %.3f ms/step, host wall %.3f ms/step (first step: GPU %.3f, wall %.3f ms)\n",
                (long long)row->T, row->graph ? " (graph replays: one op)" : "", only_first ? "only the first of " : "",
                (long long)(row->steps + 1), tot / n, (only_first ? row->first_wall : row->wall_ms) / n, tot1, row->first_wall);
        for (int i = 0; i < P_N; i++)
            if (ms[i] > 0) fprintf(stderr, "  %-16s %9.3f ms %5.1f%%\n", prof_names[i], ms[i] / n, 100.0 * ms[i] / tot);
    }
    if (p->dropped) fprintf(stderr, "(%lld steps not profiled: more than %d step shapes)\n", (long long)p->dropped, PROF_ROWS);
}

static void prof_destroy(loom_gpu_model *m)
{
    gpu_prof *p = m->prof;
    if (!p) return;
    if (p->n_rows) prof_print(m);
    for (int i = 0; i < p->cap; i++) cudaEventDestroy(p->ev[i]);
    free(p->ev);
    free(p->op);
    free(p);
    m->prof = NULL;
}

loom_gpu_opts loom_gpu_opts_default(void)
{
    return (loom_gpu_opts){.act = LOOM_F16, .max_tokens = 8192, .max_seqs = 64, .max_seq_len = 4096, .tokens_per_block = 64,
                           .kv_free_fraction = 0.9, .max_kv_tokens = 0, .multi_block = -1, .device = -1,
                           .kv = LOOM_DTYPE_COUNT};
}

static loom_status cuda_fail(loom_err *err, int rc, const char *what)
{
    return loom_err_set(err, LOOM_EIO, "CUDA %s failed: %s", what, cudaGetErrorString((cudaError_t)rc));
}

#define CUDA_TRY(call, what)                                                   \
    do {                                                                       \
        int rc_ = (int)(call);                                                 \
        if (rc_ != 0) return cuda_fail(err, rc_, what);                        \
    } while (0)

/* Device allocation, remembered for destroy. Out of memory names the part. */
static loom_status dalloc(loom_gpu_model *m, void **p, size_t bytes, const char *what, loom_err *err)
{
    *p = NULL;
    if (bytes == 0) bytes = 16;
    if (m->n_allocs == m->cap_allocs) {
        int cap = m->cap_allocs ? 2 * m->cap_allocs : 256;
        void **a = realloc(m->allocs, (size_t)cap * sizeof *a);
        if (!a) return loom_err_set(err, LOOM_ENOMEM, "out of host memory");
        m->allocs = a;
        m->cap_allocs = cap;
    }
    cudaError_t rc = cudaMalloc(p, bytes);
    if (rc != cudaSuccess) {
        size_t fr = 0, tot = 0;
        cudaGetLastError();
        cudaMemGetInfo(&fr, &tot);
        return loom_err_set(err, LOOM_ENOMEM, "out of GPU memory allocating %s (%.2f GiB; %.2f GiB free of %.2f): %s", what,
                            (double)bytes / (1 << 30), (double)fr / (1 << 30), (double)tot / (1 << 30),
                            !strcmp(what, "KV pool") ? "lower --kv-cache-free-gpu-mem-fraction or --max-tokens-in-paged-kv-cache"
                            : !strncmp(what, "activations", 11) ? "lower --max-num-tokens or --max-batch-size"
                                                                : "the weights do not fit: use more GPUs (--tp) or a smaller dtype");
    }
    m->allocs[m->n_allocs++] = *p;
    return LOOM_OK;
}

static void *off(void *p, int64_t elems, size_t es) { return (char *)p + (size_t)elems * es; }

/* Uploads n elements of host src (dtype sdt) into dst (act) at element offset. */
static loom_status upload(loom_gpu_model *m, void *dst, int64_t dst_off, const void *src, loom_dtype sdt, int64_t n, void *tmp,
                          loom_err *err)
{
    size_t bytes = (size_t)n * loom_dtype_size(sdt);
    CUDA_TRY(cudaMemcpyAsync(tmp, src, bytes, cudaMemcpyHostToDevice, m->stream), "weight upload");
    CUDA_TRY(loom_gpu_cast(off(dst, dst_off, m->es), m->o.act, tmp, sdt, n, m->stream), "weight cast");
    CUDA_TRY(cudaStreamSynchronize(m->stream), "weight upload");
    return LOOM_OK;
}

static loom_status init_common(loom_gpu_model *m, const loom_config *cfg, const loom_gpu_opts *o, const loom_shard *sh,
                               const loom_shard_dims *dm, const loom_gpu_dist *dist, loom_err *err)
{
    /* the partition's shapes (loom_shard_dims_make) */
    m->dist = dist;
    m->nh = dm->n_heads_local;
    m->nkv = dm->n_kv_local;
    m->inter = dm->inter_local;
    m->l0 = sh->layer_begin;
    m->nl = sh->layer_end - sh->layer_begin;
    m->tp = sh->tp_size;
    m->tp_rank = sh->tp_rank;
    m->is_first = sh->pp_rank == 0;
    m->is_last = sh->pp_rank == sh->pp_size - 1;
    m->vl = dm->vocab_local;
    m->vrows = dm->v_rows;
    if ((m->tp > 1 || !m->is_first || !m->is_last) && !dist) return loom_err_set(err, LOOM_EINTERNAL, "a partitioned GPU model needs data-plane hooks");
    m->o = *o;
    LOOM_CHECK(loom_gpu_env_check(err)); /* the switches below, and those the kernels read */
    m->use_graphs = loom_gpu_env_int("LOOM_CUDA_GRAPHS");
    m->graphs_partitioned = loom_gpu_env_int("LOOM_CUDA_GRAPHS_PARTITIONED");
    m->use_gemv = loom_gpu_env_int("LOOM_GEMV");
    m->use_fused = m->use_gemv && loom_gpu_env_int("LOOM_FUSED_DECODE");
    m->fused_rope = loom_gpu_env_int("LOOM_FUSED_ROPE");
    m->fused_glu = loom_gpu_env_int("LOOM_FUSED_GLU");
    if (loom_gpu_env_int("LOOM_GPU_PROFILE")) {
        m->prof = calloc(1, sizeof *m->prof);
        if (!m->prof) return loom_err_set(err, LOOM_ENOMEM, "out of memory");
    }
    if (o->act != LOOM_F16 && o->act != LOOM_BF16) return loom_err_set(err, LOOM_EINVAL, "the GPU backend computes in fp16 or bf16");
    m->es = 2;
    m->kv = o->kv == LOOM_DTYPE_COUNT ? o->act : o->kv;
    if (m->kv != o->act && m->kv != LOOM_F8E4M3)
        return loom_err_set(err, LOOM_EINVAL, "the KV cache holds the activations' dtype (%s) or fp8, not %s", loom_dtype_name(o->act),
                            loom_dtype_name(m->kv));
    m->kv_es = loom_dtype_size(m->kv);
    m->red_dt = m->tp > 1 && loom_gpu_env_int("LOOM_TP_REDUCE_F32") ? LOOM_F32 : o->act;
    int n_dev = 0;
    if (cudaGetDeviceCount(&n_dev) != cudaSuccess || n_dev == 0) {
        cudaGetLastError();
        return loom_err_set(err, LOOM_EIO, "no CUDA device is available (the CPU backend is `loom run` / `loom serve` without a GPU)");
    }
    if (o->device >= n_dev) return loom_err_set(err, LOOM_EINVAL, "CUDA device %d does not exist (%d present)", o->device, n_dev);
    if (o->device >= 0) CUDA_TRY(cudaSetDevice(o->device), "set device"); /* else: the caller's current device */
    CUDA_TRY(cudaStreamCreateWithFlags(&m->stream, cudaStreamNonBlocking), "stream create");
    loom_cuda_set_pdl(loom_gpu_env_int("LOOM_PDL"));
    if (m->use_gemv) {
        const int64_t q_in = m->nh * cfg->head_dim, max_in = q_in > m->inter ? q_in : m->inter;
        CUDA_TRY(loom_cuda_gemv1_fit(cfg->hidden_size, max_in > cfg->hidden_size ? max_in : cfg->hidden_size), "gemv shared memory carveout");
    }
    if (cfg->head_dim > 256)
        return loom_err_set(err, LOOM_EUNSUPPORTED, "the CUDA attention kernels support head_dim up to 256 (this model has %lld)", (long long)cfg->head_dim);
    char msg[256] = "";
    m->gemm = loom_cuda_gemm_create(GEMM_WORKSPACE, msg, sizeof msg);
    if (!m->gemm) return loom_err_set(err, LOOM_EIO, "cuBLASLt: %s", msg);
    /* copy the config (the layer windows are ours to free) */
    m->cfg = *cfg;
    m->cfg.layer_window = calloc((size_t)cfg->n_layers, sizeof *m->cfg.layer_window);
    m->cfg.conv_pp_layers = NULL;
    if (!m->cfg.layer_window) return loom_err_set(err, LOOM_ENOMEM, "out of memory");
    memcpy(m->cfg.layer_window, cfg->layer_window, (size_t)cfg->n_layers * sizeof *cfg->layer_window);
    m->layers = calloc((size_t)m->nl, sizeof *m->layers);
    if (!m->layers) return loom_err_set(err, LOOM_ENOMEM, "out of memory");
    return LOOM_OK;
}

/* Allocates every weight buffer (act dtype, fused layouts). */
static loom_status alloc_weights(loom_gpu_model *m, loom_err *err)
{
    const loom_config *c = &m->cfg;
    const int64_t H = c->hidden_size, I = m->inter, V = c->vocab_size, hd = c->head_dim;
    const int64_t QD = m->nh * hd, KD = m->nkv * hd, QKV = QD + 2 * KD;
    size_t es = m->es, before = 0;
    (void)V;
    /* lm_head is this rank's vocab slice padded to vl rows (zeros past vrows);
     * tied and unpartitioned, it is embed_tokens itself */
    bool share = c->tie_word_embeddings && m->tp == 1 && m->is_first && m->is_last;
    if (m->is_first) LOOM_CHECK(dalloc(m, &m->embed, (size_t)(c->vocab_size * H) * es, "embed_tokens", err));
    if (m->is_last) {
        LOOM_CHECK(dalloc(m, &m->final_norm, (size_t)H * es, "norm", err));
        if (share) m->lm_head = m->embed;
        else LOOM_CHECK(dalloc(m, &m->lm_head, (size_t)(m->vl * H) * es, "lm_head", err));
        if (!share) cudaMemset(m->lm_head, 0, (size_t)(m->vl * H) * es);
    }
    before = (m->is_last ? (size_t)(m->vrows * H) * es + (size_t)H * es : 0);
    for (int64_t l = 0; l < m->nl; l++) {
        gpu_layer *L = &m->layers[l];
        LOOM_CHECK(dalloc(m, &L->attn_norm, (size_t)H * es, "weights", err));
        LOOM_CHECK(dalloc(m, &L->mlp_norm, (size_t)H * es, "weights", err));
        LOOM_CHECK(dalloc(m, &L->w_qkv, (size_t)(QKV * H) * es, "weights", err));
        LOOM_CHECK(dalloc(m, &L->w_o, (size_t)(H * QD) * es, "weights", err));
        LOOM_CHECK(dalloc(m, &L->w_gu, (size_t)(2 * I * H) * es, "weights", err));
        LOOM_CHECK(dalloc(m, &L->w_down, (size_t)(H * I) * es, "weights", err));
        if (c->qkv_bias) LOOM_CHECK(dalloc(m, &L->b_qkv, (size_t)QKV * es, "weights", err));
        if (c->o_bias && m->tp_rank == 0) LOOM_CHECK(dalloc(m, &L->b_o, (size_t)H * es, "weights", err));
        if (c->mlp_bias) {
            LOOM_CHECK(dalloc(m, &L->b_gu, (size_t)(2 * I) * es, "weights", err));
            if (m->tp_rank == 0) LOOM_CHECK(dalloc(m, &L->b_down, (size_t)H * es, "weights", err));
        }
        before += (size_t)(2 * H + QKV * H + H * QD + 3 * I * H) * es;
    }
    m->weight_bytes = before; /* what a decode step reads (lm_head once) */
    m->mem.weights = before;
    return LOOM_OK;
}

/* The one-kernel step's table of layer pointers (weights and pools are
 * allocated by now; the weights' contents may come later). */
static loom_status upload_step_layers(loom_gpu_model *m, loom_err *err)
{
    loom_step_layer *hl = calloc((size_t)m->nl, sizeof *hl);
    if (!hl) return loom_err_set(err, LOOM_ENOMEM, "out of memory");
    for (int64_t l = 0; l < m->nl; l++) {
        const gpu_layer *L = &m->layers[l];
        hl[l] = (loom_step_layer){L->attn_norm, L->mlp_norm, L->w_qkv, L->b_qkv, L->w_o, L->b_o, L->w_gu, L->b_gu, L->w_down, L->b_down,
                                  L->pool, m->cfg.layer_window[m->l0 + l]};
    }
    cudaError_t rc = cudaMemcpy(m->step_layers, hl, (size_t)m->nl * sizeof *hl, cudaMemcpyHostToDevice);
    free(hl);
    CUDA_TRY(rc, "decode step layers");
    return LOOM_OK;
}

/* Run state, staging, scratch, then the KV pool from what is left. */
static loom_status alloc_runtime(loom_gpu_model *m, loom_err *err)
{
    const loom_config *c = &m->cfg;
    const loom_gpu_opts *o = &m->o;
    const int64_t H = c->hidden_size, I = m->inter, V = c->vocab_size, hd = c->head_dim;
    const int64_t QD = m->nh * hd, KD = m->nkv * hd, T = o->max_tokens, S = o->max_seqs;
    const size_t es = m->es, res = m->red_dt == LOOM_F32 ? 4 : es;
    size_t ws = GEMM_WORKSPACE;
    struct { void **p; size_t bytes; } acts[] = {
        {&m->x, (size_t)(T * H) * es},       {&m->xn, (size_t)(T * H) * es},          {&m->qkv, (size_t)(T * (QD + 2 * KD)) * es},
        {&m->att, (size_t)(T * QD) * es},    {&m->o_out, (size_t)(T * H) * res},      {&m->gu, (size_t)(T * 2 * I) * es},
        {&m->h, (size_t)(T * I) * es},       {&m->mlp, (size_t)(T * H) * res},        {&m->last, (size_t)(S * H) * es},
        {&m->logits_act, (size_t)(S * m->vl) * es}, {(void **)&m->logits, (size_t)(S * V) * 4},
        {&m->gathered, (size_t)(m->tp * S * m->vl) * es}, {&m->x2, (size_t)H * es},
    };
    for (size_t i = 0; i < sizeof acts / sizeof acts[0]; i++) {
        LOOM_CHECK(dalloc(m, acts[i].p, acts[i].bytes, "activations", err));
        ws += acts[i].bytes;
    }
    m->max_blocks_per_seq = (o->max_seq_len + o->tokens_per_block - 1) / o->tokens_per_block;
    m->attn_scratch_bytes = loom_cuda_attention_scratch_bytes(S, m->nh, hd, o->max_seq_len);
    m->samp_scratch_bytes = loom_cuda_sampling_scratch_bytes(S, V);
    LOOM_CHECK(dalloc(m, &m->attn_scratch, m->attn_scratch_bytes, "activations (attention scratch)", err));
    LOOM_CHECK(dalloc(m, &m->samp_scratch, m->samp_scratch_bytes, "activations (sampling scratch)", err));
    ws += m->attn_scratch_bytes + m->samp_scratch_bytes;
    LOOM_CHECK(dalloc(m, (void **)&m->inv_freq, (size_t)(hd / 2) * sizeof(float), "rope", err));
    float *inv = malloc((size_t)(hd / 2) * sizeof *inv);
    if (!inv) return loom_err_set(err, LOOM_ENOMEM, "out of memory");
    loom_config_rope_inv_freq(c, inv);
    cudaMemcpy(m->inv_freq, inv, (size_t)(hd / 2) * sizeof *inv, cudaMemcpyHostToDevice);
    free(inv);
    /* staging: int32 tokens, pos, slots (T each); qstart (S+1), ctx, last, topk (S); block tables (S * maxb);
     * floats temp, topp, rep (S); u64 seed, step (S); i64 hoff (S+1) */
    size_t n32 = (size_t)(3 * T + (S + 1) + 3 * S + S * m->max_blocks_per_seq);
    m->stage_bytes = n32 * 4 + (size_t)(3 * S) * 4 + (size_t)(2 * S) * 8 + (size_t)(S + 1) * 8 + 64 +
                     (size_t)(S * o->max_seq_len) * 4 + 16; /* + repetition-penalty histories */
    if (cudaMallocHost(&m->stage_host, m->stage_bytes) != cudaSuccess) return loom_err_set(err, LOOM_ENOMEM, "cannot pin %zu bytes", m->stage_bytes);
    LOOM_CHECK(dalloc(m, &m->stage_dev, m->stage_bytes, "activations (staging)", err));
    LOOM_CHECK(dalloc(m, (void **)&m->d_out, (size_t)S * 4, "activations", err));
    if (cudaMallocHost((void **)&m->h_out, (size_t)S * 4) != cudaSuccess) return loom_err_set(err, LOOM_ENOMEM, "cannot pin memory");
    /* the one-kernel step (loom_cuda_decode_step): batch 1 of a whole model
     * on one GPU, the fused step's shapes */
    m->use_step = m->use_fused && loom_gpu_env_int("LOOM_DECODE_STEP") && m->tp == 1 && m->is_first && m->is_last && m->nl > 0 &&
                  m->kv == o->act && loom_cuda_decode_step_ok(o->act, H, I, m->nh, m->nkv, hd);
    if (m->use_step) {
        m->step_scratch_bytes = loom_cuda_decode_step_scratch_bytes(m->nh, hd, o->max_seq_len);
        LOOM_CHECK(dalloc(m, (void **)&m->step_layers, (size_t)m->nl * sizeof *m->step_layers, "activations (decode step)", err));
        LOOM_CHECK(dalloc(m, &m->step_scratch, m->step_scratch_bytes, "activations (decode step)", err));
        CUDA_TRY(cudaMemset(m->step_scratch, 0, m->step_scratch_bytes), "decode step scratch"); /* barrier and counters start at 0 */
        ws += (size_t)m->nl * sizeof *m->step_layers + m->step_scratch_bytes;
    }
    m->mem.workspace = ws;
    /* The KV pool: a fraction of what is free now, or a fixed number of tokens. */
    size_t fr = 0, tot = 0;
    CUDA_TRY(cudaMemGetInfo(&fr, &tot), "memory info");
    const int64_t B = o->tokens_per_block;
    size_t block_bytes = (size_t)(2 * m->nkv * B * hd) * m->kv_es * (size_t)m->nl;
    int64_t blocks = (int64_t)((double)fr * o->kv_free_fraction / (double)block_bytes);
    if (o->max_kv_tokens > 0 && blocks > (o->max_kv_tokens + B - 1) / B) blocks = (o->max_kv_tokens + B - 1) / B;
    if (blocks < m->max_blocks_per_seq)
        return loom_err_set(err, LOOM_ENOMEM, "only %lld KV blocks of %lld tokens fit in GPU memory, fewer than one sequence of --max-seq-len %lld needs; "
                            "lower --max-seq-len or use more GPUs", (long long)blocks, (long long)B, (long long)o->max_seq_len);
    m->n_blocks = blocks;
    void *pool;
    LOOM_CHECK(dalloc(m, &pool, block_bytes * (size_t)blocks, "KV pool", err));
    size_t per_layer = (size_t)(2 * m->nkv * B * hd) * m->kv_es * (size_t)blocks;
    for (int64_t l = 0; l < m->nl; l++) m->layers[l].pool = (char *)pool + per_layer * (size_t)l;
    m->free_blocks = malloc((size_t)blocks * sizeof *m->free_blocks);
    m->seq_blocks = calloc((size_t)(S * m->max_blocks_per_seq), sizeof *m->seq_blocks);
    m->seq_len = calloc((size_t)S, sizeof *m->seq_len);
    m->seq_nb = calloc((size_t)S, sizeof *m->seq_nb);
    if (!m->free_blocks || !m->seq_blocks || !m->seq_len || !m->seq_nb) return loom_err_set(err, LOOM_ENOMEM, "out of memory");
    for (int64_t b = 0; b < blocks; b++) m->free_blocks[b] = (int32_t)(blocks - 1 - b);
    m->n_free = blocks;
    if (m->use_step) LOOM_CHECK(upload_step_layers(m, err));
    m->mem.kv = block_bytes * (size_t)blocks;
    m->mem.kv_blocks = blocks;
    m->mem.kv_tokens = blocks * B;
    m->mem.kv_dtype = m->kv;
    CUDA_TRY(cudaMemGetInfo(&fr, &tot), "memory info");
    m->mem.free_after = fr;
    m->mem.total = tot;
    return LOOM_OK;
}

static loom_status upload_weights(loom_gpu_model *m, const loom_model *hm, loom_err *err)
{
    const loom_config *c = &m->cfg;
    const int64_t H = c->hidden_size, I = m->inter, V = c->vocab_size, hd = c->head_dim;
    const int64_t QD = m->nh * hd, KD = m->nkv * hd;
    size_t tmp_bytes = (size_t)(V * H) * 4;
    if ((size_t)(2 * I * H) * 4 > tmp_bytes) tmp_bytes = (size_t)(2 * I * H) * 4;
    void *tmp;
    if (cudaMalloc(&tmp, tmp_bytes) != cudaSuccess) {
        cudaGetLastError();
        return loom_err_set(err, LOOM_ENOMEM, "out of GPU memory staging the weights (%.2f GiB)", (double)tmp_bytes / (1 << 30));
    }
    loom_status st = LOOM_OK;
#define UP(dst, doff, w, n)                                                                  \
    do {                                                                                     \
        if ((w).data && st == LOOM_OK) st = upload(m, dst, doff, (w).data, (w).dtype, n, tmp, err); \
    } while (0)
    if (m->is_first) UP(m->embed, 0, hm->w.embed, V * H);
    if (m->is_last) UP(m->final_norm, 0, hm->w.final_norm, H);
    if (m->is_last && m->lm_head != m->embed) UP(m->lm_head, 0, hm->w.lm_head, m->vrows * H);
    for (int64_t l = 0; l < m->nl && st == LOOM_OK; l++) {
        const loom_layer_weights *S = &hm->w.layers[l];
        gpu_layer *L = &m->layers[l];
        UP(L->attn_norm, 0, S->attn_norm, H);
        UP(L->mlp_norm, 0, S->mlp_norm, H);
        UP(L->w_qkv, 0, S->wq, QD * H);
        UP(L->w_qkv, QD * H, S->wk, KD * H);
        UP(L->w_qkv, (QD + KD) * H, S->wv, KD * H);
        UP(L->w_o, 0, S->wo, H * QD);
        UP(L->w_gu, 0, S->w_gate, I * H);
        UP(L->w_gu, I * H, S->w_up, I * H);
        UP(L->w_down, 0, S->w_down, H * I);
        if (L->b_qkv) {
            UP(L->b_qkv, 0, S->bq, QD);
            UP(L->b_qkv, QD, S->bk, KD);
            UP(L->b_qkv, QD + KD, S->bv, KD);
        }
        if (L->b_o) UP(L->b_o, 0, S->bo, H);
        if (L->b_gu) {
            UP(L->b_gu, 0, S->b_gate, I);
            UP(L->b_gu, I, S->b_up, I);
        }
        if (L->b_down) UP(L->b_down, 0, S->b_down, H);
    }
#undef UP
    cudaFree(tmp);
    return st;
}

static loom_status dummy_weights(loom_gpu_model *m, uint64_t seed, loom_err *err)
{
    const loom_config *c = &m->cfg;
    const int64_t H = c->hidden_size, I = m->inter, V = c->vocab_size, hd = c->head_dim;
    const int64_t QKV = m->nh * hd + 2 * m->nkv * hd, QD = m->nh * hd;
    float s_in = 1.0f / sqrtf((float)H), s_i = 1.0f / sqrtf((float)I);
    void *st = m->stream;
    /* a partition draws with its global layer index and its TP rank in the
     * seed, so the whole model (l0 = 0, rank 0) gets the same weights as before */
    seed += 0x9e3779b97f4a7c15ull * (uint64_t)m->tp_rank;
    if (m->is_first) CUDA_TRY(loom_gpu_fill_random(m->embed, m->o.act, V * H, 1.0f, 0.0f, seed, st), "random weights");
    if (m->is_last) CUDA_TRY(loom_gpu_fill_random(m->final_norm, m->o.act, H, 0.1f, 1.0f, seed + 1, st), "random weights");
    if (m->is_last && m->lm_head != m->embed && m->vrows > 0)
        CUDA_TRY(loom_gpu_fill_random(m->lm_head, m->o.act, m->vrows * H, s_in, 0.0f, seed + 2, st), "random weights"); /* padding rows stay 0 */
    for (int64_t l = 0; l < m->nl; l++) {
        gpu_layer *L = &m->layers[l];
        uint64_t k = seed + 16 * (uint64_t)(m->l0 + l + 1);
        CUDA_TRY(loom_gpu_fill_random(L->attn_norm, m->o.act, H, 0.1f, 1.0f, k, st), "random weights");
        CUDA_TRY(loom_gpu_fill_random(L->mlp_norm, m->o.act, H, 0.1f, 1.0f, k + 1, st), "random weights");
        CUDA_TRY(loom_gpu_fill_random(L->w_qkv, m->o.act, QKV * H, s_in, 0.0f, k + 2, st), "random weights");
        CUDA_TRY(loom_gpu_fill_random(L->w_o, m->o.act, H * QD, s_in, 0.0f, k + 3, st), "random weights");
        CUDA_TRY(loom_gpu_fill_random(L->w_gu, m->o.act, 2 * I * H, s_in, 0.0f, k + 4, st), "random weights");
        CUDA_TRY(loom_gpu_fill_random(L->w_down, m->o.act, H * I, s_i, 0.0f, k + 5, st), "random weights");
        if (L->b_qkv) CUDA_TRY(loom_gpu_fill_random(L->b_qkv, m->o.act, QKV, 0.1f, 0.0f, k + 6, st), "random weights");
        if (L->b_o) CUDA_TRY(loom_gpu_fill_random(L->b_o, m->o.act, H, 0.1f, 0.0f, k + 7, st), "random weights");
        if (L->b_gu) CUDA_TRY(loom_gpu_fill_random(L->b_gu, m->o.act, 2 * I, 0.1f, 0.0f, k + 8, st), "random weights");
        if (L->b_down) CUDA_TRY(loom_gpu_fill_random(L->b_down, m->o.act, H, 0.1f, 0.0f, k + 9, st), "random weights");
    }
    CUDA_TRY(cudaStreamSynchronize(st), "random weights");
    return LOOM_OK;
}

loom_gpu_model *loom_gpu_model_dummy_part(const loom_config *cfg, const loom_gpu_opts *o, const loom_shard *shard, const loom_gpu_dist *dist,
                                          uint64_t seed, loom_err *err)
{
    loom_shard whole = loom_shard_single(cfg);
    const loom_shard *sh = shard ? shard : &whole;
    loom_shard_dims dm;
    if (loom_shard_dims_make(cfg, sh, &dm, err) != LOOM_OK) return NULL;
    loom_gpu_model *m = calloc(1, sizeof *m);
    if (!m) {
        loom_err_set(err, LOOM_ENOMEM, "out of memory");
        return NULL;
    }
    if (init_common(m, cfg, o, sh, &dm, dist, err) != LOOM_OK || alloc_weights(m, err) != LOOM_OK || dummy_weights(m, seed, err) != LOOM_OK ||
        alloc_runtime(m, err) != LOOM_OK) {
        loom_gpu_model_destroy(m);
        return NULL;
    }
    return m;
}

loom_gpu_model *loom_gpu_model_dummy(const loom_config *cfg, const loom_gpu_opts *o, uint64_t seed, loom_err *err)
{
    return loom_gpu_model_dummy_part(cfg, o, NULL, NULL, seed, err);
}

/* The host model is only read for its (sliced) weights; it never runs. */
static loom_status no_hook(void *ctx, float *buf, int64_t n, loom_err *err)
{
    (void)ctx, (void)buf, (void)n;
    return loom_err_set(err, LOOM_EINTERNAL, "no CPU data plane");
}
static loom_status no_send(void *ctx, const float *buf, int64_t n, loom_err *err)
{
    (void)ctx, (void)buf, (void)n;
    return loom_err_set(err, LOOM_EINTERNAL, "no CPU data plane");
}
static loom_status no_gather(void *ctx, const float *l, int64_t n, float *out, loom_err *err)
{
    (void)ctx, (void)l, (void)n, (void)out;
    return loom_err_set(err, LOOM_EINTERNAL, "no CPU data plane");
}

loom_gpu_model *loom_gpu_model_load(const char *dir, const loom_gpu_opts *o, loom_err *err)
{
    return loom_gpu_model_load_part(dir, o, NULL, NULL, err);
}

loom_gpu_model *loom_gpu_model_load_part(const char *dir, const loom_gpu_opts *o, const loom_shard *shard, const loom_gpu_dist *dist,
                                         loom_err *err)
{
    static const loom_dist host_hooks = {.tp_allreduce = no_hook, .tp_gather = no_gather, .pp_send = no_send, .pp_recv = no_hook};
    loom_model *hm = loom_model_load(dir, loom_ops_cpu(), shard, shard ? &host_hooks : NULL, 1, 1, err);
    if (!hm) return NULL;
    loom_gpu_model *m = calloc(1, sizeof *m);
    if (!m) {
        loom_model_destroy(hm);
        loom_err_set(err, LOOM_ENOMEM, "out of memory");
        return NULL;
    }
    const loom_shard_dims dm = {.n_heads_local = hm->n_heads_local, .n_kv_local = hm->n_kv_local, .inter_local = hm->inter_local,
                                .kv_head_begin = hm->kv_head_begin, .vocab_local = hm->vocab_local, .v_begin = hm->v_begin, .v_rows = hm->v_rows};
    if (init_common(m, &hm->cfg, o, &hm->shard, &dm, dist, err) != LOOM_OK || alloc_weights(m, err) != LOOM_OK || upload_weights(m, hm, err) != LOOM_OK ||
        alloc_runtime(m, err) != LOOM_OK) {
        loom_gpu_model_destroy(m);
        m = NULL;
    }
    loom_model_destroy(hm);
    return m;
}

void loom_gpu_model_destroy(loom_gpu_model *m)
{
    if (!m) return;
    if (m->stream) cudaStreamSynchronize(m->stream);
    prof_destroy(m);
    for (int i = 0; i < m->n_graphs; i++)
        if (m->graphs[i].exec) cudaGraphExecDestroy(m->graphs[i].exec);
    for (int i = 0; i < m->n_allocs; i++) cudaFree(m->allocs[i]);
    free(m->allocs);
    if (m->stage_host) cudaFreeHost(m->stage_host);
    if (m->h_out) cudaFreeHost(m->h_out);
    loom_cuda_gemm_destroy(m->gemm);
    if (m->stream) cudaStreamDestroy(m->stream);
    free(m->layers);
    free(m->free_blocks);
    free(m->seq_blocks);
    free(m->seq_len);
    free(m->seq_nb);
    loom_config_free(&m->cfg);
    free(m);
}

loom_gpu_mem loom_gpu_model_mem(const loom_gpu_model *m) { return m->mem; }
size_t loom_gpu_weight_bytes(const loom_gpu_model *m) { return m->weight_bytes; }
const loom_config *loom_gpu_config(const loom_gpu_model *m) { return &m->cfg; }
int64_t loom_gpu_seq_len(const loom_gpu_model *m, int64_t slot) { return m->seq_len[slot]; }

loom_status loom_gpu_seq_bind(loom_gpu_model *m, int64_t slot, int64_t len, const int32_t *table, int64_t n, loom_err *err)
{
    const int64_t B = m->o.tokens_per_block;
    if (slot < 0 || slot >= m->o.max_seqs || n < 0 || n > m->max_blocks_per_seq || len < 0 || len > n * B)
        return loom_err_set(err, LOOM_EINVAL, "block table of slot %lld: %lld blocks for %lld tokens (at most %lld blocks)", (long long)slot,
                            (long long)n, (long long)len, (long long)m->max_blocks_per_seq);
    for (int64_t i = 0; i < n; i++)
        if (table[i] < 0 || table[i] >= m->n_blocks)
            return loom_err_set(err, LOOM_EINVAL, "block table of slot %lld names block %d (pool: %lld)", (long long)slot, table[i], (long long)m->n_blocks);
    m->external = true;
    memcpy(m->seq_blocks + slot * m->max_blocks_per_seq, table, (size_t)n * sizeof *table);
    m->seq_nb[slot] = n;
    m->seq_len[slot] = len;
    return LOOM_OK;
}

void loom_gpu_seq_reset(loom_gpu_model *m, int64_t slot)
{
    if (m->external) {
        m->seq_len[slot] = m->seq_nb[slot] = 0;
        return;
    }
    int64_t nb = (m->seq_len[slot] + m->o.tokens_per_block - 1) / m->o.tokens_per_block;
    for (int64_t b = 0; b < nb; b++) m->free_blocks[m->n_free++] = m->seq_blocks[slot * m->max_blocks_per_seq + b];
    m->seq_len[slot] = 0;
}

/* Lays the step's host arrays out in the pinned buffer and points the device
 * pointers at the same offsets of the device mirror. */
static void carve(loom_gpu_model *m, int64_t T, int64_t S, int64_t maxb, size_t *used)
{
    char *h = m->stage_host, *d = m->stage_dev;
    size_t o = 0;
#define SLOT(ptr, type, n)                                                     \
    do {                                                                       \
        o = (o + 7) & ~(size_t)7;                                              \
        ptr = (type *)(d + o);                                                 \
        o += (size_t)(n) * sizeof(type);                                       \
    } while (0)
    SLOT(m->d_tokens, int32_t, T);
    SLOT(m->d_pos, int32_t, T);
    SLOT(m->d_slots, int32_t, T);
    SLOT(m->d_qstart, int32_t, S + 1);
    SLOT(m->d_ctx, int32_t, S);
    SLOT(m->d_last, int32_t, S);
    SLOT(m->d_topk, int32_t, S);
    SLOT(m->d_bt, int32_t, S * maxb);
    SLOT(m->d_temp, float, S);
    SLOT(m->d_topp, float, S);
    SLOT(m->d_rep, float, S);
    SLOT(m->d_seed, uint64_t, S);
    SLOT(m->d_step, uint64_t, S);
    SLOT(m->d_hoff, int64_t, S + 1);
    o = (o + 7) & ~(size_t)7;
    m->d_hist = (int32_t *)(d + o); /* histories last: the upload covers only what is used */
#undef SLOT
    (void)h;
    *used = o;
}

#define HOST(devptr) ((void *)((char *)m->stage_host + ((char *)(devptr) - (char *)m->stage_dev)))

/* y = x @ W^T (+ b): the bandwidth-bound GEMV kernel for decode-sized
 * batches, cuBLASLt otherwise. */
static int linear(loom_gpu_model *m, void *y, const void *x, const void *w, const void *b, int64_t n, int64_t in, int64_t out,
                  cudaStream_t st)
{
    /* one row only: at n = 8 the GEMV rereads x per row and cuBLASLt is 2x faster (bench/results) */
    if (m->use_gemv && n == 1 && loom_cuda_gemv_ok(m->o.act, n, in, x, w)) return loom_cuda_gemv(y, x, w, b, m->o.act, n, in, out, st);
    return loom_cuda_gemm_run(m->gemm, y, x, w, b, m->o.act, n, in, out, st);
}

/* The row-parallel projections (o, down) into m->o_out / m->mlp: in act on
 * one GPU, fp32 partial sums under TP (m->red_dt). */
static int linear_red(loom_gpu_model *m, void *y, const void *x, const void *w, const void *b, int64_t n, int64_t in, int64_t out,
                      cudaStream_t st)
{
    if (m->red_dt != LOOM_F32) return linear(m, y, x, w, b, n, in, out, st);
    if (m->use_gemv && n == 1 && loom_cuda_gemv_ok(m->o.act, n, in, x, w)) return loom_cuda_gemv_f32(y, x, w, b, m->o.act, n, in, out, st);
    return loom_cuda_gemm_run_f32(m->gemm, y, x, w, b, m->o.act, n, in, out, st);
}

/* residual m->x += delta (m->o_out or m->mlp, in m->red_dt; NULL adds
 * nothing), then out = RMSNorm(m->x) * gamma, n rows. */
static int add_norm(loom_gpu_model *m, const void *delta, void *out, const void *gamma, int64_t n)
{
    const loom_config *c = &m->cfg;
    if (delta && m->red_dt == LOOM_F32)
        return loom_cuda_add_rmsnorm_f32(m->x, delta, out, m->o.act, gamma, m->o.act, n, c->hidden_size, c->rms_norm_eps, m->stream);
    return loom_cuda_add_rmsnorm(m->x, delta, out, m->o.act, gamma, m->o.act, n, c->hidden_size, c->rms_norm_eps, m->stream);
}

/* Sums the row-parallel output buf (T rows of H, in m->red_dt) over the TP
 * group in place. (As an fp32 reduce-scatter, each rank's slice rounded to
 * act, and an act all-gather, 3/4 of the bytes, it measured no faster at
 * 16 MB and 10% slower a batch-64 step: bench/results/2026-11-21-h200x2-tp-
 * reduce-f32.md.) */
static int tp_reduce(loom_gpu_model *m, void *buf, int64_t T)
{
    const loom_gpu_dist *d = m->dist;
    return d->allreduce(d->ctx, buf, T * m->cfg.hidden_size, m->red_dt, m->stream);
}

/* One token's row-parallel GEMV (o, down) into y: loom_cuda_gemv1, or its
 * fp32 partial under TP. */
static int gemv1_red(loom_gpu_model *m, void *y, const void *x, const void *w, const void *b, int64_t in, int64_t out,
                     const loom_gemv_pre *pre)
{
    if (m->red_dt == LOOM_F32) return loom_cuda_gemv1_partial(y, x, w, b, m->o.act, in, out, pre, m->stream);
    return loom_cuda_gemv1(y, x, w, b, m->o.act, in, out, pre, m->stream);
}

/* RoPE on q and k of m->qkv and the KV append into layer l's pool, one
 * kernel (k stays unrotated in qkv: attention reads keys from the pool). */
static int rope_append(loom_gpu_model *m, int64_t l, int64_t T)
{
    const int64_t hd = m->cfg.head_dim, QKV = (m->nh + 2 * m->nkv) * hd;
    return loom_cuda_rope_kv_append(m->qkv, QKV, m->o.act, m->kv, m->d_pos, m->d_slots, T, m->nh, m->nkv, hd, m->inv_freq, m->layers[l].pool,
                                    m->o.tokens_per_block, m->stream);
}

/* Layer l's attention over the pool, m->qkv -> m->att: the flash / paged
 * kernels for head_dim 64 and 128, the generic one otherwise. */
static loom_status attend(loom_gpu_model *m, int64_t l, int64_t S, int64_t T, int64_t max_ctx, loom_err *err)
{
    const loom_config *c = &m->cfg;
    const loom_gpu_opts *o = &m->o;
    const gpu_layer *L = &m->layers[l];
    const int64_t B = o->tokens_per_block, maxb = m->max_blocks_per_seq, hd = c->head_dim;
    const int64_t QKV = (m->nh + 2 * m->nkv) * hd, window = c->layer_window[m->l0 + l];
    const float scale = 1.0f / sqrtf((float)hd);
    if (hd == 64 || hd == 128)
        CUDA_TRY(loom_cuda_attention(m->att, m->qkv, QKV, L->pool, o->act, m->kv, m->d_qstart, m->d_ctx, m->d_bt, maxb, S, T, max_ctx, m->nh, m->nkv,
                                     hd, B, window, scale, o->multi_block, m->attn_scratch, m->attn_scratch_bytes, m->stream),
                 "attention");
    else
        CUDA_TRY(loom_cuda_attention_generic(m->att, m->qkv, QKV, L->pool, o->act, m->kv, m->d_qstart, m->d_ctx, m->d_bt, maxb, S, T, m->nh, m->nkv,
                                             hd, B, window, scale, m->stream),
                 "attention");
    return LOOM_OK;
}

/* Whether a step of one token runs the fused kernels: the norms and the
 * residual adds in the GEMVs' prologues (loom_cuda_gemv1), RoPE and the KV
 * append in the QKV GEMV's epilogue, SiLU*mul in the gate/up GEMV's. Five
 * kernels a layer (attention's split reduction aside) instead of ten. */
static bool fused_step(const loom_gpu_model *m, int64_t T)
{
    const loom_config *c = &m->cfg;
    const loom_dtype a = m->o.act;
    const gpu_layer *L = &m->layers[0];
    return m->use_fused && T == 1 && m->nl > 0 && loom_cuda_gemv1_ok(a, c->hidden_size, m->x, L->w_qkv) &&
           loom_cuda_gemv1_ok(a, m->nh * c->head_dim, m->att, L->w_o) && loom_cuda_gemv1_ok(a, m->inter, m->gu, L->w_down) &&
           (!m->is_last || loom_cuda_gemv1_ok(a, c->hidden_size, m->x, m->lm_head));
}

/* The layers of a one-token step, fused. The residual alternates between
 * m->x and m->x2: the QKV GEMV adds the last layer's MLP output to m->x into
 * m->x2 and normalizes it, the gate/up GEMV adds the attention output back
 * into m->x; so, as after the unfused layers, the residual is in m->x and
 * the last MLP output in m->mlp, not yet added. */
static loom_status fused_layers(loom_gpu_model *m, int64_t S, int64_t T, int64_t max_ctx, loom_err *err)
{
    const loom_config *c = &m->cfg;
    const loom_gpu_opts *o = &m->o;
    const int64_t B = o->tokens_per_block;
    const int64_t H = c->hidden_size, I = m->inter, hd = c->head_dim;
    const int64_t QD = m->nh * hd, KD = m->nkv * hd, QKV = QD + 2 * KD;
    const float eps = c->rms_norm_eps;
    const int d32 = m->red_dt == LOOM_F32;
    cudaStream_t st = m->stream;
    for (int64_t l = 0; l < m->nl; l++) {
        gpu_layer *L = &m->layers[l];
        /* the first stage's layer 0 reads its token's embedding row itself */
        const bool gather = l == 0 && m->is_first;
        const loom_gemv_pre pre_attn = {LOOM_GEMV_ADD_RMSNORM, l ? m->mlp : NULL, m->x2, L->attn_norm, eps, gather ? m->d_tokens : NULL, d32};
        const void *x_in = gather ? m->embed : m->x;
        if (m->fused_rope) {
            const loom_gemv_rope rope = {m->d_pos, m->d_slots, m->inv_freq, L->pool, m->nh, m->nkv, hd, B, m->kv};
            CUDA_TRY(loom_cuda_gemv1_rope(m->qkv, x_in, L->w_qkv, L->b_qkv, o->act, H, &pre_attn, &rope, st), "norm + qkv gemv + rope");
            PROF(P_QKV);
        } else {
            CUDA_TRY(loom_cuda_gemv1(m->qkv, x_in, L->w_qkv, L->b_qkv, o->act, H, QKV, &pre_attn, st), "norm + qkv gemv");
            PROF(P_QKV);
            CUDA_TRY(rope_append(m, l, T), "rope + kv append");
            PROF(P_ROPE);
        }
        LOOM_CHECK(attend(m, l, S, T, max_ctx, err));
        PROF(P_ATTN);
        CUDA_TRY(gemv1_red(m, m->o_out, m->att, L->w_o, L->b_o, QD, H, NULL), "o gemv");
        PROF(P_O);
        if (m->tp > 1) {
            CUDA_TRY(tp_reduce(m, m->o_out, T), "all-reduce");
            PROF(P_COMM);
        }
        const loom_gemv_pre pre_mlp = {LOOM_GEMV_ADD_RMSNORM, m->o_out, m->x, L->mlp_norm, eps, NULL, d32};
        if (m->fused_glu) {
            CUDA_TRY(loom_cuda_gemv1_glu(m->h, m->x2, L->w_gu, L->b_gu, o->act, H, I, &pre_mlp, st), "norm + gate/up gemv + silu*mul");
            PROF(P_GU);
            CUDA_TRY(gemv1_red(m, m->mlp, m->h, L->w_down, L->b_down, I, H, NULL), "down gemv");
        } else {
            CUDA_TRY(loom_cuda_gemv1(m->gu, m->x2, L->w_gu, L->b_gu, o->act, H, 2 * I, &pre_mlp, st), "norm + gate/up gemv");
            PROF(P_GU);
            const loom_gemv_pre pre_down = {LOOM_GEMV_SILU_MUL, NULL, NULL, NULL, 0.0f, NULL, 0};
            CUDA_TRY(gemv1_red(m, m->mlp, m->gu, L->w_down, L->b_down, I, H, &pre_down), "silu*mul + down gemv");
        }
        PROF(P_DOWN);
        if (m->tp > 1) {
            CUDA_TRY(tp_reduce(m, m->mlp, T), "all-reduce");
            PROF(P_COMM);
        }
    }
    return LOOM_OK;
}

/* Samples the S sequences' next tokens from m->logits and downloads them. */
static loom_status sample(loom_gpu_model *m, int64_t S, loom_err *err)
{
    cudaStream_t st = m->stream;
    CUDA_TRY(loom_cuda_sample(m->d_out, m->logits, S, m->cfg.vocab_size, m->d_temp, m->d_topk, m->d_topp, m->d_rep, m->d_hist, m->d_hoff,
                              m->d_seed, m->d_step, m->samp_scratch, st),
             "sampling");
    CUDA_TRY(cudaMemcpyAsync(m->h_out, m->d_out, (size_t)S * sizeof(int32_t), cudaMemcpyDeviceToHost, st), "ids download");
    PROF(P_SAMPLE);
    return LOOM_OK;
}

/* One token of a whole model on one GPU (m->use_step): every layer and
 * lm_head as one persistent kernel, logits into m->logits. */
static loom_status decode_step(loom_gpu_model *m, loom_err *err)
{
    const loom_config *c = &m->cfg;
    const loom_step s = {
        .layers = m->step_layers, .n_layers = m->nl, .hidden = c->hidden_size, .inter = m->inter, .n_heads = m->nh,
        .n_kv_heads = m->nkv, .head_dim = c->head_dim, .tokens_per_block = m->o.tokens_per_block, .vocab = c->vocab_size,
        .eps = c->rms_norm_eps, .scale = 1.0f / sqrtf((float)c->head_dim), .embed = m->embed, .final_norm = m->final_norm,
        .lm_head = m->lm_head, .token = m->d_tokens, .pos = m->d_pos, .slot = m->d_slots, .block_table = m->d_bt,
        .inv_freq = m->inv_freq, .x = m->x, .x2 = m->x2, .qkv = m->qkv, .att = m->att, .o_out = m->o_out, .h = m->h, .mlp = m->mlp,
        .logits = m->logits, .scratch = m->step_scratch, .scratch_bytes = m->step_scratch_bytes, .max_ctx = m->o.max_seq_len,
    };
    CUDA_TRY(loom_cuda_decode_step(&s, m->o.act, m->stream), "decode step (one kernel)");
    return LOOM_OK;
}

/* Enqueues one step on the stream: the staging upload, the layers, lm_head,
 * sampling and the ids download. The same sequence is captured as a graph. */
static loom_status launch_step(loom_gpu_model *m, int64_t S, int64_t T, int64_t max_ctx, size_t used, loom_err *err)
{
    const loom_config *c = &m->cfg;
    const loom_gpu_opts *o = &m->o;
    const int64_t H = c->hidden_size, I = m->inter, V = c->vocab_size, hd = c->head_dim;
    const int64_t QD = m->nh * hd, KD = m->nkv * hd, QKV = QD + 2 * KD;
    cudaStream_t st = m->stream;
    if (m->prof) prof_begin(m);
    CUDA_TRY(cudaMemcpyAsync(m->stage_dev, m->stage_host, used, cudaMemcpyHostToDevice, st), "step upload");
    PROF(P_UPLOAD);
    const loom_gpu_dist *d = m->dist;
    const bool fused = fused_step(m, T);
    if (m->use_step && fused) { /* the whole step in one kernel, then sampling */
        LOOM_CHECK(decode_step(m, err));
        PROF(P_STEP);
        return sample(m, S, err);
    }
    if (m->is_first && !fused) { /* (the fused layer 0 gathers the embedding row itself) */
        CUDA_TRY(loom_cuda_embedding(m->x, o->act, m->embed, o->act, m->d_tokens, T, H, st), "embedding");
        PROF(P_EMBED);
    } else if (!m->is_first) {
        CUDA_TRY(d->recv_prev(d->ctx, m->x, T * H, o->act, st), "receive from the previous stage");
        PROF(P_COMM);
    }
    if (fused) LOOM_CHECK(fused_layers(m, S, T, max_ctx, err));
    for (int64_t l = 0; !fused && l < m->nl; l++) {
        gpu_layer *L = &m->layers[l];
        CUDA_TRY(add_norm(m, l ? m->mlp : NULL, m->xn, L->attn_norm, T), "rmsnorm");
        PROF(P_NORM);
        CUDA_TRY(linear(m, m->qkv, m->xn, L->w_qkv, L->b_qkv, T, H, QKV, st), "qkv gemm");
        PROF(P_QKV);
        CUDA_TRY(rope_append(m, l, T), "rope + kv append");
        PROF(P_ROPE);
        LOOM_CHECK(attend(m, l, S, T, max_ctx, err));
        PROF(P_ATTN);
        CUDA_TRY(linear_red(m, m->o_out, m->att, L->w_o, L->b_o, T, QD, H, st), "o gemm");
        PROF(P_O);
        if (m->tp > 1) {
            CUDA_TRY(tp_reduce(m, m->o_out, T), "all-reduce");
            PROF(P_COMM);
        }
        CUDA_TRY(add_norm(m, m->o_out, m->xn, L->mlp_norm, T), "rmsnorm");
        PROF(P_NORM);
        CUDA_TRY(linear(m, m->gu, m->xn, L->w_gu, L->b_gu, T, H, 2 * I, st), "gate/up gemm");
        PROF(P_GU);
        CUDA_TRY(loom_cuda_silu_mul(m->h, m->gu, o->act, T, I, st), "silu*mul");
        PROF(P_SILU);
        CUDA_TRY(linear_red(m, m->mlp, m->h, L->w_down, L->b_down, T, I, H, st), "down gemm");
        PROF(P_DOWN);
        if (m->tp > 1) {
            CUDA_TRY(tp_reduce(m, m->mlp, T), "all-reduce");
            PROF(P_COMM);
        }
    }
    if (!m->is_last) {
        /* finish the residual (x += mlp; the normed copy is not used) and pass it on */
        CUDA_TRY(add_norm(m, m->mlp, m->xn, m->layers[m->nl - 1].mlp_norm, T), "residual");
        PROF(P_NORM);
        CUDA_TRY(d->send_next(d->ctx, m->x, T * H, o->act, st), "send to the next stage");
        PROF(P_COMM);
        return LOOM_OK;
    }
    if (fused) {
        /* one token: it is the last row; the final norm runs inside lm_head's GEMV */
        const loom_gemv_pre pre = {LOOM_GEMV_ADD_RMSNORM, m->mlp, NULL, m->final_norm, c->rms_norm_eps, NULL, m->red_dt == LOOM_F32};
        if (m->tp == 1) /* the fp32 logits straight from the GEMV: no cast kernel */
            CUDA_TRY(loom_cuda_gemv1_f32(m->logits, m->x, m->lm_head, NULL, o->act, H, m->vl, &pre, st), "final norm + lm_head gemv");
        else
            CUDA_TRY(loom_cuda_gemv1(m->logits_act, m->x, m->lm_head, NULL, o->act, H, m->vl, &pre, st), "final norm + lm_head gemv");
        PROF(P_LM_HEAD);
    } else {
        CUDA_TRY(add_norm(m, m->mlp, m->xn, m->final_norm, T), "final norm");
        PROF(P_NORM);
        CUDA_TRY(loom_gpu_gather_rows(m->last, m->xn, o->act, m->d_last, S, H, st), "gather");
        CUDA_TRY(linear(m, m->logits_act, m->last, m->lm_head, NULL, S, H, m->vl, st), "lm_head gemm");
        PROF(P_LM_HEAD);
    }
    if (m->tp > 1) {
        CUDA_TRY(d->allgather(d->ctx, m->logits_act, m->gathered, S * m->vl, o->act, st), "all-gather");
        PROF(P_COMM);
        CUDA_TRY(loom_gpu_gather_vocab(m->logits, m->gathered, o->act, m->tp, S, m->vl, V, st), "logits gather");
    } else if (!fused) {
        CUDA_TRY(loom_gpu_cast(m->logits, LOOM_F32, m->logits_act, o->act, S * V, st), "logits cast");
    }
    return sample(m, S, err);
}

loom_status loom_gpu_forward(loom_gpu_model *m, int64_t S, const int64_t *slots, const int64_t *start, const int32_t *tokens,
                             int32_t *out_ids, loom_err *err)
{
    return loom_gpu_forward_sampled(m, S, slots, start, tokens, NULL, NULL, NULL, out_ids, err); /* NULL: greedy */
}

loom_status loom_gpu_forward_sampled(loom_gpu_model *m, int64_t S, const int64_t *slots, const int64_t *start, const int32_t *tokens,
                                     const loom_gpu_sample *sp, const int32_t *const *hist, const int64_t *hist_len, int32_t *out_ids,
                                     loom_err *err)
{
    const double t_enter = m->prof ? loom_now_s() : 0;
    const loom_gpu_opts *o = &m->o;
    const int64_t T = start[S], B = o->tokens_per_block, maxb = m->max_blocks_per_seq;
    if (S < 1 || S > o->max_seqs || T < 1 || T > o->max_tokens)
        return loom_err_set(err, LOOM_EINVAL, "batch of %lld tokens in %lld sequences exceeds the limits (%lld, %lld)", (long long)T, (long long)S,
                            (long long)o->max_tokens, (long long)o->max_seqs);
    size_t used;
    carve(m, T, S, maxb, &used);
    int32_t *h_tok = HOST(m->d_tokens), *h_pos = HOST(m->d_pos), *h_slot = HOST(m->d_slots), *h_qs = HOST(m->d_qstart),
            *h_ctx = HOST(m->d_ctx), *h_last = HOST(m->d_last), *h_topk = HOST(m->d_topk), *h_bt = HOST(m->d_bt);
    float *h_temp = HOST(m->d_temp), *h_topp = HOST(m->d_topp), *h_rep = HOST(m->d_rep);
    uint64_t *h_seed = HOST(m->d_seed), *h_step = HOST(m->d_step);
    int64_t *h_hoff = HOST(m->d_hoff);
    int32_t *h_hist = HOST(m->d_hist);
    int64_t max_ctx = 0, n_hist = 0;
    memcpy(h_tok, tokens, (size_t)T * sizeof *tokens);
    for (int64_t i = 0; i < S; i++) {
        int64_t s = slots[i], n = start[i + 1] - start[i], len0 = m->seq_len[s];
        if (s < 0 || s >= o->max_seqs || n < 1 || len0 + n > o->max_seq_len)
            return loom_err_set(err, LOOM_EINVAL, "sequence slot %lld: %lld + %lld tokens exceed --max-seq-len %lld", (long long)s, (long long)len0,
                                (long long)n, (long long)o->max_seq_len);
        int32_t *blocks = m->seq_blocks + s * maxb;
        int64_t need = (len0 + n + B - 1) / B, have = (len0 + B - 1) / B;
        if (m->external && need > m->seq_nb[s])
            return loom_err_set(err, LOOM_EINVAL, "slot %lld: its block table (%lld blocks) cannot hold %lld tokens", (long long)s,
                                (long long)m->seq_nb[s], (long long)(len0 + n));
        if (m->external) have = need;
        if (need - have > m->n_free)
            return loom_err_set(err, LOOM_ENOMEM, "the KV pool is full (%lld blocks of %lld tokens)", (long long)m->n_blocks, (long long)B);
        for (int64_t b = have; b < need; b++) blocks[b] = m->free_blocks[--m->n_free];
        for (int64_t k = 0; k < n; k++) {
            int64_t p = len0 + k;
            h_pos[start[i] + k] = (int32_t)p;
            h_slot[start[i] + k] = blocks[p / B] * (int32_t)B + (int32_t)(p % B);
        }
        h_qs[i] = (int32_t)start[i];
        h_ctx[i] = (int32_t)(len0 + n);
        h_last[i] = (int32_t)(start[i + 1] - 1);
        memcpy(h_bt + i * maxb, blocks, (size_t)need * sizeof *blocks);
        h_temp[i] = sp ? sp[i].temperature : 0.0f;
        h_topk[i] = sp ? sp[i].top_k : 0;
        h_topp[i] = sp ? sp[i].top_p : 1.0f;
        h_rep[i] = sp ? sp[i].repetition_penalty : 1.0f;
        h_seed[i] = sp ? sp[i].seed : 0;
        h_step[i] = (uint64_t)(len0 + n); /* the position sampled: batch-independent */
        h_hoff[i] = n_hist;
        if (sp && sp[i].repetition_penalty != 1.0f && hist && hist[i]) {
            int64_t k = hist_len[i] < o->max_seq_len ? hist_len[i] : o->max_seq_len;
            memcpy(h_hist + n_hist, hist[i], (size_t)k * sizeof *h_hist);
            n_hist += k;
        }
        if (len0 + n > max_ctx) max_ctx = len0 + n;
        m->seq_len[s] = len0 + n;
    }
    h_qs[S] = (int32_t)T;
    h_hoff[S] = n_hist;
    used = (size_t)((char *)m->d_hist - (char *)m->stage_dev) + (size_t)n_hist * sizeof *h_hist;
    cudaStream_t st = m->stream;
    int replayed = 0;
    /* A partitioned model's step holds NCCL collectives and send/receive, which
     * a graph captures too; every rank of a TP group decides alike (same
     * batches, same histories), and a stage that runs plainly while its
     * neighbour replays still pairs its NCCL calls in the same order. */
    const bool whole = m->tp == 1 && m->is_first && m->is_last;
    if (m->use_graphs && T == S && n_hist == 0 && (whole || m->graphs_partitioned)) {
        /* decode step: the first of a batch size runs plainly (so that
         * cuBLASLt can time its algorithms, which a capture cannot), the
         * second captures the graph, later ones replay it */
        int g = 0;
        while (g < m->n_graphs && m->graphs[g].n_seqs != S) g++;
        if (g == m->n_graphs && g < (int)(sizeof m->graphs / sizeof m->graphs[0])) {
            m->graphs[g].n_seqs = S;
            m->graphs[g].exec = NULL;
            m->n_graphs++;
            LOOM_CHECK(launch_step(m, S, T, max_ctx, used, err));
        } else if (g < m->n_graphs) {
            if (!m->graphs[g].exec) {
                cudaGraph_t graph;
                CUDA_TRY(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal), "graph capture");
                loom_status ls = launch_step(m, S, T, o->max_seq_len, used, err);
                cudaError_t ce = cudaStreamEndCapture(st, &graph);
                if (ls != LOOM_OK) return ls;
                CUDA_TRY(ce, "graph capture");
                ce = cudaGraphInstantiate(&m->graphs[g].exec, graph, 0);
                cudaGraphDestroy(graph);
                if (ce != cudaSuccess) m->graphs[g].exec = NULL;
                CUDA_TRY(ce, "graph instantiate");
            }
            if (m->prof) prof_begin(m);
            CUDA_TRY(cudaGraphLaunch(m->graphs[g].exec, st), "graph launch");
            PROF(P_GRAPH);
            replayed = 1;
        } else {
            LOOM_CHECK(launch_step(m, S, T, max_ctx, used, err));
        }
    } else {
        LOOM_CHECK(launch_step(m, S, T, max_ctx, used, err));
    }
    CUDA_TRY(cudaStreamSynchronize(st), "step");
    if (m->prof) prof_end(m, T, replayed, (loom_now_s() - t_enter) * 1e3);
    if (m->is_last) memcpy(out_ids, m->h_out, (size_t)S * sizeof *out_ids);
    return LOOM_OK;
}

loom_status loom_gpu_logits(loom_gpu_model *m, int64_t n_seqs, float *out, loom_err *err)
{
    CUDA_TRY(cudaMemcpy(out, m->logits, (size_t)(n_seqs * m->cfg.vocab_size) * sizeof(float), cudaMemcpyDeviceToHost), "logits download");
    return LOOM_OK;
}
