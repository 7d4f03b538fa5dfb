/* CUDA elementwise ops vs the CPU backend (suite "ops", GPU machine):
 * loom_cuda_embedding, loom_cuda_add_rmsnorm, loom_cuda_rope and
 * loom_cuda_silu_mul against loom_ops_cpu() (fp32) on the same rounded inputs,
 * awkward sizes, aligned and misaligned buffers, NaN-poisoned outputs; then a
 * timing line per op at Llama-7B sizes. Exits 77 when no CUDA device exists.
 * Inputs are fresh each run (seed printed; LOOM_TEST_SEED=n repeats one). */
#include <cuda_runtime_api.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "../../kernels/cuda/ops_cuda.h"
#include "../../kernels/ops.h"
#include "op_check.h"


/* Stores f as dt at dst[i]; returns the value actually stored, widened. */
static float store(void *dst, loom_dtype dt, int64_t i, float f)
{
    if (dt == LOOM_F32) { ((float *)dst)[i] = f; return f; }
    uint16_t h = dt == LOOM_F16 ? loom_f32_to_f16(f) : loom_f32_to_bf16(f);
    ((uint16_t *)dst)[i] = h;
    return dt == LOOM_F16 ? loom_f16_to_f32(h) : loom_bf16_to_f32(h);
}

static float load(const void *src, loom_dtype dt, int64_t i)
{
    if (dt == LOOM_F32) return ((const float *)src)[i];
    uint16_t h = ((const uint16_t *)src)[i];
    return dt == LOOM_F16 ? loom_f16_to_f32(h) : loom_bf16_to_f32(h);
}

static double tol_for(loom_dtype act) { return act == LOOM_F32 ? 1e-5 : act == LOOM_F16 ? 2e-3 : 1e-2; }

/* ||got - ref|| / ||ref|| over n elements of got (in dt); NaN anywhere -> NaN. */
static double rel_l2(const void *got, loom_dtype dt, const float *ref, int64_t n)
{
    double num = 0, den = 0;
    for (int64_t i = 0; i < n; i++) {
        double d = (double)load(got, dt, i) - ref[i];
        num += d * d;
        den += (double)ref[i] * ref[i];
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

/* Device buffer of `bytes` starting `off` elements of size es past an aligned
 * address (off > 0 turns the 16-byte paths off); *base is what to free. */
static void *dalloc(void **base, size_t bytes, size_t es, int off)
{
    CUDA_CHECK(cudaMalloc(base, bytes + es * off + 16));
    return (unsigned char *)*base + es * off;
}


/* ---- embedding ---- */

static void check_embedding(loom_dtype act, loom_dtype wdt, int64_t n, int64_t dim, int off)
{
    const int64_t vocab = 1000;
    const size_t ae = loom_dtype_size(act), we = loom_dtype_size(wdt);
    void *ht = xmalloc(we * vocab * dim), *hy = xmalloc(ae * n * dim);
    int32_t *ids = xmalloc(sizeof(int32_t) * n);
    float *ref = xmalloc(sizeof(float) * n * dim);
    for (int64_t i = 0; i < vocab * dim; i++) store(ht, wdt, i, 2.0f * rnd());
    for (int64_t i = 0; i < n; i++) ids[i] = i == 0 ? (int32_t)(vocab - 1) : i == 1 ? 0 : (int32_t)rndu(vocab);
    loom_ops_cpu()->embedding(ref, ht, wdt, ids, n, dim);

    void *bt, *by, *bi;
    void *dt = dalloc(&bt, we * vocab * dim, we, off), *dy = dalloc(&by, ae * n * dim, ae, off);
    int32_t *di = dalloc(&bi, sizeof(int32_t) * n, 4, 0);
    CUDA_CHECK(cudaMemcpy(dt, ht, we * vocab * dim, cudaMemcpyHostToDevice));
    CUDA_CHECK(cudaMemcpy(di, ids, sizeof(int32_t) * n, cudaMemcpyHostToDevice));
    poison(dy, ae * n * dim);
    OP_CHECK(loom_cuda_embedding(dy, act, dt, wdt, di, n, dim, NULL));
    CUDA_CHECK(cudaDeviceSynchronize());
    CUDA_CHECK(cudaMemcpy(hy, dy, ae * n * dim, cudaMemcpyDeviceToHost));
    const double err = rel_l2(hy, act, ref, n * dim), tol = tol_for(act);
    verdict(err <= tol, "embedding act=%s table=%s rows=%lld dim=%lld%s rel_l2 %.3e (tol %.0e)",
            loom_dtype_name(act), loom_dtype_name(wdt), (long long)n, (long long)dim,
            off ? " misaligned" : "", err, tol);
    cudaFree(bt); cudaFree(by); cudaFree(bi);
    free(ht); free(hy); free(ids); free(ref);
}

/* ---- residual add + RMSNorm ---- */

static void check_add_rmsnorm(loom_dtype act, loom_dtype wdt, int64_t n, int64_t dim, int with_delta, int off)
{
    const size_t ae = loom_dtype_size(act), we = loom_dtype_size(wdt), bytes = ae * n * dim;
    const float eps = 1e-5f;
    void *hr = xmalloc(bytes), *hd = xmalloc(bytes), *hw = xmalloc(we * dim), *hsum = xmalloc(bytes);
    void *hy = xmalloc(bytes), *hr2 = xmalloc(bytes);
    float *sumf = xmalloc(sizeof(float) * n * dim), *ref = xmalloc(sizeof(float) * n * dim);
    for (int64_t i = 0; i < n * dim; i++) {
        const float r = store(hr, act, i, 3.0f * rnd()), d = store(hd, act, i, 2.0f * rnd());
        /* the sum rounded to act once, as a PyTorch fp16/bf16 add does */
        sumf[i] = store(hsum, act, i, with_delta ? r + d : r);
    }
    for (int64_t j = 0; j < dim; j++) store(hw, wdt, j, 1.0f + 0.5f * rnd());
    loom_ops_cpu()->rmsnorm(ref, sumf, hw, wdt, n, dim, eps);

    void *br, *bd, *bw, *by;
    void *dr = dalloc(&br, bytes, ae, off), *dd = dalloc(&bd, bytes, ae, off);
    void *dw = dalloc(&bw, we * dim, we, off), *dy = dalloc(&by, bytes, ae, off);
    CUDA_CHECK(cudaMemcpy(dr, hr, bytes, cudaMemcpyHostToDevice));
    CUDA_CHECK(cudaMemcpy(dd, hd, bytes, cudaMemcpyHostToDevice));
    CUDA_CHECK(cudaMemcpy(dw, hw, we * dim, cudaMemcpyHostToDevice));
    poison(dy, bytes);
    OP_CHECK(loom_cuda_add_rmsnorm(dr, with_delta ? dd : NULL, dy, act, dw, wdt, n, dim, eps, NULL));
    CUDA_CHECK(cudaDeviceSynchronize());
    CUDA_CHECK(cudaMemcpy(hy, dy, bytes, cudaMemcpyDeviceToHost));
    CUDA_CHECK(cudaMemcpy(hr2, dr, bytes, cudaMemcpyDeviceToHost));
    const double err = rel_l2(hy, act, ref, n * dim), tol = tol_for(act);
    const int res_exact = memcmp(hr2, hsum, bytes) == 0; /* the residual is bit-exact */
    verdict(err <= tol && res_exact,
            "add_rmsnorm act=%s w=%s rows=%lld dim=%lld%s%s rel_l2 %.3e (tol %.0e), residual %s",
            loom_dtype_name(act), loom_dtype_name(wdt), (long long)n, (long long)dim,
            with_delta ? "" : " no-delta", off ? " misaligned" : "", err, tol,
            res_exact ? "bit-exact" : "WRONG");
    if (with_delta && act != LOOM_F32) { /* loom_cuda_add_rmsnorm_f32: fp32 deltas that round to the act ones, bitwise the same */
        float *hd32 = xmalloc(sizeof(float) * n * dim);
        for (int64_t i = 0; i < n * dim; i++) hd32[i] = load(hd, act, i) * (1.0f + 1.0f / 16384.0f); /* under half an ulp */
        void *b32, *by2;
        void *d32 = dalloc(&b32, sizeof(float) * n * dim, 4, off), *dy2 = dalloc(&by2, bytes, ae, off);
        void *hy2 = xmalloc(bytes);
        CUDA_CHECK(cudaMemcpy(d32, hd32, sizeof(float) * n * dim, cudaMemcpyHostToDevice));
        CUDA_CHECK(cudaMemcpy(dr, hr, bytes, cudaMemcpyHostToDevice));
        poison(dy2, bytes);
        OP_CHECK(loom_cuda_add_rmsnorm_f32(dr, d32, dy2, act, dw, wdt, n, dim, eps, NULL));
        CUDA_CHECK(cudaDeviceSynchronize());
        CUDA_CHECK(cudaMemcpy(hy2, dy2, bytes, cudaMemcpyDeviceToHost));
        CUDA_CHECK(cudaMemcpy(hr2, dr, bytes, cudaMemcpyDeviceToHost));
        const int y_same = memcmp(hy2, hy, bytes) == 0, r_same = memcmp(hr2, hsum, bytes) == 0;
        verdict(y_same && r_same, "add_rmsnorm_f32 act=%s w=%s rows=%lld dim=%lld%s: out %s, residual %s", loom_dtype_name(act),
                loom_dtype_name(wdt), (long long)n, (long long)dim, off ? " misaligned" : "", y_same ? "bitwise the act delta's" : "DIFFERS",
                r_same ? "bit-exact" : "WRONG");
        cudaFree(b32); cudaFree(by2);
        free(hd32); free(hy2);
    }
    cudaFree(br); cudaFree(bd); cudaFree(bw); cudaFree(by);
    free(hr); free(hd); free(hw); free(hsum); free(hy); free(hr2); free(sumf); free(ref);
}

/* ---- RoPE ---- */

/* fused: q and k are column blocks of one (n, (H + 2*KVH) * hd) QKV buffer
 * (the V block must come back untouched); else two contiguous buffers. */
static void check_rope(loom_dtype act, int64_t n, int64_t H, int64_t KVH, int64_t hd, int fused)
{
    const size_t ae = loom_dtype_size(act);
    const int64_t qw = H * hd, kw = KVH * hd, row = fused ? qw + 2 * kw : qw + kw;
    const int64_t half = hd / 2;
    void *hb = xmalloc(ae * n * row), *hout = xmalloc(ae * n * row);
    float *qf = xmalloc(sizeof(float) * n * qw), *kf = xmalloc(sizeof(float) * n * kw);
    float *inv = xmalloc(sizeof(float) * half);
    int32_t *pos = xmalloc(sizeof(int32_t) * n);
    for (int64_t i = 0; i < n * row; i++) store(hb, act, i, 2.0f * rnd());
    for (int64_t t = 0; t < n; t++) {
        pos[t] = t % 5 == 4 ? (int32_t)rndu(131072) : (int32_t)rndu(4096);
        for (int64_t j = 0; j < qw; j++) qf[t * qw + j] = load(hb, act, t * row + j);
        for (int64_t j = 0; j < kw; j++) kf[t * kw + j] = load(hb, act, t * row + qw + j);
    }
    for (int64_t i = 0; i < half; i++) inv[i] = 1.0f / powf(10000.0f, (float)(2 * i) / (float)hd);
    loom_ops_cpu()->rope(qf, pos, n, H, hd, inv);
    loom_ops_cpu()->rope(kf, pos, n, KVH, hd, inv);

    void *bb, *bp, *bi;
    unsigned char *db = dalloc(&bb, ae * n * row, ae, 0);
    int32_t *dp = dalloc(&bp, sizeof(int32_t) * n, 4, 0);
    float *di = dalloc(&bi, sizeof(float) * half, 4, 0);
    CUDA_CHECK(cudaMemcpy(db, hb, ae * n * row, cudaMemcpyHostToDevice));
    CUDA_CHECK(cudaMemcpy(dp, pos, sizeof(int32_t) * n, cudaMemcpyHostToDevice));
    CUDA_CHECK(cudaMemcpy(di, inv, sizeof(float) * half, cudaMemcpyHostToDevice));
    /* Separate buffers: q rows then k rows in one allocation. */
    void *dq = db, *dk = fused ? db + ae * qw : db + ae * n * qw;
    const int64_t qs = fused ? row : qw, ks = fused ? row : kw;
    if (!fused) { /* repack host copy the same way */
        for (int64_t t = 0; t < n; t++)
            for (int64_t j = 0; j < row; j++) {
                const float v = load(hb, act, t * row + j);
                if (j < qw) store(hout, act, t * qw + j, v);
                else store(hout, act, n * qw + t * kw + j - qw, v);
            }
        CUDA_CHECK(cudaMemcpy(db, hout, ae * n * row, cudaMemcpyHostToDevice));
    }
    OP_CHECK(loom_cuda_rope(dq, qs, dk, ks, act, dp, n, H, KVH, hd, di, NULL));
    CUDA_CHECK(cudaDeviceSynchronize());
    CUDA_CHECK(cudaMemcpy(hout, db, ae * n * row, cudaMemcpyDeviceToHost));
    double num = 0, den = 0;
    int v_intact = 1;
    for (int64_t t = 0; t < n; t++) {
        for (int64_t j = 0; j < qw + kw; j++) {
            const int64_t at = fused ? t * row + j : j < qw ? t * qw + j : n * qw + t * kw + j - qw;
            const float r = j < qw ? qf[t * qw + j] : kf[t * kw + j - qw];
            const double d = (double)load(hout, act, at) - r;
            num += d * d;
            den += (double)r * r;
        }
        if (fused)
            v_intact &= memcmp((unsigned char *)hout + ae * (t * row + qw + kw),
                               (unsigned char *)hb + ae * (t * row + qw + kw), ae * kw) == 0;
    }
    const double err = sqrt(num / den), tol = tol_for(act);
    verdict(err <= tol && v_intact, "rope act=%s tokens=%lld heads=%lld/%lld head_dim=%lld %s rel_l2 %.3e (tol %.0e)%s",
            loom_dtype_name(act), (long long)n, (long long)H, (long long)KVH, (long long)hd,
            fused ? "fused-qkv" : "separate", err, tol, v_intact ? "" : ", V block CHANGED");
    cudaFree(bb); cudaFree(bp); cudaFree(bi);
    free(hb); free(hout); free(qf); free(kf); free(inv); free(pos);
}

/* ---- SiLU(gate) * up ---- */

static void check_silu_mul(loom_dtype act, int64_t n, int64_t inter, int off)
{
    const size_t ae = loom_dtype_size(act);
    void *hgu = xmalloc(ae * n * 2 * inter), *hy = xmalloc(ae * n * inter);
    float *g = xmalloc(sizeof(float) * n * inter), *u = xmalloc(sizeof(float) * n * inter);
    float *ref = xmalloc(sizeof(float) * n * inter);
    for (int64_t t = 0; t < n; t++)
        for (int64_t j = 0; j < inter; j++) {
            g[t * inter + j] = store(hgu, act, t * 2 * inter + j, 6.0f * rnd());
            u[t * inter + j] = store(hgu, act, t * 2 * inter + inter + j, 2.0f * rnd());
        }
    loom_ops_cpu()->swiglu(ref, g, u, n * inter);

    void *bgu, *by;
    void *dgu = dalloc(&bgu, ae * n * 2 * inter, ae, off), *dy = dalloc(&by, ae * n * inter, ae, off);
    CUDA_CHECK(cudaMemcpy(dgu, hgu, ae * n * 2 * inter, cudaMemcpyHostToDevice));
    poison(dy, ae * n * inter);
    OP_CHECK(loom_cuda_silu_mul(dy, dgu, act, n, inter, NULL));
    CUDA_CHECK(cudaDeviceSynchronize());
    CUDA_CHECK(cudaMemcpy(hy, dy, ae * n * inter, cudaMemcpyDeviceToHost));
    const double err = rel_l2(hy, act, ref, n * inter), tol = tol_for(act);
    verdict(err <= tol, "silu_mul act=%s rows=%lld inter=%lld%s rel_l2 %.3e (tol %.0e)", loom_dtype_name(act),
            (long long)n, (long long)inter, off ? " misaligned" : "", err, tol);
    cudaFree(bgu); cudaFree(by);
    free(hgu); free(hy); free(g); free(u); free(ref);
}

/* ---- bad arguments ---- */

static void check_bad_args(void)
{
    int ok = 1;
    ok &= loom_cuda_embedding((void *)16, LOOM_DTYPE_COUNT, (void *)16, LOOM_F16, (void *)16, 1, 8, NULL) != 0;
    ok &= loom_cuda_add_rmsnorm((void *)16, NULL, (void *)16, LOOM_F16, (void *)16, LOOM_F16, -1, 8, 1e-5f, NULL) != 0;
    ok &= loom_cuda_rope((void *)16, 64, (void *)16, 64, LOOM_F16, (void *)16, 1, 1, 1, 63, (void *)16, NULL) != 0;
    ok &= loom_cuda_silu_mul(NULL, NULL, LOOM_F16, 1, 8, NULL) != 0;
    ok &= loom_cuda_silu_mul(NULL, NULL, LOOM_F16, 0, 8, NULL) == 0; /* empty: nothing to do */
    verdict(ok, "bad arguments rejected, empty shapes accepted");
}

/* ---- timings ---- */

typedef struct timing_ctx {
    int op;            /* 0 embedding, 1 add_rmsnorm, 2 rope, 3 silu_mul */
    int64_t n, dim;    /* rows; dim / inter; for rope dim = head_dim */
    int64_t H, KVH;
    void *a[8], *b[8], *c[8];
    void *ids, *pos, *inv, *w;
    int sets;
} timing_ctx;

static void launch(timing_ctx *t, int s)
{
    switch (t->op) {
    case 0: OP_CHECK(loom_cuda_embedding(t->a[s], LOOM_F16, t->w, LOOM_F16, t->ids, t->n, t->dim, NULL)); break;
    case 1: OP_CHECK(loom_cuda_add_rmsnorm(t->a[s], t->b[s], t->c[s], LOOM_F16, t->w, LOOM_F16, t->n, t->dim, 1e-5f, NULL)); break;
    case 2: {
        const int64_t row = (t->H + 2 * t->KVH) * t->dim;
        OP_CHECK(loom_cuda_rope(t->a[s], row, (uint16_t *)t->a[s] + t->H * t->dim, row, LOOM_F16, t->pos, t->n,
                                t->H, t->KVH, t->dim, t->inv, NULL));
        break;
    }
    default: OP_CHECK(loom_cuda_silu_mul(t->c[s], t->a[s], LOOM_F16, t->n, t->dim, NULL)); break;
    }
}

/* Median of 5 trials of 20 calls, rotating over buffer sets so large shapes
 * come from device memory, not L2. Returns microseconds per call. */
static double time_calls(timing_ctx *t)
{
    cudaEvent_t e0, e1;
    CUDA_CHECK(cudaEventCreate(&e0));
    CUDA_CHECK(cudaEventCreate(&e1));
    for (int s = 0; s < t->sets; s++) launch(t, s);
    CUDA_CHECK(cudaDeviceSynchronize());
    double trials[5];
    for (int r = 0; r < 5; r++) {
        CUDA_CHECK(cudaEventRecord(e0, NULL));
        for (int i = 0; i < 20; i++) launch(t, i % t->sets);
        CUDA_CHECK(cudaEventRecord(e1, NULL));
        CUDA_CHECK(cudaEventSynchronize(e1));
        float ms;
        CUDA_CHECK(cudaEventElapsedTime(&ms, e0, e1));
        trials[r] = ms * 1e3 / 20;
    }
    for (int i = 0; i < 5; i++)
        for (int j = i + 1; j < 5; j++)
            if (trials[j] < trials[i]) { double x = trials[i]; trials[i] = trials[j]; trials[j] = x; }
    cudaEventDestroy(e0); cudaEventDestroy(e1);
    return trials[2];
}

/* Random fp16 device buffer of `bytes` (values in [-2, 2)). */
static void *drandom(size_t bytes)
{
    void *d;
    uint16_t *h = xmalloc(bytes);
    for (size_t i = 0; i < bytes / 2; i++) h[i] = loom_f32_to_f16(2.0f * rnd());
    CUDA_CHECK(cudaMalloc(&d, bytes));
    CUDA_CHECK(cudaMemcpy(d, h, bytes, cudaMemcpyHostToDevice));
    free(h);
    return d;
}

static double copy_gbps; /* device-to-device copy measured in this run */

static void measure_copy(void)
{
    const size_t bytes = (size_t)512 << 20;
    void *a, *b;
    CUDA_CHECK(cudaMalloc(&a, bytes));
    CUDA_CHECK(cudaMalloc(&b, bytes));
    CUDA_CHECK(cudaMemset(a, 1, bytes));
    CUDA_CHECK(cudaMemcpy(b, a, bytes, cudaMemcpyDeviceToDevice));
    cudaEvent_t e0, e1;
    CUDA_CHECK(cudaEventCreate(&e0));
    CUDA_CHECK(cudaEventCreate(&e1));
    CUDA_CHECK(cudaEventRecord(e0, NULL));
    for (int i = 0; i < 10; i++) CUDA_CHECK(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice, NULL));
    CUDA_CHECK(cudaEventRecord(e1, NULL));
    CUDA_CHECK(cudaEventSynchronize(e1));
    float ms;
    CUDA_CHECK(cudaEventElapsedTime(&ms, e0, e1));
    copy_gbps = 2.0 * bytes * 10 / (ms * 1e-3) * 1e-9;
    printf("time copy d2d 512 MiB: %.0f GB/s (read + write)\n", copy_gbps);
    cudaEventDestroy(e0); cudaEventDestroy(e1);
    cudaFree(a); cudaFree(b);
}

static void time_op(int op, int64_t n)
{
    timing_ctx t = {.op = op, .n = n, .dim = 4096, .H = 32, .KVH = 32};
    const int64_t vocab = 32000, inter = 11008;
    size_t per_set = 0, moved = 0;
    const char *name = "";
    switch (op) {
    case 0: per_set = 2 * n * 4096; moved = 2 * (2 * n * 4096); name = "embedding fp16 4096 dims"; break;
    case 1: per_set = 3 * 2 * n * 4096; moved = 4 * 2 * n * 4096 + 2 * 4096; name = "add_rmsnorm fp16 4096 dims"; break;
    case 2: t.dim = 128; per_set = 2 * n * 96 * 128; moved = 2 * 2 * n * 64 * 128; name = "rope fp16 32+32 heads x 128 (fused qkv)"; break;
    default: t.dim = inter; per_set = 2 * n * 3 * inter; moved = 2 * n * 3 * inter; name = "silu_mul fp16 inter 11008"; break;
    }
    t.sets = (int)((((size_t)256 << 20) + per_set - 1) / per_set);
    if (t.sets > 8) t.sets = 8;
    for (int s = 0; s < t.sets; s++) {
        switch (op) {
        case 0: t.a[s] = drandom(2 * n * 4096); break;
        case 1: t.a[s] = drandom(2 * n * 4096); t.b[s] = drandom(2 * n * 4096); t.c[s] = drandom(2 * n * 4096); break;
        case 2: t.a[s] = drandom(2 * n * 96 * 128); break;
        default: t.a[s] = drandom(2 * n * 2 * inter); t.c[s] = drandom(2 * n * inter); break;
        }
    }
    int32_t *hi = xmalloc(sizeof(int32_t) * n);
    for (int64_t i = 0; i < n; i++) hi[i] = op == 0 ? (int32_t)rndu((uint32_t)vocab) : (int32_t)rndu(4096);
    float inv[64];
    for (int i = 0; i < 64; i++) inv[i] = 1.0f / powf(10000.0f, (float)(2 * i) / 128.0f);
    CUDA_CHECK(cudaMalloc(&t.ids, sizeof(int32_t) * n));
    CUDA_CHECK(cudaMemcpy(t.ids, hi, sizeof(int32_t) * n, cudaMemcpyHostToDevice));
    t.pos = t.ids;
    CUDA_CHECK(cudaMalloc(&t.inv, sizeof inv));
    CUDA_CHECK(cudaMemcpy(t.inv, inv, sizeof inv, cudaMemcpyHostToDevice));
    t.w = op == 0 ? drandom(2 * vocab * 4096) : drandom(2 * 4096);
    const double us = time_calls(&t);
    const double gbps = moved / (us * 1e-6) * 1e-9;
    printf("time %s x %lld rows: %.1f us, %.0f GB/s = %.0f%% of copy measured here, %.0f%% of 4.25 TB/s\n", name,
           (long long)n, us, gbps, 100.0 * gbps / copy_gbps, 100.0 * gbps / 4250.0);
    for (int s = 0; s < t.sets; s++) { cudaFree(t.a[s]); cudaFree(t.b[s]); cudaFree(t.c[s]); }
    cudaFree(t.ids); cudaFree(t.inv); cudaFree(t.w);
    free(hi);
}

int main(void)
{
    if (cuda_test_skip_without_device()) return 77;
    const char *seed_env = getenv("LOOM_TEST_SEED");
    uint64_t seed = seed_env ? strtoull(seed_env, NULL, 10) : (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
    rng = seed ? seed : 1;
    printf("seed %llu\n", (unsigned long long)seed);

    const loom_dtype acts[] = {LOOM_F16, LOOM_BF16};
    const int64_t rows[] = {1, 37, 2049};
    const int64_t dims[] = {64, 67, 128, 4099, 4096};

    for (int a = 0; a < 2; a++)
        for (int r = 0; r < 3; r++)
            for (int d = 0; d < 5; d++) check_embedding(acts[a], acts[a], rows[r], dims[d], 0);
    check_embedding(LOOM_F16, LOOM_BF16, 37, 4096, 0);
    check_embedding(LOOM_BF16, LOOM_F32, 37, 128, 0);
    check_embedding(LOOM_F32, LOOM_F16, 37, 4096, 0);
    check_embedding(LOOM_F16, LOOM_F16, 37, 4096, 1);

    for (int a = 0; a < 2; a++)
        for (int r = 0; r < 3; r++)
            for (int d = 0; d < 5; d++) check_add_rmsnorm(acts[a], acts[a], rows[r], dims[d], 1, 0);
    check_add_rmsnorm(LOOM_F16, LOOM_F32, 37, 4096, 1, 0);
    check_add_rmsnorm(LOOM_BF16, LOOM_F32, 37, 4099, 1, 0);
    check_add_rmsnorm(LOOM_F32, LOOM_BF16, 37, 4096, 1, 0);
    check_add_rmsnorm(LOOM_F16, LOOM_F16, 37, 4096, 0, 0);
    check_add_rmsnorm(LOOM_BF16, LOOM_BF16, 37, 4096, 1, 1);
    check_add_rmsnorm(LOOM_F16, LOOM_F16, 3, 16384 + 8, 1, 0); /* past the register cache */
    check_add_rmsnorm(LOOM_BF16, LOOM_BF16, 3, 16384 + 3, 1, 0);

    const int64_t heads[][2] = {{8, 8}, {16, 4}, {32, 4}}; /* GQA ratios 1, 4, 8 */
    const int64_t tokens[] = {1, 17, 37, 2049};
    const int64_t hds[] = {64, 128};
    for (int a = 0; a < 2; a++)
        for (int t = 0; t < 4; t++)
            for (int h = 0; h < 3; h++)
                for (int d = 0; d < 2; d++) check_rope(acts[a], tokens[t], heads[h][0], heads[h][1], hds[d], 1);
    check_rope(LOOM_F16, 37, 16, 4, 128, 0);
    check_rope(LOOM_BF16, 37, 8, 1, 64, 0);
    check_rope(LOOM_F16, 37, 4, 2, 36, 1); /* half = 18: the scalar path */
    check_rope(LOOM_F32, 37, 16, 4, 128, 1);

    const int64_t inters[] = {64, 67, 128, 4099, 11008};
    for (int a = 0; a < 2; a++)
        for (int r = 0; r < 3; r++)
            for (int d = 0; d < 5; d++) check_silu_mul(acts[a], rows[r], inters[d], 0);
    check_silu_mul(LOOM_F32, 37, 4096, 0);
    check_silu_mul(LOOM_F16, 37, 4096, 1);

    check_bad_args();

    measure_copy();
    for (int op = 0; op < 4; op++) {
        time_op(op, 1);
        time_op(op, 2048);
    }
    printf("%d failure(s)\n", failures);
    return failures ? 1 : 0;
}
