/* The Llama-family forward pass (Llama 2/3, Mistral, Qwen2) over the op table,
 * for one partition and a batch of sequences. Matmuls run over all tokens of
 * the batch at once; attention runs per sequence over its own KV cache (a
 * block table over a paged pool, or a standalone one-block cache). Each
 * line names the transformers code it matches. With tensor parallelism the
 * o_proj and down_proj outputs are partial sums, all-reduced over the group;
 * with pipeline parallelism the residual stream travels stage to stage. */
#include <math.h>
#include <string.h>

#include "../util/dtype.h"
#include "model.h"

/* y = x @ W^T (+ b) for n rows. */
static void linear(const loom_ops *ops, float *y, const float *x, loom_weight w, loom_weight b,
                   int64_t n, int64_t in_dim, int64_t out_dim)
{
    if (out_dim > 0) ops->matmul(y, x, w.data, w.dtype, b.data, n, in_dim, out_dim);
}

static loom_status check_batch(const loom_model *m, const loom_batch *b, int64_t *n_tokens, loom_err *err)
{
    const loom_run_state *rs = &m->rs;
    if (b->n_seqs < 1 || b->n_seqs > rs->max_seqs)
        return loom_err_set(err, LOOM_EINTERNAL, "batch of %lld sequences (limit %lld)", (long long)b->n_seqs, (long long)rs->max_seqs);
    if (b->seq_start[0] != 0) return loom_err_set(err, LOOM_EINTERNAL, "batch does not start at token 0");
    for (int64_t s = 0; s < b->n_seqs; s++) {
        int64_t n = b->seq_start[s + 1] - b->seq_start[s];
        if (n < 1) return loom_err_set(err, LOOM_EINTERNAL, "sequence %lld of the batch has no tokens", (long long)s);
        const loom_kv_cache *kv = b->kv[s];
        if (!kv->pool || kv->n_layers != m->shard.layer_end - m->shard.layer_begin || kv->n_kv_heads != m->n_kv_local ||
            kv->head_dim != m->cfg.head_dim)
            return loom_err_set(err, LOOM_EINTERNAL, "the KV cache of sequence %lld does not match this partition's shape", (long long)s);
        if (kv->len + n > kv->max_seq)
            return loom_err_set(err, LOOM_EINVAL, "sequence of %lld tokens does not fit its KV cache (%lld positions)",
                                (long long)(kv->len + n), (long long)kv->max_seq);
    }
    *n_tokens = b->seq_start[b->n_seqs];
    if (*n_tokens > rs->max_tokens)
        return loom_err_set(err, LOOM_EINTERNAL, "batch of %lld tokens (limit %lld)", (long long)*n_tokens, (long long)rs->max_tokens);
    if (m->shard.pp_rank == 0)
        for (int64_t i = 0; i < *n_tokens; i++)
            if (b->tokens[i] < 0 || b->tokens[i] >= m->cfg.vocab_size)
                return loom_err_set(err, LOOM_EINVAL, "token id %d is outside the vocabulary [0, %lld)", b->tokens[i], (long long)m->cfg.vocab_size);
    return LOOM_OK;
}

/* Copies n floats into the cache, rounded through E4M3 when fp8 (what the
 * GPU's FP8 cache stores and its attention reads back). */
static void kv_store(float *dst, const float *src, int64_t n, bool fp8)
{
    if (!fp8) {
        memcpy(dst, src, (size_t)n * sizeof(float));
        return;
    }
    for (int64_t i = 0; i < n; i++) dst[i] = loom_round_e4m3(src[i]);
}

/* past_key_values.update(...) for one layer: rows kv->len .. kv->len+n-1,
 * copied in runs that stay inside a block. k, v (n, n_kv_heads, head_dim). */
static void kv_append(const loom_kv_cache *kv, int64_t layer, const float *k, const float *v, int64_t n, bool fp8)
{
    const int64_t B = kv->pool->tokens_per_block, row = loom_kv_stride(kv);
    for (int64_t t = 0; t < n;) {
        const int64_t pos = kv->len + t, left = B - pos % B, run = n - t < left ? n - t : left;
        kv_store(loom_kv_k_row(kv, layer, pos), k + t * row, run * row, fp8);
        kv_store(loom_kv_v_row(kv, layer, pos), v + t * row, run * row, fp8);
        t += run;
    }
}

static loom_status tp_sum(const loom_model *m, float *buf, int64_t n, loom_err *err)
{
    if (m->shard.tp_size == 1) return LOOM_OK;
    return m->dist->tp_allreduce(m->dist->ctx, buf, n, err);
}

/* Last stage: final norm of each sequence's last token, this rank's vocab
 * slice of the logits, and the gather of all slices on TP rank 0. */
static loom_status logits(loom_model *m, const loom_batch *b, loom_err *err)
{
    const loom_config *c = &m->cfg;
    const loom_ops *ops = m->ops;
    loom_run_state *rs = &m->rs;
    const int64_t H = c->hidden_size, S = b->n_seqs, V = c->vocab_size, Vl = m->vocab_local;
    for (int64_t s = 0; s < S; s++) {
        const float *x = rs->x + (b->seq_start[s + 1] - 1) * H;
        /* hidden_states = self.norm(hidden_states) */
        ops->rmsnorm(rs->last + s * H, x, m->w.final_norm.data, m->w.final_norm.dtype, 1, H, c->rms_norm_eps);
    }
    if (m->shard.tp_size == 1) {
        /* logits = self.lm_head(hidden_states) */
        ops->matmul(rs->logits, rs->last, m->w.lm_head.data, m->w.lm_head.dtype, NULL, S, H, V);
        return LOOM_OK;
    }
    linear(ops, rs->logits_local, rs->last, m->w.lm_head, (loom_weight){0}, S, H, m->v_rows);
    /* Spread rows (S, v_rows) to a stride of Vl, back to front; pad with -inf. */
    for (int64_t s = S - 1; s >= 0; s--) {
        memmove(rs->logits_local + s * Vl, rs->logits_local + s * m->v_rows, (size_t)m->v_rows * sizeof(float));
        for (int64_t j = m->v_rows; j < Vl; j++) rs->logits_local[s * Vl + j] = -INFINITY;
    }
    LOOM_CHECK(m->dist->tp_gather(m->dist->ctx, rs->logits_local, S * Vl, rs->gather, err));
    if (m->shard.tp_rank != 0) return LOOM_OK;
    for (int64_t r = 0; r < m->shard.tp_size; r++) {
        int64_t v0 = r * Vl, n = v0 + Vl <= V ? Vl : V - v0;
        for (int64_t s = 0; n > 0 && s < S; s++)
            memcpy(rs->logits + s * V + v0, rs->gather + (r * S + s) * Vl, (size_t)n * sizeof(float));
    }
    return LOOM_OK;
}

loom_status loom_model_forward_batch(loom_model *m, const loom_batch *b, loom_err *err)
{
    int64_t T = 0;
    LOOM_CHECK(check_batch(m, b, &T, err));
    const loom_config *c = &m->cfg;
    const loom_ops *ops = m->ops;
    loom_run_state *rs = &m->rs;
    const loom_shard *sh = &m->shard;
    const int64_t H = c->hidden_size, hd = c->head_dim, Il = m->inter_local;
    const int64_t Hl = m->n_heads_local, KVl = m->n_kv_local, qd = Hl * hd, kd = KVl * hd;
    const float scale = 1.0f / sqrtf((float)hd); /* self.scaling = head_dim ** -0.5 */
    for (int64_t s = 0; s < b->n_seqs; s++)
        for (int64_t t = b->seq_start[s]; t < b->seq_start[s + 1]; t++)
            rs->pos[t] = (int32_t)(b->kv[s]->len + t - b->seq_start[s]);

    if (sh->pp_rank == 0) {
        /* inputs_embeds = self.embed_tokens(input_ids) */
        ops->embedding(rs->x, m->w.embed.data, m->w.embed.dtype, b->tokens, T, H);
    } else {
        LOOM_CHECK(m->dist->pp_recv(m->dist->ctx, rs->x, T * H, err));
    }

    for (int64_t l = 0; l < sh->layer_end - sh->layer_begin; l++) {
        const loom_layer_weights *L = &m->w.layers[l];
        const int64_t window = c->layer_window[sh->layer_begin + l];
        /* hidden_states = self.input_layernorm(hidden_states) */
        ops->rmsnorm(rs->xb, rs->x, L->attn_norm.data, L->attn_norm.dtype, T, H, c->rms_norm_eps);
        /* query/key/value_states = self.{q,k,v}_proj(hidden_states) (this rank's heads) */
        linear(ops, rs->q, rs->xb, L->wq, L->bq, T, H, qd);
        linear(ops, rs->k, rs->xb, L->wk, L->bk, T, H, kd);
        linear(ops, rs->v, rs->xb, L->wv, L->bv, T, H, kd);
        /* query_states, key_states = apply_rotary_pos_emb(q, k, cos, sin) */
        ops->rope(rs->q, rs->pos, T, Hl, hd, rs->inv_freq);
        ops->rope(rs->k, rs->pos, T, KVl, hd, rs->inv_freq);
        for (int64_t s = 0; s < b->n_seqs; s++) {
            const loom_kv_cache *kv = b->kv[s];
            const loom_kv_pool *P = kv->pool;
            const int64_t t0 = b->seq_start[s], n = b->seq_start[s + 1] - t0;
            /* past_key_values.update(key_states, value_states, layer_idx); an fp8 cache
             * rounds each element through E4M3 (unit scale) on the way in */
            kv_append(kv, l, rs->k + t0 * kd, rs->v + t0 * kd, n, m->kv_dtype == LOOM_F8E4M3);
            /* attn_output = eager_attention_forward(...) with the causal (sliding-window) mask */
            ops->attention_paged(rs->att + t0 * qd, rs->q + t0 * qd, loom_kv_pool_k(P, l), loom_kv_pool_v(P, l),
                                 rs->pos + t0, n, kv->len + n, kv->table, P->tokens_per_block,
                                 loom_kv_pool_block_stride(P), loom_kv_pool_row(P), Hl, KVl, hd, window, scale);
        }
        /* hidden_states = residual + self.o_proj(attn_output) (partial sums over TP) */
        linear(ops, rs->xb, rs->att, L->wo, L->bo, T, qd, H);
        LOOM_CHECK(tp_sum(m, rs->xb, T * H, err));
        ops->add(rs->x, rs->xb, T * H);
        /* hidden_states = self.post_attention_layernorm(hidden_states) */
        ops->rmsnorm(rs->xb, rs->x, L->mlp_norm.data, L->mlp_norm.dtype, T, H, c->rms_norm_eps);
        /* down_proj(act_fn(gate_proj(x)) * up_proj(x)) */
        linear(ops, rs->hb, rs->xb, L->w_gate, L->b_gate, T, H, Il);
        linear(ops, rs->hb2, rs->xb, L->w_up, L->b_up, T, H, Il);
        ops->swiglu(rs->hb, rs->hb, rs->hb2, T * Il);
        linear(ops, rs->xb, rs->hb, L->w_down, L->b_down, T, Il, H);
        LOOM_CHECK(tp_sum(m, rs->xb, T * H, err));
        /* hidden_states = residual + hidden_states */
        ops->add(rs->x, rs->xb, T * H);
    }
    for (int64_t s = 0; s < b->n_seqs; s++) b->kv[s]->len += b->seq_start[s + 1] - b->seq_start[s];

    if (sh->pp_rank < sh->pp_size - 1) return m->dist->pp_send(m->dist->ctx, rs->x, T * H, err);
    return logits(m, b, err);
}

loom_status loom_model_forward(loom_model *m, loom_kv_cache *kv, const int32_t *tokens, int64_t n,
                               loom_err *err)
{
    int64_t starts[2] = {0, n};
    loom_kv_cache *kvs[1] = {kv};
    loom_batch b = {.n_seqs = 1, .seq_start = starts, .tokens = tokens, .kv = kvs};
    if (n < 1 || n > m->rs.max_tokens)
        return loom_err_set(err, LOOM_EINTERNAL, "forward of %lld tokens (chunk limit %lld)", (long long)n, (long long)m->rs.max_tokens);
    return loom_model_forward_batch(m, &b, err);
}

loom_status loom_model_prefill(loom_model *m, loom_kv_cache *kv, const int32_t *tokens, int64_t n,
                               loom_err *err)
{
    if (n < 1) return loom_err_set(err, LOOM_EINVAL, "empty prompt");
    for (int64_t i = 0; i < n; i += m->rs.max_tokens) {
        int64_t chunk = n - i < m->rs.max_tokens ? n - i : m->rs.max_tokens;
        LOOM_CHECK(loom_model_forward(m, kv, tokens + i, chunk, err));
    }
    return LOOM_OK;
}
