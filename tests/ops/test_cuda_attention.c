/* CUDA paged attention vs the CPU attention op (suite "ops", GPU machine):
 * K/V go into a NaN-filled pool through loom_cuda_kv_append along shuffled
 * block tables, loom_cuda_attention runs (prefill, chunked prefill, decode
 * with multi-block auto/off/on), and the output is compared with
 * loom_ops_cpu()->attention over the same rounded inputs gathered into
 * contiguous rows. The same cases with an FP8 (E4M3) pool: the append
 * must store exactly util/dtype.c's loom_f32_to_e4m3 of each element (the
 * CPU oracle's rounding, bitwise), and the reference attends the same
 * rounded K/V, so the tolerances stay the activations'. Some cases run
 * loom_cuda_attention_generic (any head_dim). Then a timing printout (decode
 * and prefill, fp16 and fp8 pools) whose table comes last. Exits 77 (meson "skipped") when no CUDA device is present. */
#include <cuda_runtime_api.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../kernels/cuda/ops_cuda.h"
#include "../../kernels/ops.h"
#include "cuda_test.h"

static int failures, cases;

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static uint32_t rnd_u32(void)
{
    rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
    return (uint32_t)(rng >> 32);
}
static float rnd(void) { return (float)rnd_u32() / 4294967296.0f * 2.0f - 1.0f; }
static int rnd_int(int lo, int hi) { return lo + (int)(rnd_u32() % (uint32_t)(hi - lo + 1)); }

/* Stores f as dt at dst[i]; returns the value actually stored, widened. */
static float store(void *dst, loom_dtype dt, int64_t i, float f)
{
    uint16_t h = dt == LOOM_F16 ? loom_f32_to_f16(f) : loom_f32_to_bf16(f);
    ((uint16_t *)dst)[i] = h;
    return dt == LOOM_F16 ? loom_f16_to_f32(h) : loom_bf16_to_f32(h);
}
static float load(const void *src, loom_dtype dt, int64_t i)
{
    uint16_t h = ((const uint16_t *)src)[i];
    return dt == LOOM_F16 ? loom_f16_to_f32(h) : loom_bf16_to_f32(h);
}

/* How K/V rows and Q rows sit in memory for the ops. */
enum layout {
    LAY_PLAIN = 0, /* k, v (n, KVH*D) contiguous; q (n, H*D) contiguous */
    LAY_FUSED = 1, /* k, v, q are column blocks of one fused QKV row (n, (H+2KVH)*D) */
    LAY_ODD = 2,   /* rows an odd number of elements apart: the unaligned paths */
};

struct att_case {
    loom_dtype act;
    int D, H, KVH, B, n_seqs;
    const int *n_new, *ctx; /* per sequence: new tokens (queries), context length */
    int window, multi, lay;
    const char *what;
    int twice; /* run a forced split first on the same scratch, then this case's call */
    int f8;    /* the pool holds FP8 E4M3 */
    int gen;   /* loom_cuda_attention_generic instead of loom_cuda_attention */
};

static int g_f8; /* one_seq and batch make fp8-pool cases */

static void run_case(const struct att_case *c)
{
    const loom_dtype act = c->act, kvdt = c->f8 ? LOOM_F8E4M3 : act;
    const int D = c->D, H = c->H, KVH = c->KVH, B = c->B, ns = c->n_seqs;
    const size_t es = 2, kes = c->f8 ? 1 : 2;
    int64_t n_tok = 0, all_tok = 0, max_ctx = 0, max_blocks = 0, used_blocks = 0;
    for (int s = 0; s < ns; s++) {
        n_tok += c->n_new[s];
        all_tok += c->ctx[s];
        if (c->ctx[s] > max_ctx) max_ctx = c->ctx[s];
        int64_t nb = (c->ctx[s] + B - 1) / B;
        if (nb > max_blocks) max_blocks = nb;
        used_blocks += nb;
    }
    max_blocks += 2; /* entries past a sequence's blocks hold -1: reading one faults */
    const int64_t n_pool_blocks = used_blocks + 3;

    /* Shuffled physical blocks, assigned in position order. */
    int32_t *perm = xmalloc(sizeof(int32_t) * n_pool_blocks);
    for (int64_t i = 0; i < n_pool_blocks; i++) perm[i] = (int32_t)i;
    for (int64_t i = n_pool_blocks - 1; i > 0; i--) {
        int64_t j = rnd_u32() % (uint32_t)(i + 1);
        int32_t t = perm[i]; perm[i] = perm[j]; perm[j] = t;
    }
    int32_t *bt = xmalloc(sizeof(int32_t) * ns * max_blocks);
    for (int64_t i = 0; i < ns * max_blocks; i++) bt[i] = -1;
    int64_t next = 0;
    for (int s = 0; s < ns; s++)
        for (int64_t b = 0; b < (c->ctx[s] + B - 1) / B; b++) bt[s * max_blocks + b] = perm[next++];

    /* Every cached token of every sequence, appended in one call, plus two
     * tokens with slot -1 (skipped) holding NaN. */
    const int64_t n_app = all_tok + 2;
    int64_t kv_row, k_off, v_off;
    if (c->lay == LAY_FUSED) { kv_row = (int64_t)(H + 2 * KVH) * D; k_off = (int64_t)H * D; v_off = (int64_t)(H + KVH) * D; }
    else if (c->lay == LAY_ODD) { kv_row = 2 * (int64_t)KVH * D + 1; k_off = 0; v_off = (int64_t)KVH * D + 1; }
    else { kv_row = 2 * (int64_t)KVH * D; k_off = 0; v_off = (int64_t)KVH * D; }
    uint16_t *h_kv = xmalloc(es * (n_app * kv_row + 1));
    float *kf = xmalloc(sizeof(float) * all_tok * KVH * D), *vf = xmalloc(sizeof(float) * all_tok * KVH * D);
    int32_t *slots = xmalloc(sizeof(int32_t) * n_app);
    memset(h_kv, 0xff, es * (n_app * kv_row + 1));
    int64_t row = 0;
    for (int s = 0; s < ns; s++) {
        for (int p = 0; p < c->ctx[s]; p++, row++) {
            slots[row] = bt[s * max_blocks + p / B] * B + p % B;
            for (int64_t i = 0; i < (int64_t)KVH * D; i++) {
                kf[row * KVH * D + i] = store(h_kv, act, row * kv_row + k_off + i, rnd());
                vf[row * KVH * D + i] = store(h_kv, act, row * kv_row + v_off + i, rnd());
                if (c->f8) { /* what the pool holds: the oracle's rounding */
                    kf[row * KVH * D + i] = loom_round_e4m3(kf[row * KVH * D + i]);
                    vf[row * KVH * D + i] = loom_round_e4m3(vf[row * KVH * D + i]);
                }
            }
        }
    }
    slots[row] = -1;
    slots[row + 1] = -1;

    /* Queries: the last n_new tokens of each sequence. */
    const int64_t q_stride = c->lay == LAY_FUSED ? (int64_t)(H + 2 * KVH) * D
                             : c->lay == LAY_ODD ? (int64_t)H * D + 3 : (int64_t)H * D;
    const int64_t q_off = c->lay == LAY_ODD ? 1 : 0;
    uint16_t *h_q = xmalloc(es * (n_tok * q_stride + q_off));
    float *qf = xmalloc(sizeof(float) * n_tok * H * D);
    memset(h_q, 0xff, es * (n_tok * q_stride + q_off));
    for (int64_t t = 0; t < n_tok; t++)
        for (int64_t i = 0; i < (int64_t)H * D; i++)
            qf[t * H * D + i] = store(h_q, act, q_off + t * q_stride + i, rnd());
    int32_t *q_start = xmalloc(sizeof(int32_t) * (ns + 1));
    q_start[0] = 0;
    for (int s = 0; s < ns; s++) q_start[s + 1] = q_start[s] + c->n_new[s];

    /* Device. */
    const size_t block_elems = 2 * (size_t)KVH * B * D;
    const size_t pool_bytes = kes * block_elems * n_pool_blocks;
    void *d_pool, *d_kv, *d_q, *d_out, *d_scratch = NULL;
    int32_t *d_slots, *d_qs, *d_ctx, *d_bt;
    CUDA_CHECK(cudaMalloc(&d_pool, pool_bytes));
    CUDA_CHECK(cudaMalloc(&d_kv, es * (n_app * kv_row + 1)));
    CUDA_CHECK(cudaMalloc(&d_q, es * (n_tok * q_stride + q_off)));
    CUDA_CHECK(cudaMalloc(&d_out, es * n_tok * H * D));
    CUDA_CHECK(cudaMalloc((void **)&d_slots, sizeof(int32_t) * n_app));
    CUDA_CHECK(cudaMalloc((void **)&d_qs, sizeof(int32_t) * (ns + 1)));
    CUDA_CHECK(cudaMalloc((void **)&d_ctx, sizeof(int32_t) * ns));
    CUDA_CHECK(cudaMalloc((void **)&d_bt, sizeof(int32_t) * ns * max_blocks));
    const size_t scratch_bytes = loom_cuda_attention_scratch_bytes(ns, H, D, max_ctx);
    if (scratch_bytes) CUDA_CHECK(cudaMalloc(&d_scratch, scratch_bytes));
    CUDA_CHECK(cudaMemset(d_pool, 0xff, pool_bytes)); /* NaN: reading an unwritten slot shows */
    CUDA_CHECK(cudaMemset(d_out, 0xff, es * n_tok * H * D));
    if (scratch_bytes) CUDA_CHECK(cudaMemset(d_scratch, 0xff, scratch_bytes));
    CUDA_CHECK(cudaMemcpy(d_kv, h_kv, es * (n_app * kv_row + 1), cudaMemcpyHostToDevice));
    CUDA_CHECK(cudaMemcpy(d_q, h_q, es * (n_tok * q_stride + q_off), cudaMemcpyHostToDevice));
    CUDA_CHECK(cudaMemcpy(d_slots, slots, sizeof(int32_t) * n_app, cudaMemcpyHostToDevice));
    CUDA_CHECK(cudaMemcpy(d_qs, q_start, sizeof(int32_t) * (ns + 1), cudaMemcpyHostToDevice));
    CUDA_CHECK(cudaMemcpy(d_ctx, c->ctx, sizeof(int32_t) * ns, cudaMemcpyHostToDevice));
    CUDA_CHECK(cudaMemcpy(d_bt, bt, sizeof(int32_t) * ns * max_blocks, cudaMemcpyHostToDevice));

    const uint16_t *dk = (const uint16_t *)d_kv + k_off, *dv = (const uint16_t *)d_kv + v_off;
    OP_CHECK(loom_cuda_kv_append(d_pool, dk, kv_row, dv, kv_row, act, kvdt, d_slots, n_app, KVH, D, B, NULL));
    const float scale = 1.0f / sqrtf((float)D);
    if (c->twice) { /* a forced split first: what it leaves in the scratch must not disturb the next call */
        OP_CHECK(loom_cuda_attention(d_out, (const uint16_t *)d_q + q_off, q_stride, d_pool, act, kvdt, d_qs, d_ctx, d_bt,
                                     max_blocks, ns, n_tok, max_ctx, H, KVH, D, B, c->window, scale, 1,
                                     d_scratch, scratch_bytes, NULL));
        CUDA_CHECK(cudaMemset(d_out, 0xff, es * n_tok * H * D));
    }
    if (c->gen)
        OP_CHECK(loom_cuda_attention_generic(d_out, (const uint16_t *)d_q + q_off, q_stride, d_pool, act, kvdt, d_qs, d_ctx, d_bt,
                                             max_blocks, ns, n_tok, H, KVH, D, B, c->window, scale, NULL));
    else
        OP_CHECK(loom_cuda_attention(d_out, (const uint16_t *)d_q + q_off, q_stride, d_pool, act, kvdt, d_qs, d_ctx, d_bt,
                                     max_blocks, ns, n_tok, max_ctx, H, KVH, D, B, c->window, scale, c->multi,
                                     d_scratch, scratch_bytes, NULL));
    CUDA_CHECK(cudaGetLastError());
    CUDA_CHECK(cudaDeviceSynchronize());

    /* The pool holds exactly what was appended, where the tables say. */
    uint16_t *h_pool = xmalloc(pool_bytes);
    const uint8_t *h_pool8 = (const uint8_t *)h_pool;
    CUDA_CHECK(cudaMemcpy(h_pool, d_pool, pool_bytes, cudaMemcpyDeviceToHost));
    int64_t pool_bad = 0;
    for (int64_t r = 0; r < all_tok; r++) {
        const int64_t blk = slots[r] / B, sl = slots[r] % B;
        for (int h = 0; h < KVH; h++)
            for (int d = 0; d < D; d++) {
                const size_t kpos = blk * block_elems + ((size_t)h * B + sl) * D + d;
                const size_t vpos = kpos + (size_t)KVH * B * D;
                const int64_t ki = r * kv_row + k_off + (int64_t)h * D + d, vi = r * kv_row + v_off + (int64_t)h * D + d;
                if (c->f8) {
                    pool_bad += h_pool8[kpos] != loom_f32_to_e4m3(load(h_kv, act, ki));
                    pool_bad += h_pool8[vpos] != loom_f32_to_e4m3(load(h_kv, act, vi));
                } else {
                    pool_bad += h_pool[kpos] != h_kv[ki];
                    pool_bad += h_pool[vpos] != h_kv[vi];
                }
            }
    }

    /* Reference: per sequence, contiguous K/V rows and the CPU op. */
    uint16_t *h_out = xmalloc(es * n_tok * H * D);
    CUDA_CHECK(cudaMemcpy(h_out, d_out, es * n_tok * H * D, cudaMemcpyDeviceToHost));
    float *ref = xmalloc(sizeof(float) * n_tok * H * D);
    int32_t *q_pos = xmalloc(sizeof(int32_t) * (n_tok + 1));
    int64_t kv0 = 0;
    for (int s = 0; s < ns; s++) {
        const int nq = c->n_new[s], cl = c->ctx[s];
        for (int t = 0; t < nq; t++) q_pos[t] = cl - nq + t;
        if (nq > 0)
            loom_ops_cpu()->attention(ref + (int64_t)q_start[s] * H * D, qf + (int64_t)q_start[s] * H * D,
                                      kf + kv0 * KVH * D, vf + kv0 * KVH * D, q_pos, nq, cl, (int64_t)KVH * D,
                                      H, KVH, D, c->window, scale);
        kv0 += cl;
    }
    double num = 0, den = 0;
    int64_t nan = 0;
    for (int64_t i = 0; i < n_tok * H * D; i++) {
        const float y = load(h_out, act, i);
        if (!isfinite(y)) { nan++; continue; }
        const double d = (double)y - ref[i];
        num += d * d;
        den += (double)ref[i] * ref[i];
    }
    const double err = den > 0 ? sqrt(num / den) : sqrt(num);
    const double tol = act == LOOM_F16 ? 2e-3 : 1e-2;
    const int ok = nan == 0 && pool_bad == 0 && err <= tol;
    cases++;
    failures += !ok;
    char mb[8];
    snprintf(mb, sizeof mb, "%s", c->multi < 0 ? "auto" : c->multi ? "on" : "off");
    printf("%s %-8s %s kv=%s%s D=%d H=%d/%d B=%d seqs=%d tok=%lld max_ctx=%lld win=%d mb=%s lay=%d rel_l2 %.2e (tol %.0e)",
           ok ? "ok  " : "FAIL", c->what, loom_dtype_name(act), loom_dtype_name(kvdt), c->gen ? " generic" : "", D, H, KVH, B, ns,
           (long long)n_tok,
           (long long)max_ctx, c->window, mb, c->lay, err, tol);
    if (nan) printf(" non-finite %lld", (long long)nan);
    if (pool_bad) printf(" pool mismatches %lld", (long long)pool_bad);
    printf("\n");
    fflush(stdout);

    cudaFree(d_pool); cudaFree(d_kv); cudaFree(d_q); cudaFree(d_out); cudaFree(d_slots);
    cudaFree(d_qs); cudaFree(d_ctx); cudaFree(d_bt); cudaFree(d_scratch);
    free(perm); free(bt); free(h_kv); free(kf); free(vf); free(slots); free(h_q); free(qf);
    free(q_start); free(h_pool); free(h_out); free(ref); free(q_pos);
}

/* One sequence of ctx tokens, the last n_new of them queries. */
static void one_seq(loom_dtype act, int D, int H, int KVH, int B, int n_new, int ctx, int window, int multi,
                    int lay, const char *what)
{
    struct att_case c = {act, D, H, KVH, B, 1, &n_new, &ctx, window, multi, lay, what, 0, g_f8, 0};
    run_case(&c);
}

/* 37 sequences of different lengths. kind: 0 prefill (new = ctx), 1 chunked
 * (a few new tokens on a cached prefix), 2 decode (one new token). */
static void batch(loom_dtype act, int D, int H, int KVH, int B, int kind, int max_len, int window, int multi,
                  int lay)
{
    enum { NS = 37 };
    int n_new[NS], ctx[NS];
    for (int s = 0; s < NS; s++) {
        ctx[s] = rnd_int(1, max_len);
        n_new[s] = kind == 0 ? ctx[s] : kind == 1 ? rnd_int(1, ctx[s] < 40 ? ctx[s] : 40) : 1;
    }
    struct att_case c = {act, D, H, KVH, B, NS, n_new, ctx, window, multi, lay,
                         kind == 0 ? "prefill" : kind == 1 ? "chunked" : "decode", 0, g_f8, 0};
    run_case(&c);
}

/* Decode batches for the small-group kernel (attention_decode.cu, groups up
 * to 8) and the tile kernel past it: groups 2 and 7, contexts 1 and 2,
 * sequences with two tokens and with none in a one-token-per-sequence batch,
 * and a call after a forced split on the same scratch. */
static void decode_cases(void)
{
    const int g2[][3] = {{8, 4, 64}, {14, 2, 128}, {14, 2, 64}, {32, 2, 128}}; /* H, KVH, D: groups 2, 7, 7, 16 */
    for (int i = 0; i < 4; i++)
        for (int mb = -1; mb <= 1; mb++) {
            const loom_dtype a = (i + mb) & 1 ? LOOM_BF16 : LOOM_F16;
            one_seq(a, g2[i][2], g2[i][0], g2[i][1], 16, 1, 1, 0, mb, i % 3, "decode");
            one_seq(a, g2[i][2], g2[i][0], g2[i][1], 32, 1, 2, 0, mb, (i + 1) % 3, "decode");
            one_seq(a, g2[i][2], g2[i][0], g2[i][1], 16, 1, 2049, 0, mb, (i + 2) % 3, "decode");
            one_seq(a, g2[i][2], g2[i][0], g2[i][1], 64, 1, 2049, 333, mb, i % 3, "decode");
            batch(a, g2[i][2], g2[i][0], g2[i][1], 16, 2, 700, mb ? 0 : 90, mb, (i + 1) % 3);
        }
    const int nn[] = {2, 0, 1}, cx[] = {50, 10, 300};
    for (int mb = -1; mb <= 1; mb++) {
        struct att_case c = {LOOM_F16, 128, 32, 32, 16, 3, nn, cx, 0, mb, 0, "uneven", 0, 0, 0};
        run_case(&c);
        struct att_case c7 = {LOOM_BF16, 64, 14, 2, 16, 3, nn, cx, 40, mb, 2, "uneven", 0, 0, 0};
        run_case(&c7);
    }
    const int one = 1, c1[] = {384}, c2[] = {2304}, c3[] = {77};
    struct att_case t1 = {LOOM_F16, 128, 32, 32, 16, 1, &one, c1, 0, -1, 0, "twice", 1, 0, 0};
    struct att_case t2 = {LOOM_F16, 128, 32, 32, 16, 1, &one, c2, 0, -1, 1, "twice", 1, 0, 0};
    struct att_case t3 = {LOOM_BF16, 128, 28, 4, 16, 1, &one, c3, 0, 1, 0, "twice", 1, 0, 0};
    run_case(&t1);
    run_case(&t2);
    run_case(&t3);
}

/* Short chunks over long cached prefixes: the prefill kernel's key split
 * (auto, off, forced), including forced splits of whole prefills (tiles whose
 * rows see none of a split's keys) and of a 37-sequence chunked batch (empty
 * splits of short sequences), with and without a sliding window. */
static void split_cases(void)
{
    for (int mb = -1; mb <= 1; mb++) {
        one_seq(LOOM_F16, 128, 32, 32, 64, 32, 1056, 0, mb, 1, "chunk");   /* KV reuse: Llama-2-7B's heads */
        one_seq(LOOM_BF16, 128, 32, 8, 16, 32, 1056, 0, mb, 0, "chunk");   /* GQA 4 */
        one_seq(LOOM_F16, 64, 16, 2, 32, 7, 3000, 0, mb, 2, "chunk");      /* 7 new tokens, odd layout */
        one_seq(LOOM_F16, 128, 8, 8, 16, 128, 1152, 300, mb, 0, "chunk");  /* window inside the context */
    }
    one_seq(LOOM_F16, 128, 8, 2, 16, 700, 700, 0, 1, 0, "prefill");        /* forced split of a whole prefill */
    one_seq(LOOM_BF16, 64, 8, 8, 64, 333, 333, 200, 1, 1, "prefill");      /* ... with a window */
    batch(LOOM_F16, 128, 8, 2, 16, 1, 2100, 0, 1, 0);
    batch(LOOM_BF16, 128, 8, 8, 64, 1, 1500, 0, 1, 1);
    batch(LOOM_F16, 64, 16, 4, 32, 1, 2100, 500, 1, 2);
}

/* The FP8 pool through every kernel: flash prefill tiles (GQA 1, 4, 8; head
 * dims 64 and 128; 1, 17 and 2049 tokens; windows), chunked prefill with its
 * key split, the small-group decode kernel (groups 1, 2, 7, 8; contexts 1,
 * 2, 2049; multi-block auto, off, on), the tile decode of group 16, batches
 * of 37 sequences, unaligned rows (the append's scalar path), bf16, and the
 * generic kernel (head_dim 48 and 128). */
static void fp8_cases(void)
{
    g_f8 = 1;
    const loom_dtype dts[] = {LOOM_F16, LOOM_BF16};
    const int hk[][2] = {{8, 8}, {8, 2}, {16, 2}, {14, 2}, {32, 2}}; /* groups 1, 4, 8, 7, 16 */
    for (int i = 0; i < 5; i++)
        for (int di = 0; di < 2; di++) {
            const loom_dtype a = dts[(i + di) & 1];
            const int D = di ? 64 : 128, H = hk[i][0], KVH = hk[i][1], B = 8 << ((i + di) % 4);
            one_seq(a, D, H, KVH, B, 1, 1, 0, -1, i % 3, "prefill");
            one_seq(a, D, H, KVH, B, 17, 17, 0, -1, (i + 1) % 3, "prefill");
            if (H <= 16) one_seq(a, D, H, KVH, B, 2049, 2049, 0, -1, (i + 2) % 3, "prefill");
            one_seq(a, D, H, KVH, B, 2049, 2049, 300, -1, i % 3, "prefill");
            for (int mb = -1; mb <= 1; mb++) one_seq(a, D, H, KVH, B, 32, 1056, 0, mb, (i + 1) % 3, "chunked");
            for (int mb = -1; mb <= 1; mb++) {
                one_seq(a, D, H, KVH, B, 1, 1, 0, mb, (i + 2) % 3, "decode");
                one_seq(a, D, H, KVH, B, 1, 2, 0, mb, i % 3, "decode");
                one_seq(a, D, H, KVH, B, 1, 2049, 0, mb, (i + 1) % 3, "decode");
            }
            one_seq(a, D, H, KVH, B, 1, 5000, 700, 1, (i + 2) % 3, "decode");
        }
    batch(LOOM_F16, 128, 32, 32, 16, 2, 3000, 0, -1, 0); /* the Llama-2-7B shape's decode batch */
    batch(LOOM_BF16, 128, 32, 8, 64, 2, 3000, 0, 1, 1);
    batch(LOOM_F16, 64, 16, 2, 32, 2, 700, 90, 0, 2);
    batch(LOOM_F16, 128, 8, 2, 16, 0, 300, 0, -1, 1);
    batch(LOOM_BF16, 64, 8, 8, 32, 1, 2100, 500, -1, 0);
    batch(LOOM_F16, 128, 32, 2, 16, 2, 1000, 0, -1, 2);  /* group 16: the tile decode */
    const int nn[] = {2, 0, 1}, cx[] = {50, 10, 300}, one = 1, c1[] = {2049}, n17[] = {17};
    for (int mb = -1; mb <= 1; mb++) {
        struct att_case u = {LOOM_F16, 128, 32, 32, 16, 3, nn, cx, 0, mb, 0, "uneven", 0, 1, 0};
        run_case(&u);
    }
    struct att_case g1 = {LOOM_F16, 48, 6, 2, 16, 3, nn, cx, 0, -1, 0, "generic", 0, 1, 1};
    struct att_case g2 = {LOOM_BF16, 128, 8, 2, 32, 1, &one, c1, 0, -1, 2, "generic", 0, 1, 1};
    struct att_case g3 = {LOOM_F16, 64, 8, 1, 16, 1, n17, n17, 5, -1, 1, "generic", 0, 1, 1};
    run_case(&g1);
    run_case(&g2);
    run_case(&g3);
    g_f8 = 0;
}

/* ---- timing ---- */

struct timing {
    char what[96];
    double us, gbs, tflops;
};
static struct timing timings[48];
static int n_timings;
static double copy_gbs;

static int cmp_float(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return x < y ? -1 : x > y;
}

/* Device-to-device copy bandwidth (bytes read + written), for comparison. */
static void time_copy(void)
{
    const size_t bytes = (size_t)1 << 30;
    void *a, *b;
    CUDA_CHECK(cudaMalloc(&a, bytes));
    CUDA_CHECK(cudaMalloc(&b, bytes));
    CUDA_CHECK(cudaMemset(a, 1, bytes));
    cudaEvent_t e0, e1;
    CUDA_CHECK(cudaEventCreate(&e0));
    CUDA_CHECK(cudaEventCreate(&e1));
    float ms[10];
    CUDA_CHECK(cudaMemcpy(b, a, bytes, cudaMemcpyDeviceToDevice));
    for (int i = 0; i < 10; i++) {
        CUDA_CHECK(cudaEventRecord(e0, NULL));
        CUDA_CHECK(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice, NULL));
        CUDA_CHECK(cudaEventRecord(e1, NULL));
        CUDA_CHECK(cudaEventSynchronize(e1));
        CUDA_CHECK(cudaEventElapsedTime(&ms[i], e0, e1));
    }
    qsort(ms, 10, sizeof(float), cmp_float);
    copy_gbs = 2.0 * bytes / (ms[5] * 1e-3) * 1e-9;
    cudaEventDestroy(e0); cudaEventDestroy(e1);
    cudaFree(a); cudaFree(b);
}

/* Fills n bytes at dst with copies of a 64 MiB random fp16/bf16 buffer. */
static void fill_random(void *dst, size_t n, loom_dtype act)
{
    const size_t chunk = (size_t)64 << 20;
    uint16_t *h = xmalloc(chunk);
    for (size_t i = 0; i < chunk / 2; i++) store(h, act, (int64_t)i, rnd());
    for (size_t off = 0; off < n; off += chunk)
        CUDA_CHECK(cudaMemcpy((char *)dst + off, h, n - off < chunk ? n - off : chunk, cudaMemcpyHostToDevice));
    free(h);
}

/* Time per call: batches of reps calls issued back to back (as a decode
 * step's graph replays them, so launch latency overlaps), median over the
 * batches. n_rot K/V copies (separate block tables into one pool) are
 * cycled so that small contexts are not served from L2. */
static void time_attention(const char *what, loom_dtype act, int H, int KVH, int D, int n_new, int ctx, int multi)
{
    const int B = 16, n_rot = 4, reps = 20, batches = 7;
    const int64_t nb = (ctx + B - 1) / B;
    const size_t block_elems = 2 * (size_t)KVH * B * D;
    const loom_dtype kvdt = g_f8 ? LOOM_F8E4M3 : act;
    const size_t kes = g_f8 ? 1 : 2;
    const size_t pool_bytes = kes * block_elems * nb * n_rot;
    void *d_pool, *d_q, *d_out, *d_scratch;
    int32_t *d_qs, *d_ctx, *d_bt;
    CUDA_CHECK(cudaMalloc(&d_pool, pool_bytes));
    fill_random(d_pool, pool_bytes, act); /* as fp8: random bytes, a few NaN codes (no matter for the time) */
    CUDA_CHECK(cudaMalloc(&d_q, 2 * (size_t)n_new * H * D));
    fill_random(d_q, 2 * (size_t)n_new * H * D, act);
    CUDA_CHECK(cudaMalloc(&d_out, 2 * (size_t)n_new * H * D));
    const size_t sb = loom_cuda_attention_scratch_bytes(1, H, D, ctx);
    CUDA_CHECK(cudaMalloc(&d_scratch, sb));
    int32_t qs[2] = {0, n_new};
    int32_t *bt = xmalloc(sizeof(int32_t) * nb * n_rot);
    for (int64_t i = 0; i < nb * n_rot; i++) bt[i] = (int32_t)i; /* rotation r uses blocks r*nb .. */
    CUDA_CHECK(cudaMalloc((void **)&d_qs, sizeof qs));
    CUDA_CHECK(cudaMalloc((void **)&d_ctx, sizeof(int32_t)));
    CUDA_CHECK(cudaMalloc((void **)&d_bt, sizeof(int32_t) * nb * n_rot));
    CUDA_CHECK(cudaMemcpy(d_qs, qs, sizeof qs, cudaMemcpyHostToDevice));
    CUDA_CHECK(cudaMemcpy(d_ctx, &ctx, sizeof(int32_t), cudaMemcpyHostToDevice));
    CUDA_CHECK(cudaMemcpy(d_bt, bt, sizeof(int32_t) * nb * n_rot, cudaMemcpyHostToDevice));
    cudaEvent_t e0, e1;
    CUDA_CHECK(cudaEventCreate(&e0));
    CUDA_CHECK(cudaEventCreate(&e1));
    const float scale = 1.0f / sqrtf((float)D);
    float ms[16];
    for (int b = -1; b < batches; b++) { /* batch -1 warms up */
        CUDA_CHECK(cudaEventRecord(e0, NULL));
        for (int i = 0; i < reps; i++)
            OP_CHECK(loom_cuda_attention(d_out, d_q, (int64_t)H * D, d_pool, act, kvdt, d_qs, d_ctx, d_bt + (i % n_rot) * nb,
                                         nb, 1, n_new, ctx, H, KVH, D, B, 0, scale, multi, d_scratch, sb, NULL));
        CUDA_CHECK(cudaEventRecord(e1, NULL));
        CUDA_CHECK(cudaEventSynchronize(e1));
        CUDA_CHECK(cudaGetLastError());
        if (b >= 0) {
            CUDA_CHECK(cudaEventElapsedTime(&ms[b], e0, e1));
            ms[b] /= reps;
        }
    }
    const int reps_sorted = batches;
    qsort(ms, reps_sorted, sizeof(float), cmp_float);
    const double t = ms[reps_sorted / 2] * 1e-3;
    const double spread = (ms[reps_sorted - 1] - ms[0]) / ms[reps_sorted / 2];
    struct timing *tm = &timings[n_timings++];
    snprintf(tm->what, sizeof tm->what, "%s", what);
    tm->us = t * 1e6;
    tm->gbs = 2.0 * ctx * KVH * D * (double)kes / t * 1e-9; /* K and V */
    double pairs = 0;                              /* (query, visible key) pairs per head */
    for (int i = 0; i < n_new; i++) pairs += ctx - n_new + i + 1;
    tm->tflops = 4.0 * pairs * H * D / t * 1e-12;
    printf("time %-44s %9.1f us %7.0f GB/s K/V %6.1f TFLOP/s (min-max spread %.0f%%)\n", what, tm->us, tm->gbs,
           tm->tflops, 100.0 * spread);
    fflush(stdout);
    cudaEventDestroy(e0); cudaEventDestroy(e1);
    cudaFree(d_pool); cudaFree(d_q); cudaFree(d_out); cudaFree(d_scratch);
    cudaFree(d_qs); cudaFree(d_ctx); cudaFree(d_bt);
    free(bt);
}

/* Bad arguments are refused with cudaErrorInvalidValue (1), not launched. */
static void bad_args(void)
{
    _Alignas(16) int32_t dummy[64] = {0};
    void *p = dummy;
    int ok = 1;
    ok &= loom_cuda_attention(p, p, 256, p, LOOM_F32, LOOM_F32, dummy, dummy, dummy, 1, 1, 1, 1, 2, 2, 128, 16, 0, 1.0f,
                              -1, NULL, 0, NULL) == 1;                       /* fp32 activations */
    ok &= loom_cuda_attention(p, p, 256, p, LOOM_F16, LOOM_F16, dummy, dummy, dummy, 1, 1, 1, 1, 2, 2, 96, 16, 0, 1.0f,
                              -1, NULL, 0, NULL) == 1;                       /* head_dim 96 */
    ok &= loom_cuda_attention(p, p, 384, p, LOOM_F16, LOOM_F16, dummy, dummy, dummy, 1, 1, 1, 1, 3, 2, 128, 16, 0, 1.0f,
                              -1, NULL, 0, NULL) == 1;                       /* 3 heads on 2 kv heads */
    ok &= loom_cuda_attention(p, p, 256, p, LOOM_F16, LOOM_F16, dummy, dummy, dummy, 1, 1, 1, 1, 2, 2, 128, 24, 0, 1.0f,
                              -1, NULL, 0, NULL) == 1;                       /* B not a power of two */
    ok &= loom_cuda_attention(p, p, 256, p, LOOM_F16, LOOM_F16, dummy, dummy, dummy, 1, 1, 1, 4096, 2, 2, 128, 16, 0, 1.0f,
                              1, NULL, 0, NULL) == 1;                        /* multi-block forced, no scratch */
    ok &= loom_cuda_kv_append(p, p, 1, p, 256, LOOM_F16, LOOM_F16, dummy, 1, 2, 128, 16, NULL) == 1; /* k_stride too small */
    ok &= loom_cuda_kv_append(p, p, 256, p, 256, LOOM_F16, LOOM_BF16, dummy, 1, 2, 128, 16, NULL) == 1; /* kv neither act nor fp8 */
    ok &= loom_cuda_attention(p, p, 256, p, LOOM_F16, LOOM_BF16, dummy, dummy, dummy, 1, 1, 1, 1, 2, 2, 128, 16, 0, 1.0f,
                              -1, NULL, 0, NULL) == 1;                       /* the same for attention */
    ok &= loom_cuda_attention(p, p, 256, p, LOOM_F8E4M3, LOOM_F8E4M3, dummy, dummy, dummy, 1, 1, 1, 1, 2, 2, 128, 16, 0, 1.0f,
                              -1, NULL, 0, NULL) == 1;                       /* fp8 activations */
    cases++;
    failures += !ok;
    printf("%s bad arguments refused\n", ok ? "ok  " : "FAIL");
}

int main(void)
{
    if (cuda_test_skip_without_device()) return 77;
    struct cudaDeviceProp prop;
    CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
    printf("device: %s, %d SMs\n", prop.name, prop.multiProcessorCount);

    /* LOOM_ATT_QUICK=1: a few cases, no timings (for compute-sanitizer runs). */
    const char *qe = getenv("LOOM_ATT_QUICK");
    const int quick = qe && *qe && *qe != '0';
    bad_args();
    if (quick) {
        one_seq(LOOM_F16, 128, 8, 2, 16, 17, 17, 0, -1, 0, "prefill");
        one_seq(LOOM_BF16, 64, 32, 1, 8, 100, 2049, 1000, -1, 2, "chunked");
        one_seq(LOOM_F16, 128, 32, 1, 32, 1, 2049, 0, 1, 1, "decode");
        one_seq(LOOM_F16, 64, 8, 8, 128, 1, 5000, 700, 1, 0, "decode");
        one_seq(LOOM_F16, 128, 16, 2, 64, 1, 77, 0, 0, 0, "decode");
        batch(LOOM_BF16, 128, 8, 2, 8, 1, 300, 64, -1, 1);
        batch(LOOM_F16, 64, 32, 8, 16, 2, 1000, 0, 1, 2);
        split_cases();
        decode_cases();
        fp8_cases();
        printf("%d/%d attention cases passed (quick)\n", cases - failures, cases);
        return failures ? 1 : 0;
    }
    const loom_dtype dts[] = {LOOM_F16, LOOM_BF16};
    const int dims[] = {64, 128};
    const int hk[][2] = {{8, 8}, {8, 2}, {16, 2}, {32, 1}}; /* GQA 1, 4, 8, MQA with 32 query heads */
    const int bs[] = {8, 16, 32, 64, 128};
    int bi = 0, li = 0;
    for (int di = 0; di < 2; di++)
        for (int ki = 0; ki < 2; ki++)
            for (int hi = 0; hi < 4; hi++) {
                const loom_dtype a = dts[di];
                const int D = dims[ki], H = hk[hi][0], KVH = hk[hi][1];
#define NB bs[bi++ % 5]
#define NL (li++ % 3)
                one_seq(a, D, H, KVH, NB, 1, 1, 0, -1, NL, "prefill");
                one_seq(a, D, H, KVH, NB, 17, 17, 0, -1, NL, "prefill");
                if (H <= 16) one_seq(a, D, H, KVH, NB, 2049, 2049, 0, -1, NL, "prefill");
                one_seq(a, D, H, KVH, NB, 2049, 2049, 300, -1, NL, "prefill");  /* window < sequence */
                one_seq(a, D, H, KVH, NB, 17, 2049, 0, -1, NL, "chunked");      /* last chunk, cached prefix */
                one_seq(a, D, H, KVH, NB, 100, 2049, 1000, -1, NL, "chunked");
                for (int mb = -1; mb <= 1; mb++) one_seq(a, D, H, KVH, NB, 1, 2049, 0, mb, NL, "decode");
                one_seq(a, D, H, KVH, NB, 1, 5000, 700, 1, NL, "decode");
                one_seq(a, D, H, KVH, NB, 1, 5000, 700, 0, NL, "decode");
                one_seq(a, D, H, KVH, NB, 1, 77, 0, 1, NL, "decode");           /* short, forced split */
            }
    for (int di = 0; di < 2; di++)
        for (int ki = 0; ki < 2; ki++) {
            const loom_dtype a = dts[di];
            const int D = dims[ki];
            const int H = hk[(di * 2 + ki) % 4][0], KVH = hk[(di * 2 + ki) % 4][1];
            batch(a, D, H, KVH, NB, 0, 300, 0, -1, NL);
            batch(a, D, H, KVH, NB, 0, 300, 64, -1, NL);
            batch(a, D, H, KVH, NB, 1, 2100, 0, -1, NL);
            batch(a, D, H, KVH, NB, 1, 2100, 500, -1, NL);
            for (int mb = -1; mb <= 1; mb++) batch(a, D, H, KVH, NB, 2, 3000, 0, mb, NL);
            batch(a, D, H, KVH, NB, 2, 3000, 400, 1, NL);
            batch(a, D, 32, 8, NB, 2, 3000, 0, 1, NL);
        }
    split_cases();
    decode_cases();
    fp8_cases();
    printf("%d/%d attention cases passed\n", cases - failures, cases);

    /* Timings: fp16, head_dim 128, batch 1. */
    time_copy();
    printf("time device-to-device copy: %.0f GB/s (read + write)\n", copy_gbs);
    const int ctxs[] = {8192, 32768};
    for (int kv = 0; kv < 2; kv++)
        for (int ci = 0; ci < 2; ci++)
            for (int mb = 1; mb >= 0; mb--) {
                char w[96];
                const int KVH = kv ? 8 : 32;
                snprintf(w, sizeof w, "decode h32/kv%d d128 ctx %dk multi-block %s", KVH, ctxs[ci] / 1024,
                         mb ? "on" : "off");
                time_attention(w, LOOM_F16, 32, KVH, 128, 1, ctxs[ci], mb);
            }
    const int short_ctx[] = {384, 2304};
    for (int ci = 0; ci < 2; ci++)
        for (int kv = 0; kv < 2; kv++) {
            char w[96];
            snprintf(w, sizeof w, "decode h32/kv%d d128 ctx %d auto", kv ? 8 : 32, short_ctx[ci]);
            time_attention(w, LOOM_F16, 32, kv ? 8 : 32, 128, 1, short_ctx[ci], -1);
        }
    time_attention("prefill 2048 tok h32/kv32 d128 fp16", LOOM_F16, 32, 32, 128, 2048, 2048, -1);
    time_attention("prefill 2048 tok h32/kv32 d128 bf16", LOOM_BF16, 32, 32, 128, 2048, 2048, -1);
    time_attention("prefill 2048 tok h32/kv8 d128 fp16", LOOM_F16, 32, 8, 128, 2048, 2048, -1);
    /* the same with an fp8 pool (K/V GB/s counts its bytes, one per element) */
    g_f8 = 1;
    for (int ci = 0; ci < 2; ci++)
        for (int mb = 1; mb >= 0; mb--) {
            char w[96];
            snprintf(w, sizeof w, "fp8 kv: decode h32/kv32 d128 ctx %dk mb %s", ctxs[ci] / 1024, mb ? "on" : "off");
            time_attention(w, LOOM_F16, 32, 32, 128, 1, ctxs[ci], mb);
        }
    time_attention("fp8 kv: decode h32/kv32 d128 ctx 2304 auto", LOOM_F16, 32, 32, 128, 1, 2304, -1);
    time_attention("fp8 kv: decode h32/kv8 d128 ctx 8k auto", LOOM_F16, 32, 8, 128, 1, 8192, -1);
    time_attention("fp8 kv: prefill 2048 tok h32/kv32 d128", LOOM_F16, 32, 32, 128, 2048, 2048, -1);
    time_attention("fp8 kv: prefill 2048 tok h32/kv8 d128", LOOM_F16, 32, 8, 128, 2048, 2048, -1);
    g_f8 = 0;
    /* a short chunk on a cached prefix (KV reuse): the key split on (auto) and off */
    const int chunk[][3] = {{32, 1056, 32}, {32, 1056, 8}, {128, 1152, 32}, {32, 4128, 32}};
    for (int i = 0; i < 4; i++)
        for (int mb = -1; mb <= 0; mb++) {
            char w[96];
            snprintf(w, sizeof w, "chunk %d on %d h32/kv%d d128 split %s", chunk[i][0], chunk[i][1] - chunk[i][0], chunk[i][2],
                     mb ? "auto" : "off");
            time_attention(w, LOOM_F16, 32, chunk[i][2], 128, chunk[i][0], chunk[i][1], mb);
        }

    printf("\n== attention timings: %s, fp16 unless noted, batch 1, causal; per call, %s ==\n", prop.name,
           "20 calls back to back, median of 7 batches");
    printf("copy bandwidth measured here: %.0f GB/s (DEVICE.md's H200: 4250)\n", copy_gbs);
    printf("%-44s %10s %9s %8s %8s %9s\n", "case", "us", "K/V GB/s", "%copy", "%4.25TB", "TFLOP/s");
    for (int i = 0; i < n_timings; i++) {
        const struct timing *t = &timings[i];
        printf("%-44s %10.1f %9.0f %7.0f%% %7.0f%% %9.1f\n", t->what, t->us, t->gbs, 100.0 * t->gbs / copy_gbs,
               100.0 * t->gbs / 4250.0, t->tflops);
    }
    if (failures) {
        printf("%d attention case(s) FAILED\n", failures);
        return 1;
    }
    printf("all %d attention cases passed\n", cases);
    return 0;
}
