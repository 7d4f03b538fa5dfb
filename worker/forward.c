/* The Llama-family forward pass (Llama 2/3, Mistral, Qwen2) over the op table.
 * Each line names the transformers code it matches. K and V are projected
 * straight into the KV cache rows of the new positions, then rotated there. */
#include <math.h>

#include "model.h"

/* y = x @ W^T (+ b) for n rows. */
static void linear(const loom_ops *ops, float *y, const float *x, loom_weight w, loom_weight b,
                   int64_t n, int64_t in_dim, int64_t out_dim)
{
    ops->matmul(y, x, w.data, w.dtype, b.data, n, in_dim, out_dim);
}

loom_status loom_model_forward(loom_model *m, loom_kv_cache *kv, const int32_t *tokens, int64_t n,
                               loom_err *err)
{
    const loom_config *c = &m->cfg;
    const loom_ops *ops = m->ops;
    loom_run_state *rs = &m->rs;
    if (n < 1 || n > rs->max_tokens)
        return loom_err_set(err, LOOM_EINTERNAL, "forward of %lld tokens (chunk limit %lld)", (long long)n, (long long)rs->max_tokens);
    if (kv->len + n > kv->max_seq)
        return loom_err_set(err, LOOM_EINVAL, "sequence of %lld tokens does not fit the KV cache (%lld positions)",
                            (long long)(kv->len + n), (long long)kv->max_seq);
    for (int64_t i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= c->vocab_size)
            return loom_err_set(err, LOOM_EINVAL, "token id %d is outside the vocabulary [0, %lld)", tokens[i], (long long)c->vocab_size);

    const int64_t H = c->hidden_size, I = c->intermediate_size, hd = c->head_dim;
    const int64_t QD = c->n_heads * hd, KD = c->n_kv_heads * hd;
    const int64_t p0 = kv->len, kv_len = p0 + n, stride = loom_kv_stride(kv);
    const float scale = 1.0f / sqrtf((float)hd); /* self.scaling = head_dim ** -0.5 */
    for (int64_t i = 0; i < n; i++) rs->pos[i] = (int32_t)(p0 + i);

    /* inputs_embeds = self.embed_tokens(input_ids) */
    ops->embedding(rs->x, m->w.embed.data, m->w.embed.dtype, tokens, n, H);

    for (int64_t l = 0; l < c->n_layers; l++) {
        const loom_layer_weights *L = &m->w.layers[l];
        float *kc = loom_kv_k(kv, l, p0), *vc = loom_kv_v(kv, l, p0);
        /* hidden_states = self.input_layernorm(hidden_states) */
        ops->rmsnorm(rs->xb, rs->x, L->attn_norm.data, L->attn_norm.dtype, n, H, c->rms_norm_eps);
        /* q/k/v = self.{q,k,v}_proj(hidden_states); k, v land in the cache */
        linear(ops, rs->q, rs->xb, L->wq, L->bq, n, H, QD);
        linear(ops, kc, rs->xb, L->wk, L->bk, n, H, KD);
        linear(ops, vc, rs->xb, L->wv, L->bv, n, H, KD);
        /* query_states, key_states = apply_rotary_pos_emb(q, k, cos, sin) */
        ops->rope(rs->q, rs->pos, n, c->n_heads, hd, rs->inv_freq);
        ops->rope(kc, rs->pos, n, c->n_kv_heads, hd, rs->inv_freq);
        /* attn_output = eager_attention_forward(...) with the causal (sliding) mask */
        ops->attention(rs->att, rs->q, loom_kv_k(kv, l, 0), loom_kv_v(kv, l, 0), rs->pos, n, kv_len, stride,
                       c->n_heads, c->n_kv_heads, hd, c->layer_window[l], scale);
        /* hidden_states = residual + self.o_proj(attn_output) */
        linear(ops, rs->xb, rs->att, L->wo, L->bo, n, QD, H);
        ops->add(rs->x, rs->xb, n * H);
        /* hidden_states = self.post_attention_layernorm(hidden_states) */
        ops->rmsnorm(rs->xb, rs->x, L->mlp_norm.data, L->mlp_norm.dtype, n, H, c->rms_norm_eps);
        /* down_proj(act_fn(gate_proj(x)) * up_proj(x)) */
        linear(ops, rs->hb, rs->xb, L->w_gate, L->b_gate, n, H, I);
        linear(ops, rs->hb2, rs->xb, L->w_up, L->b_up, n, H, I);
        ops->swiglu(rs->hb, rs->hb, rs->hb2, n * I);
        linear(ops, rs->xb, rs->hb, L->w_down, L->b_down, n, I, H);
        /* hidden_states = residual + hidden_states */
        ops->add(rs->x, rs->xb, n * H);
    }
    kv->len = kv_len;

    /* logits = self.lm_head(self.norm(hidden_states)[:, -1]) */
    float *last = rs->x + (n - 1) * H;
    ops->rmsnorm(rs->xb, last, m->w.final_norm.data, m->w.final_norm.dtype, 1, H, c->rms_norm_eps);
    ops->matmul(rs->logits, rs->xb, m->w.lm_head.data, m->w.lm_head.dtype, NULL, 1, H, c->vocab_size);
    return LOOM_OK;
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
