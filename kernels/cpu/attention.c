/* CPU attention with online softmax (flash style): for each query, keys are
 * visited in blocks of ATT_KB; a block's scores go to the stack, the running
 * max/sum/accumulator are rescaled once per block. Query heads that share a kv
 * head are done together (up to ATT_HG) so each K/V row is loaded once for
 * all of them. Work is split over (query, kv head, head group) tasks. */
#include "attention.h"

#include <assert.h>
#include <math.h>

enum {
    ATT_KB = 64, /* keys per block */
    ATT_HG = 8,  /* query heads per task, all on one kv head */
};

static inline float dot(const float *restrict a, const float *restrict b, int64_t n)
{
    float s = 0.0f;
#pragma omp simd reduction(+ : s)
    for (int64_t i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

/* Query i, query heads h0 .. h0+nh-1 (all reading kv head g). */
static void att_task(float *out, const float *q, const float *k, const float *v,
                     int64_t kv_stride, int64_t g, int64_t head_dim,
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
    for (int64_t j0 = lo; j0 <= p; j0 += ATT_KB) {
        const int64_t nb = p + 1 - j0 < ATT_KB ? p + 1 - j0 : ATT_KB;
        for (int64_t j = 0; j < nb; j++) {
            const float *kj = k + (j0 + j) * kv_stride + g * head_dim;
            for (int64_t a = 0; a < nh; a++) s[a][j] = dot(qh[a], kj, head_dim) * scale;
        }
        for (int64_t a = 0; a < nh; a++) {
            float bm = m[a];
            for (int64_t j = 0; j < nb; j++) bm = s[a][j] > bm ? s[a][j] : bm;
            /* bm is finite: every block holds at least one real score */
            const float corr = expf(m[a] - bm); /* 0 on the first block */
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
            const float *restrict vj = v + (j0 + j) * kv_stride + g * head_dim;
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

void loom_cpu_attention(float *out, const float *q, const float *k, const float *v,
                        const int32_t *q_pos, int64_t n_q, int64_t kv_len,
                        int64_t kv_stride, int64_t n_heads, int64_t n_kv_heads,
                        int64_t head_dim, int64_t window, float scale)
{
    assert(n_kv_heads > 0 && n_heads % n_kv_heads == 0);
    assert(head_dim > 0 && head_dim <= LOOM_CPU_ATTN_MAX_HEAD_DIM);
    assert(kv_stride >= n_kv_heads * head_dim);
    const int64_t group = n_heads / n_kv_heads;       /* query heads per kv head */
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
        att_task(out + i * n_heads * head_dim, q + i * n_heads * head_dim, k, v,
                 kv_stride, g, head_dim, p, lo, h0, nh, scale);
    }
}
