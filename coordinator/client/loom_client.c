/* libloomclient: a DEALER socket to the coordinator's ROUTER, one envelope per
 * frame (proto/wire.h). A socket monitor and ZeroMQ heartbeats turn a dead or
 * vanished server into an error at once, so no call hangs on a peer that is
 * gone; timeouts cover a peer that is alive but silent. */
#include "loom_client.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#include "wire.h"

#define MONITOR_ADDR "inproc://loom-client-monitor"
#define SEND_WAIT_MIN_MS 10000   /* sends wait at least this long for a connection */
#define HEARTBEAT_IVL_MS 1000    /* ZMTP ping interval */
#define HEARTBEAT_TIMEOUT_MS 5000 /* no traffic for this long: the connection is dead */
#define HEARTBEAT_TTL_MS 10000   /* tells the server to drop us after this much silence */
#define CANCEL_GRACE_MS 10000    /* how long generate waits for a cancel to be confirmed */
#define LOST_GRACE_MS 250        /* after a disconnection, still take what was already on its way */

struct loom_client {
    void *zctx;                  /* own ZeroMQ context: clients are independent */
    void *sock;                  /* DEALER connected to the coordinator's ROUTER */
    void *mon;                   /* PAIR receiving sock's connect/disconnect events */
    char *endpoint;
    char id_prefix[24];          /* random per client: request ids are unique across clients */
    uint64_t next_id;
    int send_wait_ms;            /* longest wait for a connection before a send */
    bool connected;              /* a connection to the server is up (monitor events) */
    bool lost;                   /* the connection dropped while replies were due */
    int64_t lost_at;             /* when (ms, monotonic) */
    Loom__Envelope *last;        /* the envelope the last chunk handed out points into */
    char **pending;              /* ids of requests in flight (malloc'd strings) */
    size_t n_pending, cap_pending;
};

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Milliseconds left until deadline (-1 = none), for zmq_poll. */
static long remaining_ms(int64_t deadline)
{
    if (deadline < 0) return -1;
    int64_t left = deadline - now_ms();
    return left > 0 ? (long)left : 0;
}

static int64_t deadline_after(int timeout_ms)
{
    return timeout_ms < 0 ? -1 : now_ms() + timeout_ms;
}

/* --- requests in flight ------------------------------------------------------ */

static ptrdiff_t pending_find(const loom_client *c, const char *id)
{
    for (size_t i = 0; i < c->n_pending; i++)
        if (!strcmp(c->pending[i], id)) return (ptrdiff_t)i;
    return -1;
}

static loom_status pending_add(loom_client *c, const char *id, loom_err *err)
{
    if (c->n_pending == c->cap_pending) {
        size_t cap = c->cap_pending ? 2 * c->cap_pending : 8;
        char **p = realloc(c->pending, cap * sizeof *p);
        if (!p) return loom_err_set(err, LOOM_ENOMEM, "out of memory");
        c->pending = p;
        c->cap_pending = cap;
    }
    char *s = strdup(id);
    if (!s) return loom_err_set(err, LOOM_ENOMEM, "out of memory");
    c->pending[c->n_pending++] = s;
    return LOOM_OK;
}

static void pending_remove(loom_client *c, const char *id)
{
    ptrdiff_t i = pending_find(c, id);
    if (i < 0) return;
    free(c->pending[i]);
    c->pending[i] = c->pending[--c->n_pending];
}

static void pending_clear(loom_client *c)
{
    for (size_t i = 0; i < c->n_pending; i++) free(c->pending[i]);
    c->n_pending = 0;
}

/* --- socket plumbing --------------------------------------------------------- */

/* Reads the monitor's queued events into c->connected; with `awaiting` (a
 * reply or chunks are due), a disconnection marks the connection lost. */
static void drain_monitor(loom_client *c, bool awaiting)
{
    for (;;) {
        zmq_msg_t m;
        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, c->mon, ZMQ_DONTWAIT) < 0) {
            zmq_msg_close(&m);
            return;
        }
        /* frame 1: uint16 event + uint32 value; frame 2: the peer address */
        if (zmq_msg_size(&m) >= 2) {
            uint16_t ev;
            memcpy(&ev, zmq_msg_data(&m), sizeof ev);
            if (ev == ZMQ_EVENT_CONNECTED) c->connected = true;
            if (ev == ZMQ_EVENT_DISCONNECTED) {
                c->connected = false;
                if (awaiting && !c->lost) {
                    c->lost = true;
                    c->lost_at = now_ms();
                }
            }
        }
        while (zmq_msg_more(&m) && zmq_msg_recv(&m, c->mon, 0) >= 0) {}
        zmq_msg_close(&m);
    }
}

/* Waits until sock has `events` (ZMQ_POLLIN/ZMQ_POLLOUT) or deadline passes
 * (*ready false). With `awaiting` (a reply or chunks are due), a dropped
 * connection is an error: whatever was in flight is lost with it. What the
 * server sent before closing (a last error chunk) is still delivered first:
 * the monitor may report the drop before the socket shows that message, so a
 * drop only counts once LOST_GRACE_MS pass with nothing left to read. */
static loom_status wait_sock(loom_client *c, short events, int64_t deadline, bool awaiting, bool *ready, loom_err *err)
{
    *ready = false;
    for (;;) {
        int64_t until = deadline;
        if (c->lost && awaiting && (until < 0 || c->lost_at + LOST_GRACE_MS < until)) until = c->lost_at + LOST_GRACE_MS;
        zmq_pollitem_t items[2] = {{c->sock, 0, events, 0}, {c->mon, 0, ZMQ_POLLIN, 0}};
        int n = zmq_poll(items, 2, remaining_ms(until));
        if (n < 0) {
            if (errno == EINTR) continue;
            return loom_err_set(err, LOOM_EIO, "polling the connection to %s failed: %s", c->endpoint, zmq_strerror(errno));
        }
        if (items[1].revents & ZMQ_POLLIN) drain_monitor(c, awaiting);
        if (items[0].revents & events) {
            *ready = true;
            return LOOM_OK;
        }
        if (c->lost && awaiting && now_ms() >= c->lost_at + LOST_GRACE_MS) {
            pending_clear(c);
            return loom_err_set(err, LOOM_EIO, "lost the connection to %s (the server closed it or stopped answering heartbeats)",
                                c->endpoint);
        }
        if (deadline >= 0 && now_ms() >= deadline) return LOOM_OK;
    }
}

/* Sends env once a connection is up, waiting up to wait_ms for one (nothing
 * is queued for a server that is not there). */
static loom_status send_env(loom_client *c, Loom__Envelope *env, int wait_ms, loom_err *err)
{
    bool awaiting = c->n_pending > 0;
    drain_monitor(c, awaiting);
    if (!awaiting) c->lost = false; /* an old drop says nothing about this message */
    int64_t deadline = deadline_after(wait_ms);
    while (!c->connected) {
        zmq_pollitem_t it = {c->mon, 0, ZMQ_POLLIN, 0};
        if (zmq_poll(&it, 1, remaining_ms(deadline)) < 0 && errno != EINTR)
            return loom_err_set(err, LOOM_EIO, "polling the connection to %s failed: %s", c->endpoint, zmq_strerror(errno));
        drain_monitor(c, awaiting);
        if (!c->connected && deadline >= 0 && now_ms() >= deadline)
            return loom_err_set(err, LOOM_EIO, "no connection to %s within %d ms (is the coordinator running there?)",
                                c->endpoint, wait_ms);
    }
    for (;;) {
        loom_status st = loom_wire_send(c->sock, env, ZMQ_DONTWAIT, err);
        if (st == LOOM_OK || errno != EAGAIN) return st;
        bool ready; /* the send queue is full: wait for room */
        LOOM_CHECK(wait_sock(c, ZMQ_POLLOUT, deadline, awaiting, &ready, err));
        if (!ready) return loom_err_set(err, LOOM_EIO, "cannot send to %s: its queue stayed full for %d ms", c->endpoint, wait_ms);
    }
}

/* Receives one envelope if one is waiting: LOOM_OK with *env NULL if none. */
static loom_status recv_env(loom_client *c, Loom__Envelope **env, loom_err *err)
{
    loom_status st = loom_wire_recv(c->sock, ZMQ_DONTWAIT, env, err);
    if (st == LOOM_EIO && errno == EAGAIN) return LOOM_OK;
    if (st != LOOM_OK) return loom_err_wrap(err, st, "reply from %s", c->endpoint);
    return LOOM_OK;
}

static bool is_error_chunk(const Loom__Envelope *env)
{
    return env->body_case == LOOM__ENVELOPE__BODY_CHUNK && env->chunk->finish_reason == LOOM__FINISH_REASON__FINISH_ERROR;
}

static const char *str_or_empty(const char *s)
{
    return s ? s : "";
}

/* --- connect / close --------------------------------------------------------- */

static loom_status set_int(void *sock, int opt, int v, const char *name, loom_err *err)
{
    if (zmq_setsockopt(sock, opt, &v, sizeof v) != 0)
        return loom_err_set(err, LOOM_EIO, "zmq_setsockopt(%s): %s", name, zmq_strerror(errno));
    return LOOM_OK;
}

loom_client *loom_client_connect(const char *endpoint, int timeout_ms, loom_err *err)
{
    loom_status st = LOOM_OK;
    if (!endpoint) endpoint = LOOM_CLIENT_DEFAULT_ENDPOINT;
    if (!*endpoint) {
        loom_err_set(err, LOOM_EINVAL, "the endpoint is empty (expected e.g. %s)", LOOM_CLIENT_DEFAULT_ENDPOINT);
        return NULL;
    }
    loom_client *c = calloc(1, sizeof *c);
    if (!c) goto nomem;
    c->endpoint = strdup(endpoint);
    if (!c->endpoint) goto nomem;
    c->send_wait_ms = timeout_ms > SEND_WAIT_MIN_MS ? timeout_ms : SEND_WAIT_MIN_MS;

    unsigned char rnd[6];
    if (getrandom(rnd, sizeof rnd, 0) != (ssize_t)sizeof rnd) {
        uint64_t t = (uint64_t)now_ms() ^ ((uint64_t)getpid() << 32) ^ (uint64_t)(uintptr_t)c;
        memcpy(rnd, &t, sizeof rnd);
    }
    snprintf(c->id_prefix, sizeof c->id_prefix, "%02x%02x%02x%02x%02x%02x", rnd[0], rnd[1], rnd[2], rnd[3], rnd[4], rnd[5]);

    c->zctx = zmq_ctx_new();
    if (!c->zctx) {
        st = loom_err_set(err, LOOM_EIO, "zmq_ctx_new: %s", zmq_strerror(errno));
        goto fail;
    }
    c->sock = zmq_socket(c->zctx, ZMQ_DEALER);
    c->mon = c->sock ? zmq_socket(c->zctx, ZMQ_PAIR) : NULL;
    if (!c->sock || !c->mon) {
        st = loom_err_set(err, LOOM_EIO, "zmq_socket: %s", zmq_strerror(errno));
        goto fail;
    }
    int64_t maxmsg = (int64_t)LOOM_WIRE_MAX_BYTES;
    LOOM_CHECK_GOTO(st, set_int(c->sock, ZMQ_LINGER, 0, "ZMQ_LINGER", err), fail);
    /* Not ZMQ_IMMEDIATE: with it a dropped connection also discards what the
     * server sent last (its error chunk before exiting). The monitor tells
     * send_env whether a connection is up instead.
     * The server's ROUTER drops what a full queue cannot take; never let ours be full. */
    LOOM_CHECK_GOTO(st, set_int(c->sock, ZMQ_RCVHWM, 0, "ZMQ_RCVHWM", err), fail);
    LOOM_CHECK_GOTO(st, set_int(c->sock, ZMQ_HEARTBEAT_IVL, HEARTBEAT_IVL_MS, "ZMQ_HEARTBEAT_IVL", err), fail);
    LOOM_CHECK_GOTO(st, set_int(c->sock, ZMQ_HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT_MS, "ZMQ_HEARTBEAT_TIMEOUT", err), fail);
    LOOM_CHECK_GOTO(st, set_int(c->sock, ZMQ_HEARTBEAT_TTL, HEARTBEAT_TTL_MS, "ZMQ_HEARTBEAT_TTL", err), fail);
    LOOM_CHECK_GOTO(st, set_int(c->mon, ZMQ_LINGER, 0, "ZMQ_LINGER", err), fail);
    if (zmq_setsockopt(c->sock, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg) != 0) {
        st = loom_err_set(err, LOOM_EIO, "zmq_setsockopt(ZMQ_MAXMSGSIZE): %s", zmq_strerror(errno));
        goto fail;
    }
    if (zmq_socket_monitor(c->sock, MONITOR_ADDR, ZMQ_EVENT_CONNECTED | ZMQ_EVENT_DISCONNECTED) != 0 ||
        zmq_connect(c->mon, MONITOR_ADDR) != 0) {
        st = loom_err_set(err, LOOM_EIO, "cannot monitor the client socket: %s", zmq_strerror(errno));
        goto fail;
    }
    if (zmq_connect(c->sock, endpoint) != 0) {
        st = loom_err_set(err, LOOM_EINVAL, "cannot connect to '%s': %s (endpoints look like tcp://host:port or ipc:///path)",
                          endpoint, zmq_strerror(errno));
        goto fail;
    }
    if (timeout_ms > 0) {
        bool serving;
        LOOM_CHECK_GOTO(st, loom_client_health(c, timeout_ms, &serving, err), fail); /* messages name the endpoint */
    }
    return c;
nomem:
    st = loom_err_set(err, LOOM_ENOMEM, "out of memory");
fail:
    (void)st;
    loom_client_close(c);
    return NULL;
}

void loom_client_close(loom_client *c)
{
    if (!c) return;
    loom_wire_free(c->last);
    pending_clear(c);
    free(c->pending);
    if (c->sock) {
        zmq_socket_monitor(c->sock, NULL, 0);
        zmq_close(c->sock);
    }
    if (c->mon) zmq_close(c->mon);
    if (c->zctx) zmq_ctx_term(c->zctx);
    free(c->endpoint);
    free(c);
}

const char *loom_client_endpoint(const loom_client *c)
{
    return c->endpoint;
}

/* --- health and stats: one request, one reply -------------------------------- */

/* Sends env and waits until deadline for a reply whose body is `want`. Chunks
 * and other replies that arrive meanwhile are stale and dropped; an error
 * chunk without a request id answers this message. */
static loom_status request_reply(loom_client *c, Loom__Envelope *env, Loom__Envelope__BodyCase want, int timeout_ms,
                                 Loom__Envelope **reply, loom_err *err)
{
    *reply = NULL;
    const char *what = loom_wire_body_name(env->body_case);
    if (timeout_ms <= 0) return loom_err_set(err, LOOM_EINVAL, "%s: the timeout must be > 0 ms", what);
    if (c->n_pending > 0)
        return loom_err_set(err, LOOM_EINVAL, "%s: %zu requests are still in flight on this client; use another client", what,
                            c->n_pending);
    int64_t deadline = deadline_after(timeout_ms);
    loom_status st;
    LOOM_CHECK(send_env(c, env, timeout_ms, err));
    for (;;) {
        bool ready;
        LOOM_CHECK(wait_sock(c, ZMQ_POLLIN, deadline, true, &ready, err));
        if (!ready) return loom_err_set(err, LOOM_EIO, "no %s reply from %s within %d ms", what, c->endpoint, timeout_ms);
        Loom__Envelope *e;
        LOOM_CHECK(recv_env(c, &e, err));
        if (!e) continue;
        if (e->body_case == want) {
            *reply = e;
            return LOOM_OK;
        }
        if (is_error_chunk(e) && !*str_or_empty(e->chunk->request_id)) {
            st = loom_err_set(err, LOOM_EINVAL, "server: %s", str_or_empty(e->chunk->error));
            loom_wire_free(e);
            return st;
        }
        loom_wire_free(e);
    }
}

loom_status loom_client_health(loom_client *c, int timeout_ms, bool *serving, loom_err *err)
{
    *serving = false;
    Loom__Health h = LOOM__HEALTH__INIT;
    Loom__Envelope env = LOOM__ENVELOPE__INIT;
    env.body_case = LOOM__ENVELOPE__BODY_HEALTH;
    env.health = &h;
    Loom__Envelope *reply;
    LOOM_CHECK(request_reply(c, &env, LOOM__ENVELOPE__BODY_HEALTH_REPLY, timeout_ms, &reply, err));
    *serving = reply->health_reply && reply->health_reply->serving;
    loom_wire_free(reply);
    return LOOM_OK;
}

loom_status loom_client_stats(loom_client *c, int timeout_ms, loom_client_server_stats *stats, loom_err *err)
{
    memset(stats, 0, sizeof *stats);
    Loom__Stats s = LOOM__STATS__INIT;
    Loom__Envelope env = LOOM__ENVELOPE__INIT;
    env.body_case = LOOM__ENVELOPE__BODY_STATS;
    env.stats = &s;
    Loom__Envelope *reply;
    LOOM_CHECK(request_reply(c, &env, LOOM__ENVELOPE__BODY_STATS_REPLY, timeout_ms, &reply, err));
    if (reply->stats_reply) {
        stats->running = reply->stats_reply->running;
        stats->waiting = reply->stats_reply->waiting;
        stats->tokens_per_s = reply->stats_reply->tokens_per_s;
        stats->kv_used_fraction = reply->stats_reply->kv_used_fraction;
        stats->kv_blocks_total = reply->stats_reply->kv_blocks_total;
        stats->kv_blocks_used = reply->stats_reply->kv_blocks_used;
        stats->kv_blocks_free = reply->stats_reply->kv_blocks_free;
        stats->kv_blocks_cached = reply->stats_reply->kv_blocks_cached;
        stats->tokens_per_block = reply->stats_reply->tokens_per_block;
        stats->prefix_hit_rate = reply->stats_reply->prefix_hit_rate;
        stats->preemptions = reply->stats_reply->preemptions;
        stats->refused = reply->stats_reply->refused;
        stats->completed = reply->stats_reply->completed;
        stats->timed_steps = reply->stats_reply->timed_steps;
        stats->step_cycle_ms = reply->stats_reply->step_cycle_ms;
        stats->step_compute_ms = reply->stats_reply->step_compute_ms;
        stats->overhead_fraction = reply->stats_reply->overhead_fraction;
    }
    loom_wire_free(reply);
    return LOOM_OK;
}

/* ABI: loom_client_server_stats grew in LOOMCLIENT_1 (the KV pool and the
 * counters). A program linked against an earlier libloomclient.so calls
 * loom_client_stats@LOOMCLIENT_0 with room for the first four fields only, so
 * that version gets this, which writes no more than those (see
 * libloomclient.map). Static links and new programs use loom_client_stats. */
typedef struct stats_v0 {
    int32_t running, waiting;
    double tokens_per_s, kv_used_fraction;
} stats_v0;

loom_status loomclient_compat_stats_v0(loom_client *c, int timeout_ms, stats_v0 *stats, loom_err *err);
__asm__(".symver loomclient_compat_stats_v0, loom_client_stats@LOOMCLIENT_0");

loom_status loomclient_compat_stats_v0(loom_client *c, int timeout_ms, stats_v0 *stats, loom_err *err)
{
    loom_client_server_stats s;
    loom_status st = loom_client_stats(c, timeout_ms, &s, err);
    *stats = (stats_v0){.running = s.running, .waiting = s.waiting, .tokens_per_s = s.tokens_per_s,
                        .kv_used_fraction = s.kv_used_fraction};
    return st;
}

/* --- generation -------------------------------------------------------------- */

void loom_client_request_init(loom_client_request *r)
{
    memset(r, 0, sizeof *r);
    r->top_p = 1.0f;
    r->repetition_penalty = 1.0f;
}

loom_status loom_client_submit(loom_client *c, const loom_client_request *req, char id[LOOM_CLIENT_ID_MAX], loom_err *err)
{
    id[0] = '\0';
    if (req->request_id) {
        size_t n = strlen(req->request_id);
        if (n == 0 || n >= LOOM_CLIENT_ID_MAX)
            return loom_err_set(err, LOOM_EINVAL, "request id must have 1 to %d bytes", LOOM_CLIENT_ID_MAX - 1);
        if (pending_find(c, req->request_id) >= 0)
            return loom_err_set(err, LOOM_EINVAL, "request id '%s' is already in flight on this client", req->request_id);
        memcpy(id, req->request_id, n + 1);
    } else {
        snprintf(id, LOOM_CLIENT_ID_MAX, "%s-%llu", c->id_prefix, (unsigned long long)++c->next_id);
    }
    if (req->n_stop && !req->stop) return loom_err_set(err, LOOM_EINVAL, "n_stop is %zu but stop is NULL", req->n_stop);
    if (req->n_stop_ids && !req->stop_ids)
        return loom_err_set(err, LOOM_EINVAL, "n_stop_ids is %zu but stop_ids is NULL", req->n_stop_ids);
    if (req->n_prompt_ids && !req->prompt_ids)
        return loom_err_set(err, LOOM_EINVAL, "n_prompt_ids is %zu but prompt_ids is NULL", req->n_prompt_ids);
    for (size_t i = 0; i < req->n_stop; i++)
        if (!req->stop[i]) return loom_err_set(err, LOOM_EINVAL, "stop string %zu is NULL", i);

    /* protobuf-c only reads these while packing; the casts drop const for its structs. */
    Loom__GenerateRequest g = LOOM__GENERATE_REQUEST__INIT;
    g.request_id = id;
    g.prompt = (char *)(req->prompt ? req->prompt : "");
    g.n_prompt_ids = req->n_prompt_ids;
    g.prompt_ids = (int32_t *)req->prompt_ids;
    g.max_new_tokens = req->max_new_tokens;
    g.temperature = req->temperature;
    g.top_k = req->top_k;
    g.top_p = req->top_p;
    g.repetition_penalty = req->repetition_penalty;
    g.seed = req->seed;
    g.n_stop = req->n_stop;
    g.stop = (char **)req->stop;
    g.n_stop_ids = req->n_stop_ids;
    g.stop_ids = (int32_t *)req->stop_ids;
    g.stream = req->stream;
    Loom__Envelope env = LOOM__ENVELOPE__INIT;
    env.body_case = LOOM__ENVELOPE__BODY_GENERATE;
    env.generate = &g;
    LOOM_CHECK(send_env(c, &env, c->send_wait_ms, err));
    return pending_add(c, id, err);
}

loom_status loom_client_cancel(loom_client *c, const char *id, loom_err *err)
{
    Loom__Cancel k = LOOM__CANCEL__INIT;
    k.request_id = (char *)id;
    Loom__Envelope env = LOOM__ENVELOPE__INIT;
    env.body_case = LOOM__ENVELOPE__BODY_CANCEL;
    env.cancel = &k;
    return send_env(c, &env, c->send_wait_ms, err);
}

size_t loom_client_in_flight(const loom_client *c)
{
    return c->n_pending;
}

static loom_client_finish finish_of(Loom__FinishReason f)
{
    switch (f) {
    case LOOM__FINISH_REASON__FINISH_NONE: return LOOM_CLIENT_FINISH_NONE;
    case LOOM__FINISH_REASON__FINISH_LENGTH: return LOOM_CLIENT_FINISH_LENGTH;
    case LOOM__FINISH_REASON__FINISH_STOP: return LOOM_CLIENT_FINISH_STOP;
    case LOOM__FINISH_REASON__FINISH_EOS: return LOOM_CLIENT_FINISH_EOS;
    case LOOM__FINISH_REASON__FINISH_CANCELLED: return LOOM_CLIENT_FINISH_CANCELLED;
    default: return LOOM_CLIENT_FINISH_ERROR; /* FINISH_ERROR, or a reason this client does not know */
    }
}

const char *loom_client_finish_name(loom_client_finish f)
{
    static const char *names[] = {"none", "length", "stop", "eos", "cancelled", "error"};
    return (unsigned)f < sizeof names / sizeof names[0] ? names[f] : "unknown";
}

static void chunk_view(const Loom__GenerateChunk *ch, loom_client_chunk *out)
{
    out->request_id = str_or_empty(ch->request_id);
    out->token_ids = ch->token_ids;
    out->n_token_ids = ch->n_token_ids;
    out->text = str_or_empty(ch->text);
    out->text_len = strlen(out->text);
    out->finish = finish_of(ch->finish_reason);
    out->error = str_or_empty(ch->error);
    out->prompt_tokens = ch->usage ? ch->usage->prompt_tokens : 0;
    out->completion_tokens = ch->usage ? ch->usage->completion_tokens : 0;
    out->prompt_ids = ch->prompt_ids;
    out->n_prompt_ids = ch->n_prompt_ids;
}

loom_status loom_client_next(loom_client *c, int timeout_ms, loom_client_chunk *chunk, bool *got, loom_err *err)
{
    *got = false;
    memset(chunk, 0, sizeof *chunk);
    loom_wire_free(c->last);
    c->last = NULL;
    if (c->n_pending == 0) return loom_err_set(err, LOOM_EINVAL, "no requests are in flight on this client");
    int64_t deadline = deadline_after(timeout_ms);
    for (;;) {
        bool ready;
        LOOM_CHECK(wait_sock(c, ZMQ_POLLIN, deadline, true, &ready, err));
        if (!ready) return LOOM_OK;
        Loom__Envelope *e;
        LOOM_CHECK(recv_env(c, &e, err));
        if (!e) continue;
        if (e->body_case != LOOM__ENVELOPE__BODY_CHUNK) {
            /* a late health/stats reply is harmless; anything else is a confused server */
            Loom__Envelope__BodyCase b = e->body_case;
            loom_wire_free(e);
            if (b == LOOM__ENVELOPE__BODY_HEALTH_REPLY || b == LOOM__ENVELOPE__BODY_STATS_REPLY) continue;
            return loom_err_set(err, LOOM_EINVAL, "reply from %s: unexpected %s message (a client expects chunks)", c->endpoint,
                                loom_wire_body_name(b));
        }
        const Loom__GenerateChunk *ch = e->chunk;
        const char *rid = str_or_empty(ch->request_id);
        bool unattributed_error = !*rid && ch->finish_reason == LOOM__FINISH_REASON__FINISH_ERROR;
        if (!unattributed_error && (!*rid || pending_find(c, rid) < 0)) {
            loom_wire_free(e); /* a chunk of a request we gave up on */
            continue;
        }
        chunk_view(ch, chunk);
        if (*rid && chunk->finish != LOOM_CLIENT_FINISH_NONE) pending_remove(c, rid);
        c->last = e;
        *got = true;
        return LOOM_OK;
    }
}

/* Grows res by one chunk (capacities double: no allocation per chunk). */
static loom_status result_append(loom_client_result *res, const loom_client_chunk *ch, size_t *cap_ids, size_t *cap_text,
                                 loom_err *err)
{
    if (res->n_output_ids + ch->n_token_ids > *cap_ids) {
        size_t cap = *cap_ids ? *cap_ids : 64;
        while (cap < res->n_output_ids + ch->n_token_ids) cap *= 2;
        int32_t *p = realloc(res->output_ids, cap * sizeof *p);
        if (!p) return loom_err_set(err, LOOM_ENOMEM, "out of memory");
        res->output_ids = p;
        *cap_ids = cap;
    }
    if (ch->n_token_ids) memcpy(res->output_ids + res->n_output_ids, ch->token_ids, ch->n_token_ids * sizeof(int32_t));
    res->n_output_ids += ch->n_token_ids;
    if (res->text_len + ch->text_len + 1 > *cap_text) {
        size_t cap = *cap_text ? *cap_text : 256;
        while (cap < res->text_len + ch->text_len + 1) cap *= 2;
        char *p = realloc(res->text, cap);
        if (!p) return loom_err_set(err, LOOM_ENOMEM, "out of memory");
        res->text = p;
        *cap_text = cap;
    }
    memcpy(res->text + res->text_len, ch->text, ch->text_len);
    res->text_len += ch->text_len;
    res->text[res->text_len] = '\0';
    if (ch->finish != LOOM_CLIENT_FINISH_NONE) {
        res->finish = ch->finish;
        res->prompt_tokens = ch->prompt_tokens;
        res->completion_tokens = ch->completion_tokens;
        if (ch->n_prompt_ids) {
            free(res->prompt_ids);
            res->prompt_ids = malloc(ch->n_prompt_ids * sizeof(int32_t));
            if (!res->prompt_ids) return loom_err_set(err, LOOM_ENOMEM, "out of memory");
            memcpy(res->prompt_ids, ch->prompt_ids, ch->n_prompt_ids * sizeof(int32_t));
            res->n_prompt_ids = ch->n_prompt_ids;
        }
    }
    return LOOM_OK;
}

/* Gives up on request id: asks the server to cancel it and forgets it (its
 * late chunks are then skipped). */
static void abandon(loom_client *c, const char *id)
{
    if (pending_find(c, id) < 0) return;
    pending_remove(c, id);
    Loom__Cancel k = LOOM__CANCEL__INIT;
    k.request_id = (char *)id;
    Loom__Envelope env = LOOM__ENVELOPE__INIT;
    env.body_case = LOOM__ENVELOPE__BODY_CANCEL;
    env.cancel = &k;
    loom_wire_send(c->sock, &env, ZMQ_DONTWAIT, NULL); /* best effort: the server may be gone */
}

loom_status loom_client_generate(loom_client *c, const loom_client_request *req, loom_client_chunk_fn on_chunk, void *ctx,
                                 loom_client_result *res, loom_err *err)
{
    loom_client_result scratch;
    if (!res) res = &scratch;
    memset(res, 0, sizeof *res);
    loom_status st = LOOM_OK;
    size_t cap_ids = 0, cap_text = 0;
    char id[LOOM_CLIENT_ID_MAX];
    LOOM_CHECK_GOTO(st, loom_client_submit(c, req, id, err), done);
    memcpy(res->request_id, id, sizeof id);

    int64_t start = now_ms(), last = start, cancel_deadline = -1;
    bool cancelled = false;
    for (;;) {
        int64_t deadline = -1;
        bool idle_first = false;
        if (req->timeout_ms > 0) deadline = start + req->timeout_ms;
        if (req->idle_timeout_ms > 0 && (deadline < 0 || last + req->idle_timeout_ms < deadline)) {
            deadline = last + req->idle_timeout_ms;
            idle_first = true;
        }
        if (cancel_deadline >= 0 && (deadline < 0 || cancel_deadline < deadline)) deadline = cancel_deadline;
        loom_client_chunk ch;
        bool got;
        st = loom_client_next(c, (int)remaining_ms(deadline), &ch, &got, err);
        if (st != LOOM_OK) {
            abandon(c, id);
            goto done;
        }
        if (!got) {
            if (pending_find(c, id) < 0) {
                /* our request was dropped by a lost connection, reported already */
                st = loom_err_set(err, LOOM_EIO, "the request was lost");
                goto done;
            }
            abandon(c, id);
            if (cancelled && now_ms() >= cancel_deadline) {
                res->finish = LOOM_CLIENT_FINISH_CANCELLED; /* the server never confirmed; we stop waiting */
                goto done;
            }
            if (idle_first)
                st = loom_err_set(err, LOOM_EIO, "no reply from %s for %d ms (idle timeout); request %s cancelled", c->endpoint,
                                  req->idle_timeout_ms, id);
            else
                st = loom_err_set(err, LOOM_EIO, "request %s timed out after %d ms; cancelled", id, req->timeout_ms);
            goto done;
        }
        if (!*ch.request_id) {
            /* an error the server could not attribute: it concerns what we just sent */
            abandon(c, id);
            res->finish = LOOM_CLIENT_FINISH_ERROR;
            st = loom_err_set(err, LOOM_EINVAL, "server: %s", ch.error);
            goto done;
        }
        if (strcmp(ch.request_id, id)) continue; /* another submitted request: dropped (see the header) */
        last = now_ms();
        LOOM_CHECK_GOTO(st, result_append(res, &ch, &cap_ids, &cap_text, err), fail_abandon);
        if (on_chunk && !cancelled && !on_chunk(ctx, &ch) && ch.finish == LOOM_CLIENT_FINISH_NONE) {
            cancelled = true;
            cancel_deadline = now_ms() + CANCEL_GRACE_MS;
            LOOM_CHECK_GOTO(st, loom_client_cancel(c, id, err), fail_abandon);
        }
        if (ch.finish == LOOM_CLIENT_FINISH_ERROR) {
            st = loom_err_set(err, LOOM_EINVAL, "server: %s", *ch.error ? ch.error : "request failed (no message)");
            goto done;
        }
        if (ch.finish != LOOM_CLIENT_FINISH_NONE) goto done;
    }
fail_abandon:
    abandon(c, id);
done:
    loom_wire_free(c->last); /* chunk views are not used after this call */
    c->last = NULL;
    if (res == &scratch) loom_client_result_free(res);
    return st;
}

void loom_client_result_free(loom_client_result *res)
{
    if (!res) return;
    free(res->output_ids);
    free(res->text);
    free(res->prompt_ids);
    memset(res, 0, sizeof *res);
}
