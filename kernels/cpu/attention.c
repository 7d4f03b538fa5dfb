/* CPU attention with online softmax (flash style) over a paged KV cache: for
 * each query, keys are visited in chunks of ATT_KB counted from the window's
 * first key; a chunk's scores go to the stack, the running max/sum/
 * accumulator are rescaled once per chunk. A chunk may span blocks: its row
 * offsets are gathered first (walking block and slot, no division per key),
 * then every inner loop runs over one contiguous head_dim row. Chunking never
 * depends on the block size, so a paged cache gives bitwise the result of a
 * contiguous one (which is the one-block case of the same kernel). Query
 * heads that share a kv head are done together (up to ATT_HG) so each K/V row
 * is loaded once for all of them. Work is split over (query, kv head, head
 * group) tasks. */
#include "attention.h"

#include <assert.h>
#include <math.h>

enum {
    ATT_KB = 64, /* keys per chunk at most (scores on the stack) */
    ATT_HG = 8,  /* query heads per task, all on one kv head */
};

static inline float dot(const float *restrict a, const float *restrict b, int64_t n)
{
    float s = 0.0f;
#pragma omp simd reduction(+ : s)
    for (int64_t i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

/* Where K/V rows live: position j at table[j / B] * block_stride + (j % B) * row_stride. */
typedef struct att_kv {
    const float *k, *v;
    const int32_t *table;
    int64_t B, block_stride, row_stride; /* tokens per block; strides in floats */
} att_kv;

/* Query i, query heads h0 .. h0+nh-1 (all reading kv head g), keys lo .. p. */
static void att_task(float *out, const float *q, const att_kv *kv, int64_t g, int64_t head_dim,
                     int64_t p, int64_t lo, int64_t h0, int64_t nh, float scale)
{
    float acc[ATT_HG][LOOM_CPU_ATTN_MAX_HEAD_DIM];
    float s[ATT_HG][ATT_KB];
    float m[ATT_HG], l[ATT_HG];
    const float *qh[ATT_HG];
    for (int64_t a = 0; a < nh; a++) {
        qh[a] = q + (h0 + a) * head_dim;
        m[a] = -INFINITY;
        l[a] = 0.0f;
        for (int64_t d = 0; d < head_dim; d++) acc[a][d] = 0.0f;
    }
    const int64_t B = kv->B, rs = kv->row_stride;
    int64_t blk = lo / B, slot = lo % B; /* table index and slot of the next key: one division per task */
    int64_t off[ATT_KB];                 /* the chunk's K/V row offsets */
    for (int64_t j0 = lo; j0 <= p; j0 += ATT_KB) {
        const int64_t nb = p + 1 - j0 < ATT_KB ? p + 1 - j0 : ATT_KB;
        for (int64_t j = 0; j < nb; j++) {
            off[j] = (int64_t)kv->table[blk] * kv->block_stride + slot * rs + g * head_dim;
            if (++slot == B) {
                slot = 0;
                blk++;
            }
        }
        for (int64_t j = 0; j < nb; j++) {
            const float *kj = kv->k + off[j];
            for (int64_t a = 0; a < nh; a++) s[a][j] = dot(qh[a], kj, head_dim) * scale;
        }
        for (int64_t a = 0; a < nh; a++) {
            float bm = m[a];
            for (int64_t j = 0; j < nb; j++) bm = s[a][j] > bm ? s[a][j] : bm;
            /* bm is finite: every chunk holds at least one real score */
            const float corr = expf(m[a] - bm); /* 0 on the first chunk */
            float sum = 0.0f;
            for (int64_t j = 0; j < nb; j++) {
                s[a][j] = expf(s[a][j] - bm);
                sum += s[a][j];
            }
            l[a] = l[a] * corr + sum;
            m[a] = bm;
            if (corr != 1.0f) {
#pragma omp simd
                for (int64_t d = 0; d < head_dim; d++) acc[a][d] *= corr;
            }
        }
        for (int64_t j = 0; j < nb; j++) {
            const float *restrict vj = kv->v + off[j];
            for (int64_t a = 0; a < nh; a++) {
                float *restrict ac = acc[a];
                const float pj = s[a][j];
#pragma omp simd
                for (int64_t d = 0; d < head_dim; d++) ac[d] += pj * vj[d];
            }
        }
    }
    for (int64_t a = 0; a < nh; a++) {
        const float inv = 1.0f / l[a];
        float *o = out + (h0 + a) * head_dim;
        for (int64_t d = 0; d < head_dim; d++) o[d] = acc[a][d] * inv;
    }
}

void loom_cpu_attention_paged(float *out, const float *q, const float *k, const float *v,
                              const int32_t *q_pos, int64_t n_q, int64_t kv_len,
                              const int32_t *table, int64_t tokens_per_block, int64_t block_stride,
                              int64_t row_stride, int64_t n_heads, int64_t n_kv_heads,
                              int64_t head_dim, int64_t window, float scale)
{
    assert(n_kv_heads > 0 && n_heads % n_kv_heads == 0);
    assert(head_dim > 0 && head_dim <= LOOM_CPU_ATTN_MAX_HEAD_DIM);
    assert(row_stride >= n_kv_heads * head_dim && tokens_per_block >= 1);
    const att_kv kv = {.k = k, .v = v, .table = table, .B = tokens_per_block,
                       .block_stride = block_stride, .row_stride = row_stride};
    const int64_t group = n_heads / n_kv_heads;          /* query heads per kv head */
    const int64_t n_sub = (group + ATT_HG - 1) / ATT_HG; /* tasks per kv head */
    const int64_t n_tasks = n_q * n_kv_heads * n_sub;
    const double work = (double)n_q * (double)n_heads * (double)head_dim * (double)kv_len;

    /* Causal rows differ in length: hand out tasks dynamically. */
#pragma omp parallel for schedule(dynamic, 1) if (work >= (1 << 16) && n_tasks > 1)
    for (int64_t t = 0; t < n_tasks; t++) {
        const int64_t i = t / (n_kv_heads * n_sub);
        const int64_t g = t / n_sub % n_kv_heads;
        const int64_t sub = t % n_sub;
        const int64_t h0 = g * group + sub * ATT_HG;
        const int64_t nh = group - sub * ATT_HG < ATT_HG ? group - sub * ATT_HG : ATT_HG;
        const int64_t p = q_pos[i];
        assert(p >= 0 && p < kv_len);
        const int64_t lo = window > 0 && p - window + 1 > 0 ? p - window + 1 : 0;
        att_task(out + i * n_heads * head_dim, q + i * n_heads * head_dim, &kv, g, head_dim, p, lo, h0, nh, scale);
    }
}

void loom_cpu_attention(float *out, const float *q, const float *k, const float *v,
                        const int32_t *q_pos, int64_t n_q, int64_t kv_len,
                        int64_t kv_stride, int64_t n_heads, int64_t n_kv_heads,
                        int64_t head_dim, int64_t window, float scale)
{
    /* One block holding every position: chunks fall exactly where they did
     * before paging (ATT_KB keys from the window's start). */
    static const int32_t one_block[1] = {0};
    const int64_t B = kv_len > 0 ? kv_len : 1;
    loom_cpu_attention_paged(out, q, k, v, q_pos, n_q, kv_len, one_block, B, B * kv_stride, kv_stride,
                             n_heads, n_kv_heads, head_dim, window, scale);
}
