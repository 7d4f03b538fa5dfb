/* y = x @ W^T (+ bias) through cuBLASLt, fp16/bf16 in and out, fp32 compute.
 * The algorithm is chosen by cuBLASLt's heuristic the first time a shape is
 * seen and kept, with its descriptors, in a small set-associative cache inside
 * the handle; the workspace is allocated once at create. run allocates
 * nothing, so it can be captured in a CUDA graph.
 *
 * Row-major trick: cuBLASLt is column-major. Row-major y (n, out) is
 * column-major y^T (out, n), so we compute y^T = W x^T:
 *   A = W:   stored row-major (out, in) = column-major (in, out), ld in, op T
 *   B = x^T: stored row-major (n, in)   = column-major (in, n),   ld in, op N
 *   D = y^T: column-major (out, n), ld out; the bias (out) runs along D's rows.
 * That is the "TN" case, cuBLASLt's fastest layout.
 *
 * Return codes of loom_cuda_gemm_run: 0 on success; a cudaError_t value (> 0;
 * cudaErrorInvalidValue for bad arguments); or -(int)cublasStatus_t (< 0)
 * when cuBLASLt refuses or fails (print it with
 * cublasLtGetStatusString((cublasStatus_t)-rc)). CUBLAS_STATUS_NOT_SUPPORTED
 * (-15) means no algorithm exists for the shape and pointer alignment.
 *
 * A handle is not thread-safe, and its one workspace must not be used by two
 * streams at once: use one handle per stream (or per thread).
 *
 * Small n (decode batches, short prefill chunks: n <= GEMM_TUNE_MAX_N) is
 * where the heuristic's first choice is often not the fastest (these GEMMs
 * stream the weights once, and how well an algorithm does that is not what
 * the heuristic ranks; few output tiles leave SMs idle unless K is split).
 * There the handle asks for GEMM_TUNE_HEUR candidates, adds split-K variants
 * of the first GEMM_TUNE_SPLITK that allow it, and times each on the call's own operands, the L2 refilled with another
 * buffer (read, not written) before every run (weights come from DRAM in a
 * real step), once per shape; the call
 * synchronizes its stream while it does. A call made while the stream is
 * being captured into a graph uses the heuristic's choice and tunes at the
 * next call outside capture. Tuning is opt-in (LOOM_GEMM_TUNE=1): it gains
 * 2-8% on most decode shapes, but each new row count costs ~30 ms once, which
 * in-flight serving (row counts vary step to step) pays for hundreds of shapes;
 * and a timed choice makes runs differ bitwise. Off, the heuristic's first
 * choice is used and runs are repeatable. */
#include <cublasLt.h>
#include <cuda_runtime_api.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../util/gpu_env.h"
#include "ops_cuda.h"

enum {
    GEMM_SETS = 1024, /* cache sets (power of two): every n <= 256 of a model's ~5 shapes fits */
    GEMM_WAYS = 4,    /* entries per set; a full set evicts round-robin */
    GEMM_TUNE_MAX_N = 256, /* tune shapes with at most this many rows */
    GEMM_TUNE_HEUR = 12,   /* heuristic candidates timed */
    GEMM_TUNE_SPLITK = 4,  /* ... and split-K variants (2, 4, 8 parts) of this many of them */
    GEMM_TUNE_ALGOS = GEMM_TUNE_HEUR + 3 * GEMM_TUNE_SPLITK, /* candidates at most */
    GEMM_TUNE_REPS = 3,    /* timed runs per candidate (median) */
};

typedef struct gemm_key {
    int64_t n, in_dim, out_dim;
    int32_t act;   /* loom_dtype */
    int32_t bias;  /* 0 or 1 */
    int32_t y_f32; /* 0: y in act; 1: y in fp32 */
    int32_t align; /* smallest alignment (bytes, <= 256) of x, w, y, bias */
    int32_t used;  /* 0: empty slot */
} gemm_key;

typedef struct gemm_entry {
    gemm_key key;
    cublasLtMatmulDescOpaque_t desc;   /* compute/scale type, transposes, epilogue */
    cublasLtMatrixLayoutOpaque_t la;   /* W: (in, out) column-major, ld in */
    cublasLtMatrixLayoutOpaque_t lb;   /* x^T: (in, n) column-major, ld in */
    cublasLtMatrixLayoutOpaque_t ld;   /* y^T: (out, n) column-major, ld out */
    cublasLtMatmulAlgo_t algo;         /* the heuristic's first choice, or the fastest timed */
    int tuned;                         /* algo was timed (or there was nothing to time) */
} gemm_entry;

struct loom_cuda_gemm {
    cublasLtHandle_t lt;
    void *workspace;         /* device, workspace_bytes */
    size_t workspace_bytes;
    gemm_entry *cache;       /* GEMM_SETS * GEMM_WAYS entries */
    unsigned char next_way[GEMM_SETS]; /* round-robin victim per set */
    uint64_t hits, misses, tunes; /* counters, for debugging */
    int tune;                /* LOOM_GEMM_TUNE != 0 */
    int verbose;             /* LOOM_GPU_PROFILE set: one stderr line per tuned shape */
    int flush_tried;
    void *flush;             /* device, flush_bytes: written between timed runs to empty the L2 (lazy) */
    size_t flush_bytes;
    cudaEvent_t ev[2 * GEMM_TUNE_ALGOS * GEMM_TUNE_REPS]; /* lazy */
    int n_ev;
};

static void set_err(char *errbuf, size_t errcap, const char *fmt, ...)
{
    if (!errbuf || errcap == 0) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(errbuf, errcap, fmt, ap);
    va_end(ap);
}

loom_cuda_gemm *loom_cuda_gemm_create(size_t workspace_bytes, char *errbuf, size_t errcap)
{
    loom_cuda_gemm *g = calloc(1, sizeof *g);
    if (!g) {
        set_err(errbuf, errcap, "gemm: out of host memory");
        return NULL;
    }
    g->cache = calloc((size_t)GEMM_SETS * GEMM_WAYS, sizeof *g->cache);
    if (!g->cache) {
        set_err(errbuf, errcap, "gemm: out of host memory for the algorithm cache");
        goto fail;
    }
    cublasStatus_t cs = cublasLtCreate(&g->lt);
    if (cs != CUBLAS_STATUS_SUCCESS) {
        g->lt = NULL;
        set_err(errbuf, errcap, "gemm: cublasLtCreate: %s", cublasLtGetStatusString(cs));
        goto fail;
    }
    if (workspace_bytes > 0) {
        cudaError_t ce = cudaMalloc(&g->workspace, workspace_bytes);
        if (ce != cudaSuccess) {
            g->workspace = NULL;
            set_err(errbuf, errcap, "gemm: cudaMalloc of a %zu-byte workspace: %s", workspace_bytes,
                    cudaGetErrorString(ce));
            goto fail;
        }
    }
    g->workspace_bytes = workspace_bytes;
    g->tune = loom_gpu_env_int("LOOM_GEMM_TUNE");
    g->verbose = loom_gpu_env_int("LOOM_GPU_PROFILE");
    return g;
fail:
    loom_cuda_gemm_destroy(g);
    return NULL;
}

void loom_cuda_gemm_destroy(loom_cuda_gemm *g)
{
    if (!g) return;
    for (int i = 0; i < g->n_ev; i++) cudaEventDestroy(g->ev[i]);
    if (g->flush) cudaFree(g->flush);
    if (g->workspace) cudaFree(g->workspace);
    if (g->lt) cublasLtDestroy(g->lt);
    free(g->cache);
    free(g);
}

/* Largest power of two (<= 256) dividing the address. */
static int32_t ptr_align(const void *p)
{
    uintptr_t a = (uintptr_t)p | 256u;
    return (int32_t)(a & (~a + 1));
}

static uint64_t key_hash(const gemm_key *k)
{
    uint64_t h = 0xcbf29ce484222325ull;
    const uint64_t v[4] = {(uint64_t)k->n, (uint64_t)k->in_dim, (uint64_t)k->out_dim,
                           ((uint64_t)k->act << 40) ^ ((uint64_t)k->y_f32 << 36) ^ ((uint64_t)k->bias << 32) ^ (uint64_t)k->align};
    for (int i = 0; i < 4; i++) {
        h ^= v[i];
        h *= 0x100000001b3ull;
        h ^= h >> 29;
    }
    return h;
}

static int key_eq(const gemm_key *a, const gemm_key *b)
{
    return a->used && a->n == b->n && a->in_dim == b->in_dim && a->out_dim == b->out_dim &&
           a->act == b->act && a->bias == b->bias && a->y_f32 == b->y_f32 && a->align == b->align;
}

#define LT_TRY(expr)                                                           \
    do {                                                                       \
        cublasStatus_t s_ = (expr);                                            \
        if (s_ != CUBLAS_STATUS_SUCCESS) return -(int)s_;                      \
    } while (0)

/* Appends to res split-K variants (2, 4, 8 parts of at least 256 of K, the
 * partial sums reduced in fp32) of the first GEMM_TUNE_SPLITK candidates that
 * support split K and do not split already, as far as max_res allows and
 * cuBLASLt accepts them with the handle's workspace. */
static void add_splitk(loom_cuda_gemm *g, gemm_entry *e, const gemm_key *k, cublasLtMatmulHeuristicResult_t *res, int max_res,
                       int *n_res)
{
    const int n_heur = *n_res;
    for (int i = 0; i < n_heur && i < GEMM_TUNE_SPLITK; i++) {
        int32_t sup = 0, cur = 1;
        uint32_t mask = 0;
        size_t wr = 0;
        if (cublasLtMatmulAlgoCapGetAttribute(&res[i].algo, CUBLASLT_ALGO_CAP_SPLITK_SUPPORT, &sup, sizeof sup, &wr) != CUBLAS_STATUS_SUCCESS || !sup)
            continue;
        if (cublasLtMatmulAlgoCapGetAttribute(&res[i].algo, CUBLASLT_ALGO_CAP_REDUCTION_SCHEME_MASK, &mask, sizeof mask, &wr) != CUBLAS_STATUS_SUCCESS)
            continue;
        cublasLtMatmulAlgoConfigGetAttribute(&res[i].algo, CUBLASLT_ALGO_CONFIG_SPLITK_NUM, &cur, sizeof cur, &wr);
        if (cur > 1) continue;
        const uint32_t scheme = (mask & CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE) ? CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE
                                : (mask & CUBLASLT_REDUCTION_SCHEME_OUTPUT_TYPE) ? CUBLASLT_REDUCTION_SCHEME_OUTPUT_TYPE
                                                                                 : CUBLASLT_REDUCTION_SCHEME_NONE;
        if (scheme == CUBLASLT_REDUCTION_SCHEME_NONE) continue;
        for (int32_t sk = 2; sk <= 8 && *n_res < max_res; sk *= 2) {
            if (k->in_dim / sk < 256) break;
            cublasLtMatmulHeuristicResult_t r = res[i];
            if (cublasLtMatmulAlgoConfigSetAttribute(&r.algo, CUBLASLT_ALGO_CONFIG_SPLITK_NUM, &sk, sizeof sk) != CUBLAS_STATUS_SUCCESS ||
                cublasLtMatmulAlgoConfigSetAttribute(&r.algo, CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME, &scheme, sizeof scheme) !=
                    CUBLAS_STATUS_SUCCESS)
                break;
            cublasLtMatmulHeuristicResult_t chk;
            memset(&chk, 0, sizeof chk);
            if (cublasLtMatmulAlgoCheck(g->lt, &e->desc, &e->la, &e->lb, &e->ld, &e->ld, &r.algo, &chk) != CUBLAS_STATUS_SUCCESS ||
                chk.state != CUBLAS_STATUS_SUCCESS || chk.workspaceSize > g->workspace_bytes)
                continue;
            r.workspaceSize = chk.workspaceSize;
            res[(*n_res)++] = r;
        }
    }
}

/* Fills e (descriptors and the heuristic's first algorithm) for key k and
 * res[0 .. *n_res) with the heuristic's candidates (at most max_res), best
 * first. Returns 0 or -(cublasStatus). */
static int entry_build(loom_cuda_gemm *g, gemm_entry *e, const gemm_key *k, cublasLtMatmulHeuristicResult_t *res, int max_res,
                       int *n_res)
{
    const cudaDataType_t t = k->act == LOOM_F16 ? CUDA_R_16F : CUDA_R_16BF;
    cublasLtMatmulDesc_t desc = &e->desc;
    LT_TRY(cublasLtMatmulDescInit(desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    const cublasOperation_t op_t = CUBLAS_OP_T, op_n = CUBLAS_OP_N;
    LT_TRY(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &op_t, sizeof op_t));
    LT_TRY(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSB, &op_n, sizeof op_n));
    if (k->bias) {
        const cublasLtEpilogue_t epi = CUBLASLT_EPILOGUE_BIAS;
        LT_TRY(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof epi));
        LT_TRY(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &t, sizeof t));
    }
    LT_TRY(cublasLtMatrixLayoutInit(&e->la, t, (uint64_t)k->in_dim, (uint64_t)k->out_dim, k->in_dim));
    LT_TRY(cublasLtMatrixLayoutInit(&e->lb, t, (uint64_t)k->in_dim, (uint64_t)k->n, k->in_dim));
    LT_TRY(cublasLtMatrixLayoutInit(&e->ld, k->y_f32 ? CUDA_R_32F : t, (uint64_t)k->out_dim, (uint64_t)k->n, k->out_dim));

    cublasLtMatmulPreferenceOpaque_t pref_s;
    cublasLtMatmulPreference_t pref = &pref_s;
    LT_TRY(cublasLtMatmulPreferenceInit(pref));
    const size_t ws = g->workspace_bytes;
    const uint32_t al = (uint32_t)k->align;
    LT_TRY(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws));
    LT_TRY(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &al, sizeof al));
    LT_TRY(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &al, sizeof al));
    LT_TRY(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &al, sizeof al));
    LT_TRY(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &al, sizeof al));

    int found = 0;
    LT_TRY(cublasLtMatmulAlgoGetHeuristic(g->lt, desc, &e->la, &e->lb, &e->ld, &e->ld, pref, max_res < GEMM_TUNE_HEUR ? max_res : GEMM_TUNE_HEUR,
                                          res, &found));
    *n_res = 0;
    for (int i = 0; i < found; i++)
        if (res[i].state == CUBLAS_STATUS_SUCCESS) res[(*n_res)++] = res[i];
    if (*n_res < 1) return -(int)CUBLAS_STATUS_NOT_SUPPORTED;
    if (max_res > 1) add_splitk(g, e, k, res, max_res, n_res);
    e->algo = res[0].algo;
    e->tuned = *n_res < 2;
    e->key = *k;
    e->key.used = 1;
    return 0;
}

/* Times each candidate algorithm on the call's operands (y is overwritten;
 * the caller's real run follows) and keeps the fastest in e. Candidates that
 * fail to run are skipped. Returns 0 or a cudaError_t. */
static int entry_tune(loom_cuda_gemm *g, gemm_entry *e, const cublasLtMatmulHeuristicResult_t *res, int n_res, void *y,
                      const void *x, const void *w, cudaStream_t st)
{
    float med_of[GEMM_TUNE_ALGOS];
    if (!g->n_ev) {
        for (int i = 0; i < 2 * GEMM_TUNE_ALGOS * GEMM_TUNE_REPS; i++) {
            cudaError_t ce = cudaEventCreate(&g->ev[i]);
            if (ce != cudaSuccess) return (int)ce;
            g->n_ev = i + 1;
        }
    }
    if (!g->flush_tried) {
        g->flush_tried = 1;
        int dev = 0, l2 = 0;
        if (cudaGetDevice(&dev) == cudaSuccess && cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, dev) == cudaSuccess && l2 > 0) {
            g->flush_bytes = 2 * (size_t)l2;
            if (cudaMalloc(&g->flush, g->flush_bytes) != cudaSuccess) {
                cudaGetLastError(); /* tune without flushing */
                g->flush = NULL;
                g->flush_bytes = 0;
            } else {
                cudaMemsetAsync(g->flush, 0, g->flush_bytes, st); /* defined contents; written once */
            }
        }
    }
    if (n_res > GEMM_TUNE_ALGOS) n_res = GEMM_TUNE_ALGOS;
    const float alpha = 1.0f, beta = 0.0f;
    int ok[GEMM_TUNE_ALGOS];
    /* round-robin over the candidates, so that slow drift hits all alike */
    for (int r = 0; r < GEMM_TUNE_REPS + 1; r++)
        for (int a = 0; a < n_res; a++) {
            if (r == 0) ok[a] = 1;
            if (!ok[a]) continue;
            if (g->flush) loom_cuda_l2_flush(g->flush, g->flush_bytes, st);
            cudaEvent_t *ev = &g->ev[2 * (a * GEMM_TUNE_REPS + (r ? r - 1 : 0))];
            if (r) cudaEventRecord(ev[0], st);
            cublasStatus_t cs = cublasLtMatmul(g->lt, &e->desc, &alpha, w, &e->la, x, &e->lb, &beta, y, &e->ld, y, &e->ld,
                                               &res[a].algo, g->workspace, g->workspace_bytes, st);
            if (cs != CUBLAS_STATUS_SUCCESS) ok[a] = 0;
            if (r) cudaEventRecord(ev[1], st);
        }
    cudaError_t ce = cudaStreamSynchronize(st);
    if (ce != cudaSuccess) return (int)ce;
    int best = -1;
    float best_ms = 0;
    for (int a = 0; a < n_res; a++) {
        if (!ok[a]) continue;
        float t[GEMM_TUNE_REPS];
        for (int r = 0; r < GEMM_TUNE_REPS; r++) {
            t[r] = 0;
            if (cudaEventElapsedTime(&t[r], g->ev[2 * (a * GEMM_TUNE_REPS + r)], g->ev[2 * (a * GEMM_TUNE_REPS + r) + 1]) != cudaSuccess)
                ok[a] = 0;
        }
        if (!ok[a]) continue;
        for (int i = 1; i < GEMM_TUNE_REPS; i++) /* insertion sort: the median */
            for (int j = i; j > 0 && t[j] < t[j - 1]; j--) {
                float tmp = t[j];
                t[j] = t[j - 1];
                t[j - 1] = tmp;
            }
        const float med = t[GEMM_TUNE_REPS / 2];
        med_of[a] = med;
        if (best < 0 || med < best_ms) best = a, best_ms = med;
    }
    cudaGetLastError(); /* a candidate's failure is not the call's */
    if (best >= 0) e->algo = res[best].algo;
    if (g->verbose && best >= 0) {
        int32_t sk = 1;
        size_t wr = 0;
        cublasLtMatmulAlgoConfigGetAttribute(&res[best].algo, CUBLASLT_ALGO_CONFIG_SPLITK_NUM, &sk, sizeof sk, &wr);
        fprintf(stderr, "cuBLASLt tuning n=%lld in=%lld out=%lld: heuristic's first %.1f us, fastest #%d of %d %.1f us (split-K %d)\n",
                (long long)e->key.n, (long long)e->key.in_dim, (long long)e->key.out_dim, ok[0] ? 1e3 * med_of[0] : -1.0, best, n_res,
                1e3 * best_ms, (int)sk);
    }
    e->tuned = 1;
    g->tunes++;
    return 0;
}

/* loom_cuda_gemm_run and _f32: y in act, or (y_f32) in fp32. */
static int gemm_run(loom_cuda_gemm *g, void *y, int y_f32, const void *x, const void *w, const void *bias, loom_dtype act, int64_t n,
                    int64_t in_dim, int64_t out_dim, void *stream)
{
    if (!g || !y || !x || !w || (act != LOOM_F16 && act != LOOM_BF16) || n < 0 || in_dim <= 0 ||
        out_dim <= 0)
        return (int)cudaErrorInvalidValue;
    if (n == 0) return 0;

    gemm_key k;
    memset(&k, 0, sizeof k);
    k.n = n;
    k.in_dim = in_dim;
    k.out_dim = out_dim;
    k.act = (int32_t)act;
    k.bias = bias != NULL;
    k.y_f32 = y_f32;
    int32_t al = ptr_align(x);
    int32_t a2 = ptr_align(w), a3 = ptr_align(y);
    if (a2 < al) al = a2;
    if (a3 < al) al = a3;
    if (bias && ptr_align(bias) < al) al = ptr_align(bias);
    k.align = al;

    const size_t set = (size_t)(key_hash(&k) & (GEMM_SETS - 1));
    gemm_entry *ways = g->cache + set * GEMM_WAYS, *e = NULL;
    for (int i = 0; i < GEMM_WAYS; i++)
        if (key_eq(&ways[i].key, &k)) { e = &ways[i]; break; }
    const int want_tune = g->tune && n <= GEMM_TUNE_MAX_N;
    cublasLtMatmulHeuristicResult_t res[GEMM_TUNE_ALGOS];
    int n_res = 0, fresh = 0;
    if (e) {
        g->hits++;
    } else {
        g->misses++;
        int i = 0;
        while (i < GEMM_WAYS && ways[i].key.used) i++;
        if (i == GEMM_WAYS) i = g->next_way[set]++ % GEMM_WAYS;
        e = &ways[i];
        e->key.used = 0; /* half built until entry_build succeeds */
        int rc = entry_build(g, e, &k, res, want_tune ? GEMM_TUNE_ALGOS : 1, &n_res);
        if (rc != 0) return rc;
        fresh = 1;
    }

    if (bias)
        LT_TRY(cublasLtMatmulDescSetAttribute(&e->desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof bias));
    if (want_tune && !e->tuned) {
        enum cudaStreamCaptureStatus cap = cudaStreamCaptureStatusNone;
        if (cudaStreamIsCapturing((cudaStream_t)stream, &cap) != cudaSuccess) {
            cudaGetLastError();
            cap = cudaStreamCaptureStatusActive; /* unknown: do not sync */
        }
        if (cap == cudaStreamCaptureStatusNone) {
            if (!fresh) { /* built during a capture: ask again */
                gemm_entry tmp = *e;
                int rc = entry_build(g, &tmp, &k, res, GEMM_TUNE_ALGOS, &n_res);
                if (rc != 0) return rc;
            }
            int rc = n_res > 1 ? entry_tune(g, e, res, n_res, y, x, w, (cudaStream_t)stream) : 0;
            e->tuned = 1;
            if (rc != 0) return rc;
        }
    }
    const float alpha = 1.0f, beta = 0.0f;
    /* A = W, B = x^T, C = D = y^T (beta is 0, so C is never read). */
    LT_TRY(cublasLtMatmul(g->lt, &e->desc, &alpha, w, &e->la, x, &e->lb, &beta, y, &e->ld, y, &e->ld,
                          &e->algo, g->workspace, g->workspace_bytes, (cudaStream_t)stream));
    return 0;
}

int loom_cuda_gemm_run(loom_cuda_gemm *g, void *y, const void *x, const void *w, const void *bias,
                       loom_dtype act, int64_t n, int64_t in_dim, int64_t out_dim, void *stream)
{
    return gemm_run(g, y, 0, x, w, bias, act, n, in_dim, out_dim, stream);
}

int loom_cuda_gemm_run_f32(loom_cuda_gemm *g, float *y, const void *x, const void *w, const void *bias,
                           loom_dtype act, int64_t n, int64_t in_dim, int64_t out_dim, void *stream)
{
    int rc = gemm_run(g, y, 1, x, w, NULL, act, n, in_dim, out_dim, stream);
    if (rc == 0 && bias && n > 0) rc = loom_cuda_add_bias_f32(y, bias, act, n, out_dim, stream);
    return rc;
}
