/* The one-kernel decode step (loom_cuda_decode_step; suite "ops", GPU
 * machine) against the same step composed from the separately tested CUDA
 * kernels, as worker/gpu_model.c's fused_layers() and lm_head run it: per
 * layer loom_cuda_gemv1_rope with the add + RMSNorm prologue (layer 0
 * gathering the embedding row through pre.row), loom_cuda_attention
 * (head_dim 64, 128) or loom_cuda_attention_generic, loom_cuda_gemv1 (o),
 * loom_cuda_gemv1_glu with the add + RMSNorm prologue, loom_cuda_gemv1
 * (down); then loom_cuda_gemv1_f32 with the final norm into fp32 logits.
 * Small models of awkward shapes (GQA 3 and 4, MQA, head_dim 8 to 256, a
 * sliding window on one layer, biases on some), fp16 and bf16, over a paged
 * pool per layer (a shuffled block table, random K/V) at contexts 1 to 2050
 * (one token a zero embedding row, id -1):
 *  - logits, and x and mlp after the step, against the composed step's:
 *    relative L2 within tol_for, every value finite (the step's outputs
 *    NaN-poisoned first); at context 1 (one key: the attention output is
 *    that key's v in both) bitwise;
 *  - the new token's K and V in every layer's pool: bitwise the reference's
 *    in layer 0 (the same row code on the same inputs) and at context 1,
 *    within tol_for in later layers (their inputs went through attention);
 *    the rest of every pool unchanged, in both paths;
 *  - the last layer and lm_head recomputed by the separate kernels from the
 *    step's own inputs (left in its buffers): qkv, the pool, o_out, x, h,
 *    mlp and logits bitwise, the attention within tol_att_gen / tol_att_tc;
 *  - a second launch from the same inputs bitwise the first (the grid
 *    barrier and the attention counters in the scratch reset themselves),
 *    and the step captured once per model into a CUDA graph on a non-default
 *    stream, replayed at every context, bitwise the plain launch;
 *  - bad arguments refused unlaunched; loom_cuda_decode_step_ok on the edges
 *    of its contract.
 * Exits 77 when no CUDA device exists. Seed fixed (LOOM_TEST_SEED=n for another). */
#include <cuda_runtime_api.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../kernels/cuda/ops_cuda.h"
#include "act_check.h"
#include "op_check.h"

#define EPS 1e-5f
#define MAX_LAYERS 4
#define MAX_CTXS 8

/* The whole step against the composed one: attention's rounding
 * differences, amplified through 1-3 layers of act-rounded activations
 * (and, for head_dim 64 and 128, loom_cuda_attention's softmax weights
 * rounded to act before P V). Over 13 seeds on an H200 the largest seen was
 * 2.6e-3 (fp16) and 2.1e-2 (bf16), eight times as much: one ulp of bf16 is
 * eight of fp16's, as pure rounding would have it. */
static double tol_for(loom_dtype dt) { return dt == LOOM_F16 ? 5e-3 : 4e-2; }
/* One attention on the same q and pool: its rounding alone, against
 * loom_cuda_attention_generic (fp32 softmax weights, as the step's; seen up
 * to 6e-5 (fp16) and 1.1e-3 (bf16)) and loom_cuda_attention (weights
 * rounded to act; seen up to 3.4e-4 and 2.7e-3). Leaving one key of 2049
 * out moved it by 1e-2 or more. */
static double tol_att_gen(loom_dtype dt) { return dt == LOOM_F16 ? 3e-4 : 3e-3; }
static double tol_att_tc(loom_dtype dt) { return dt == LOOM_F16 ? 1e-3 : 8e-3; }

/* n random act values offset + scale * [-1, 1) into h. */
static void fill(uint16_t *h, int64_t n, float scale, float offset, loom_dtype dt)
{
    for (int64_t i = 0; i < n; i++) h[i] = to_act(offset + scale * rnd(), dt);
}

/* The same on the device. */
static void *drandom(int64_t n, float scale, float offset, loom_dtype act)
{
    uint16_t *h = xmalloc(2 * (size_t)n);
    fill(h, n, scale, offset, act);
    void *d = dmalloc(2 * (size_t)n);
    upload(d, h, 2 * (size_t)n);
    free(h);
    return d;
}

/* ||got - ref|| / ||ref|| over n fp32 values; NaN anywhere -> NaN. */
static double rel_l2_f32(const float *got, const float *ref, int64_t n)
{
    double num = 0, den = 0;
    for (int64_t i = 0; i < n; i++) {
        const double d = (double)got[i] - ref[i];
        num += d * d;
        den += (double)ref[i] * ref[i];
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

static int64_t nonfinite_act(const uint16_t *v, loom_dtype dt, int64_t n)
{
    int64_t bad = 0;
    for (int64_t i = 0; i < n; i++) bad += !isfinite(from_act(v[i], dt));
    return bad;
}

/* ---- loom_cuda_decode_step_ok ---- */

static void check_step_ok(void)
{
    struct { loom_dtype act; int64_t hidden, inter, nh, nkv, hd; int want; const char *what; } c[] = {
        {LOOM_F16, 4096, 11008, 32, 8, 128, 1, "fp16 4096/11008, 32/8 heads of 128"},
        {LOOM_BF16, 72, 104, 8, 1, 8, 1, "bf16 72/104, MQA, head_dim 8"},
        {LOOM_F16, 96, 152, 6, 2, 16, 1, "fp16 head_dim 16, 6 heads over 2 kv heads"},
        {LOOM_BF16, 160, 96, 4, 4, 32, 1, "bf16 head_dim 32"},
        {LOOM_BF16, 128, 88, 2, 2, 256, 1, "bf16 head_dim 256"},
        {LOOM_F16, 49152, 64, 1, 1, 8, 1, "fp16 hidden 49152 (96 KiB exactly)"},
        {LOOM_BF16, 64, 49152, 1, 1, 8, 1, "bf16 inter 49152 (96 KiB exactly)"},
        {LOOM_F16, 64, 64, 192, 1, 256, 1, "fp16 n_heads * head_dim 49152 (96 KiB exactly)"},
        {LOOM_BF16, 49160, 64, 1, 1, 8, 0, "bf16 hidden 49160 (past 96 KiB)"},
        {LOOM_F16, 64, 49160, 1, 1, 8, 0, "fp16 inter 49160 (past 96 KiB)"},
        {LOOM_F16, 64, 64, 196, 1, 256, 0, "fp16 n_heads * head_dim 50176 (past 96 KiB)"},
        {LOOM_F16, 4100, 11008, 32, 8, 128, 0, "fp16 hidden 4100 (not a multiple of 8)"},
        {LOOM_F16, 4096, 11004, 32, 8, 128, 0, "fp16 inter 11004 (not a multiple of 8)"},
        {LOOM_F16, 4096, 11008, 32, 8, 12, 0, "fp16 head_dim 12 (not a multiple of 8)"},
        {LOOM_F16, 96, 152, 4, 2, 24, 0, "fp16 head_dim 24 (not a power of two)"},
        {LOOM_BF16, 4096, 11008, 32, 8, 96, 0, "bf16 head_dim 96 (not a power of two)"},
        {LOOM_F16, 4096, 11008, 32, 32, 4, 0, "fp16 head_dim 4"},
        {LOOM_BF16, 4096, 11008, 16, 8, 264, 0, "bf16 head_dim 264 (past 256)"},
        {LOOM_F16, 4096, 11008, 6, 4, 128, 0, "fp16 6 heads over 4 kv heads"},
        {LOOM_F16, 4096, 11008, 32, 0, 128, 0, "fp16 0 kv heads"},
        {LOOM_F16, 0, 11008, 32, 8, 128, 0, "fp16 hidden 0"},
        {LOOM_F32, 4096, 11008, 32, 8, 128, 0, "fp32"},
    };
    for (size_t i = 0; i < sizeof c / sizeof c[0]; i++) {
        const int got = loom_cuda_decode_step_ok(c[i].act, c[i].hidden, c[i].inter, c[i].nh, c[i].nkv, c[i].hd);
        verdict((got != 0) == c[i].want, "decode_step_ok %s -> %d (want %d)", c[i].what, got, c[i].want);
    }
}

/* ---- the models ---- */

typedef struct {
    const char *name;
    int64_t hidden, inter, n_heads, n_kv_heads, head_dim, n_layers, B, vocab;
    int bias;                     /* b_qkv, b_o, b_gu, b_down (else NULL) */
    int64_t window_layer, window; /* a sliding window on one layer (window_layer -1: none) */
    int64_t max_ctx;
    int n_ctx;
    int32_t ctx[MAX_CTXS]; /* contexts run: the new token at position ctx - 1 */
    int neg_token;         /* the run (index into ctx) whose token is -1; -1: none */
} step_cfg;

static const step_cfg configs[] = {
    {"mha hd64", 136, 200, 4, 4, 64, 2, 16, 389, 0, -1, 0, 2050, 6, {1, 2, 17, 33, 2049, 2050}, -1},
    {"gqa4 hd128 bias", 264, 344, 8, 2, 128, 2, 16, 1001, 1, -1, 0, 64, 4, {1, 2, 17, 33}, -1},
    {"mqa hd8", 72, 104, 8, 1, 8, 3, 4, 389, 0, -1, 0, 2056, 5, {1, 2, 17, 33, 2049}, 2},
    {"gqa3 hd16 window 3 on layer 0", 96, 152, 6, 2, 16, 2, 8, 1001, 0, 0, 3, 40, 5, {1, 2, 4, 17, 33}, -1},
    {"mha hd32 bias", 160, 96, 4, 4, 32, 1, 64, 389, 1, -1, 0, 200, 5, {1, 2, 17, 65, 129}, -1},
    {"mha hd256", 128, 88, 2, 2, 256, 1, 32, 389, 0, -1, 0, 100, 4, {1, 2, 17, 33}, -1},
    {"gqa2 hd64 window 5 on layer 1, bias", 104, 136, 4, 2, 64, 3, 16, 1001, 1, 1, 5, 48, 6, {1, 2, 5, 6, 17, 33}, -1},
};

/* The activations of one path (act, 16-byte aligned) and its fp32 logits. */
enum { A_X, A_X2, A_QKV, A_ATT, A_O, A_H, A_MLP, A_N };

typedef struct {
    void *a[A_N];
    float *logits;
} acts;

typedef struct {
    void *attn_norm, *mlp_norm, *w_qkv, *b_qkv, *w_o, *b_o, *w_gu, *b_gu, *w_down, *b_down;
    void *pool0, *pool_s, *pool_r; /* random K/V (kept), the step's copy, the reference's copy */
    uint16_t *hpool0;              /* pool0 on the host */
} layer;

/* The step's device inputs, one int32 array: token, pos, slot, q_start
 * (2, for the reference attention) and ctx_len. */
enum { IN_TOKEN, IN_POS, IN_SLOT, IN_QSTART, IN_CTX = IN_QSTART + 2, IN_N };

typedef struct {
    const step_cfg *c;
    loom_dtype act;
    int64_t qd, qkv, n_tab, pool_elems;
    size_t elems[A_N];
    layer L[MAX_LAYERS];
    void *embed, *final_norm, *lm_head;
    loom_step_layer *d_layers;
    int32_t *table, *d_table, *d_in;
    float *d_inv;
    acts s, r; /* the step's, the reference's */
    void *scratch, *attn_scratch, *att_tc;
    size_t scratch_bytes, attn_scratch_bytes;
    loom_step step;
} model;

static void acts_make(acts *a, const size_t *elems, int64_t vocab)
{
    for (int i = 0; i < A_N; i++) a->a[i] = dmalloc(2 * elems[i]);
    a->logits = dmalloc(4 * (size_t)vocab);
}

static void acts_free(acts *a)
{
    for (int i = 0; i < A_N; i++) cudaFree(a->a[i]);
    cudaFree(a->logits);
}

static void acts_poison(const model *m, const acts *a)
{
    for (int i = 0; i < A_N; i++) poison(a->a[i], 2 * m->elems[i]);
    poison(a->logits, 4 * (size_t)m->c->vocab);
}

static void model_make(model *m, const step_cfg *c, loom_dtype act)
{
    memset(m, 0, sizeof *m);
    m->c = c;
    m->act = act;
    const int64_t H = c->hidden, I = c->inter, hd = c->head_dim, B = c->B;
    m->qd = c->n_heads * hd;
    m->qkv = (c->n_heads + 2 * c->n_kv_heads) * hd;
    m->n_tab = (c->max_ctx + B - 1) / B;
    const int64_t pool_blocks = m->n_tab + 3;
    m->pool_elems = pool_blocks * 2 * c->n_kv_heads * B * hd;
    const size_t elems[A_N] = {(size_t)H, (size_t)H, (size_t)m->qkv, (size_t)m->qd, (size_t)H, (size_t)I, (size_t)H};
    memcpy(m->elems, elems, sizeof elems);

    /* weights: variance 1/in, so each product stays near unit size; norms near 1 */
    m->embed = drandom(c->vocab * H, 1.0f, 0.0f, act);
    m->final_norm = drandom(H, 0.25f, 1.0f, act);
    m->lm_head = drandom(c->vocab * H, sqrtf(3.0f / (float)H), 0.0f, act);
    loom_step_layer hl[MAX_LAYERS];
    for (int64_t l = 0; l < c->n_layers; l++) {
        layer *L = &m->L[l];
        L->attn_norm = drandom(H, 0.25f, 1.0f, act);
        L->mlp_norm = drandom(H, 0.25f, 1.0f, act);
        L->w_qkv = drandom(m->qkv * H, sqrtf(3.0f / (float)H), 0.0f, act);
        L->w_o = drandom(H * m->qd, sqrtf(3.0f / (float)m->qd), 0.0f, act);
        L->w_gu = drandom(2 * I * H, sqrtf(3.0f / (float)H), 0.0f, act);
        L->w_down = drandom(H * I, sqrtf(3.0f / (float)I), 0.0f, act);
        if (c->bias) {
            L->b_qkv = drandom(m->qkv, 0.25f, 0.0f, act);
            L->b_o = drandom(H, 0.25f, 0.0f, act);
            L->b_gu = drandom(2 * I, 0.25f, 0.0f, act);
            L->b_down = drandom(H, 0.25f, 0.0f, act);
        }
        /* every slot random: positions 0 .. pos - 1 of any run, and blocks no table lists */
        L->hpool0 = xmalloc(2 * (size_t)m->pool_elems);
        fill(L->hpool0, m->pool_elems, 1.5f, 0.0f, act);
        L->pool0 = dmalloc(2 * (size_t)m->pool_elems);
        L->pool_s = dmalloc(2 * (size_t)m->pool_elems);
        L->pool_r = dmalloc(2 * (size_t)m->pool_elems);
        upload(L->pool0, L->hpool0, 2 * (size_t)m->pool_elems);
        hl[l] = (loom_step_layer){
            .attn_norm = L->attn_norm, .mlp_norm = L->mlp_norm, .w_qkv = L->w_qkv, .b_qkv = L->b_qkv, .w_o = L->w_o, .b_o = L->b_o,
            .w_gu = L->w_gu, .b_gu = L->b_gu, .w_down = L->w_down, .b_down = L->b_down, .pool = L->pool_s,
            .window = l == c->window_layer ? c->window : 0,
        };
    }
    m->d_layers = dmalloc((size_t)c->n_layers * sizeof hl[0]);
    upload(m->d_layers, hl, (size_t)c->n_layers * sizeof hl[0]);

    /* the block table: the first n_tab of a shuffle of the pool's blocks, never the identity */
    int32_t *perm = xmalloc(4 * (size_t)pool_blocks);
    for (int64_t i = 0; i < pool_blocks; i++) perm[i] = (int32_t)i;
    for (int64_t i = pool_blocks - 1; i > 0; i--) {
        const int64_t j = rndu((uint32_t)(i + 1));
        const int32_t t = perm[i];
        perm[i] = perm[j], perm[j] = t;
    }
    if (perm[0] == 0) perm[0] = perm[1], perm[1] = 0;
    m->table = perm;
    m->d_table = dmalloc(4 * (size_t)m->n_tab);
    upload(m->d_table, perm, 4 * (size_t)m->n_tab);

    float *inv = xmalloc(4 * (size_t)(hd / 2));
    for (int64_t i = 0; i < hd / 2; i++) inv[i] = 1.0f / powf(10000.0f, (float)(2 * i) / (float)hd);
    m->d_inv = dmalloc(4 * (size_t)(hd / 2));
    upload(m->d_inv, inv, 4 * (size_t)(hd / 2));
    free(inv);
    m->d_in = dmalloc(4 * IN_N);

    acts_make(&m->s, m->elems, c->vocab);
    acts_make(&m->r, m->elems, c->vocab);
    m->scratch_bytes = loom_cuda_decode_step_scratch_bytes(c->n_heads, hd, c->max_ctx);
    m->scratch = dmalloc(m->scratch_bytes);
    CUDA_CHECK(cudaMemset(m->scratch, 0, m->scratch_bytes)); /* once: the barrier and the counters start at 0 */
    m->attn_scratch_bytes = loom_cuda_attention_scratch_bytes(1, c->n_heads, hd, c->max_ctx);
    m->attn_scratch = dmalloc(m->attn_scratch_bytes);
    m->att_tc = dmalloc(2 * (size_t)m->qd);

    m->step = (loom_step){
        .layers = m->d_layers, .n_layers = c->n_layers, .hidden = H, .inter = I, .n_heads = c->n_heads,
        .n_kv_heads = c->n_kv_heads, .head_dim = hd, .tokens_per_block = B, .vocab = c->vocab, .eps = EPS,
        .scale = 1.0f / sqrtf((float)hd), .embed = m->embed, .final_norm = m->final_norm, .lm_head = m->lm_head,
        .token = m->d_in + IN_TOKEN, .pos = m->d_in + IN_POS, .slot = m->d_in + IN_SLOT, .block_table = m->d_table,
        .inv_freq = m->d_inv, .x = m->s.a[A_X], .x2 = m->s.a[A_X2], .qkv = m->s.a[A_QKV], .att = m->s.a[A_ATT],
        .o_out = m->s.a[A_O], .h = m->s.a[A_H], .mlp = m->s.a[A_MLP], .logits = m->s.logits, .scratch = m->scratch,
        .scratch_bytes = m->scratch_bytes, .max_ctx = c->max_ctx,
    };
}

static void model_free(model *m)
{
    for (int64_t l = 0; l < m->c->n_layers; l++) {
        layer *L = &m->L[l];
        cudaFree(L->attn_norm); cudaFree(L->mlp_norm); cudaFree(L->w_qkv); cudaFree(L->w_o); cudaFree(L->w_gu);
        cudaFree(L->w_down); cudaFree(L->b_qkv); cudaFree(L->b_o); cudaFree(L->b_gu); cudaFree(L->b_down);
        cudaFree(L->pool0); cudaFree(L->pool_s); cudaFree(L->pool_r);
        free(L->hpool0);
    }
    cudaFree(m->embed); cudaFree(m->final_norm); cudaFree(m->lm_head); cudaFree(m->d_layers);
    cudaFree(m->d_table); cudaFree(m->d_in); cudaFree(m->d_inv); cudaFree(m->scratch); cudaFree(m->attn_scratch);
    cudaFree(m->att_tc);
    acts_free(&m->s);
    acts_free(&m->r);
    free(m->table);
}

/* Every layer's pool of one path (step 1: the step's) back to the random K/V. */
static void pools_restore(const model *m, int step)
{
    for (int64_t l = 0; l < m->c->n_layers; l++)
        CUDA_CHECK(cudaMemcpy(step ? m->L[l].pool_s : m->L[l].pool_r, m->L[l].pool0, 2 * (size_t)m->pool_elems,
                              cudaMemcpyDeviceToDevice));
}

/* ---- the reference: the fused one-kernel-per-op step ---- */

/* Whether gpu_model.c runs loom_cuda_attention (tensor cores, the softmax
 * weights rounded to act before P V) for this head_dim; else it runs
 * loom_cuda_attention_generic (fp32 weights, as the step's attention). */
static int tc_attention(const model *m) { return m->c->head_dim == 64 || m->c->head_dim == 128; }

/* Layer l's attention as gpu_model.c runs it (tc 1), or with
 * loom_cuda_attention_generic whatever head_dim (tc 0): q from qkv, keys
 * 0 .. ctx_len - 1 of pool, into out. */
static int ref_attention(const model *m, int64_t l, int tc, void *out, const void *qkv, const void *pool, cudaStream_t st)
{
    const step_cfg *c = m->c;
    const int64_t hd = c->head_dim, window = l == c->window_layer ? c->window : 0;
    const float scale = 1.0f / sqrtf((float)hd);
    const int32_t *in = m->d_in;
    if (tc && tc_attention(m))
        return loom_cuda_attention(out, qkv, m->qkv, pool, m->act, m->act, in + IN_QSTART, in + IN_CTX, m->d_table, m->n_tab, 1, 1, c->max_ctx,
                                   c->n_heads, c->n_kv_heads, hd, c->B, window, scale, -1, m->attn_scratch, m->attn_scratch_bytes, st);
    return loom_cuda_attention_generic(out, qkv, m->qkv, pool, m->act, m->act, in + IN_QSTART, in + IN_CTX, m->d_table, m->n_tab, 1, 1, c->n_heads,
                                       c->n_kv_heads, hd, c->B, window, scale, st);
}

/* gpu_model.c's fused_layers() and its one-token lm_head on the reference's
 * buffers and pools; 0 or the first failing call's status. */
static int ref_step(const model *m, cudaStream_t st)
{
    const step_cfg *c = m->c;
    const loom_dtype act = m->act;
    const acts *r = &m->r;
    const int64_t H = c->hidden, I = c->inter, hd = c->head_dim;
    const int32_t *in = m->d_in;
    int rc = 0;
    for (int64_t l = 0; l < c->n_layers && !rc; l++) {
        const layer *L = &m->L[l];
        const loom_gemv_pre pre_attn = {.kind = LOOM_GEMV_ADD_RMSNORM, .delta = l ? r->a[A_MLP] : NULL, .x_out = r->a[A_X2],
                                        .gamma = L->attn_norm, .eps = EPS, .row = l ? NULL : in + IN_TOKEN};
        const loom_gemv_rope rope = {.pos = in + IN_POS, .slot = in + IN_SLOT, .inv_freq = m->d_inv, .pool = L->pool_r,
                                     .n_heads = c->n_heads, .n_kv_heads = c->n_kv_heads, .head_dim = hd, .tokens_per_block = c->B};
        if ((rc = loom_cuda_gemv1_rope(r->a[A_QKV], l ? r->a[A_X] : m->embed, L->w_qkv, L->b_qkv, act, H, &pre_attn, &rope, st)))
            break;
        if ((rc = ref_attention(m, l, 1, r->a[A_ATT], r->a[A_QKV], L->pool_r, st))) break;
        if ((rc = loom_cuda_gemv1(r->a[A_O], r->a[A_ATT], L->w_o, L->b_o, act, m->qd, H, NULL, st))) break;
        const loom_gemv_pre pre_mlp = {.kind = LOOM_GEMV_ADD_RMSNORM, .delta = r->a[A_O], .x_out = r->a[A_X], .gamma = L->mlp_norm,
                                       .eps = EPS, .row = NULL};
        if ((rc = loom_cuda_gemv1_glu(r->a[A_H], r->a[A_X2], L->w_gu, L->b_gu, act, H, I, &pre_mlp, st))) break;
        rc = loom_cuda_gemv1(r->a[A_MLP], r->a[A_H], L->w_down, L->b_down, act, I, H, NULL, st);
    }
    if (rc) return rc;
    const loom_gemv_pre pre = {.kind = LOOM_GEMV_ADD_RMSNORM, .delta = r->a[A_MLP], .x_out = NULL, .gamma = m->final_norm, .eps = EPS,
                               .row = NULL};
    return loom_cuda_gemv1_f32(r->logits, r->a[A_X], m->lm_head, NULL, act, H, c->vocab, &pre, st);
}

/* ---- one step's results on the host ---- */

typedef struct {
    float *logits;
    uint16_t *x, *mlp, *pool[MAX_LAYERS];
} outputs;

static void outputs_make(const model *m, outputs *o)
{
    o->logits = xmalloc(4 * (size_t)m->c->vocab);
    o->x = xmalloc(2 * (size_t)m->c->hidden);
    o->mlp = xmalloc(2 * (size_t)m->c->hidden);
    for (int64_t l = 0; l < m->c->n_layers; l++) o->pool[l] = xmalloc(2 * (size_t)m->pool_elems);
}

static void outputs_free(const model *m, outputs *o)
{
    free(o->logits); free(o->x); free(o->mlp);
    for (int64_t l = 0; l < m->c->n_layers; l++) free(o->pool[l]);
}

static void outputs_grab(const model *m, int step, outputs *o)
{
    const acts *a = step ? &m->s : &m->r;
    download(o->logits, a->logits, 4 * (size_t)m->c->vocab);
    download(o->x, a->a[A_X], 2 * (size_t)m->c->hidden);
    download(o->mlp, a->a[A_MLP], 2 * (size_t)m->c->hidden);
    for (int64_t l = 0; l < m->c->n_layers; l++)
        download(o->pool[l], step ? m->L[l].pool_s : m->L[l].pool_r, 2 * (size_t)m->pool_elems);
}

/* 1 when b is bitwise a (logits, x, mlp, every pool); else 0, with what differs in what. */
static int outputs_same(const model *m, const outputs *a, const outputs *b, char *what, size_t cap)
{
    size_t at = 0;
    what[0] = 0;
#define DIFFERS(name) at += (size_t)snprintf(what + at, at < cap ? cap - at : 0, "%s%s", at ? ", " : "", name)
    if (memcmp(a->logits, b->logits, 4 * (size_t)m->c->vocab)) DIFFERS("logits");
    if (memcmp(a->x, b->x, 2 * (size_t)m->c->hidden)) DIFFERS("x");
    if (memcmp(a->mlp, b->mlp, 2 * (size_t)m->c->hidden)) DIFFERS("mlp");
    for (int64_t l = 0; l < m->c->n_layers; l++)
        if (memcmp(a->pool[l], b->pool[l], 2 * (size_t)m->pool_elems)) {
            char name[48];
            snprintf(name, sizeof name, "pool of layer %lld", (long long)l);
            DIFFERS(name);
        }
#undef DIFFERS
    return at == 0;
}

/* ---- the graph: the step (and the poisoning of its outputs) captured once per model ---- */

/* 0 and *exec, or the error of the step's call or of the capture. */
static cudaError_t step_capture(const model *m, cudaStream_t st, cudaGraphExec_t *exec)
{
    cudaGraph_t graph;
    *exec = NULL;
    CUDA_CHECK(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
    for (int i = 0; i < A_N; i++) CUDA_CHECK(cudaMemsetAsync(m->s.a[i], 0xff, 2 * m->elems[i], st));
    CUDA_CHECK(cudaMemsetAsync(m->s.logits, 0xff, 4 * (size_t)m->c->vocab, st));
    const int rc = loom_cuda_decode_step(&m->step, m->act, st);
    cudaError_t e = cudaStreamEndCapture(st, &graph);
    if (rc) {
        if (e == cudaSuccess) cudaGraphDestroy(graph);
        return (cudaError_t)rc;
    }
    if (e != cudaSuccess) return e;
    e = cudaGraphInstantiate(exec, graph, 0);
    cudaGraphDestroy(graph);
    if (e != cudaSuccess) *exec = NULL;
    return e;
}

/* ---- one context ---- */

/* logits, x and mlp of the step against a reference's: within tol, every
 * value finite, bitwise at context 1 (one key: the attention output is its v). */
static void check_outputs(const model *m, const outputs *got, const outputs *ref, int32_t ctx, double tol, const char *tag,
                          const char *against)
{
    const loom_dtype act = m->act;
    const int64_t H = m->c->hidden, V = m->c->vocab;
    const double el = rel_l2_f32(got->logits, ref->logits, V);
    int64_t dl = 0, dx = 0, dm = 0, bad = 0, bad_ref = 0;
    for (int64_t i = 0; i < V; i++) {
        dl += memcmp(&got->logits[i], &ref->logits[i], sizeof(float)) != 0;
        bad += !isfinite(got->logits[i]);
        bad_ref += !isfinite(ref->logits[i]);
    }
    const double ex = rel_l2_act(got->x, ref->x, act, H, &dx), em = rel_l2_act(got->mlp, ref->mlp, act, H, &dm);
    bad += nonfinite_act(got->x, act, H) + nonfinite_act(got->mlp, act, H);
    bad_ref += nonfinite_act(ref->x, act, H) + nonfinite_act(ref->mlp, act, H);
    const int one_key = ctx == 1, bitwise = dl == 0 && dx == 0 && dm == 0;
    verdict(el <= tol && ex <= tol && em <= tol && bad == 0 && bad_ref == 0 && (!one_key || bitwise),
            "%s vs %s: logits rel_l2 %.3e (%lld of %lld differ bitwise), x %.3e (%lld), mlp %.3e (%lld) (tol %.0e)%s%s%s", tag, against,
            el, (long long)dl, (long long)V, ex, (long long)dx, em, (long long)dm, tol, one_key ? ", bitwise wanted at context 1" : "",
            bad ? ", NON-FINITE step outputs" : "", bad_ref ? ", NON-FINITE reference outputs" : "");
}

/* The new token's K and V rows in every layer's pool against a reference's
 * (bitwise in layer 0 and at context 1, else within tol), and every other
 * element of both pools still the random K/V. */
static void check_pools(const model *m, const outputs *got, const outputs *ref, int64_t pos, double tol, const char *tag,
                        const char *against)
{
    const step_cfg *c = m->c;
    const loom_dtype act = m->act;
    const int64_t B = c->B, hd = c->head_dim, nkv = c->n_kv_heads, b = m->table[pos / B], j = pos % B;
    unsigned char *mark = xmalloc((size_t)m->pool_elems);
    int ok = 1;
    int64_t diff0 = 0, diff_later = 0, stray = 0;
    double err_later = 0;
    for (int64_t l = 0; l < c->n_layers; l++) {
        const uint16_t *gp = got->pool[l], *rp = ref->pool[l], *p0 = m->L[l].hpool0;
        memset(mark, 0, (size_t)m->pool_elems);
        double num = 0, den = 0;
        int64_t diff = 0, bad = 0, stray_s = 0, stray_r = 0;
        for (int64_t h = 0; h < nkv; h++)
            for (int64_t half = 0; half < 2; half++)
                for (int64_t d = 0; d < hd; d++) {
                    const int64_t i = (((b * 2 + half) * nkv + h) * B + j) * hd + d;
                    const double r = from_act(rp[i], act), e = (double)from_act(gp[i], act) - r;
                    mark[i] = 1;
                    num += e * e;
                    den += r * r;
                    diff += gp[i] != rp[i];
                    bad += !isfinite(from_act(gp[i], act));
                }
        for (int64_t i = 0; i < m->pool_elems; i++) {
            if (mark[i]) continue;
            stray_s += gp[i] != p0[i];
            stray_r += rp[i] != p0[i];
        }
        const double err = den > 0 ? sqrt(num / den) : sqrt(num);
        const int bitwise = l == 0 || pos == 0;
        const int lok = bad == 0 && stray_s == 0 && stray_r == 0 && (bitwise ? diff == 0 : err <= tol);
        if (!lok)
            printf("     layer %lld: slot rel_l2 %.3e, %lld of %lld differ bitwise%s, %lld non-finite; "
                   "%lld (step) and %lld (reference) elements changed outside the slot\n",
                   (long long)l, err, (long long)diff, (long long)(2 * nkv * hd), bitwise ? " (bitwise wanted)" : "", (long long)bad,
                   (long long)stray_s, (long long)stray_r);
        ok &= lok;
        if (l == 0) diff0 = diff;
        else {
            diff_later += diff;
            if (!(err <= err_later)) err_later = err; /* NaN sticks */
        }
        stray += stray_s + stray_r;
    }
    free(mark);
    char later[128] = "";
    if (c->n_layers > 1)
        snprintf(later, sizeof later, "; layers 1..%lld rel_l2 <= %.3e (%lld differ bitwise; tol %.0e)%s", (long long)(c->n_layers - 1),
                 err_later, (long long)diff_later, tol, pos == 0 ? ", bitwise wanted" : "");
    verdict(ok, "%s vs %s: new token's K/V at block %lld + %lld: layer 0 %lld of %lld differ bitwise%s; rest of the pools %s", tag,
            against, (long long)b, (long long)j, (long long)diff0, (long long)(2 * nkv * hd), later, stray ? "CHANGED" : "unchanged");
}

/* a's n act values against b's: "bitwise" or how many differ. */
static const char *same_act(const uint16_t *a, const uint16_t *b, int64_t n, int *ok, char *buf, size_t cap)
{
    int64_t diff = 0;
    for (int64_t i = 0; i < n; i++) diff += a[i] != b[i];
    *ok &= diff == 0;
    if (!diff) return "bitwise";
    snprintf(buf, cap, "%lld of %lld DIFFER", (long long)diff, (long long)n);
    return buf;
}

/* The last layer's phases and lm_head recomputed by the separate kernels
 * from the step's own inputs, which its buffers still hold (x2: the
 * residual the QKV GEMV normalized; qkv, att, o_out, x, h, mlp, logits: that
 * layer's and the step's outputs; its pool): every GEMV phase bitwise, the
 * attention within tol_att_gen of loom_cuda_attention_generic (and
 * tol_att_tc of loom_cuda_attention for head_dim 64, 128). Uses the
 * reference's buffers. */
static void check_last_layer(const model *m, const char *tag)
{
    const step_cfg *c = m->c;
    const loom_dtype act = m->act;
    const int64_t l = c->n_layers - 1, H = c->hidden, I = c->inter, V = c->vocab;
    const layer *L = &m->L[l];
    const acts *s = &m->s, *r = &m->r;
    const int32_t *in = m->d_in;
    const int tc = tc_attention(m);
    pools_restore(m, 0);
    acts_poison(m, r);
    poison(m->att_tc, 2 * (size_t)m->qd);
    /* x2 is the rounded sum already: without delta the norm sees the same vector */
    const loom_gemv_pre pre_attn = {.kind = LOOM_GEMV_ADD_RMSNORM, .delta = NULL, .x_out = NULL, .gamma = L->attn_norm, .eps = EPS,
                                    .row = NULL};
    const loom_gemv_rope rope = {.pos = in + IN_POS, .slot = in + IN_SLOT, .inv_freq = m->d_inv, .pool = L->pool_r,
                                 .n_heads = c->n_heads, .n_kv_heads = c->n_kv_heads, .head_dim = c->head_dim, .tokens_per_block = c->B};
    const loom_gemv_pre pre_mlp = {.kind = LOOM_GEMV_ADD_RMSNORM, .delta = s->a[A_O], .x_out = r->a[A_X], .gamma = L->mlp_norm,
                                   .eps = EPS, .row = NULL};
    const loom_gemv_pre pre_lm = {.kind = LOOM_GEMV_ADD_RMSNORM, .delta = s->a[A_MLP], .x_out = NULL, .gamma = m->final_norm, .eps = EPS,
                                  .row = NULL};
    int rc = loom_cuda_gemv1_rope(r->a[A_QKV], s->a[A_X2], L->w_qkv, L->b_qkv, act, H, &pre_attn, &rope, NULL);
    if (!rc) rc = ref_attention(m, l, 0, r->a[A_ATT], s->a[A_QKV], L->pool_s, NULL);
    if (!rc && tc) rc = ref_attention(m, l, 1, m->att_tc, s->a[A_QKV], L->pool_s, NULL);
    if (!rc) rc = loom_cuda_gemv1(r->a[A_O], s->a[A_ATT], L->w_o, L->b_o, act, m->qd, H, NULL, NULL);
    if (!rc) rc = loom_cuda_gemv1_glu(r->a[A_H], s->a[A_X2], L->w_gu, L->b_gu, act, H, I, &pre_mlp, NULL);
    if (!rc) rc = loom_cuda_gemv1(r->a[A_MLP], s->a[A_H], L->w_down, L->b_down, act, I, H, NULL, NULL);
    if (!rc) rc = loom_cuda_gemv1_f32(r->logits, s->a[A_X], m->lm_head, NULL, act, H, V, &pre_lm, NULL);
    CUDA_CHECK(cudaDeviceSynchronize());
    if (rc) {
        verdict(0, "%s: last layer from the step's inputs: a separate kernel returned %d (%s)", tag, rc, cudaGetErrorString((cudaError_t)rc));
        (void)cudaGetLastError();
        return;
    }
    const size_t n[A_N] = {m->elems[A_X], m->elems[A_X2], m->elems[A_QKV], m->elems[A_ATT], m->elems[A_O], m->elems[A_H], m->elems[A_MLP]};
    uint16_t *sa[A_N], *ra[A_N];
    for (int i = 0; i < A_N; i++) {
        sa[i] = xmalloc(2 * n[i]);
        ra[i] = xmalloc(2 * n[i]);
        download(sa[i], s->a[i], 2 * n[i]);
        download(ra[i], r->a[i], 2 * n[i]);
    }
    uint16_t *atc = xmalloc(2 * (size_t)m->qd), *ps = xmalloc(2 * (size_t)m->pool_elems), *pr = xmalloc(2 * (size_t)m->pool_elems);
    float *ls = xmalloc(4 * (size_t)V), *lr = xmalloc(4 * (size_t)V);
    download(atc, m->att_tc, 2 * (size_t)m->qd);
    download(ps, L->pool_s, 2 * (size_t)m->pool_elems);
    download(pr, L->pool_r, 2 * (size_t)m->pool_elems);
    download(ls, s->logits, 4 * (size_t)V);
    download(lr, r->logits, 4 * (size_t)V);

    int ok = 1;
    char b_qkv[64], b_o[64], b_x[64], b_h[64], b_mlp[64], b_lm[64], b_tc[96] = "";
    const char *w_qkv = same_act(sa[A_QKV], ra[A_QKV], m->qkv, &ok, b_qkv, sizeof b_qkv);
    const char *w_o = same_act(sa[A_O], ra[A_O], H, &ok, b_o, sizeof b_o);
    const char *w_x = same_act(sa[A_X], ra[A_X], H, &ok, b_x, sizeof b_x);
    const char *w_h = same_act(sa[A_H], ra[A_H], I, &ok, b_h, sizeof b_h);
    const char *w_mlp = same_act(sa[A_MLP], ra[A_MLP], H, &ok, b_mlp, sizeof b_mlp);
    const int pool_same = memcmp(ps, pr, 2 * (size_t)m->pool_elems) == 0;
    int64_t logit_diff = 0;
    for (int64_t i = 0; i < V; i++) logit_diff += memcmp(&ls[i], &lr[i], sizeof(float)) != 0;
    if (logit_diff) snprintf(b_lm, sizeof b_lm, "%lld of %lld DIFFER", (long long)logit_diff, (long long)V);
    int64_t dg = 0, dt = 0;
    const double eg = rel_l2_act(sa[A_ATT], ra[A_ATT], act, m->qd, &dg);
    const double et = tc ? rel_l2_act(sa[A_ATT], atc, act, m->qd, &dt) : 0.0;
    if (tc) snprintf(b_tc, sizeof b_tc, ", %.3e (%lld) vs loom_cuda_attention (tol %.0e)", et, (long long)dt, tol_att_tc(act));
    ok &= pool_same && logit_diff == 0 && eg <= tol_att_gen(act) && et <= tol_att_tc(act);
    verdict(ok, "%s: layer %lld from the step's own inputs: qkv %s, pool %s; att rel_l2 %.3e (%lld of %lld differ bitwise) vs "
            "attention_generic (tol %.0e)%s; o_out %s, x %s, h %s, mlp %s, logits %s",
            tag, (long long)l, w_qkv, pool_same ? "bitwise" : "DIFFERS", eg, (long long)dg, (long long)m->qd, tol_att_gen(act), b_tc, w_o,
            w_x, w_h, w_mlp, logit_diff ? b_lm : "bitwise");
    for (int i = 0; i < A_N; i++) free(sa[i]), free(ra[i]);
    free(atc); free(ps); free(pr); free(ls); free(lr);
}

/* The step at context ctx[ci] (a new token at position ctx - 1) against the
 * composed step; its last layer against the separate kernels on its own
 * inputs; then again from the same inputs; then (graph not NULL) as a replay
 * of the captured graph on st. */
static void run_ctx(const model *m, int ci, cudaGraphExec_t graph, cudaStream_t st)
{
    const step_cfg *c = m->c;
    const loom_dtype act = m->act;
    const int64_t B = c->B;
    const int32_t ctx = c->ctx[ci], pos = ctx - 1;
    const int32_t token = ci == c->neg_token ? -1 : (int32_t)rndu((uint32_t)c->vocab);
    int32_t in[IN_N];
    in[IN_TOKEN] = token;
    in[IN_POS] = pos;
    in[IN_SLOT] = (int32_t)(m->table[pos / B] * B + pos % B);
    in[IN_QSTART] = 0;
    in[IN_QSTART + 1] = 1;
    in[IN_CTX] = ctx;
    upload(m->d_in, in, sizeof in);
    char tag[160];
    snprintf(tag, sizeof tag, "step %s %s ctx=%d token=%d", c->name, loom_dtype_name(act), (int)ctx, (int)token);
    const char *against = tc_attention(m) ? "composed (loom_cuda_attention)" : "composed (attention_generic)";

    outputs ref, got, again;
    outputs_make(m, &ref);
    outputs_make(m, &got);
    outputs_make(m, &again);
    pools_restore(m, 0);
    pools_restore(m, 1);
    acts_poison(m, &m->r);
    acts_poison(m, &m->s);
    const int rc_ref = ref_step(m, NULL);
    CUDA_CHECK(cudaDeviceSynchronize());
    const int rc = loom_cuda_decode_step(&m->step, act, NULL);
    CUDA_CHECK(cudaDeviceSynchronize());
    if (rc || rc_ref) {
        verdict(0, "%s: %s returned %d (%s)", tag, rc ? "loom_cuda_decode_step" : "the reference", rc ? rc : rc_ref,
                cudaGetErrorString((cudaError_t)(rc ? rc : rc_ref)));
        (void)cudaGetLastError();
        goto done;
    }
    outputs_grab(m, 0, &ref);
    outputs_grab(m, 1, &got);
    check_outputs(m, &got, &ref, ctx, tol_for(act), tag, against);
    check_pools(m, &got, &ref, pos, tol_for(act), tag, against);
    check_last_layer(m, tag);

    { /* the same inputs again: bitwise the same */
        char what[256];
        pools_restore(m, 1);
        acts_poison(m, &m->s);
        const int rc2 = loom_cuda_decode_step(&m->step, act, NULL);
        CUDA_CHECK(cudaDeviceSynchronize());
        outputs_grab(m, 1, &again);
        const int same = rc2 == 0 && outputs_same(m, &got, &again, what, sizeof what);
        verdict(same, "%s: a second launch from the same inputs %s%s", tag,
                rc2 ? "FAILED: " : same ? "bitwise the first" : "DIFFERS in: ", rc2 ? cudaGetErrorString((cudaError_t)rc2) : what);
    }
    if (graph) { /* the graph (it poisons the outputs itself) on a non-default stream */
        char what[256];
        pools_restore(m, 1);
        CUDA_CHECK(cudaDeviceSynchronize());
        CUDA_CHECK(cudaGraphLaunch(graph, st));
        CUDA_CHECK(cudaStreamSynchronize(st));
        outputs_grab(m, 1, &again);
        const int same = outputs_same(m, &got, &again, what, sizeof what);
        verdict(same, "%s: CUDA graph replay %s%s", tag, same ? "bitwise the plain launch" : "DIFFERS from the plain launch in: ", what);
    }
done:
    outputs_free(m, &ref);
    outputs_free(m, &got);
    outputs_free(m, &again);
}

/* ---- bad arguments ---- */

/* Each refused with a nonzero status and nothing launched (logits, x2 and
 * the pools untouched, no CUDA error pending); then the valid call on the
 * same buffers writes every logit. */
static void check_bad(const model *m)
{
    const loom_dtype act = m->act;
    const int64_t V = m->c->vocab, H = m->c->hidden;
    enum { N_BAD = 10 };
    loom_step s[N_BAD + 1];
    loom_dtype a[N_BAD + 1];
    const char *what[N_BAD + 1] = {"step NULL", "n_layers 0", "layers NULL", "head_dim 12", "6 heads over 4 kv heads",
                                   "scratch_bytes 4 short", "act fp32", "x 2 bytes off 16", "vocab 0", "max_ctx 0",
                                   "valid call (control)"};
    for (int i = 0; i <= N_BAD; i++) s[i] = m->step, a[i] = act;
    s[1].n_layers = 0;
    s[2].layers = NULL;
    s[3].head_dim = 12;
    s[4].n_heads = 6, s[4].n_kv_heads = 4;
    s[5].scratch_bytes = m->scratch_bytes - 4;
    a[6] = LOOM_F32;
    s[7].x = (char *)m->s.a[A_X] + 2;
    s[8].vocab = 0;
    s[9].max_ctx = 0;
    float *hl = xmalloc(4 * (size_t)V);
    uint16_t *hx2 = xmalloc(2 * (size_t)H), *hp = xmalloc(2 * (size_t)m->pool_elems);
    int32_t in[IN_N] = {5, 3, 0, 0, 1, 4};
    in[IN_SLOT] = m->table[0] * (int32_t)m->c->B + 3;
    upload(m->d_in, in, sizeof in);
    for (int i = 0; i <= N_BAD; i++) {
        const int control = i == N_BAD;
        pools_restore(m, 1);
        acts_poison(m, &m->s);
        const int rc = loom_cuda_decode_step(i == 0 ? NULL : &s[i], a[i], NULL);
        CUDA_CHECK(cudaDeviceSynchronize());
        const cudaError_t last = cudaGetLastError();
        download(hl, m->s.logits, 4 * (size_t)V);
        download(hx2, m->s.a[A_X2], 2 * (size_t)H);
        download(hp, m->L[0].pool_s, 2 * (size_t)m->pool_elems);
        int64_t wl = 0, wx = 0;
        for (int64_t j = 0; j < V; j++) {
            uint32_t u;
            memcpy(&u, &hl[j], sizeof u);
            wl += u != 0xffffffffu;
        }
        for (int64_t j = 0; j < H; j++) wx += hx2[j] != 0xffffu;
        const int pool_same = memcmp(hp, m->L[0].hpool0, 2 * (size_t)m->pool_elems) == 0;
        if (control)
            verdict(rc == 0 && last == cudaSuccess && wl == V && wx == H && !pool_same,
                    "decode_step %s %s -> %d; %lld of %lld logits, %lld of %lld of x2 written, layer 0's pool %s", loom_dtype_name(act),
                    what[i], rc, (long long)wl, (long long)V, (long long)wx, (long long)H, pool_same ? "NOT WRITTEN" : "written");
        else
            verdict(rc != 0 && last == cudaSuccess && wl == 0 && wx == 0 && pool_same,
                    "decode_step %s %s -> %d (%s; want nonzero); %lld logits, %lld of x2 written, layer 0's pool %s%s", loom_dtype_name(act),
                    what[i], rc, rc ? cudaGetErrorString((cudaError_t)rc) : "success", (long long)wl, (long long)wx,
                    pool_same ? "untouched" : "CHANGED", last == cudaSuccess ? "" : ", CUDA ERROR PENDING");
    }
    free(hl); free(hx2); free(hp);
}

int main(void)
{
    if (cuda_test_skip_without_device()) return 77;
    const char *seed_env = getenv("LOOM_TEST_SEED");
    const uint64_t seed = seed_env ? strtoull(seed_env, NULL, 10) : 20250611;
    rng = seed ? seed : 1;
    printf("seed %llu\n", (unsigned long long)seed);

    check_step_ok();

    cudaStream_t st;
    CUDA_CHECK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
    const loom_dtype acts_dt[] = {LOOM_F16, LOOM_BF16};
    for (size_t i = 0; i < sizeof configs / sizeof configs[0]; i++)
        for (int a = 0; a < 2; a++) {
            const step_cfg *c = &configs[i];
            const char *dn = loom_dtype_name(acts_dt[a]);
            if (!loom_cuda_decode_step_ok(acts_dt[a], c->hidden, c->inter, c->n_heads, c->n_kv_heads, c->head_dim)) {
                verdict(0, "step %s %s: loom_cuda_decode_step_ok refuses the shapes", c->name, dn);
                continue;
            }
            model m;
            model_make(&m, c, acts_dt[a]);
            if (i == 0) check_bad(&m); /* (its control call is the process's first launch of the step) */
            cudaGraphExec_t graph;
            const cudaError_t e = step_capture(&m, st, &graph);
            if (e != cudaSuccess) (void)cudaGetLastError();
            verdict(e == cudaSuccess, "step %s %s: captured into a CUDA graph on a non-default stream%s%s", c->name, dn,
                    e == cudaSuccess ? "" : ": FAILED: ", e == cudaSuccess ? "" : cudaGetErrorString(e));
            for (int k = 0; k < c->n_ctx; k++) run_ctx(&m, k, graph, st);
            if (graph) CUDA_CHECK(cudaGraphExecDestroy(graph));
            model_free(&m);
        }
    CUDA_CHECK(cudaStreamDestroy(st));

    printf("%d failure(s)\n", failures);
    return failures ? 1 : 0;
}
