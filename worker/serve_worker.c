/* Serving worker (see serve_worker.h). The KV lives in one paged pool; each
 * plan names, per sequence, its slot (sampler state), its block table and the
 * position it continues at, so a worker keeps no per-sequence KV state of its
 * own. A plan's sequence with `start` set takes its slot afresh. Every worker
 * sees every plan in the same order, so the pipeline stages and the TP ranks
 * stay in step; only the last stage's TP rank 0 samples and answers (and
 * every worker answers pings, so the coordinator knows all are subscribed). */
#include "serve_worker.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#include "../util/clock.h"
#include "../kernels/ops.h"
#include "../parallel/dist_mpi.h"
#include "../proto/wire.h"
#include "sampler.h"
#include "serve_gpu.h"

struct loom_worker {
    loom_worker_opts o;
    loom_mpi_dist *dist;
    const loom_topo *topo;
    loom_model *m;
    bool sampler_rank;        /* last stage, TP rank 0 */
    int64_t n_slots;
    int64_t tokens_per_block, kv_blocks, max_blocks_per_seq;
    loom_kv_pool *pool;       /* CPU */
    loom_kv_cache *kv;        /* (n_slots) views of the pool, bound per step */
    loom_sampler **samplers;  /* (n_slots), sampler rank only */
    int32_t **history;        /* (n_slots, max_seq_len) fed tokens, sampler rank only */
    int64_t *hist_len;        /* (n_slots) */
    /* per-step scratch, sized for max_num_tokens / max_batch_size */
    int32_t *tokens;
    int64_t *seq_start;
    loom_kv_cache **batch_kv;
    uint64_t *out_seq;
    int32_t *out_ids;
    /* GPU backend (--device cuda): the model lives there; histories are kept
     * on every last-stage rank, since each samples (the same ids) */
    loom_serve_gpu *gpu;
    bool last_stage;
    int64_t vocab;
    loom_gpu_sample *gsp;     /* (n_slots) per slot */
    loom_gpu_sample *gsp_batch; /* (n_slots) the step's, in batch order */
    const int32_t **hist_ptrs;
    int64_t *hist_lens, *slots, *pos0, *n_tables;
    const int32_t **tables;
    int32_t *all_ids;
};

loom_worker *loom_worker_create(MPI_Comm workers, const loom_worker_opts *o, loom_err *err)
{
    loom_worker *w = calloc(1, sizeof *w);
    if (!w) {
        loom_err_set(err, LOOM_ENOMEM, "out of memory");
        return NULL;
    }
    w->o = *o;
    w->tokens_per_block = o->tokens_per_block > 0 ? o->tokens_per_block : 64;
    w->max_blocks_per_seq = (o->max_seq_len + w->tokens_per_block - 1) / w->tokens_per_block;
    w->dist = loom_mpi_dist_create(workers, o->tp, o->pp, err);
    if (!w->dist) goto fail;
    w->topo = loom_mpi_dist_topo(w->dist);
    loom_config cfg;
    if (loom_config_load(o->model_dir, &cfg, err) != LOOM_OK) goto fail;
    loom_shard sh = {.tp_rank = w->topo->tp_rank, .tp_size = o->tp, .pp_rank = w->topo->pp_rank, .pp_size = o->pp};
    const int64_t *layers = o->pp_layers ? o->pp_layers : (cfg.conv_pp == o->pp ? cfg.conv_pp_layers : NULL);
    loom_status st = loom_shard_layers(cfg.n_layers, o->pp, layers, sh.pp_rank, &sh.layer_begin, &sh.layer_end, err);
    w->vocab = cfg.vocab_size;
    loom_config_free(&cfg);
    if (st != LOOM_OK) goto fail;
    if (o->device_cuda) {
        w->gpu = loom_serve_gpu_create(workers, loom_mpi_dist_tp_comm(w->dist), loom_mpi_dist_pp_comm(w->dist), o->model_dir, &sh,
                                       o->max_batch_size, o->max_num_tokens, o->max_seq_len, o->kv_free_fraction, o->max_kv_tokens,
                                       w->tokens_per_block, o->kv_dtype, o->dummy_weights, err);
        if (!w->gpu) goto fail;
        w->kv_blocks = loom_serve_gpu_kv_blocks(w->gpu);
        w->sampler_rank = sh.pp_rank == o->pp - 1 && sh.tp_rank == 0;
        w->last_stage = sh.pp_rank == o->pp - 1;
        int64_t S = o->max_batch_size, T = o->max_num_tokens;
        w->n_slots = S;
        w->history = calloc((size_t)S, sizeof *w->history);
        w->hist_len = calloc((size_t)S, sizeof *w->hist_len);
        w->tokens = malloc((size_t)T * sizeof *w->tokens);
        w->seq_start = malloc((size_t)(S + 1) * sizeof *w->seq_start);
        w->out_seq = malloc((size_t)S * sizeof *w->out_seq);
        w->out_ids = malloc((size_t)S * sizeof *w->out_ids);
        w->gsp = calloc((size_t)S, sizeof *w->gsp);
        w->gsp_batch = calloc((size_t)S, sizeof *w->gsp_batch);
        w->hist_ptrs = calloc((size_t)S, sizeof *w->hist_ptrs);
        w->hist_lens = calloc((size_t)S, sizeof *w->hist_lens);
        w->slots = calloc((size_t)S, sizeof *w->slots);
        w->pos0 = calloc((size_t)S, sizeof *w->pos0);
        w->n_tables = calloc((size_t)S, sizeof *w->n_tables);
        w->tables = calloc((size_t)S, sizeof *w->tables);
        w->all_ids = calloc((size_t)S, sizeof *w->all_ids);
        if (!w->history || !w->hist_len || !w->tokens || !w->seq_start || !w->out_seq || !w->out_ids || !w->gsp || !w->gsp_batch ||
            !w->hist_ptrs || !w->hist_lens || !w->slots || !w->pos0 || !w->n_tables || !w->tables || !w->all_ids) {
            loom_err_set(err, LOOM_ENOMEM, "out of memory");
            goto fail;
        }
        for (int64_t s = 0; w->last_stage && s < S; s++)
            if (!(w->history[s] = malloc((size_t)o->max_seq_len * sizeof **w->history))) {
                loom_err_set(err, LOOM_ENOMEM, "out of memory");
                goto fail;
            }
        return w;
    }
    w->m = loom_model_load(o->model_dir, loom_ops_cpu(), &sh, loom_mpi_dist_hooks(w->dist), o->max_num_tokens, o->max_batch_size, err);
    if (!w->m || loom_model_set_kv_dtype(w->m, o->kv_dtype, err) != LOOM_OK) goto fail;
    w->sampler_rank = sh.pp_rank == o->pp - 1 && sh.tp_rank == 0;
    w->n_slots = o->max_batch_size;
    int64_t S = w->n_slots, T = o->max_num_tokens;
    w->kv = calloc((size_t)S, sizeof *w->kv); /* zeroed views: bound to the pool per step */
    w->samplers = calloc((size_t)S, sizeof *w->samplers);
    w->history = calloc((size_t)S, sizeof *w->history);
    w->hist_len = calloc((size_t)S, sizeof *w->hist_len);
    w->tokens = malloc((size_t)T * sizeof *w->tokens);
    w->seq_start = malloc((size_t)(S + 1) * sizeof *w->seq_start);
    w->batch_kv = malloc((size_t)S * sizeof *w->batch_kv);
    w->out_seq = malloc((size_t)S * sizeof *w->out_seq);
    w->out_ids = malloc((size_t)S * sizeof *w->out_ids);
    if (!w->kv || !w->samplers || !w->history || !w->hist_len || !w->tokens || !w->seq_start || !w->batch_kv ||
        !w->out_seq || !w->out_ids) {
        loom_err_set(err, LOOM_ENOMEM, "out of memory");
        goto fail;
    }
    loom_sampling_params sp = loom_sampling_defaults();
    const int64_t B = w->tokens_per_block, n_layers = sh.layer_end - sh.layer_begin;
    w->kv_blocks = o->max_kv_tokens > 0 ? (o->max_kv_tokens + B - 1) / B : S * w->max_blocks_per_seq;
    w->pool = loom_kv_pool_create(n_layers, w->kv_blocks, B, w->m->n_kv_local, w->m->cfg.head_dim, err);
    if (!w->pool) goto fail;
    for (int64_t s = 0; s < S; s++) {
        if (w->sampler_rank) {
            w->samplers[s] = loom_sampler_create(w->m->cfg.vocab_size, &sp, err);
            w->history[s] = malloc((size_t)o->max_seq_len * sizeof **w->history);
            if (!w->samplers[s] || !w->history[s]) {
                loom_err_set(err, LOOM_ENOMEM, "out of memory for sampler slots");
                goto fail;
            }
        }
    }
    int64_t kv_bytes = loom_kv_pool_bytes(n_layers, w->kv_blocks, B, w->m->n_kv_local, w->m->cfg.head_dim);
    fprintf(stderr,
            "loom worker %d (stage %d/%d, tp %d/%d, layers %lld-%lld): weights %.2f MiB, KV pool %lld blocks x %lld tokens = %.2f MiB%s, "
            "activations %.2f MiB\n",
            w->topo->worker, sh.pp_rank, o->pp, sh.tp_rank, o->tp, (long long)sh.layer_begin, (long long)sh.layer_end - 1,
            (double)w->m->weight_bytes / 1048576.0, (long long)w->kv_blocks, (long long)B, (double)kv_bytes / 1048576.0,
            w->m->kv_dtype == LOOM_F8E4M3 ? " (fp32, K/V rounded to fp8)" : "", (double)w->m->rs.bytes / 1048576.0);
    return w;
fail:
    loom_worker_destroy(w);
    return NULL;
}

void loom_worker_destroy(loom_worker *w)
{
    if (!w) return;
    for (int64_t s = 0; s < w->n_slots; s++) {
        if (w->samplers) loom_sampler_destroy(w->samplers[s]);
        if (w->history) free(w->history[s]);
    }
    free(w->kv);
    loom_kv_pool_destroy(w->pool);
    free(w->samplers);
    free(w->history);
    free(w->hist_len);
    free(w->tokens);
    free(w->seq_start);
    free(w->batch_kv);
    free(w->out_seq);
    free(w->out_ids);
    free(w->gsp);
    free(w->gsp_batch);
    free(w->hist_ptrs);
    free(w->hist_lens);
    free(w->slots);
    free(w->pos0);
    free(w->n_tables);
    free(w->tables);
    free(w->all_ids);
    loom_serve_gpu_destroy(w->gpu);
    loom_model_destroy(w->m);
    loom_mpi_dist_destroy(w->dist);
    free(w);
}

/* Checks sequence i of a plan against this worker's limits: slot, tokens,
 * positions that continue at pos0, a block table that covers them inside the
 * pool. The coordinator builds valid plans; this guards against a bug turning
 * into memory corruption. */
static loom_status check_seq(const loom_worker *w, const Loom__BatchPlan *plan, size_t i, int64_t used, loom_err *err)
{
    const Loom__PlanSequence *ps = plan->seqs[i];
    const unsigned long long step = (unsigned long long)plan->step, slot = (unsigned long long)ps->seq_id;
    if (ps->seq_id >= (uint64_t)w->n_slots) return loom_err_set(err, LOOM_EINTERNAL, "plan %llu: slot %llu out of range", step, slot);
    for (size_t j = 0; j < i; j++)
        if (plan->seqs[j]->seq_id == ps->seq_id) return loom_err_set(err, LOOM_EINTERNAL, "plan %llu: slot %llu twice", step, slot);
    const int64_t n = (int64_t)ps->n_token_ids, B = w->tokens_per_block;
    if (n < 1 || used + n > w->o.max_num_tokens || ps->n_positions != ps->n_token_ids)
        return loom_err_set(err, LOOM_EINTERNAL, "plan %llu: %lld tokens for slot %llu exceed the step limit", step, (long long)n, slot);
    const int64_t pos0 = ps->positions[0];
    if (pos0 < 0 || pos0 + n > w->o.max_seq_len)
        return loom_err_set(err, LOOM_EINTERNAL, "plan %llu: slot %llu positions %lld.. exceed --max-seq-len", step, slot, (long long)pos0);
    for (int64_t k = 0; k < n; k++) {
        if (ps->positions[k] != pos0 + k) return loom_err_set(err, LOOM_EINTERNAL, "plan %llu: slot %llu positions are not consecutive", step, slot);
        if (ps->token_ids[k] < 0 || ps->token_ids[k] >= w->vocab) return loom_err_set(err, LOOM_EINTERNAL, "plan %llu: token id out of range", step);
    }
    if ((int64_t)ps->n_block_table < (pos0 + n + B - 1) / B || (int64_t)ps->n_block_table > w->max_blocks_per_seq)
        return loom_err_set(err, LOOM_EINTERNAL, "plan %llu: slot %llu has %zu blocks for %lld tokens", step, slot, ps->n_block_table,
                            (long long)(pos0 + n));
    for (size_t k = 0; k < ps->n_block_table; k++)
        if (ps->block_table[k] < 0 || ps->block_table[k] >= w->kv_blocks)
            return loom_err_set(err, LOOM_EINTERNAL, "plan %llu: slot %llu names KV block %d (pool: %lld)", step, slot, ps->block_table[k],
                                (long long)w->kv_blocks);
    return LOOM_OK;
}

/* Fills the batch from a plan: each sequence's cache view is bound to its
 * block table, continuing at its first position. */
static loom_status build_batch(loom_worker *w, const Loom__BatchPlan *plan, loom_batch *b, loom_err *err)
{
    int64_t n = 0;
    if (plan->n_seqs < 1 || (int64_t)plan->n_seqs > w->n_slots)
        return loom_err_set(err, LOOM_EINTERNAL, "plan %llu has %zu sequences (slots: %lld)", (unsigned long long)plan->step, plan->n_seqs, (long long)w->n_slots);
    w->seq_start[0] = 0;
    for (size_t i = 0; i < plan->n_seqs; i++) {
        LOOM_CHECK(check_seq(w, plan, i, n, err));
        const Loom__PlanSequence *ps = plan->seqs[i];
        loom_kv_cache *kv = &w->kv[ps->seq_id];
        loom_kv_cache_bind(kv, w->pool, ps->block_table, (int64_t)ps->n_block_table, ps->positions[0]);
        memcpy(w->tokens + n, ps->token_ids, ps->n_token_ids * sizeof(int32_t));
        n += (int64_t)ps->n_token_ids;
        w->seq_start[i + 1] = n;
        w->batch_kv[i] = kv;
    }
    b->n_seqs = (int64_t)plan->n_seqs;
    b->seq_start = w->seq_start;
    b->tokens = w->tokens;
    b->kv = w->batch_kv;
    return LOOM_OK;
}

/* The sampler history of a slot: on `start`, the cached prefix the plan
 * sends (if any) replaces it; then the fed tokens are appended. */
static loom_status push_history(loom_worker *w, const Loom__PlanSequence *ps, loom_err *err)
{
    int64_t slot = (int64_t)ps->seq_id;
    if (ps->start) {
        if ((int64_t)ps->n_history_prefix > w->o.max_seq_len) return loom_err_set(err, LOOM_EINTERNAL, "slot %lld history overflow", (long long)slot);
        if (ps->n_history_prefix) memcpy(w->history[slot], ps->history_prefix, ps->n_history_prefix * sizeof(int32_t));
        w->hist_len[slot] = (int64_t)ps->n_history_prefix;
    }
    if (w->hist_len[slot] + (int64_t)ps->n_token_ids > w->o.max_seq_len)
        return loom_err_set(err, LOOM_EINTERNAL, "slot %lld history overflow", (long long)slot);
    memcpy(w->history[slot] + w->hist_len[slot], ps->token_ids, ps->n_token_ids * sizeof(int32_t));
    w->hist_len[slot] += (int64_t)ps->n_token_ids;
    return LOOM_OK;
}

/* Sampler rank: keeps each slot's fed tokens (for the repetition penalty)
 * and samples the sequences that asked for it. */
static loom_status sample(loom_worker *w, const Loom__BatchPlan *plan, size_t *n_out, loom_err *err)
{
    *n_out = 0;
    const int64_t V = w->m->cfg.vocab_size;
    for (size_t i = 0; i < plan->n_seqs; i++) {
        const Loom__PlanSequence *ps = plan->seqs[i];
        int64_t slot = (int64_t)ps->seq_id;
        if (ps->start) {
            const Loom__SamplingParams *sp = ps->sampling;
            loom_sampling_params p = loom_sampling_defaults();
            if (sp) {
                p.temperature = sp->temperature;
                p.top_k = sp->top_k;
                p.top_p = sp->top_p;
                p.repetition_penalty = sp->repetition_penalty;
                p.seed = sp->seed;
            }
            LOOM_CHECK(loom_sampler_reset(w->samplers[slot], &p, err));
            loom_sampler_skip(w->samplers[slot], ps->samples_before);
        }
        LOOM_CHECK(push_history(w, ps, err));
        if (!ps->sample) continue;
        w->out_seq[*n_out] = ps->seq_id;
        w->out_ids[*n_out] = loom_sampler_sample(w->samplers[slot], w->m->rs.logits + (int64_t)i * V, w->history[slot], w->hist_len[slot]);
        (*n_out)++;
    }
    return LOOM_OK;
}

/* One plan on the GPU backend: arrays from the plan, a step, and (sampler
 * rank) the ids of the sequences that asked for one. */
static loom_status gpu_step(loom_worker *w, const Loom__BatchPlan *plan, size_t *n_out, loom_err *err)
{
    *n_out = 0;
    int64_t n = 0, S = (int64_t)plan->n_seqs;
    if (S < 1 || S > w->n_slots) return loom_err_set(err, LOOM_EINTERNAL, "plan %llu has %lld sequences", (unsigned long long)plan->step, (long long)S);
    w->seq_start[0] = 0;
    for (int64_t i = 0; i < S; i++) {
        LOOM_CHECK(check_seq(w, plan, (size_t)i, n, err));
        const Loom__PlanSequence *ps = plan->seqs[i];
        int64_t slot = (int64_t)ps->seq_id;
        memcpy(w->tokens + n, ps->token_ids, ps->n_token_ids * sizeof(int32_t));
        n += (int64_t)ps->n_token_ids;
        w->seq_start[i + 1] = n;
        w->slots[i] = slot;
        w->pos0[i] = ps->positions[0];
        w->tables[i] = ps->block_table;
        w->n_tables[i] = (int64_t)ps->n_block_table;
        if (ps->start) {
            const Loom__SamplingParams *sp = ps->sampling;
            w->gsp[slot] = (loom_gpu_sample){.temperature = sp ? sp->temperature : 0.0f, .top_k = sp ? sp->top_k : 0,
                                             .top_p = sp && sp->top_p > 0 ? sp->top_p : 1.0f,
                                             .repetition_penalty = sp && sp->repetition_penalty > 0 ? sp->repetition_penalty : 1.0f,
                                             .seed = sp ? sp->seed : 0};
        }
        if (w->last_stage) {
            LOOM_CHECK(push_history(w, ps, err));
            w->hist_ptrs[i] = w->history[slot];
            w->hist_lens[i] = w->hist_len[slot];
        }
    }
    for (int64_t i = 0; i < S; i++) w->gsp_batch[i] = w->gsp[w->slots[i]]; /* sampling in batch order */
    LOOM_CHECK(loom_serve_gpu_step(w->gpu, S, w->slots, w->seq_start, w->tokens, w->pos0, w->tables, w->n_tables, w->gsp_batch,
                                   w->last_stage ? w->hist_ptrs : NULL, w->hist_lens, w->all_ids, err));
    if (!w->sampler_rank) return LOOM_OK;
    for (int64_t i = 0; i < S; i++) {
        if (!plan->seqs[i]->sample) continue;
        w->out_seq[*n_out] = plan->seqs[i]->seq_id;
        w->out_ids[*n_out] = w->all_ids[i];
        (*n_out)++;
    }
    return LOOM_OK;
}

static loom_status send_result(const loom_worker *w, void *push, uint64_t step, const uint64_t *seqs, const int32_t *ids, size_t n,
                               const char *error, double ms, loom_err *err)
{
    Loom__StepResult r = LOOM__STEP_RESULT__INIT;
    int worker = w->topo->worker;
    if (step == 0) { /* a ping answer: the pool this worker holds */
        r.kv_blocks = w->kv_blocks;
        r.tokens_per_block = (int32_t)w->tokens_per_block;
    }
    r.step = step;
    r.worker = worker;
    r.n_seq_ids = n;
    r.seq_ids = (uint64_t *)seqs;
    r.n_sampled_ids = n;
    r.sampled_ids = (int32_t *)ids;
    r.error = (char *)(error ? error : "");
    r.compute_ms = ms;
    Loom__Envelope env = LOOM__ENVELOPE__INIT;
    env.body_case = LOOM__ENVELOPE__BODY_RESULT;
    env.result = &r;
    return loom_wire_send(push, &env, 0, err);
}

loom_status loom_worker_serve(loom_worker *w, const char *plan_endpoint, const char *result_endpoint, loom_err *err)
{
    loom_status st = LOOM_OK;
    loom_wire_arena *arena = loom_wire_arena_create((size_t)1 << 16, err); /* plans unpack here: no allocation per step */
    if (!arena) return LOOM_ENOMEM;
    void *ctx = zmq_ctx_new();
    void *sub = zmq_socket(ctx, ZMQ_SUB), *push = zmq_socket(ctx, ZMQ_PUSH);
    int linger = 2000, hwm = 0;
    zmq_setsockopt(push, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(sub, ZMQ_RCVHWM, &hwm, sizeof hwm); /* never drop a plan */
    if (zmq_setsockopt(sub, ZMQ_SUBSCRIBE, "", 0) || zmq_connect(sub, plan_endpoint) || zmq_connect(push, result_endpoint)) {
        st = loom_err_set(err, LOOM_EIO, "worker %d cannot connect to the coordinator (%s, %s): %s", w->topo->worker, plan_endpoint,
                          result_endpoint, zmq_strerror(zmq_errno()));
        goto out;
    }
    for (;;) {
        Loom__Envelope *env = NULL;
        loom_err rerr;
        loom_status rs = loom_wire_recv_arena(sub, 0, arena, &env, &rerr);
        if (rs == LOOM_EIO && errno == EINTR) continue; /* a signal: the coordinator decides when to stop */
        if (rs == LOOM_EIO) {
            st = loom_err_set(err, LOOM_EIO, "worker %d: plan socket: %s", w->topo->worker, rerr.msg);
            goto out;
        }
        if (rs != LOOM_OK) continue; /* not ours to answer: plans come only from the coordinator */
        if (env->body_case == LOOM__ENVELOPE__BODY_SHUTDOWN) {
            break;
        }
        if (env->body_case != LOOM__ENVELOPE__BODY_PLAN) {
            continue;
        }
        const Loom__BatchPlan *plan = env->plan;
        if (plan->step == 0) { /* ping: prove this worker is subscribed */
            st = send_result(w, push, 0, NULL, NULL, 0, NULL, 0, err);
            if (st != LOOM_OK) goto out;
            continue;
        }
        double t0 = loom_now_s();
        loom_batch b;
        size_t n_out = 0;
        loom_err serr = {{0}};
        loom_status fs;
        if (w->gpu) {
            fs = gpu_step(w, plan, &n_out, &serr);
        } else {
            fs = build_batch(w, plan, &b, &serr);
            if (fs == LOOM_OK) fs = loom_model_forward_batch(w->m, &b, &serr);
            if (fs == LOOM_OK && w->sampler_rank) fs = sample(w, plan, &n_out, &serr);
        }
        double ms = (loom_now_s() - t0) * 1e3;
        if (fs != LOOM_OK) {
            /* Tell the coordinator, then stop: the other ranks cannot go on without this one. */
            char msg[LOOM_ERR_LEN + 64];
            snprintf(msg, sizeof msg, "worker %d: %s", w->topo->worker, serr.msg);
            send_result(w, push, plan->step, NULL, NULL, 0, msg, ms, err);
            st = loom_err_set(err, fs, "%s", msg);
            goto out;
        }
        if (w->sampler_rank) st = send_result(w, push, plan->step, w->out_seq, w->out_ids, n_out, NULL, ms, err);
        if (st != LOOM_OK) goto out;
    }
out:
    zmq_close(sub);
    zmq_close(push);
    zmq_ctx_term(ctx);
    loom_wire_arena_destroy(arena);
    return st;
}
