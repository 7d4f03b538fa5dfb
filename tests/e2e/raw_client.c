/* Protocol-level checks against a running `loom serve`: malformed frames,
 * wrong versions and types, invalid requests, cancellation and a client that
 * disconnects mid-stream. Each case asserts the server's answer and that the
 * server keeps serving afterwards.
 * Usage: raw_client ENDPOINT CASE   (prints "ok" and exits 0 on success) */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#include "proto/wire.h"

static void *g_ctx;

static void die(const char *fmt, const char *a)
{
    fprintf(stderr, "FAIL: ");
    fprintf(stderr, fmt, a ? a : "");
    fprintf(stderr, "\n");
    exit(1);
}

static void *connect_to(const char *ep)
{
    void *s = zmq_socket(g_ctx, ZMQ_DEALER);
    int linger = 0, tmo = 20000;
    zmq_setsockopt(s, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(s, ZMQ_RCVTIMEO, &tmo, sizeof tmo);
    if (zmq_connect(s, ep)) die("connect %s", ep);
    return s;
}

static void send_env(void *s, Loom__Envelope *env)
{
    loom_err err;
    if (loom_wire_send(s, env, 0, &err) != LOOM_OK) die("send: %s", err.msg);
}

static Loom__Envelope *recv_env(void *s)
{
    Loom__Envelope *env = NULL;
    loom_err err;
    if (loom_wire_recv(s, 0, &env, &err) != LOOM_OK) die("no valid reply: %s", err.msg);
    return env;
}

/* Receives chunks of request `id` until its terminal one; returns it. */
static Loom__Envelope *until_final(void *s, const char *id, int *n_chunks)
{
    for (*n_chunks = 0;;) {
        Loom__Envelope *env = recv_env(s);
        if (env->body_case != LOOM__ENVELOPE__BODY_CHUNK) die("expected a chunk, got %s", loom_wire_body_name(env->body_case));
        if (strcmp(env->chunk->request_id, id)) die("chunk for an unexpected request id %s", env->chunk->request_id);
        (*n_chunks)++;
        if (env->chunk->finish_reason != LOOM__FINISH_REASON__FINISH_NONE) return env;
        loom_wire_free(env);
    }
}

static void generate(void *s, const char *id, const char *prompt, const int32_t *ids, size_t n_ids, int max_new, int stream)
{
    Loom__GenerateRequest g = LOOM__GENERATE_REQUEST__INIT;
    g.request_id = (char *)id;
    g.prompt = (char *)(prompt ? prompt : "");
    g.prompt_ids = (int32_t *)ids;
    g.n_prompt_ids = n_ids;
    g.max_new_tokens = max_new;
    g.stream = stream;
    Loom__Envelope env = LOOM__ENVELOPE__INIT;
    env.body_case = LOOM__ENVELOPE__BODY_GENERATE;
    env.generate = &g;
    send_env(s, &env);
}

/* An error chunk for id whose message contains `needle`. */
static void expect_error(void *s, const char *id, const char *needle)
{
    int n;
    Loom__Envelope *env = until_final(s, id, &n);
    Loom__GenerateChunk *c = env->chunk;
    if (c->finish_reason != LOOM__FINISH_REASON__FINISH_ERROR) die("expected an error chunk for %s", id);
    if (!strstr(c->error, needle)) {
        fprintf(stderr, "FAIL: error \"%s\" does not mention \"%s\"\n", c->error, needle);
        exit(1);
    }
    printf("%s: error chunk: %s\n", id[0] ? id : "(no id)", c->error);
    loom_wire_free(env);
}

/* The server still serves: a greedy request completes with tokens. */
static void expect_serving(void *s)
{
    int32_t bos = 1;
    generate(s, "alive", NULL, &bos, 1, 5, 0);
    int n;
    Loom__Envelope *env = until_final(s, "alive", &n);
    if (env->chunk->finish_reason == LOOM__FINISH_REASON__FINISH_ERROR || env->chunk->n_token_ids < 1)
        die("server stopped serving: %s", env->chunk->error);
    loom_wire_free(env);
}

static int64_t running(void *s)
{
    Loom__Stats st = LOOM__STATS__INIT;
    Loom__Envelope env = LOOM__ENVELOPE__INIT;
    env.body_case = LOOM__ENVELOPE__BODY_STATS;
    env.stats = &st;
    send_env(s, &env);
    Loom__Envelope *r = recv_env(s);
    if (r->body_case != LOOM__ENVELOPE__BODY_STATS_REPLY) die("expected stats_reply, got %s", loom_wire_body_name(r->body_case));
    int64_t n = r->stats_reply->running + r->stats_reply->waiting;
    loom_wire_free(r);
    return n;
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: raw_client ENDPOINT CASE\n");
        return 2;
    }
    const char *ep = argv[1], *cs = argv[2];
    g_ctx = zmq_ctx_new();
    void *s = connect_to(ep);
    int32_t bos = 1;
    if (!strcmp(cs, "garbage")) {
        zmq_send(s, "definitely not protobuf \xff\xff", 26, 0);
        expect_error(s, "", "");
    } else if (!strcmp(cs, "wrong_version")) {
        Loom__Health h = LOOM__HEALTH__INIT;
        Loom__Envelope env = LOOM__ENVELOPE__INIT;
        env.version = (Loom__WireVersion)7;
        env.body_case = LOOM__ENVELOPE__BODY_HEALTH;
        env.health = &h;
        size_t len = loom__envelope__get_packed_size(&env);
        uint8_t *buf = malloc(len);
        loom__envelope__pack(&env, buf);
        zmq_send(s, buf, len, 0);
        free(buf);
        expect_error(s, "", "version");
    } else if (!strcmp(cs, "wrong_type")) {
        Loom__GenerateChunk c = LOOM__GENERATE_CHUNK__INIT;
        Loom__Envelope env = LOOM__ENVELOPE__INIT;
        env.body_case = LOOM__ENVELOPE__BODY_CHUNK;
        env.chunk = &c;
        send_env(s, &env);
        expect_error(s, "", "wrong message type");
    } else if (!strcmp(cs, "empty_prompt")) {
        generate(s, "e1", "", NULL, 0, 5, 0);
        expect_error(s, "e1", "empty");
    } else if (!strcmp(cs, "long_prompt")) {
        int32_t *ids = calloc(100000, sizeof *ids);
        for (int i = 0; i < 100000; i++) ids[i] = 5;
        generate(s, "l1", NULL, ids, 100000, 5, 0);
        free(ids);
        expect_error(s, "l1", "max-seq-len");
    } else if (!strcmp(cs, "max_new_tokens")) {
        generate(s, "m0", NULL, &bos, 1, 0, 0);
        expect_error(s, "m0", "max_new_tokens");
        generate(s, "m1", NULL, &bos, 1, -4, 0);
        expect_error(s, "m1", "max_new_tokens");
        generate(s, "m2", NULL, &bos, 1, 1 << 30, 0);
        expect_error(s, "m2", "max-seq-len");
    } else if (!strcmp(cs, "bad_token_id")) {
        int32_t ids[2] = {1, 1 << 20};
        generate(s, "b1", NULL, ids, 2, 5, 0);
        expect_error(s, "b1", "vocabulary");
    } else if (!strcmp(cs, "cancel_unknown")) {
        Loom__Cancel c = LOOM__CANCEL__INIT;
        c.request_id = "nope";
        Loom__Envelope env = LOOM__ENVELOPE__INIT;
        env.body_case = LOOM__ENVELOPE__BODY_CANCEL;
        env.cancel = &c;
        send_env(s, &env);
        expect_error(s, "nope", "no running or waiting request");
    } else if (!strcmp(cs, "cancel")) {
        generate(s, "c1", NULL, &bos, 1, 3000, 1);
        Loom__Envelope *first = recv_env(s);
        loom_wire_free(first);
        Loom__Cancel c = LOOM__CANCEL__INIT;
        c.request_id = "c1";
        Loom__Envelope env = LOOM__ENVELOPE__INIT;
        env.body_case = LOOM__ENVELOPE__BODY_CANCEL;
        env.cancel = &c;
        send_env(s, &env);
        int n;
        Loom__Envelope *fin = until_final(s, "c1", &n);
        if (fin->chunk->finish_reason != LOOM__FINISH_REASON__FINISH_CANCELLED) die("expected a cancelled chunk%s", "");
        printf("c1: cancelled after %d more chunks, %d tokens\n", n, fin->chunk->usage ? fin->chunk->usage->completion_tokens : -1);
        loom_wire_free(fin);
        /* exactly one terminal chunk: nothing more arrives for c1 */
        int tmo = 500;
        zmq_setsockopt(s, ZMQ_RCVTIMEO, &tmo, sizeof tmo);
        zmq_msg_t m;
        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, s, 0) >= 0) die("a chunk arrived after the terminal one%s", "");
        zmq_msg_close(&m);
        tmo = 20000;
        zmq_setsockopt(s, ZMQ_RCVTIMEO, &tmo, sizeof tmo);
    } else if (!strcmp(cs, "disconnect")) {
        void *d = connect_to(ep);
        generate(d, "d1", NULL, &bos, 1, 3000, 1);
        Loom__Envelope *first = recv_env(d);
        loom_wire_free(first);
        zmq_close(d); /* gone mid-stream */
        int64_t n = -1;
        for (int i = 0; i < 100 && n != 0; i++) {
            usleep(100000);
            n = running(s);
        }
        if (n != 0) die("the disconnected client's sequence is still running%s", "");
        printf("d1: freed after the client disconnected\n");
    } else {
        die("unknown case %s", cs);
    }
    expect_serving(s);
    zmq_close(s);
    zmq_ctx_term(g_ctx);
    printf("ok\n");
    return 0;
}
