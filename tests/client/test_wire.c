/* Unit tests of proto/wire.c: every body type survives pack -> unpack (buffer,
 * zmq_msg and a real socket), and bad frames are refused with a clear
 * message: empty, garbage, no version, another version, no body, many frames. */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "wire.h"
#include "../common/expect.h"

/* Packs env into a buffer and unpacks it again (NULL on failure). */
static Loom__Envelope *round_trip(Loom__Envelope *env)
{
    uint8_t *buf;
    size_t len;
    loom_err err = {{0}};
    if (loom_wire_pack(env, &buf, &len, &err) != LOOM_OK) {
        fprintf(stderr, "pack: %s\n", err.msg);
        return NULL;
    }
    Loom__Envelope *out;
    loom_status st = loom_wire_unpack(buf, len, &out, &err);
    free(buf);
    if (st != LOOM_OK) fprintf(stderr, "unpack: %s\n", err.msg);
    return out;
}

static void test_generate(void)
{
    int32_t ids[] = {1, 15043, 3186}, stop_ids[] = {2, 13};
    char *stops[] = {"\n\n", "User:"};
    Loom__GenerateRequest g = LOOM__GENERATE_REQUEST__INIT;
    g.request_id = "req-1";
    g.prompt = "Once upon a time";
    g.prompt_ids = ids;
    g.n_prompt_ids = 3;
    g.max_new_tokens = 17;
    g.temperature = 0.7f;
    g.top_k = 40;
    g.top_p = 0.9f;
    g.repetition_penalty = 1.1f;
    g.seed = 0xfedcba9876543210ull;
    g.stop = stops;
    g.n_stop = 2;
    g.stop_ids = stop_ids;
    g.n_stop_ids = 2;
    g.stream = true;
    Loom__Envelope env = LOOM__ENVELOPE__INIT;
    env.body_case = LOOM__ENVELOPE__BODY_GENERATE;
    env.generate = &g;
    Loom__Envelope *out = round_trip(&env);
    EXPECT(env.version == LOOM_WIRE_VERSION, "pack stamps the version");
    EXPECT(out && out->body_case == LOOM__ENVELOPE__BODY_GENERATE, "generate body");
    if (!out) return;
    Loom__GenerateRequest *r = out->generate;
    EXPECT(!strcmp(r->request_id, "req-1") && !strcmp(r->prompt, "Once upon a time"), "strings");
    EXPECT(r->n_prompt_ids == 3 && !memcmp(r->prompt_ids, ids, sizeof ids), "prompt ids");
    EXPECT(r->max_new_tokens == 17 && r->temperature == 0.7f && r->top_k == 40 && r->top_p == 0.9f &&
               r->repetition_penalty == 1.1f && r->seed == 0xfedcba9876543210ull && r->stream,
           "sampling fields");
    EXPECT(r->n_stop == 2 && !strcmp(r->stop[0], "\n\n") && !strcmp(r->stop[1], "User:"), "stop strings");
    EXPECT(r->n_stop_ids == 2 && r->stop_ids[0] == 2 && r->stop_ids[1] == 13, "stop ids");
    loom_wire_free(out);
}

static void test_chunk(void)
{
    int32_t toks[] = {450, 29871}, prompt[] = {1, 2, 3, 4};
    Loom__Usage u = LOOM__USAGE__INIT;
    u.prompt_tokens = 4;
    u.completion_tokens = 9;
    Loom__GenerateChunk ch = LOOM__GENERATE_CHUNK__INIT;
    ch.request_id = "r";
    ch.token_ids = toks;
    ch.n_token_ids = 2;
    ch.text = "h\xc3\xa9llo";
    ch.finish_reason = LOOM__FINISH_REASON__FINISH_STOP;
    ch.usage = &u;
    ch.prompt_ids = prompt;
    ch.n_prompt_ids = 4;
    Loom__Envelope env = LOOM__ENVELOPE__INIT;
    env.body_case = LOOM__ENVELOPE__BODY_CHUNK;
    env.chunk = &ch;
    Loom__Envelope *out = round_trip(&env);
    EXPECT(out && out->body_case == LOOM__ENVELOPE__BODY_CHUNK, "chunk body");
    if (!out) return;
    Loom__GenerateChunk *c = out->chunk;
    EXPECT(c->n_token_ids == 2 && c->token_ids[1] == 29871 && !strcmp(c->text, "h\xc3\xa9llo"), "tokens and text");
    EXPECT(c->finish_reason == LOOM__FINISH_REASON__FINISH_STOP && !strcmp(c->error, ""), "finish");
    EXPECT(c->usage && c->usage->prompt_tokens == 4 && c->usage->completion_tokens == 9, "usage");
    EXPECT(c->n_prompt_ids == 4 && c->prompt_ids[3] == 4, "prompt ids of the terminal chunk");
    loom_wire_free(out);
}

/* The small bodies: each comes back with its type (the empty ones too). */
static void test_small_bodies(void)
{
    Loom__Cancel k = LOOM__CANCEL__INIT;
    k.request_id = "x";
    Loom__Health h = LOOM__HEALTH__INIT;
    Loom__HealthReply hr = LOOM__HEALTH_REPLY__INIT;
    hr.serving = true;
    Loom__Stats s = LOOM__STATS__INIT;
    Loom__StatsReply sr = LOOM__STATS_REPLY__INIT;
    sr.running = 3;
    sr.tokens_per_s = 12.5;
    Loom__Shutdown sd = LOOM__SHUTDOWN__INIT;
    Loom__Envelope envs[6];
    for (int i = 0; i < 6; i++) loom__envelope__init(&envs[i]);
    envs[0].body_case = LOOM__ENVELOPE__BODY_CANCEL, envs[0].cancel = &k;
    envs[1].body_case = LOOM__ENVELOPE__BODY_HEALTH, envs[1].health = &h;
    envs[2].body_case = LOOM__ENVELOPE__BODY_HEALTH_REPLY, envs[2].health_reply = &hr;
    envs[3].body_case = LOOM__ENVELOPE__BODY_STATS, envs[3].stats = &s;
    envs[4].body_case = LOOM__ENVELOPE__BODY_STATS_REPLY, envs[4].stats_reply = &sr;
    envs[5].body_case = LOOM__ENVELOPE__BODY_SHUTDOWN, envs[5].shutdown = &sd;
    for (int i = 0; i < 6; i++) {
        Loom__Envelope *out = round_trip(&envs[i]);
        EXPECT(out && out->body_case == envs[i].body_case, "%s round trip", loom_wire_body_name(envs[i].body_case));
        if (out && i == 0) EXPECT(!strcmp(out->cancel->request_id, "x"), "cancel id");
        if (out && i == 2) EXPECT(out->health_reply->serving, "serving");
        if (out && i == 4) EXPECT(out->stats_reply->running == 3 && out->stats_reply->tokens_per_s == 12.5, "stats");
        loom_wire_free(out);
    }
    EXPECT(!strcmp(loom_wire_body_name(LOOM__ENVELOPE__BODY_PLAN), "plan"), "body name");
    EXPECT(!strcmp(loom_wire_body_name(LOOM__ENVELOPE__BODY__NOT_SET), "none"), "body name none");
}

static void test_pack_msg(void)
{
    Loom__Health h = LOOM__HEALTH__INIT;
    Loom__Envelope env = LOOM__ENVELOPE__INIT;
    env.body_case = LOOM__ENVELOPE__BODY_HEALTH;
    env.health = &h;
    zmq_msg_t msg;
    loom_err err = {{0}};
    EXPECT(loom_wire_pack_msg(&env, &msg, &err) == LOOM_OK, "pack_msg: %s", err.msg);
    Loom__Envelope *out;
    EXPECT(loom_wire_unpack(zmq_msg_data(&msg), zmq_msg_size(&msg), &out, &err) == LOOM_OK, "unpack msg: %s", err.msg);
    EXPECT(out && out->body_case == LOOM__ENVELOPE__BODY_HEALTH, "msg body");
    loom_wire_free(out);
    zmq_msg_close(&msg);

    Loom__Envelope empty = LOOM__ENVELOPE__INIT;
    uint8_t *buf = (uint8_t *)1;
    size_t len;
    EXPECT(loom_wire_pack(&empty, &buf, &len, &err) == LOOM_EINTERNAL && !buf, "packing without a body is a bug");
}

/* Packs env as-is (no version stamping) for the rejection tests. */
static size_t raw_pack(Loom__Envelope *env, uint8_t *buf)
{
    return protobuf_c_message_pack(&env->base, buf);
}

static void expect_reject(const void *data, size_t len, const char *needle, const char *what)
{
    Loom__Envelope *out = (Loom__Envelope *)1;
    loom_err err = {{0}};
    loom_status st = loom_wire_unpack(data, len, &out, &err);
    EXPECT(st == LOOM_EINVAL && out == NULL, "%s: rejected (status %d)", what, st);
    EXPECT(strstr(err.msg, needle) != NULL, "%s: message '%s' lacks '%s'", what, err.msg, needle);
}

static void test_rejects(void)
{
    uint8_t buf[256];
    expect_reject("", 0, "empty message", "empty frame");
    expect_reject("\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff", 11, "not a loom protobuf Envelope", "garbage");
    expect_reject("\x0a\x05" "ab", 4, "not a loom protobuf Envelope", "truncated length-delimited field");

    Loom__Health h = LOOM__HEALTH__INIT;
    Loom__Envelope env = LOOM__ENVELOPE__INIT;
    env.body_case = LOOM__ENVELOPE__BODY_HEALTH;
    env.health = &h;
    env.version = LOOM__WIRE_VERSION__WIRE_VERSION_UNSPECIFIED;
    expect_reject(buf, raw_pack(&env, buf), "without a wire version", "version 0");
    env.version = 2;
    expect_reject(buf, raw_pack(&env, buf), "wire version 2 is not supported (this peer speaks version 1)", "version 2");
    env.version = 77;
    expect_reject(buf, raw_pack(&env, buf), "wire version 77", "version 77");

    Loom__Envelope nobody = LOOM__ENVELOPE__INIT;
    nobody.version = LOOM_WIRE_VERSION;
    expect_reject(buf, raw_pack(&nobody, buf), "no body", "no body");
    /* version 1 plus a field this build does not know (number 99): still no body */
    size_t n = raw_pack(&nobody, buf);
    memcpy(buf + n, "\x98\x06\x01", 3); /* field 99, varint 1 */
    expect_reject(buf, n + 3, "no body", "unknown body");
}

/* The socket helpers, over an inproc PAIR: one frame per envelope, and a
 * multi-frame message is drained and refused. */
static void test_socket(void)
{
    void *ctx = zmq_ctx_new();
    void *a = zmq_socket(ctx, ZMQ_PAIR), *b = zmq_socket(ctx, ZMQ_PAIR);
    EXPECT(zmq_bind(a, "inproc://wire-test") == 0 && zmq_connect(b, "inproc://wire-test") == 0, "inproc pair");
    loom_err err = {{0}};
    Loom__Cancel k = LOOM__CANCEL__INIT;
    k.request_id = "abc";
    Loom__Envelope env = LOOM__ENVELOPE__INIT;
    env.body_case = LOOM__ENVELOPE__BODY_CANCEL;
    env.cancel = &k;
    EXPECT(loom_wire_send(a, &env, 0, &err) == LOOM_OK, "send: %s", err.msg);
    Loom__Envelope *out;
    EXPECT(loom_wire_recv(b, 0, &out, &err) == LOOM_OK, "recv: %s", err.msg);
    EXPECT(out && out->body_case == LOOM__ENVELOPE__BODY_CANCEL && !strcmp(out->cancel->request_id, "abc"), "cancel arrives");
    loom_wire_free(out);

    zmq_send(a, "x", 1, ZMQ_SNDMORE);
    zmq_send(a, "y", 1, ZMQ_SNDMORE);
    zmq_send(a, "z", 1, 0);
    EXPECT(loom_wire_recv(b, 0, &out, &err) == LOOM_EINVAL && !out, "multi-frame refused");
    EXPECT(strstr(err.msg, "3 frames") != NULL, "multi-frame message: %s", err.msg);
    /* the socket is left at a message boundary: the next envelope reads fine */
    EXPECT(loom_wire_send(a, &env, 0, &err) == LOOM_OK, "send again");
    EXPECT(loom_wire_recv(b, 0, &out, &err) == LOOM_OK && out, "recv after a bad message: %s", err.msg);
    loom_wire_free(out);

    zmq_send(a, "\x08\x02\x2a\x00", 4, 0); /* version 2, health */
    EXPECT(loom_wire_recv(b, 0, &out, &err) == LOOM_EINVAL && strstr(err.msg, "version 2"), "recv wrong version: %s", err.msg);
    EXPECT(loom_wire_recv(b, ZMQ_DONTWAIT, &out, &err) == LOOM_EIO && !out, "nothing waiting");
    loom_wire_free(NULL);
    zmq_close(a);
    zmq_close(b);
    zmq_ctx_term(ctx);
}

/* A plan of n sequences of k tokens each, sequence i's tokens = i*1000 + j. */
static void send_plan(void *sock, uint64_t step, int n, int k)
{
    Loom__PlanSequence *seqs = calloc((size_t)n, sizeof *seqs);
    Loom__PlanSequence **ptrs = calloc((size_t)n, sizeof *ptrs);
    int32_t *ids = calloc((size_t)(n * k), sizeof *ids), *table = calloc((size_t)k, sizeof *table);
    for (int i = 0; i < n; i++) {
        loom__plan_sequence__init(&seqs[i]);
        seqs[i].seq_id = (uint64_t)i;
        for (int j = 0; j < k; j++) ids[i * k + j] = i * 1000 + j;
        seqs[i].token_ids = ids + i * k;
        seqs[i].n_token_ids = (size_t)k;
        seqs[i].positions = ids + i * k;
        seqs[i].n_positions = (size_t)k;
        seqs[i].block_table = table;
        seqs[i].n_block_table = (size_t)k;
        ptrs[i] = &seqs[i];
    }
    Loom__BatchPlan plan = LOOM__BATCH_PLAN__INIT;
    plan.step = step;
    plan.n_seqs = (size_t)n;
    plan.seqs = ptrs;
    Loom__Envelope env = LOOM__ENVELOPE__INIT;
    env.body_case = LOOM__ENVELOPE__BODY_PLAN;
    env.plan = &plan;
    loom_err err = {{0}};
    EXPECT(loom_wire_send(sock, &env, 0, &err) == LOOM_OK, "send plan: %s", err.msg);
    free(seqs);
    free(ptrs);
    free(ids);
    free(table);
}

static bool plan_ok(const Loom__Envelope *e, uint64_t step, int n, int k)
{
    if (!e || e->body_case != LOOM__ENVELOPE__BODY_PLAN || e->plan->step != step || e->plan->n_seqs != (size_t)n) return false;
    for (int i = 0; i < n; i++) {
        const Loom__PlanSequence *ps = e->plan->seqs[i];
        if (ps->seq_id != (uint64_t)i || ps->n_token_ids != (size_t)k || ps->n_block_table != (size_t)k) return false;
        for (int j = 0; j < k; j++)
            if (ps->token_ids[j] != i * 1000 + j || ps->positions[j] != i * 1000 + j) return false;
    }
    return true;
}

/* The receive arena: plans of growing size unpack correctly, even the first
 * one far larger than the buffer (hundreds of allocations past its end); the
 * buffer grows once to hold the largest, then stays put for messages that fit. */
static void test_arena(void)
{
    void *ctx = zmq_ctx_new();
    void *a = zmq_socket(ctx, ZMQ_PAIR), *b = zmq_socket(ctx, ZMQ_PAIR);
    EXPECT(zmq_bind(a, "inproc://wire-arena") == 0 && zmq_connect(b, "inproc://wire-arena") == 0, "inproc pair");
    loom_err err = {{0}};
    loom_wire_arena *ar = loom_wire_arena_create(64, &err);
    EXPECT(ar != NULL, "arena: %s", err.msg);
    Loom__Envelope *out = NULL;
    const int sizes[][2] = {{1, 1}, {3, 5}, {300, 7}, {64, 200}, {300, 7}, {2, 2}, {300, 7}};
    size_t cap_after_big = 0;
    for (int t = 0; t < 7; t++) {
        send_plan(a, (uint64_t)t + 1, sizes[t][0], sizes[t][1]);
        EXPECT(loom_wire_recv_arena(b, 0, ar, &out, &err) == LOOM_OK, "recv plan %d: %s", t, err.msg);
        EXPECT(plan_ok(out, (uint64_t)t + 1, sizes[t][0], sizes[t][1]), "plan %d (%d seqs x %d) unpacked intact", t, sizes[t][0],
               sizes[t][1]);
        if (t == 4) cap_after_big = loom_wire_arena_capacity(ar); /* grown at the recv after each larger message */
    }
    EXPECT(loom_wire_arena_capacity(ar) > 64, "the arena grew to its largest message");
    EXPECT(loom_wire_arena_capacity(ar) == cap_after_big, "no growth once the largest message fits (%zu vs %zu)",
           loom_wire_arena_capacity(ar), cap_after_big);
    /* an invalid frame through the arena is refused like any other */
    zmq_send(a, "\x08\x02\x2a\x00", 4, 0);
    EXPECT(loom_wire_recv_arena(b, 0, ar, &out, &err) == LOOM_EINVAL && !out, "wrong version refused: %s", err.msg);
    loom_wire_arena_destroy(ar);
    loom_wire_arena_destroy(NULL);
    zmq_close(a);
    zmq_close(b);
    zmq_ctx_term(ctx);
}

int main(void)
{
    test_generate();
    test_chunk();
    test_small_bodies();
    test_pack_msg();
    test_rejects();
    test_socket();
    test_arena();
    if (failures) {
        fprintf(stderr, "%d failure(s)\n", failures);
        return 1;
    }
    printf("wire: all tests passed\n");
    return 0;
}
