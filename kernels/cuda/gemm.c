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
 * streams at once: use one handle per stream (or per thread). */
#include <cublasLt.h>
#include <cuda_runtime_api.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ops_cuda.h"

enum {
    GEMM_SETS = 256, /* cache sets (power of two) */
    GEMM_WAYS = 4,   /* entries per set; a full set evicts round-robin */
};

typedef struct gemm_key {
    int64_t n, in_dim, out_dim;
    int32_t act;   /* loom_dtype */
    int32_t bias;  /* 0 or 1 */
    int32_t align; /* smallest alignment (bytes, <= 256) of x, w, y, bias */
    int32_t used;  /* 0: empty slot */
} gemm_key;

typedef struct gemm_entry {
    gemm_key key;
    cublasLtMatmulDescOpaque_t desc;   /* compute/scale type, transposes, epilogue */
    cublasLtMatrixLayoutOpaque_t la;   /* W: (in, out) column-major, ld in */
    cublasLtMatrixLayoutOpaque_t lb;   /* x^T: (in, n) column-major, ld in */
    cublasLtMatrixLayoutOpaque_t ld;   /* y^T: (out, n) column-major, ld out */
    cublasLtMatmulAlgo_t algo;         /* the heuristic's first choice */
} gemm_entry;

struct loom_cuda_gemm {
    cublasLtHandle_t lt;
    void *workspace;         /* device, workspace_bytes */
    size_t workspace_bytes;
    gemm_entry *cache;       /* GEMM_SETS * GEMM_WAYS entries */
    unsigned char next_way[GEMM_SETS]; /* round-robin victim per set */
    uint64_t hits, misses;   /* counters, for debugging */
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
    return g;
fail:
    loom_cuda_gemm_destroy(g);
    return NULL;
}

void loom_cuda_gemm_destroy(loom_cuda_gemm *g)
{
    if (!g) return;
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
                           ((uint64_t)k->act << 40) ^ ((uint64_t)k->bias << 32) ^ (uint64_t)k->align};
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
           a->act == b->act && a->bias == b->bias && a->align == b->align;
}

#define LT_TRY(expr)                                                           \
    do {                                                                       \
        cublasStatus_t s_ = (expr);                                            \
        if (s_ != CUBLAS_STATUS_SUCCESS) return -(int)s_;                      \
    } while (0)

/* Fills e (descriptors and algorithm) for key k. Returns 0 or -(cublasStatus). */
static int entry_build(loom_cuda_gemm *g, gemm_entry *e, const gemm_key *k)
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
    LT_TRY(cublasLtMatrixLayoutInit(&e->ld, t, (uint64_t)k->out_dim, (uint64_t)k->n, k->out_dim));

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

    cublasLtMatmulHeuristicResult_t res;
    int found = 0;
    LT_TRY(cublasLtMatmulAlgoGetHeuristic(g->lt, desc, &e->la, &e->lb, &e->ld, &e->ld, pref, 1, &res,
                                          &found));
    if (found < 1 || res.state != CUBLAS_STATUS_SUCCESS) return -(int)CUBLAS_STATUS_NOT_SUPPORTED;
    e->algo = res.algo;
    e->key = *k;
    e->key.used = 1;
    return 0;
}

int loom_cuda_gemm_run(loom_cuda_gemm *g, void *y, const void *x, const void *w, const void *bias,
                       loom_dtype act, int64_t n, int64_t in_dim, int64_t out_dim, void *stream)
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
    if (e) {
        g->hits++;
    } else {
        g->misses++;
        int i = 0;
        while (i < GEMM_WAYS && ways[i].key.used) i++;
        if (i == GEMM_WAYS) i = g->next_way[set]++ % GEMM_WAYS;
        e = &ways[i];
        e->key.used = 0; /* half built until entry_build succeeds */
        int rc = entry_build(g, e, &k);
        if (rc != 0) return rc;
    }

    if (bias)
        LT_TRY(cublasLtMatmulDescSetAttribute(&e->desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof bias));
    const float alpha = 1.0f, beta = 0.0f;
    /* A = W, B = x^T, C = D = y^T (beta is 0, so C is never read). */
    LT_TRY(cublasLtMatmul(g->lt, &e->desc, &alpha, w, &e->la, x, &e->lb, &beta, y, &e->ld, y, &e->ld,
                          &e->algo, g->workspace, g->workspace_bytes, (cudaStream_t)stream));
    return 0;
}
