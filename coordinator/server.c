/* The coordinator of `loom serve` (see server.h). One thread, one poll loop:
 * client messages on the ROUTER, results on the PULL, plans out on the PUB.
 * Requests live in `loom_req`; the static batch is split into micro-batches
 * (one per pipeline stage) so every stage has work while the others do. */
#include "server.h"

#include <errno.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zmq.h>

#include "../kv/block_manager.h"
#include "../proto/wire.h"
#include "../util/clock.h"
#include "../util/fileutil.h"
#include "../worker/config.h"
#include "../worker/sampler.h"
#include "textstream.h"
#include "tokenizer/tokenizer.h"

#define MAX_IDENT 256
#define MAX_STOP_IDS 16
#define PING_TIMEOUT_S 120.0

typedef enum { REQ_WAITING, REQ_RUNNING, REQ_DONE } req_state;

/* A request's tokens are one array: the prompt, then what it generated
 * (out = toks + n_prompt). "Known" tokens = n_prompt + n_out;
 * `fed` of them have been planned (their KV is written or being written). A
 * sequence feeds known[fed..) and samples when the chunk reaches the end. */

typedef struct loom_req {
    char *id;
    uint8_t ident[MAX_IDENT];    /* the client's ROUTER identity */
    size_t ident_len;
    bool stream;
    int32_t *toks;               /* (n_prompt + max_new): the prompt, then out */
    int64_t n_prompt;
    int64_t max_new;
    loom_sampling_params sp;
    int32_t stop_ids[MAX_STOP_IDS];
    int n_stop_ids;
    int32_t *out;                /* = toks + n_prompt, (max_new) */
    int64_t n_out;
    loom_textstream ts;
    int64_t fed;                 /* known tokens planned so far */
    int64_t slot;
    int64_t admit_order;         /* increasing per (re)admission: preemption takes the latest */
    bool fresh;                  /* the next plan starts its slot afresh */
    bool has_blocks;             /* registered in the block manager (under its slot) */
    bool planned;                /* in the plan being built */
    req_state state;
} loom_req;

typedef struct micro_batch {
    loom_req **reqs;             /* (max_batch_size) */
    int64_t n;
    uint64_t inflight;           /* step in flight, 0 = idle */
    double published_at;         /* when its last plan went out */
    double result_compute_ms;    /* the worker's compute time of its last result */
    bool timing;                 /* a result arrived: time the cycle if the next plan goes out at once */
} micro_batch;

struct loom_server {
    loom_server_opts o;
    int n_workers;
    loom_config cfg;
    loom_tokenizer *tok;
    void *zctx, *router, *pub, *pull;
    char plan_ep[256], result_ep[256];
    loom_req **waiting;          /* FIFO, (cap_waiting) */
    int64_t n_waiting, cap_waiting;
    loom_req **batch;            /* (max_batch_size), index = KV slot */
    int64_t n_batch;
    micro_batch *mbs;            /* (pp) */
    int n_mbs;
    uint64_t next_step;
    /* plan scratch, sized once */
    Loom__PlanSequence *plan_seqs;
    Loom__PlanSequence **plan_seq_ptrs;
    Loom__SamplingParams *plan_sp;
    int32_t *positions;          /* (max_num_tokens) */
    loom_wire_arena *result_arena; /* StepResults unpack here */
    /* KV blocks: the manager exists once the workers reported their pools */
    loom_block_manager *bm;
    int64_t kv_blocks, tokens_per_block;
    int64_t admit_counter;
    const loom_req *blocked_head; /* the queue's head when it last did not fit, */
    int64_t blocked_room, blocked_cached; /* with this much room and these cached blocks */
    /* stats */
    int64_t preemptions, refused, completed;
    int64_t timed_steps;
    double cycle_s, compute_s;   /* over the timed steps */
    int64_t tokens_total;
    double t_start, rate_t, rate_tokens, tokens_per_s;
};

static volatile sig_atomic_t g_stop;

/* A watchdog for the way out: if shutting down hangs (a worker died inside a
 * collective, so MPI_Finalize cannot complete), SIGALRM ends the process. */
#define SHUTDOWN_WATCHDOG_S 5

static void on_signal(int sig)
{
    (void)sig;
    if (!g_stop) alarm(SHUTDOWN_WATCHDOG_S);
    g_stop = 1;
}

void loom_server_install_signals(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
}

int loom_server_stopping(void) { return g_stop; }

static void req_free(loom_req *r)
{
    if (!r) return;
    free(r->id);
    free(r->toks);
    loom_textstream_free(&r->ts);
    free(r);
}

/* --- sending to clients ------------------------------------------------- */

/* Sends env to the client with this identity. Returns false when the client
 * is gone (its requests are then cancelled by the caller). */
static bool send_to(loom_server *s, const uint8_t *ident, size_t ident_len, Loom__Envelope *env)
{
    if (zmq_send(s->router, ident, ident_len, ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0) return false;
    loom_err err;
    return loom_wire_send(s->router, env, ZMQ_DONTWAIT, &err) == LOOM_OK;
}

static bool send_error(loom_server *s, const uint8_t *ident, size_t ident_len, const char *request_id, const char *msg)
{
    Loom__GenerateChunk c = LOOM__GENERATE_CHUNK__INIT;
    c.request_id = (char *)(request_id ? request_id : "");
    c.finish_reason = LOOM__FINISH_REASON__FINISH_ERROR;
    c.error = (char *)msg;
    Loom__Envelope env = LOOM__ENVELOPE__INIT;
    env.body_case = LOOM__ENVELOPE__BODY_CHUNK;
    env.chunk = &c;
    if (s->o.verbose) fprintf(stderr, "loom serve: request %s: %s\n", request_id && *request_id ? request_id : "(none)", msg);
    return send_to(s, ident, ident_len, &env);
}

/* Sends a chunk of r: the ids out[from..n_out), the text that is ready, and
 * for a terminal chunk the finish reason, usage and prompt ids. */
static bool send_chunk(loom_server *s, loom_req *r, int64_t from, Loom__FinishReason fin, const char *error)
{
    bool final = fin != LOOM__FINISH_REASON__FINISH_NONE;
    const char *text;
    size_t len;
    loom_textstream_take(&r->ts, final, &text, &len);
    char save = 0;
    char *mut = (char *)text;
    if (len) { /* protobuf-c wants a NUL-terminated string: cut in place, restore after */
        save = mut[len];
        mut[len] = '\0';
    }
    Loom__GenerateChunk c = LOOM__GENERATE_CHUNK__INIT;
    Loom__Usage u = LOOM__USAGE__INIT;
    c.request_id = r->id;
    c.n_token_ids = (size_t)(r->n_out - from);
    c.token_ids = r->out + from;
    c.text = len ? mut : (char *)"";
    c.finish_reason = fin;
    c.error = (char *)(error ? error : "");
    if (final) {
        u.prompt_tokens = (int32_t)r->n_prompt;
        u.completion_tokens = (int32_t)r->n_out;
        c.usage = &u;
        c.n_prompt_ids = (size_t)r->n_prompt;
        c.prompt_ids = r->toks;
    }
    Loom__Envelope env = LOOM__ENVELOPE__INIT;
    env.body_case = LOOM__ENVELOPE__BODY_CHUNK;
    env.chunk = &c;
    bool ok = send_to(s, r->ident, r->ident_len, &env);
    if (len) mut[len] = save;
    return ok;
}

/* Gives r's KV blocks back at once. Safe while a plan naming them is in flight:
 * every worker runs plans in order, so a later plan that takes these blocks
 * writes them after the in-flight one has read them (and r's result is ignored). */
static void release_blocks(loom_server *s, loom_req *r)
{
    if (!r->has_blocks) return;
    loom_err e;
    loom_block_manager_free(s->bm, r->slot, &e);
    r->has_blocks = false;
}

/* Ends r with a terminal chunk (unless the client is gone) and marks it done. */
static void finish_req(loom_server *s, loom_req *r, int64_t from, Loom__FinishReason fin, const char *error)
{
    if (fin != LOOM__FINISH_REASON__FINISH_CANCELLED || error) {
        loom_err e;
        if (loom_textstream_finish(&r->ts, &e) != LOOM_OK) {
            fin = LOOM__FINISH_REASON__FINISH_ERROR;
            error = "detokenization failed";
        }
    }
    if (!r->stream) from = 0;
    send_chunk(s, r, from, fin, error);
    r->state = REQ_DONE;
    s->completed++;
    release_blocks(s, r);
}

/* --- admission ------------------------------------------------------------- */

static loom_status push_waiting(loom_server *s, loom_req *r, loom_err *err)
{
    if (s->n_waiting == s->cap_waiting) {
        int64_t cap = s->cap_waiting ? s->cap_waiting * 2 : 64;
        loom_req **w = realloc(s->waiting, (size_t)cap * sizeof *w);
        if (!w) return loom_err_set(err, LOOM_ENOMEM, "out of memory");
        s->waiting = w;
        s->cap_waiting = cap;
    }
    s->waiting[s->n_waiting++] = r;
    return LOOM_OK;
}

static loom_req *find_req(loom_server *s, const uint8_t *ident, size_t ident_len, const char *id, int64_t *waiting_index)
{
    *waiting_index = -1;
    for (int64_t i = 0; i < s->n_waiting; i++) {
        loom_req *r = s->waiting[i];
        if (r->ident_len == ident_len && !memcmp(r->ident, ident, ident_len) && !strcmp(r->id, id)) {
            *waiting_index = i;
            return r;
        }
    }
    for (int64_t i = 0; i < s->n_batch; i++) {
        loom_req *r = s->batch[i];
        if (r && r->state == REQ_RUNNING && r->ident_len == ident_len && !memcmp(r->ident, ident, ident_len) && !strcmp(r->id, id))
            return r;
    }
    return NULL;
}

/* Validates a GenerateRequest and turns it into a waiting request. On error
 * fills err with the message for the client. */
static loom_status admit(loom_server *s, const uint8_t *ident, size_t ident_len, const Loom__GenerateRequest *g, loom_err *err)
{
    int64_t dummy;
    if (!g->request_id || !g->request_id[0]) return loom_err_set(err, LOOM_EINVAL, "request_id is empty");
    if (find_req(s, ident, ident_len, g->request_id, &dummy))
        return loom_err_set(err, LOOM_EINVAL, "request_id %s is already in use by this client", g->request_id);
    if (g->max_new_tokens <= 0) return loom_err_set(err, LOOM_EINVAL, "max_new_tokens must be at least 1 (got %d)", g->max_new_tokens);
    if (g->n_stop > LOOM_MAX_STOP_STRINGS) return loom_err_set(err, LOOM_EINVAL, "at most %d stop strings", LOOM_MAX_STOP_STRINGS);
    if (g->n_stop_ids > MAX_STOP_IDS) return loom_err_set(err, LOOM_EINVAL, "at most %d stop ids", MAX_STOP_IDS);
    loom_sampling_params sp = {.temperature = g->temperature, .top_k = g->top_k, .top_p = g->top_p == 0 ? 1.0f : g->top_p,
                               .repetition_penalty = g->repetition_penalty == 0 ? 1.0f : g->repetition_penalty, .seed = g->seed};
    LOOM_CHECK(loom_sampling_validate(&sp, err));
    loom_req *r = calloc(1, sizeof *r);
    if (!r) return loom_err_set(err, LOOM_ENOMEM, "out of memory");
    loom_status st = LOOM_OK;
    r->id = strdup(g->request_id);
    memcpy(r->ident, ident, ident_len);
    r->ident_len = ident_len;
    r->stream = g->stream;
    r->sp = sp;
    r->max_new = g->max_new_tokens;
    if (!r->id) {
        st = loom_err_set(err, LOOM_ENOMEM, "out of memory");
        goto fail;
    }
    int32_t *encoded = NULL;
    if (g->n_prompt_ids > 0) {
        r->n_prompt = (int64_t)g->n_prompt_ids;
    } else {
        if (!g->prompt || !g->prompt[0]) {
            st = loom_err_set(err, LOOM_EINVAL, "the prompt is empty (give prompt text or prompt_ids)");
            goto fail;
        }
        if (!s->tok) {
            st = loom_err_set(err, LOOM_EINVAL, "the model has no tokenizer.json; send prompt_ids");
            goto fail;
        }
        size_t n = 0;
        LOOM_CHECK_GOTO(st, loom_tokenizer_encode(s->tok, g->prompt, strlen(g->prompt), true, &encoded, &n, err), fail);
        r->n_prompt = (int64_t)n;
        if (n == 0) {
            free(encoded);
            st = loom_err_set(err, LOOM_EINVAL, "the prompt encodes to no tokens");
            goto fail;
        }
    }
    r->toks = malloc((size_t)(r->n_prompt + r->max_new) * sizeof *r->toks);
    if (!r->toks) {
        free(encoded);
        st = loom_err_set(err, LOOM_ENOMEM, "out of memory");
        goto fail;
    }
    memcpy(r->toks, encoded ? encoded : g->prompt_ids, (size_t)r->n_prompt * sizeof *r->toks);
    free(encoded);
    r->out = r->toks + r->n_prompt;
    for (int64_t i = 0; i < r->n_prompt; i++)
        if (r->toks[i] < 0 || r->toks[i] >= s->cfg.vocab_size) {
            st = loom_err_set(err, LOOM_EINVAL, "prompt token id %d is outside the vocabulary [0, %lld)", r->toks[i], (long long)s->cfg.vocab_size);
            goto fail;
        }
    if (r->n_prompt + r->max_new > s->o.max_seq_len) {
        st = loom_err_set(err, LOOM_EINVAL, "prompt (%lld tokens) + max_new_tokens (%lld) exceeds --max-seq-len %lld", (long long)r->n_prompt,
                          (long long)r->max_new, (long long)s->o.max_seq_len);
        goto fail;
    }
    for (size_t i = 0; i < g->n_stop_ids; i++) {
        if (g->stop_ids[i] < 0 || g->stop_ids[i] >= s->cfg.vocab_size) {
            st = loom_err_set(err, LOOM_EINVAL, "stop id %d is outside the vocabulary", g->stop_ids[i]);
            goto fail;
        }
        r->stop_ids[r->n_stop_ids++] = g->stop_ids[i];
    }
    if (!s->o.chunked_context && r->n_prompt > s->o.max_num_tokens) {
        st = loom_err_set(err, LOOM_EINVAL, "prompt (%lld tokens) exceeds --max-num-tokens %lld; raise it or serve with --enable-chunked-context",
                          (long long)r->n_prompt, (long long)s->o.max_num_tokens);
        goto fail;
    }
    if (!loom_block_manager_can_admit(s->bm, r->n_prompt + r->max_new, err)) {
        st = LOOM_EINVAL;
        goto fail;
    }
    LOOM_CHECK_GOTO(st, loom_textstream_init(&r->ts, s->tok, (const char *const *)g->stop, (int)g->n_stop, err), fail);
    r->state = REQ_WAITING;
    LOOM_CHECK_GOTO(st, push_waiting(s, r, err), fail);
    return LOOM_OK;
fail:
    req_free(r);
    return st;
}

static void cancel(loom_server *s, const uint8_t *ident, size_t ident_len, const char *id)
{
    int64_t wi;
    loom_req *r = id ? find_req(s, ident, ident_len, id, &wi) : NULL;
    if (!r) {
        char msg[512];
        snprintf(msg, sizeof msg, "cancel: no running or waiting request with id %s", id && *id ? id : "(empty)");
        send_error(s, ident, ident_len, id, msg);
        return;
    }
    finish_req(s, r, r->n_out, LOOM__FINISH_REASON__FINISH_CANCELLED, NULL);
    if (wi >= 0) {
        memmove(s->waiting + wi, s->waiting + wi + 1, (size_t)(s->n_waiting - wi - 1) * sizeof *s->waiting);
        s->n_waiting--;
        if (s->blocked_head == r) s->blocked_head = NULL; /* its address may come back with another request */
        req_free(r);
    }
}

static void reply_stats(loom_server *s, const uint8_t *ident, size_t ident_len)
{
    Loom__StatsReply sr = LOOM__STATS_REPLY__INIT;
    int64_t running = 0;
    for (int64_t i = 0; i < s->n_batch; i++) running += s->batch[i] && s->batch[i]->state == REQ_RUNNING;
    sr.running = (int32_t)running;
    sr.waiting = (int32_t)s->n_waiting;
    sr.tokens_per_s = s->tokens_per_s;
    loom_block_manager_stats bs;
    loom_block_manager_stats_get(s->bm, &bs);
    sr.kv_blocks_total = bs.n_blocks;
    sr.kv_blocks_used = bs.used;
    sr.kv_blocks_free = bs.free;
    sr.kv_blocks_cached = bs.cached;
    sr.tokens_per_block = (int32_t)bs.tokens_per_block;
    sr.kv_used_fraction = bs.n_blocks ? (double)bs.used / (double)bs.n_blocks : 0.0;
    sr.prefix_hit_rate = bs.prefix_query_tokens ? (double)bs.prefix_hit_tokens / (double)bs.prefix_query_tokens : 0.0;
    sr.preemptions = s->preemptions;
    sr.refused = s->refused;
    sr.completed = s->completed;
    sr.timed_steps = s->timed_steps;
    if (s->timed_steps) {
        sr.step_cycle_ms = s->cycle_s * 1e3 / (double)s->timed_steps;
        sr.step_compute_ms = s->compute_s * 1e3 / (double)s->timed_steps;
        sr.overhead_fraction = s->cycle_s > 0 ? 1.0 - s->compute_s / s->cycle_s : 0.0;
    }
    Loom__Envelope env = LOOM__ENVELOPE__INIT;
    env.body_case = LOOM__ENVELOPE__BODY_STATS_REPLY;
    env.stats_reply = &sr;
    send_to(s, ident, ident_len, &env);
}

/* Handles one client message (identity frame, then the envelope). */
static void on_client(loom_server *s)
{
    uint8_t ident[MAX_IDENT];
    int n = zmq_recv(s->router, ident, sizeof ident, ZMQ_DONTWAIT);
    if (n < 0) return;
    size_t ident_len = (size_t)(n > MAX_IDENT ? MAX_IDENT : n);
    int more = 0;
    size_t ml = sizeof more;
    zmq_getsockopt(s->router, ZMQ_RCVMORE, &more, &ml);
    if (!more) return; /* identity without a body: nothing to answer */
    Loom__Envelope *env = NULL;
    loom_err err = {{0}};
    loom_status st = loom_wire_recv(s->router, ZMQ_DONTWAIT, &env, &err);
    if (st != LOOM_OK) {
        send_error(s, ident, ident_len, "", err.msg);
        return;
    }
    switch (env->body_case) {
    case LOOM__ENVELOPE__BODY_GENERATE:
        if (admit(s, ident, ident_len, env->generate, &err) != LOOM_OK) {
            s->refused++;
            send_error(s, ident, ident_len, env->generate->request_id, err.msg);
        }
        break;
    case LOOM__ENVELOPE__BODY_CANCEL:
        cancel(s, ident, ident_len, env->cancel->request_id);
        break;
    case LOOM__ENVELOPE__BODY_HEALTH: {
        Loom__HealthReply hr = LOOM__HEALTH_REPLY__INIT;
        hr.serving = 1;
        Loom__Envelope out = LOOM__ENVELOPE__INIT;
        out.body_case = LOOM__ENVELOPE__BODY_HEALTH_REPLY;
        out.health_reply = &hr;
        send_to(s, ident, ident_len, &out);
        break;
    }
    case LOOM__ENVELOPE__BODY_STATS:
        reply_stats(s, ident, ident_len);
        break;
    default: {
        char msg[256];
        snprintf(msg, sizeof msg, "wrong message type \"%s\": clients send generate, cancel, health or stats", loom_wire_body_name(env->body_case));
        send_error(s, ident, ident_len, "", msg);
        break;
    }
    }
    loom_wire_free(env);
}

/* --- the batch ------------------------------------------------------------- */

static bool batch_active(const loom_server *s)
{
    for (int64_t i = 0; i < s->n_batch; i++)
        if (s->batch[i] && s->batch[i]->state == REQ_RUNNING) return true;
    for (int i = 0; i < s->n_mbs; i++)
        if (s->mbs[i].inflight) return true;
    return false;
}

static int64_t known_len(const loom_req *r) { return r->n_prompt + r->n_out; }

/* Puts r back at the front of the queue (a preempted request resumes first). */
static loom_status push_front_waiting(loom_server *s, loom_req *r, loom_err *err)
{
    LOOM_CHECK(push_waiting(s, r, err));
    memmove(s->waiting + 1, s->waiting, (size_t)(s->n_waiting - 1) * sizeof *s->waiting);
    s->waiting[0] = r;
    return LOOM_OK;
}

/* Gives r a slot's sequence in the block manager and maps the longest cached
 * prefix of its known tokens. On failure (out of memory) r stays waiting. */
static loom_status seat(loom_server *s, loom_req *r, int64_t slot, loom_err *err)
{
    LOOM_CHECK(loom_block_manager_add(s->bm, slot, 0, known_len(r) + (r->max_new - r->n_out), err));
    int64_t cached = 0;
    loom_status st = loom_block_manager_match_prefix(s->bm, slot, r->toks, known_len(r), &cached, err);
    if (st != LOOM_OK) {
        loom_err e;
        loom_block_manager_free(s->bm, slot, &e);
        return st;
    }
    r->slot = slot;
    r->has_blocks = true;
    r->fed = cached;
    r->fresh = true;
    r->admit_order = ++s->admit_counter;
    r->state = REQ_RUNNING;
    return LOOM_OK;
}

/* Blocks the running sequences still need for the known tokens they have not
 * fed yet (prompts being fed in chunks). */
static int64_t pending_blocks(const loom_server *s)
{
    int64_t n = 0;
    for (int64_t i = 0; i < s->n_batch; i++) {
        const loom_req *r = s->batch[i];
        if (r && r->state == REQ_RUNNING && r->has_blocks && r->fed < known_len(r))
            n += loom_block_manager_blocks_needed(s->bm, r->slot, known_len(r) - r->fed);
    }
    return n;
}

/* Whether the head of the queue fits now: the blocks its unfed tokens need,
 * beside what running prompts still need, within what the pool can give. With
 * nothing running it is always let in (it fits an empty pool: admission
 * checked that). */
static bool fits_now(loom_server *s, loom_req *r, int64_t slot, int64_t pending, bool anyone_running, loom_err *err)
{
    /* The same head as last time, with no more room and no newly cached blocks
     * it could match: it still does not fit (and seating it would allocate). */
    loom_block_manager_stats bs;
    loom_block_manager_stats_get(s->bm, &bs);
    const int64_t room = loom_block_manager_available(s->bm) - pending;
    if (anyone_running && r == s->blocked_head && room <= s->blocked_room && bs.cached_total == s->blocked_cached) return false;
    if (seat(s, r, slot, err) != LOOM_OK) return false;
    int64_t need = loom_block_manager_blocks_needed(s->bm, slot, known_len(r) - r->fed);
    if (!anyone_running || need + pending <= loom_block_manager_available(s->bm)) {
        s->blocked_head = NULL;
        return true;
    }
    loom_block_manager_free(s->bm, slot, err); /* not yet: give its matched blocks back */
    r->has_blocks = false;
    r->state = REQ_WAITING;
    s->blocked_head = r;
    s->blocked_room = room;
    s->blocked_cached = bs.cached_total;
    return false;
}

/* Drops preempted requests (now waiting again) from a micro-batch; with
 * free_done, also frees finished ones and their slots. */
static void mb_compact(loom_server *s, micro_batch *mb, bool free_done)
{
    int64_t k = 0;
    for (int64_t i = 0; i < mb->n; i++) {
        loom_req *r = mb->reqs[i];
        if (r->state == REQ_WAITING) continue;
        if (free_done && r->state == REQ_DONE) {
            s->batch[r->slot] = NULL;
            req_free(r);
            continue;
        }
        mb->reqs[k++] = r;
    }
    mb->n = k;
}

/* Frees the finished batch and starts the next one from the queue: as many
 * requests as fit (at least one). */
static void start_batch(loom_server *s)
{
    for (int64_t i = 0; i < s->n_batch; i++) {
        req_free(s->batch[i]);
        s->batch[i] = NULL;
    }
    for (int i = 0; i < s->o.pp; i++) {
        s->mbs[i].n = 0;
        s->mbs[i].inflight = 0;
    }
    int64_t n = 0, pending = 0;
    loom_err err;
    while (n < s->o.max_batch_size && s->n_waiting > 0) {
        loom_req *r = s->waiting[0];
        if (!fits_now(s, r, n, pending, n > 0, &err)) break;
        pending += loom_block_manager_blocks_needed(s->bm, n, known_len(r) - r->fed);
        s->batch[n++] = r;
        memmove(s->waiting, s->waiting + 1, (size_t)(s->n_waiting - 1) * sizeof *s->waiting);
        s->n_waiting--;
    }
    s->n_batch = n;
    s->n_mbs = (int)(n < s->o.pp ? n : s->o.pp);
    for (int64_t i = 0; i < n; i++) {
        micro_batch *mb = &s->mbs[i % s->n_mbs];
        mb->reqs[mb->n++] = s->batch[i];
    }
}

/* In-flight batching: slots whose request ended (and whose micro-batch has no
 * plan in flight that still names them) are freed, then waiting requests take
 * free slots while the pool has room for them; slot i always belongs to
 * micro-batch i % pp. */
static void admit_inflight(loom_server *s)
{
    for (int m = 0; m < s->n_mbs; m++)
        if (!s->mbs[m].inflight) mb_compact(s, &s->mbs[m], true);
    bool running = false;
    for (int64_t i = 0; i < s->n_batch; i++) running |= s->batch[i] != NULL;
    int64_t pending = -1;
    loom_err err;
    for (int64_t slot = 0; slot < s->n_batch && s->n_waiting > 0; slot++) {
        if (s->batch[slot]) continue;
        micro_batch *mb = &s->mbs[slot % s->n_mbs];
        if (mb->inflight) continue;
        loom_req *r = s->waiting[0];
        if (pending < 0) pending = pending_blocks(s);
        if (!fits_now(s, r, slot, pending, running, &err)) break;
        pending += loom_block_manager_blocks_needed(s->bm, slot, known_len(r) - r->fed);
        running = true;
        memmove(s->waiting, s->waiting + 1, (size_t)(s->n_waiting - 1) * sizeof *s->waiting);
        s->n_waiting--;
        s->batch[slot] = r;
        mb->reqs[mb->n++] = r;
    }
}

/* Preempts r: its blocks go back now (its full blocks stay cached with reuse
 * on), and it waits at the front of the queue to be recomputed from its
 * prompt and the tokens it already streamed. Only requests whose micro-batch
 * has no plan in flight are preempted, so no result can name them. */
static void preempt(loom_server *s, loom_req *r)
{
    release_blocks(s, r);
    s->batch[r->slot] = NULL;
    r->state = REQ_WAITING;
    s->preemptions++;
    loom_err err;
    if (push_front_waiting(s, r, &err) != LOOM_OK) { /* out of memory: it cannot wait, so it ends */
        r->state = REQ_RUNNING;
        finish_req(s, r, r->n_out, LOOM__FINISH_REASON__FINISH_ERROR, "preempted, and out of memory to queue it again");
        return;
    }
    if (s->o.verbose)
        fprintf(stderr, "loom serve: KV pool full: request %s preempted after %lld tokens (recomputed later)\n", r->id, (long long)r->n_out);
}

/* Makes room for `need` blocks for r: preempts the most recently admitted
 * running sequence (not in flight, not already in this plan) while the pool
 * is short. Returns true if r may append; false if r itself was the latest
 * (and is preempted) or no one can give way yet (r waits a step). */
static bool make_room(loom_server *s, loom_req *r, int64_t need)
{
    while (need > loom_block_manager_available(s->bm)) {
        loom_req *victim = NULL;
        for (int m = 0; m < s->n_mbs; m++) {
            if (s->mbs[m].inflight) continue;
            for (int64_t i = 0; i < s->mbs[m].n; i++) {
                loom_req *q = s->mbs[m].reqs[i];
                if (q == r || q->state != REQ_RUNNING || !q->has_blocks || q->planned) continue;
                if (!victim || q->admit_order > victim->admit_order) victim = q;
            }
        }
        if (!victim) return false;
        if (victim->admit_order < r->admit_order) {
            preempt(s, r);
            return false;
        }
        preempt(s, victim);
    }
    return true;
}

/* Builds and publishes the next plan of a micro-batch: decode tokens first,
 * then prompt chunks (and recomputes) in the room left under max_num_tokens;
 * takes the blocks each sequence needs, preempting when the pool is short. */
static loom_status publish_plan(loom_server *s, micro_batch *mb, loom_err *err)
{
    bool timing = mb->timing;
    mb->timing = false; /* a cycle counts only if this very call publishes */
    size_t n_seqs = 0;
    int64_t used = 0;
    for (int pass = 0; pass < 2; pass++) {
        for (int64_t i = 0; i < mb->n; i++) {
            loom_req *r = mb->reqs[i];
            if (r->state != REQ_RUNNING || r->planned) continue;
            int64_t left = known_len(r) - r->fed;
            if (left <= 0) continue;
            bool decoding = left == 1 && r->n_out > 0 && !r->fresh;
            if ((pass == 0) != decoding) continue;
            int64_t room = s->o.max_num_tokens - used;
            if (room <= 0) break;
            int64_t n = left < room ? left : room;
            if (n < left && !s->o.chunked_context && r->n_out == 0) continue; /* the whole prompt in one step, later
                                                                                 (a recompute may still be chunked) */
            if (!make_room(s, r, loom_block_manager_blocks_needed(s->bm, r->slot, n))) continue;
            LOOM_CHECK(loom_block_manager_append_tokens(s->bm, r->slot, r->toks + r->fed, n, err));
            const int32_t *table;
            int64_t n_table;
            LOOM_CHECK(loom_block_manager_table(s->bm, r->slot, &table, &n_table, err));
            Loom__PlanSequence *ps = &s->plan_seqs[n_seqs];
            Loom__SamplingParams *sp = &s->plan_sp[n_seqs];
            loom__plan_sequence__init(ps);
            loom__sampling_params__init(sp);
            ps->seq_id = (uint64_t)r->slot;
            ps->token_ids = r->toks + r->fed;
            ps->n_token_ids = (size_t)n;
            ps->positions = s->positions + used;
            ps->n_positions = (size_t)n;
            for (int64_t k = 0; k < n; k++) s->positions[used + k] = (int32_t)(r->fed + k);
            ps->block_table = (int32_t *)table;
            ps->n_block_table = (size_t)n_table;
            ps->sample = r->fed + n == known_len(r);
            if (r->fresh) {
                ps->start = 1;
                sp->temperature = r->sp.temperature;
                sp->top_k = r->sp.top_k;
                sp->top_p = r->sp.top_p;
                sp->repetition_penalty = r->sp.repetition_penalty;
                sp->seed = r->sp.seed;
                ps->sampling = sp;
                ps->samples_before = (int32_t)r->n_out;
                if (r->sp.repetition_penalty != 1.0f && r->fed > 0) {
                    ps->history_prefix = r->toks;
                    ps->n_history_prefix = (size_t)r->fed;
                }
                r->fresh = false;
            }
            r->fed += n;
            r->planned = true;
            s->plan_seq_ptrs[n_seqs++] = ps;
            used += n;
        }
    }
    for (int64_t i = 0; i < mb->n; i++) mb->reqs[i]->planned = false;
    mb_compact(s, mb, false);
    if (n_seqs == 0) return LOOM_OK;
    mb->timing = timing;
    Loom__BatchPlan plan = LOOM__BATCH_PLAN__INIT;
    plan.step = s->next_step++;
    plan.n_seqs = n_seqs;
    plan.seqs = s->plan_seq_ptrs;
    Loom__Envelope env = LOOM__ENVELOPE__INIT;
    env.body_case = LOOM__ENVELOPE__BODY_PLAN;
    env.plan = &plan;
    LOOM_CHECK(loom_wire_send(s->pub, &env, 0, err));
    mb->inflight = plan.step;
    double t = loom_now_s();
    if (mb->timing) {
        s->timed_steps++;
        s->cycle_s += t - mb->published_at;
        s->compute_s += mb->result_compute_ms * 1e-3;
    }
    mb->published_at = t;
    return LOOM_OK;
}

static bool is_stop_id(const loom_req *r, int32_t id)
{
    for (int i = 0; i < r->n_stop_ids; i++)
        if (r->stop_ids[i] == id) return true;
    return false;
}

/* A sampled token for r: record, detokenize, decide whether r is done, stream. */
static void on_token(loom_server *s, loom_req *r, int32_t id)
{
    int64_t from = r->n_out;
    r->out[r->n_out++] = id;
    s->tokens_total++;
    loom_err err;
    if (loom_textstream_push(&r->ts, id, &err) != LOOM_OK) {
        finish_req(s, r, from, LOOM__FINISH_REASON__FINISH_ERROR, err.msg);
        return;
    }
    Loom__FinishReason fin = LOOM__FINISH_REASON__FINISH_NONE;
    if (loom_config_is_eos(&s->cfg, id)) fin = LOOM__FINISH_REASON__FINISH_EOS;
    else if (is_stop_id(r, id) || r->ts.stopped) fin = LOOM__FINISH_REASON__FINISH_STOP;
    else if (r->n_out == r->max_new) fin = LOOM__FINISH_REASON__FINISH_LENGTH;
    if (fin != LOOM__FINISH_REASON__FINISH_NONE) {
        finish_req(s, r, from, fin, NULL);
    } else if (r->stream && !send_chunk(s, r, from, fin, NULL)) {
        r->state = REQ_DONE; /* the client is gone: free its sequence and blocks */
        release_blocks(s, r);
        if (s->o.verbose) fprintf(stderr, "loom serve: client of request %s disconnected; cancelled\n", r->id);
    }
}

/* Handles one StepResult (unpacked into the result arena: nothing is
 * allocated per step). Returns non-OK when a worker reports a failure. */
static loom_status on_result(loom_server *s, loom_err *err)
{
    Loom__Envelope *env = NULL;
    loom_err rerr;
    loom_status st = loom_wire_recv_arena(s->pull, ZMQ_DONTWAIT, s->result_arena, &env, &rerr);
    if (st == LOOM_EIO) return errno == EAGAIN || errno == EINTR ? LOOM_OK : loom_err_set(err, LOOM_EIO, "result socket: %s", rerr.msg);
    if (st != LOOM_OK) return loom_err_set(err, LOOM_EINTERNAL, "a worker sent an invalid result: %s", rerr.msg);
    if (env->body_case != LOOM__ENVELOPE__BODY_RESULT) {
        return LOOM_OK;
    }
    const Loom__StepResult *res = env->result;
    if (res->error && res->error[0]) {
        st = loom_err_set(err, LOOM_EINTERNAL, "%s", res->error);
        return st;
    }
    if (res->step == 0) { /* a late ping answer */
        return LOOM_OK;
    }
    micro_batch *mb = NULL;
    for (int i = 0; i < s->n_mbs; i++)
        if (s->mbs[i].inflight == res->step) mb = &s->mbs[i];
    if (!mb || res->n_seq_ids != res->n_sampled_ids) {
        return loom_err_set(err, LOOM_EINTERNAL, "result for step %llu does not match a plan in flight", (unsigned long long)res->step);
    }
    mb->inflight = 0;
    mb->timing = true;
    mb->result_compute_ms = res->compute_ms;
    /* The plan's KV is written: its full blocks may be shared now, generated
     * tokens included (a follow-up turn that repeats the answer, or this
     * request's own recompute after a preemption, matches them too). */
    if (s->o.enable_kv_reuse)
        for (int64_t i = 0; i < mb->n; i++) {
            loom_req *r = mb->reqs[i];
            if (r->state != REQ_RUNNING || !r->has_blocks) continue;
            loom_err e;
            if (loom_block_manager_commit_full_blocks(s->bm, r->slot, r->fed, &e) != LOOM_OK)
                return loom_err_set(err, LOOM_EINTERNAL, "%s", e.msg);
        }
    for (size_t i = 0; i < res->n_seq_ids; i++) {
        if (res->seq_ids[i] >= (uint64_t)s->n_batch) continue;
        loom_req *r = s->batch[res->seq_ids[i]];
        if (r && r->state == REQ_RUNNING) on_token(s, r, res->sampled_ids[i]);
    }
    double t = loom_now_s();
    if (t - s->rate_t >= 1.0) {
        s->tokens_per_s = (double)(s->tokens_total - s->rate_tokens) / (t - s->rate_t);
        s->rate_t = t;
        s->rate_tokens = (double)s->tokens_total;
    }
    return LOOM_OK;
}

/* Every request still open gets an error chunk (shutdown or worker failure). */
static void fail_all(loom_server *s, const char *msg)
{
    for (int64_t i = 0; i < s->n_batch; i++) {
        loom_req *r = s->batch[i];
        if (r && r->state == REQ_RUNNING) finish_req(s, r, r->stream ? r->n_out : 0, LOOM__FINISH_REASON__FINISH_ERROR, msg);
    }
    for (int64_t i = 0; i < s->n_waiting; i++) {
        loom_req *r = s->waiting[i]; /* a preempted one may have streamed already */
        finish_req(s, r, r->stream ? r->n_out : 0, LOOM__FINISH_REASON__FINISH_ERROR, msg);
        req_free(r);
    }
    s->n_waiting = 0;
}

/* --- lifecycle ------------------------------------------------------------- */

static loom_status bind_ephemeral(loom_server *s, void *sock, char *ep, size_t cap, loom_err *err)
{
    char bind_ep[300];
    bool local = !strcmp(s->o.control_host, "127.0.0.1") || !strcmp(s->o.control_host, "localhost");
    snprintf(bind_ep, sizeof bind_ep, "tcp://%s:*", local ? "127.0.0.1" : "*");
    if (zmq_bind(sock, bind_ep) != 0) return loom_err_set(err, LOOM_EIO, "cannot bind %s: %s", bind_ep, zmq_strerror(zmq_errno()));
    char last[256];
    size_t len = sizeof last;
    zmq_getsockopt(sock, ZMQ_LAST_ENDPOINT, last, &len);
    const char *port = strrchr(last, ':');
    if (!port) return loom_err_set(err, LOOM_EINTERNAL, "unexpected endpoint %s", last);
    snprintf(ep, cap, "tcp://%s%s", s->o.control_host, port);
    return LOOM_OK;
}

loom_server *loom_server_create(const loom_server_opts *o, int n_workers, loom_err *err)
{
    loom_server *s = calloc(1, sizeof *s);
    if (!s) {
        loom_err_set(err, LOOM_ENOMEM, "out of memory");
        return NULL;
    }
    s->o = *o;
    s->n_workers = n_workers;
    s->next_step = 1;
    if (loom_config_load(o->model_dir, &s->cfg, err) != LOOM_OK) goto fail;
    char tpath[4096];
    if (loom_path_join(tpath, sizeof tpath, o->model_dir, "tokenizer.json", err) != LOOM_OK) goto fail;
    if (loom_file_exists(tpath) && !(s->tok = loom_tokenizer_load(o->model_dir, err))) goto fail;
    int64_t B = o->max_batch_size;
    s->batch = calloc((size_t)B, sizeof *s->batch);
    s->mbs = calloc((size_t)o->pp, sizeof *s->mbs);
    s->plan_seqs = calloc((size_t)B, sizeof *s->plan_seqs);
    s->plan_seq_ptrs = calloc((size_t)B, sizeof *s->plan_seq_ptrs);
    s->plan_sp = calloc((size_t)B, sizeof *s->plan_sp);
    s->positions = calloc((size_t)o->max_num_tokens, sizeof *s->positions);
    if (!(s->result_arena = loom_wire_arena_create((size_t)1 << 14, err))) goto fail;
    if (!s->batch || !s->mbs || !s->plan_seqs || !s->plan_seq_ptrs || !s->plan_sp || !s->positions) goto oom;
    for (int i = 0; i < o->pp; i++)
        if (!(s->mbs[i].reqs = calloc((size_t)B, sizeof *s->mbs[i].reqs))) goto oom;
    s->zctx = zmq_ctx_new();
    s->router = zmq_socket(s->zctx, ZMQ_ROUTER);
    s->pub = zmq_socket(s->zctx, ZMQ_PUB);
    s->pull = zmq_socket(s->zctx, ZMQ_PULL);
    int one = 1, zero = 0, linger = 1000;
    zmq_setsockopt(s->router, ZMQ_ROUTER_MANDATORY, &one, sizeof one);
    zmq_setsockopt(s->router, ZMQ_SNDHWM, &zero, sizeof zero);
    zmq_setsockopt(s->pub, ZMQ_SNDHWM, &zero, sizeof zero);
    for (void **sock = (void *[]){s->router, s->pub, s->pull, NULL}; *sock; sock++) zmq_setsockopt(*sock, ZMQ_LINGER, &linger, sizeof linger);
    if (zmq_bind(s->router, o->listen) != 0) {
        loom_err_set(err, LOOM_EIO, "cannot listen on %s: %s", o->listen, zmq_strerror(zmq_errno()));
        goto fail;
    }
    if (bind_ephemeral(s, s->pub, s->plan_ep, sizeof s->plan_ep, err) != LOOM_OK ||
        bind_ephemeral(s, s->pull, s->result_ep, sizeof s->result_ep, err) != LOOM_OK)
        goto fail;
    if (!o->static_batching) { /* every slot, and one micro-batch per stage, from the start */
        s->n_batch = B;
        s->n_mbs = o->pp;
    }
    s->t_start = s->rate_t = loom_now_s();
    return s;
oom:
    loom_err_set(err, LOOM_ENOMEM, "out of memory");
fail:
    loom_server_destroy(s);
    return NULL;
}

const char *loom_server_plan_endpoint(const loom_server *s) { return s->plan_ep; }
const char *loom_server_result_endpoint(const loom_server *s) { return s->result_ep; }

/* Publishes pings until every worker has answered one. */
static loom_status wait_workers(loom_server *s, loom_err *err)
{
    bool *seen = calloc((size_t)s->n_workers, sizeof *seen);
    if (!seen) return loom_err_set(err, LOOM_ENOMEM, "out of memory");
    int n_seen = 0;
    double t0 = loom_now_s();
    loom_status st = LOOM_OK;
    while (n_seen < s->n_workers) {
        if (g_stop) {
            st = loom_err_set(err, LOOM_EIO, "interrupted while waiting for the workers");
            break;
        }
        if (loom_now_s() - t0 > PING_TIMEOUT_S) {
            st = loom_err_set(err, LOOM_EIO, "only %d of %d workers reached the coordinator at %s within %.0f s", n_seen, s->n_workers,
                              s->plan_ep, PING_TIMEOUT_S);
            break;
        }
        Loom__BatchPlan ping = LOOM__BATCH_PLAN__INIT;
        Loom__Envelope env = LOOM__ENVELOPE__INIT;
        env.body_case = LOOM__ENVELOPE__BODY_PLAN;
        env.plan = &ping;
        if ((st = loom_wire_send(s->pub, &env, 0, err)) != LOOM_OK) break;
        zmq_pollitem_t it = {s->pull, 0, ZMQ_POLLIN, 0};
        if (zmq_poll(&it, 1, 50) > 0) {
            Loom__Envelope *r = NULL;
            loom_err rerr;
            while (loom_wire_recv(s->pull, ZMQ_DONTWAIT, &r, &rerr) == LOOM_OK) {
                if (r->body_case == LOOM__ENVELOPE__BODY_RESULT && r->result->step == 0 && r->result->worker >= 0 &&
                    r->result->worker < s->n_workers && !seen[r->result->worker]) {
                    const Loom__StepResult *pr = r->result;
                    seen[pr->worker] = true;
                    n_seen++;
                    if (pr->kv_blocks < 1 || pr->tokens_per_block < 1)
                        st = loom_err_set(err, LOOM_EINTERNAL, "worker %d reported no KV pool", pr->worker);
                    else if (s->tokens_per_block && pr->tokens_per_block != s->tokens_per_block)
                        st = loom_err_set(err, LOOM_EINTERNAL, "workers disagree on the KV block size (%d vs %lld tokens)", pr->tokens_per_block,
                                          (long long)s->tokens_per_block);
                    s->tokens_per_block = pr->tokens_per_block;
                    if (!s->kv_blocks || pr->kv_blocks < s->kv_blocks) s->kv_blocks = pr->kv_blocks;
                }
                loom_wire_free(r);
            }
        }
        if (st != LOOM_OK) break;
    }
    free(seen);
    if (st == LOOM_OK && !(s->bm = loom_block_manager_create(s->kv_blocks, s->tokens_per_block, s->o.enable_kv_reuse, err))) st = LOOM_EINVAL;
    return st;
}

loom_status loom_server_run(loom_server *s, loom_err *err)
{
    LOOM_CHECK(wait_workers(s, err));
    fprintf(stderr, "loom serve: %d workers ready (tp %d, pp %d); KV pool %lld blocks of %lld tokens%s; listening on %s\n", s->n_workers, s->o.tp,
            s->o.pp, (long long)s->kv_blocks, (long long)s->tokens_per_block, s->o.enable_kv_reuse ? ", prefix reuse on" : "", s->o.listen);
    loom_status st = LOOM_OK;
    while (!g_stop) {
        if (s->o.static_batching) {
            if (!batch_active(s) && s->n_waiting > 0) start_batch(s);
        } else {
            admit_inflight(s);
        }
        for (int i = 0; i < s->n_mbs && st == LOOM_OK; i++)
            if (!s->mbs[i].inflight) st = publish_plan(s, &s->mbs[i], err);
        if (st != LOOM_OK) break;
        zmq_pollitem_t items[2] = {{s->router, 0, ZMQ_POLLIN, 0}, {s->pull, 0, ZMQ_POLLIN, 0}};
        int rc = zmq_poll(items, 2, 100);
        if (rc < 0) {
            if (zmq_errno() == EINTR) continue;
            st = loom_err_set(err, LOOM_EIO, "poll: %s", zmq_strerror(zmq_errno()));
            break;
        }
        if (items[1].revents & ZMQ_POLLIN)
            for (int k = 0; k < 64 && st == LOOM_OK; k++) {
                int ev = 0;
                size_t el = sizeof ev;
                zmq_getsockopt(s->pull, ZMQ_EVENTS, &ev, &el);
                if (!(ev & ZMQ_POLLIN)) break;
                st = on_result(s, err);
            }
        if (st != LOOM_OK) break;
        if (items[0].revents & ZMQ_POLLIN)
            for (int k = 0; k < 64; k++) {
                int ev = 0;
                size_t el = sizeof ev;
                zmq_getsockopt(s->router, ZMQ_EVENTS, &ev, &el);
                if (!(ev & ZMQ_POLLIN)) break;
                on_client(s);
            }
    }
    if (st != LOOM_OK) {
        char msg[LOOM_ERR_LEN + 32];
        snprintf(msg, sizeof msg, "the cluster failed: %s", err->msg);
        fail_all(s, msg);
    } else {
        fail_all(s, "the server is shutting down");
    }
    return st;
}

void loom_server_shutdown_workers(loom_server *s)
{
    if (!s || !s->pub) return;
    Loom__Shutdown sd = LOOM__SHUTDOWN__INIT;
    Loom__Envelope env = LOOM__ENVELOPE__INIT;
    env.body_case = LOOM__ENVELOPE__BODY_SHUTDOWN;
    env.shutdown = &sd;
    loom_err err;
    loom_wire_send(s->pub, &env, 0, &err);
}

void loom_server_destroy(loom_server *s)
{
    if (!s) return;
    if (s->router) zmq_close(s->router);
    if (s->pub) zmq_close(s->pub);
    if (s->pull) zmq_close(s->pull);
    if (s->zctx) zmq_ctx_term(s->zctx);
    for (int64_t i = 0; i < s->n_batch; i++) req_free(s->batch[i]);
    for (int64_t i = 0; i < s->n_waiting; i++) req_free(s->waiting[i]);
    free(s->waiting);
    free(s->batch);
    if (s->mbs)
        for (int i = 0; i < s->o.pp; i++) free(s->mbs[i].reqs);
    free(s->mbs);
    free(s->plan_seqs);
    free(s->plan_seq_ptrs);
    free(s->plan_sp);
    free(s->positions);
    loom_wire_arena_destroy(s->result_arena);
    loom_tokenizer_destroy(s->tok);
    loom_config_free(&s->cfg);
    loom_block_manager_destroy(s->bm);
    free(s);
}
