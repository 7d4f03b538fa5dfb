/* Load generator for the serving tests: sends many requests at once on one
 * connection and accounts for every chunk by request id, so a test can see a
 * lost, duplicated or misattributed chunk (the CLI and the Python client hide
 * those: they stop at the first terminal chunk and skip unknown ids).
 *
 *   load_client ENDPOINT run REQS.json [TIMEOUT_S]
 *   load_client ENDPOINT cancel REQS.json K [TIMEOUT_S]
 *   load_client ENDPOINT disconnect REQS.json K [TIMEOUT_S]
 *
 * REQS.json is an array of {"id", "prompt_ids": [...], "max_new_tokens",
 * "temperature", "top_k", "top_p", "repetition_penalty", "seed", "stream",
 * "stop": [strings], "stop_ids": [...]}.
 * run: reads until every request has a terminal chunk, then 0.5 s more for
 * strays. cancel: as run, but once K chunks have arrived, cancels every
 * request without a terminal chunk. disconnect: once K chunks have arrived,
 * closes the connection and exits. run and cancel print one
 * JSON line per request (file order) {"id", "chunks", "terminals",
 * "after_terminal", "finish", "error", "output_ids", "text", "prompt_ids",
 * "completion_tokens"} and a last line {"summary": ...}; the test judges. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#include "proto/wire.h"
#include "util/clock.h"

typedef struct {
    const char *id;      // borrowed from the parsed REQS.json
    json_t *req;         // the request object
    int chunks;          // chunks received for this id
    int terminals;       // chunks with finish_reason != NONE
    int after_terminal;  // chunks that arrived after the first terminal one
    int finish;          // finish_reason of the first terminal chunk (-1: none)
    char *error;         // its error message
    json_t *out_ids;     // token ids of chunks up to and including the first terminal one
    char *text;          // their text, concatenated
    size_t text_len;
    json_t *prompt_ids;  // prompt_ids of the first terminal chunk
    int completion;      // usage.completion_tokens of the first terminal chunk
} load_req;

static const char *FINISH[] = {"none", "length", "stop", "eos", "cancelled", "error"};

static void die(const char *what, const char *detail)
{
    fprintf(stderr, "load_client: %s%s%s\n", what, detail ? ": " : "", detail ? detail : "");
    exit(2);
}

static int num_int(json_t *o, const char *k, int dflt)
{
    json_t *v = json_object_get(o, k);
    return v ? (int)json_integer_value(v) : dflt;
}

static double num_real(json_t *o, const char *k, double dflt)
{
    json_t *v = json_object_get(o, k);
    return v ? json_number_value(v) : dflt;
}

static void send_generate(void *s, load_req *r)
{
    json_t *ids = json_object_get(r->req, "prompt_ids");
    size_t n = json_array_size(ids);
    int32_t *p = calloc(n ? n : 1, sizeof *p);
    for (size_t i = 0; i < n; i++) p[i] = (int32_t)json_integer_value(json_array_get(ids, i));
    json_t *stop = json_object_get(r->req, "stop"), *stop_ids = json_object_get(r->req, "stop_ids");
    size_t n_stop = json_array_size(stop), n_stop_ids = json_array_size(stop_ids);
    char **sv = calloc(n_stop ? n_stop : 1, sizeof *sv);
    int32_t *si = calloc(n_stop_ids ? n_stop_ids : 1, sizeof *si);
    for (size_t i = 0; i < n_stop; i++) sv[i] = (char *)json_string_value(json_array_get(stop, i));
    for (size_t i = 0; i < n_stop_ids; i++) si[i] = (int32_t)json_integer_value(json_array_get(stop_ids, i));
    Loom__GenerateRequest g = LOOM__GENERATE_REQUEST__INIT;
    g.request_id = (char *)r->id;
    g.prompt = "";
    g.prompt_ids = p;
    g.n_prompt_ids = n;
    g.max_new_tokens = num_int(r->req, "max_new_tokens", 1);
    g.temperature = (float)num_real(r->req, "temperature", 0);
    g.top_k = num_int(r->req, "top_k", 0);
    g.top_p = (float)num_real(r->req, "top_p", 1);
    g.repetition_penalty = (float)num_real(r->req, "repetition_penalty", 1);
    g.seed = (uint64_t)num_int(r->req, "seed", 0);
    g.stream = json_is_true(json_object_get(r->req, "stream"));
    g.stop = sv;
    g.n_stop = n_stop;
    g.stop_ids = si;
    g.n_stop_ids = n_stop_ids;
    Loom__Envelope env = LOOM__ENVELOPE__INIT;
    env.body_case = LOOM__ENVELOPE__BODY_GENERATE;
    env.generate = &g;
    loom_err err;
    if (loom_wire_send(s, &env, 0, &err) != LOOM_OK) die("send", err.msg);
    free(p);
    free(sv);
    free(si);
}

static void send_cancel(void *s, const char *id)
{
    Loom__Cancel c = LOOM__CANCEL__INIT;
    c.request_id = (char *)id;
    Loom__Envelope env = LOOM__ENVELOPE__INIT;
    env.body_case = LOOM__ENVELOPE__BODY_CANCEL;
    env.cancel = &c;
    loom_err err;
    if (loom_wire_send(s, &env, 0, &err) != LOOM_OK) die("send", err.msg);
}

static load_req *find(load_req *rs, size_t n, const char *id)
{
    for (size_t i = 0; i < n; i++)
        if (!strcmp(rs[i].id, id)) return &rs[i];
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: load_client ENDPOINT run|cancel|disconnect REQS.json [K] [TIMEOUT_S]\n");
        return 2;
    }
    const char *ep = argv[1], *mode = argv[2];
    int waits_k = strcmp(mode, "run") != 0;
    int k = waits_k && argc > 4 ? atoi(argv[4]) : 0;
    double timeout = argc > 4 + waits_k ? atof(argv[4 + waits_k]) : 300;
    json_error_t jerr;
    json_t *root = json_load_file(argv[3], 0, &jerr);
    if (!json_is_array(root)) die("cannot read the requests", jerr.text);
    size_t n = json_array_size(root);
    load_req *rs = calloc(n ? n : 1, sizeof *rs);
    for (size_t i = 0; i < n; i++) {
        rs[i].req = json_array_get(root, i);
        rs[i].id = json_string_value(json_object_get(rs[i].req, "id"));
        if (!rs[i].id) die("a request without an id", NULL);
        rs[i].finish = -1;
        rs[i].out_ids = json_array();
    }

    void *ctx = zmq_ctx_new();
    void *s = zmq_socket(ctx, ZMQ_DEALER);
    int zero = 0;
    zmq_setsockopt(s, ZMQ_LINGER, &zero, sizeof zero);
    zmq_setsockopt(s, ZMQ_RCVHWM, &zero, sizeof zero);  // take everything the server sends
    zmq_setsockopt(s, ZMQ_SNDHWM, &zero, sizeof zero);  // all requests go out at once
    if (zmq_connect(s, ep)) die("connect", zmq_strerror(zmq_errno()));
    for (size_t i = 0; i < n; i++) send_generate(s, &rs[i]);

    size_t done = 0, received = 0;
    long unknown = 0, unexpected = 0, anonymous_errors = 0;
    int cancelled = 0, timed_out = 0, disconnected = 0;
    double deadline = loom_now_s() + timeout, quiet_until = 0;
    for (;;) {
        double now = loom_now_s();
        if (done == n) {
            if (quiet_until == 0) quiet_until = now + 0.5;
            if (now >= quiet_until) break;
        }
        if (now >= deadline) {
            timed_out = 1;
            break;
        }
        zmq_pollitem_t it = {s, 0, ZMQ_POLLIN, 0};
        double until = done == n ? quiet_until : deadline;
        long ms = (long)((until - now) * 1000) + 1;
        if (zmq_poll(&it, 1, ms > 200 ? 200 : ms) < 0) die("poll", zmq_strerror(zmq_errno()));
        if (!(it.revents & ZMQ_POLLIN)) continue;
        Loom__Envelope *env = NULL;
        loom_err err;
        if (loom_wire_recv(s, 0, &env, &err) != LOOM_OK) die("invalid reply", err.msg);
        if (env->body_case != LOOM__ENVELOPE__BODY_CHUNK) {
            unexpected++;
            loom_wire_free(env);
            continue;
        }
        Loom__GenerateChunk *c = env->chunk;
        load_req *r = find(rs, n, c->request_id);
        if (!r) {
            if (!c->request_id[0] && c->finish_reason == LOOM__FINISH_REASON__FINISH_ERROR) {
                anonymous_errors++;
                fprintf(stderr, "load_client: error chunk without a request id: %s\n", c->error);
            } else {
                unknown++;
            }
            loom_wire_free(env);
            continue;
        }
        if (r->terminals > 0) {
            r->after_terminal++;
        } else {
            for (size_t i = 0; i < c->n_token_ids; i++) json_array_append_new(r->out_ids, json_integer(c->token_ids[i]));
            size_t tl = c->text ? strlen(c->text) : 0;
            char *t = realloc(r->text, r->text_len + tl + 1);
            if (!t) die("out of memory", NULL);
            memcpy(t + r->text_len, c->text ? c->text : "", tl + 1);
            r->text = t;
            r->text_len += tl;
        }
        r->chunks++;
        received++;
        if (c->finish_reason != LOOM__FINISH_REASON__FINISH_NONE && r->terminals++ == 0) {
            done++;
            r->finish = (int)c->finish_reason;
            r->error = strdup(c->error ? c->error : "");
            r->prompt_ids = json_array();
            for (size_t i = 0; i < c->n_prompt_ids; i++) json_array_append_new(r->prompt_ids, json_integer(c->prompt_ids[i]));
            r->completion = c->usage ? c->usage->completion_tokens : -1;
        }
        loom_wire_free(env);
        if (waits_k && !cancelled && (long)received >= k) {
            cancelled = 1;
            if (!strcmp(mode, "disconnect")) {
                disconnected = 1;
                break;
            }
            for (size_t i = 0; i < n; i++)
                if (rs[i].terminals == 0) send_cancel(s, rs[i].id);
        }
    }

    for (size_t i = 0; i < n; i++) {
        load_req *r = &rs[i];
        if (disconnected) {
            json_decref(r->out_ids);
            json_decref(r->prompt_ids);
            free(r->error);
            free(r->text);
            continue;
        }
        const char *fin = r->finish < 0 ? "" : r->finish > 5 ? "unknown" : FINISH[r->finish];
        json_t *o = json_pack("{s:s, s:i, s:i, s:i, s:s, s:O, s:O, s:i}", "id", r->id, "chunks", r->chunks, "terminals", r->terminals,
                              "after_terminal", r->after_terminal, "finish", fin, "output_ids", r->out_ids, "prompt_ids",
                              r->prompt_ids ? r->prompt_ids : json_null(), "completion_tokens", r->completion);
        if (!o) die("cannot build the result of", r->id);
        /* text or an error that is not UTF-8 comes out as null (and fails the test) */
        json_t *text = json_stringn(r->text ? r->text : "", r->text_len), *error = json_string(r->error ? r->error : "");
        json_object_set_new(o, "text", text ? text : json_null());
        json_object_set_new(o, "error", error ? error : json_null());
        char *line = json_dumps(o, JSON_COMPACT);
        puts(line);
        free(line);
        json_decref(o);
        json_decref(r->out_ids);
        json_decref(r->prompt_ids);
        free(r->error);
        free(r->text);
    }
    if (disconnected)
        printf("{\"summary\": true, \"disconnected_after\": %zu, \"done\": %zu}\n", received, done);
    else
        printf("{\"summary\": true, \"done\": %zu, \"requests\": %zu, \"unknown_chunks\": %ld, \"unexpected_messages\": %ld, "
               "\"anonymous_errors\": %ld, \"cancel_sent\": %d, \"timed_out\": %s}\n",
               done, n, unknown, unexpected, anonymous_errors, cancelled, timed_out ? "true" : "false");
    free(rs);
    json_decref(root);
    zmq_close(s);
    zmq_ctx_term(ctx);
    return 0;
}
