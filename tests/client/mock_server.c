/* A stand-in coordinator for the client tests: a ROUTER that speaks the serving
 * protocol (generate/cancel/health/stats, error chunks for bad messages) with
 * a fake model, and misbehaves on request so the clients' error paths run.
 *
 *   mock_server [--mode normal|silent|badversion|garbage|notserving]
 *               [--serving-after SEC] [--endpoint tcp://127.0.0.1:*]
 *
 * Prints the bound endpoint as its first stdout line. The fake model: a text
 * prompt tokenizes to its bytes; output token i is 1000+i with text "w<i> ".
 * Prompts that steer it: ERROR (error chunk after 2 tokens), SILENT (never
 * answered), SLOW (a token every 200 ms), DIE (exit after 1 token), BYE (an
 * error chunk "shutting down", then a clean exit at once), ECHO (the text
 * describes the request's parameters), UTF8 / QUOTE (awkward text). */
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#include "wire.h"

#define MAX_ACTIVE 256
#define ID_MAX 128

typedef struct active {
    bool used;
    zmq_msg_t ident;         /* the client's routing id */
    char id[ID_MAX];
    int32_t *prompt;         /* prompt ids (malloc'd) */
    size_t n_prompt;
    int32_t max_new, done;   /* tokens wanted / sent */
    bool stream;
    int delay_ms;            /* between tokens */
    int64_t next_ms;         /* when the next token is due */
    enum { K_NORMAL, K_ERROR, K_DIE, K_ECHO, K_UTF8, K_QUOTE } kind;
    char **stops;            /* the request's stop strings (n_stops, malloc'd) */
    size_t n_stops;
    bool apply_stops;        /* false for ECHO, which prints them instead */
    char *text;              /* all text so far (for stops and stream=false) */
    size_t text_len, sent_text; /* bytes; sent_text: already sent in chunks */
    char echo[512];
} active;

static const char *mode = "normal";
static int64_t serving_at_ms;
static volatile sig_atomic_t stop_flag;
static bool bye; /* a BYE request came: leave right after answering it */
static active reqs[MAX_ACTIVE];

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void on_signal(int s)
{
    (void)s;
    stop_flag = 1;
}

static void die(const char *what)
{
    fprintf(stderr, "mock_server: %s: %s\n", what, zmq_strerror(zmq_errno()));
    exit(2);
}

/* Sends one envelope to the client behind ident. */
static void send_to(void *sock, zmq_msg_t *ident, Loom__Envelope *env)
{
    zmq_msg_t copy;
    zmq_msg_init(&copy);
    zmq_msg_copy(&copy, ident);
    if (zmq_msg_send(&copy, sock, ZMQ_SNDMORE) < 0) {
        zmq_msg_close(&copy);
        return;
    }
    if (!strcmp(mode, "badversion")) {
        /* Pack by hand: loom_wire_* would stamp the right version. */
        env->version = 2;
        size_t n = protobuf_c_message_get_packed_size(&env->base);
        uint8_t *b = malloc(n);
        protobuf_c_message_pack(&env->base, b);
        zmq_send(sock, b, n, 0);
        free(b);
        return;
    }
    if (!strcmp(mode, "garbage")) {
        static const char junk[] = "\xff\xff\xff\xff not protobuf";
        zmq_send(sock, junk, sizeof junk - 1, 0);
        return;
    }
    loom_err err = {{0}};
    if (loom_wire_send(sock, env, 0, &err) != LOOM_OK) fprintf(stderr, "mock_server: %s\n", err.msg);
}

static void send_chunk(void *sock, zmq_msg_t *ident, const char *id, const int32_t *ids, size_t n_ids, const char *text,
                       Loom__FinishReason fin, const char *error, const active *a)
{
    Loom__GenerateChunk ch = LOOM__GENERATE_CHUNK__INIT;
    Loom__Usage u = LOOM__USAGE__INIT;
    ch.request_id = (char *)id;
    ch.token_ids = (int32_t *)ids;
    ch.n_token_ids = n_ids;
    ch.text = (char *)(text ? text : "");
    ch.finish_reason = fin;
    ch.error = (char *)(error ? error : "");
    if (fin != LOOM__FINISH_REASON__FINISH_NONE) {
        u.prompt_tokens = a ? (int32_t)a->n_prompt : 0;
        u.completion_tokens = a ? a->done : 0;
        ch.usage = &u;
        if (a) {
            ch.prompt_ids = a->prompt;
            ch.n_prompt_ids = a->n_prompt;
        }
    }
    Loom__Envelope env = LOOM__ENVELOPE__INIT;
    env.body_case = LOOM__ENVELOPE__BODY_CHUNK;
    env.chunk = &ch;
    send_to(sock, ident, &env);
}

static void send_error(void *sock, zmq_msg_t *ident, const char *id, const char *msg)
{
    send_chunk(sock, ident, id, NULL, 0, "", LOOM__FINISH_REASON__FINISH_ERROR, msg, NULL);
}

static void release(active *a)
{
    zmq_msg_close(&a->ident);
    free(a->prompt);
    for (size_t i = 0; i < a->n_stops; i++) free(a->stops[i]);
    free(a->stops);
    free(a->text);
    memset(a, 0, sizeof *a);
}

static void append_text(active *a, const char *s)
{
    size_t n = strlen(s);
    a->text = realloc(a->text, a->text_len + n + 1);
    memcpy(a->text + a->text_len, s, n + 1);
    a->text_len += n;
}

static const char *piece_of(active *a, int32_t i, char *buf, size_t cap)
{
    switch (a->kind) {
    case K_UTF8: return i % 2 ? "\xe2\x86\x92 " : "h\xc3\xa9llo ";    /* "→ ", "héllo " */
    case K_QUOTE: return i % 2 ? "say \"hi\"\n" : "back\\slash\t"; /* JSON escapes */
    case K_ECHO: return i == 0 ? a->echo : "";
    default: snprintf(buf, cap, "w%d ", i); return buf;
    }
}

/* Emits the next token of a; returns false once a is finished (and freed). */
static bool step(void *sock, active *a)
{
    if (a->kind == K_ERROR && a->done == 2) {
        send_error(sock, &a->ident, a->id, "mock: the worker failed");
        release(a);
        return false;
    }
    int32_t tok = 1000 + a->done;
    char buf[64];
    append_text(a, piece_of(a, a->done, buf, sizeof buf));
    a->done++;
    Loom__FinishReason fin = a->done >= a->max_new ? LOOM__FINISH_REASON__FINISH_LENGTH : LOOM__FINISH_REASON__FINISH_NONE;
    for (size_t i = 0; a->apply_stops && i < a->n_stops; i++) {
        char *hit = strstr(a->text, a->stops[i]);
        if (hit) {
            a->text_len = (size_t)(hit - a->text);
            a->text[a->text_len] = '\0';
            fin = LOOM__FINISH_REASON__FINISH_STOP;
        }
    }
    if (a->stream) {
        size_t from = a->sent_text < a->text_len ? a->sent_text : a->text_len;
        send_chunk(sock, &a->ident, a->id, &tok, 1, a->text + from, fin, NULL, a);
        a->sent_text = a->text_len;
    } else if (fin != LOOM__FINISH_REASON__FINISH_NONE) {
        int32_t *all = malloc((size_t)a->done * sizeof *all);
        for (int32_t i = 0; i < a->done; i++) all[i] = 1000 + i;
        send_chunk(sock, &a->ident, a->id, all, (size_t)a->done, a->text, fin, NULL, a);
        free(all);
    }
    if (a->kind == K_DIE) {
        usleep(100 * 1000); /* let zmq put the chunk on the wire, then crash */
        _exit(3);
    }
    if (fin != LOOM__FINISH_REASON__FINISH_NONE) {
        release(a);
        return false;
    }
    a->next_ms = now_ms() + a->delay_ms;
    return true;
}

static void on_generate(void *sock, zmq_msg_t *ident, const Loom__GenerateRequest *g)
{
    const char *id = g->request_id ? g->request_id : "";
    if (!*id) return send_error(sock, ident, "", "generate: request_id is empty");
    if (strlen(id) >= ID_MAX) return send_error(sock, ident, "", "generate: request_id is too long");
    const char *prompt = g->prompt ? g->prompt : "";
    if (!g->n_prompt_ids && !*prompt) return send_error(sock, ident, id, "the prompt is empty");
    if (g->max_new_tokens <= 0) return send_error(sock, ident, id, "max_new_tokens must be >= 1");
    for (int i = 0; i < MAX_ACTIVE; i++)
        if (reqs[i].used && !strcmp(reqs[i].id, id)) return send_error(sock, ident, id, "request_id is already in use");
    if (!strcmp(prompt, "SILENT")) return;
    if (!strcmp(prompt, "BYE")) {
        bye = true;
        return send_error(sock, ident, id, "mock: the server is shutting down");
    }
    active *a = NULL;
    for (int i = 0; i < MAX_ACTIVE && !a; i++)
        if (!reqs[i].used) a = &reqs[i];
    if (!a) return send_error(sock, ident, id, "mock: too many requests");
    a->used = true;
    zmq_msg_init(&a->ident);
    zmq_msg_copy(&a->ident, ident);
    snprintf(a->id, sizeof a->id, "%s", id);
    if (g->n_prompt_ids) {
        a->n_prompt = g->n_prompt_ids;
        a->prompt = malloc(a->n_prompt * sizeof *a->prompt);
        memcpy(a->prompt, g->prompt_ids, a->n_prompt * sizeof *a->prompt);
    } else {
        a->n_prompt = strlen(prompt);
        a->prompt = malloc(a->n_prompt * sizeof *a->prompt);
        for (size_t i = 0; i < a->n_prompt; i++) a->prompt[i] = (unsigned char)prompt[i];
    }
    a->max_new = g->max_new_tokens;
    a->stream = g->stream;
    a->n_stops = g->n_stop;
    a->stops = calloc(g->n_stop + 1, sizeof *a->stops);
    for (size_t i = 0; i < g->n_stop; i++) a->stops[i] = strdup(g->stop[i]);
    a->kind = !strcmp(prompt, "ERROR") ? K_ERROR : !strcmp(prompt, "DIE") ? K_DIE : !strcmp(prompt, "ECHO") ? K_ECHO
            : !strcmp(prompt, "UTF8") ? K_UTF8 : !strcmp(prompt, "QUOTE") ? K_QUOTE : K_NORMAL;
    a->delay_ms = !strcmp(prompt, "SLOW") ? 200 : 0;
    if (a->kind == K_ECHO) {
        int n = snprintf(a->echo, sizeof a->echo, "temperature=%g top_k=%d top_p=%g repetition_penalty=%g seed=%llu stream=%d stops=",
                         g->temperature, g->top_k, g->top_p, g->repetition_penalty, (unsigned long long)g->seed, (int)g->stream);
        for (size_t i = 0; i < g->n_stop && n < (int)sizeof a->echo; i++)
            n += snprintf(a->echo + n, sizeof a->echo - (size_t)n, "%s%s", i ? "|" : "", g->stop[i]);
        if (n < (int)sizeof a->echo) n += snprintf(a->echo + n, sizeof a->echo - (size_t)n, " stop_ids=");
        for (size_t i = 0; i < g->n_stop_ids && n < (int)sizeof a->echo; i++)
            n += snprintf(a->echo + n, sizeof a->echo - (size_t)n, "%s%d", i ? "," : "", g->stop_ids[i]);
    }
    a->apply_stops = a->kind != K_ECHO;
    a->next_ms = now_ms();
}

static void on_cancel(void *sock, zmq_msg_t *ident, const Loom__Cancel *k)
{
    const char *id = k->request_id ? k->request_id : "";
    for (int i = 0; i < MAX_ACTIVE; i++)
        if (reqs[i].used && !strcmp(reqs[i].id, id)) {
            send_chunk(sock, &reqs[i].ident, id, NULL, 0, "", LOOM__FINISH_REASON__FINISH_CANCELLED, NULL, &reqs[i]);
            release(&reqs[i]);
            return;
        }
    send_error(sock, ident, id, "cancel: unknown request id");
}

static void handle(void *sock, zmq_msg_t *ident)
{
    Loom__Envelope *env;
    loom_err err = {{0}};
    loom_status st = loom_wire_recv(sock, 0, &env, &err);
    if (!strcmp(mode, "silent")) {
        loom_wire_free(env);
        return;
    }
    if (st != LOOM_OK) {
        send_error(sock, ident, "", err.msg);
        return;
    }
    switch (env->body_case) {
    case LOOM__ENVELOPE__BODY_GENERATE: on_generate(sock, ident, env->generate); break;
    case LOOM__ENVELOPE__BODY_CANCEL: on_cancel(sock, ident, env->cancel); break;
    case LOOM__ENVELOPE__BODY_HEALTH: {
        Loom__HealthReply h = LOOM__HEALTH_REPLY__INIT;
        h.serving = strcmp(mode, "notserving") && now_ms() >= serving_at_ms;
        Loom__Envelope r = LOOM__ENVELOPE__INIT;
        r.body_case = LOOM__ENVELOPE__BODY_HEALTH_REPLY;
        r.health_reply = &h;
        send_to(sock, ident, &r);
        break;
    }
    case LOOM__ENVELOPE__BODY_STATS: {
        Loom__StatsReply s = LOOM__STATS_REPLY__INIT;
        for (int i = 0; i < MAX_ACTIVE; i++) s.running += reqs[i].used;
        s.waiting = 3;
        s.tokens_per_s = 42.5;
        s.kv_used_fraction = 0.25;
        s.kv_blocks_total = 5000000000LL; /* > INT32_MAX: the 64-bit fields must stay 64-bit */
        s.kv_blocks_used = 1250000000LL;
        s.kv_blocks_free = 3000000000LL;
        s.kv_blocks_cached = 750000000LL;
        s.tokens_per_block = 16;
        s.prefix_hit_rate = 0.625;
        s.preemptions = 7;
        s.refused = 2;
        s.completed = 11;
        s.timed_steps = 6000000000LL;
        s.step_cycle_ms = 8.0;
        s.step_compute_ms = 7.5;
        s.overhead_fraction = 0.0625;
        Loom__Envelope r = LOOM__ENVELOPE__INIT;
        r.body_case = LOOM__ENVELOPE__BODY_STATS_REPLY;
        r.stats_reply = &s;
        send_to(sock, ident, &r);
        break;
    }
    default: {
        char msg[128];
        snprintf(msg, sizeof msg, "unexpected %s message (a server expects generate, cancel, health or stats)",
                 loom_wire_body_name(env->body_case));
        send_error(sock, ident, "", msg);
    }
    }
    loom_wire_free(env);
}

int main(int argc, char **argv)
{
    const char *endpoint = "tcp://127.0.0.1:*";
    double serving_after = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--mode") && i + 1 < argc) mode = argv[++i];
        else if (!strcmp(argv[i], "--endpoint") && i + 1 < argc) endpoint = argv[++i];
        else if (!strcmp(argv[i], "--serving-after") && i + 1 < argc) serving_after = atof(argv[++i]);
        else {
            fprintf(stderr, "usage: mock_server [--mode normal|silent|badversion|garbage|notserving] [--serving-after SEC] [--endpoint E]\n");
            return 2;
        }
    }
    serving_at_ms = now_ms() + (int64_t)(serving_after * 1000);
    signal(SIGTERM, on_signal);
    signal(SIGINT, on_signal);
    void *ctx = zmq_ctx_new();
    void *sock = zmq_socket(ctx, ZMQ_ROUTER);
    int zero = 0, one = 1;
    zmq_setsockopt(sock, ZMQ_LINGER, &zero, sizeof zero);
    zmq_setsockopt(sock, ZMQ_ROUTER_MANDATORY, &one, sizeof one);
    if (zmq_bind(sock, endpoint) != 0) die("bind");
    char bound[256];
    size_t blen = sizeof bound;
    if (zmq_getsockopt(sock, ZMQ_LAST_ENDPOINT, bound, &blen) != 0) die("ZMQ_LAST_ENDPOINT");
    printf("%s\n", bound);
    fflush(stdout);

    while (!stop_flag && !bye) {
        long timeout = 100;
        int64_t now = now_ms();
        for (int i = 0; i < MAX_ACTIVE; i++)
            if (reqs[i].used) {
                long t = reqs[i].next_ms > now ? (long)(reqs[i].next_ms - now) : 0;
                if (t < timeout) timeout = t;
            }
        zmq_pollitem_t it = {sock, 0, ZMQ_POLLIN, 0};
        if (zmq_poll(&it, 1, timeout) < 0) continue; /* EINTR from a signal */
        if (it.revents & ZMQ_POLLIN) {
            zmq_msg_t ident;
            zmq_msg_init(&ident);
            if (zmq_msg_recv(&ident, sock, 0) >= 0) {
                if (zmq_msg_more(&ident)) handle(sock, &ident);
            }
            zmq_msg_close(&ident);
        }
        now = now_ms();
        for (int i = 0; i < MAX_ACTIVE; i++)
            if (reqs[i].used && reqs[i].next_ms <= now) step(sock, &reqs[i]);
    }
    for (int i = 0; i < MAX_ACTIVE; i++)
        if (reqs[i].used) release(&reqs[i]);
    int linger = 2000; /* what we answered last still goes out */
    zmq_setsockopt(sock, ZMQ_LINGER, &linger, sizeof linger);
    zmq_close(sock);
    zmq_ctx_term(ctx);
    return 0;
}
