/* libloomclient against tests/client/mock_server: connect and health, stats,
 * streaming with the callback, cancelling from the callback, many requests on
 * one client, error chunks, idle and overall timeouts, a server that dies
 * mid-stream, a server of another wire version, and nobody listening.
 *   test_client_lib MOCK_SERVER_BINARY */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "loom_client.h"
#include "../common/expect.h"

static const char *mock_bin;

typedef struct mock {
    pid_t pid;
    char endpoint[256];
} mock;

/* Starts the mock with the given mode; its first stdout line is the endpoint. */
static bool mock_start(mock *m, const char *mode)
{
    int fd[2];
    if (pipe(fd) != 0) return false;
    m->pid = fork();
    if (m->pid == 0) {
        dup2(fd[1], 1);
        close(fd[0]);
        close(fd[1]);
        execl(mock_bin, mock_bin, "--mode", mode, (char *)NULL);
        _exit(127);
    }
    close(fd[1]);
    FILE *f = fdopen(fd[0], "r");
    bool ok = f && fgets(m->endpoint, sizeof m->endpoint, f);
    if (f) fclose(f);
    m->endpoint[strcspn(m->endpoint, "\n")] = '\0';
    if (!ok) fprintf(stderr, "mock_server (%s) did not start\n", mode);
    return ok;
}

/* Stops the mock; returns its wait status. */
static int mock_stop(mock *m)
{
    int status = 0;
    kill(m->pid, SIGTERM);
    waitpid(m->pid, &status, 0);
    return status;
}

/* Stops a mock that must exit cleanly (0: no sanitizer report). */
static void mock_stop_clean(mock *m)
{
    int status = mock_stop(m);
    EXPECT(WIFEXITED(status) && WEXITSTATUS(status) == 0, "mock_server exit status %d (a sanitizer report?)", status);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

typedef struct seen {
    int chunks, terminal;
    int stop_after; /* return false after this many chunks (0 = never) */
    size_t text;
} seen;

static bool count_chunks(void *ctx, const loom_client_chunk *ch)
{
    seen *s = ctx;
    s->chunks++;
    s->text += ch->text_len;
    if (ch->finish != LOOM_CLIENT_FINISH_NONE) s->terminal++;
    return !(s->stop_after && s->chunks >= s->stop_after);
}

static void test_normal(void)
{
    mock m;
    if (!mock_start(&m, "normal")) {
        failures++;
        return;
    }
    loom_err err = {{0}};
    loom_client *c = loom_client_connect(m.endpoint, 5000, &err);
    EXPECT(c, "connect: %s", err.msg);
    if (!c) goto out;
    EXPECT(!strcmp(loom_client_endpoint(c), m.endpoint), "endpoint");
    bool serving = false;
    EXPECT(loom_client_health(c, 2000, &serving, &err) == LOOM_OK && serving, "health: %s", err.msg);
    loom_client_server_stats st;
    EXPECT(loom_client_stats(c, 2000, &st, &err) == LOOM_OK, "stats: %s", err.msg);
    EXPECT(st.waiting == 3 && st.tokens_per_s == 42.5 && st.kv_used_fraction == 0.25, "stats values");
    EXPECT(st.kv_blocks_total == 5000000000LL && st.kv_blocks_used == 1250000000LL && st.kv_blocks_free == 3000000000LL &&
               st.kv_blocks_cached == 750000000LL && st.tokens_per_block == 16 && st.prefix_hit_rate == 0.625 &&
               st.preemptions == 7 && st.refused == 2 && st.completed == 11 && st.timed_steps == 6000000000LL &&
                   st.step_cycle_ms == 8.0 && st.step_compute_ms == 7.5 && st.overhead_fraction == 0.0625,
           "stats: KV pool and counters");

    /* streaming: one callback per token, the last one terminal */
    loom_client_request req;
    loom_client_request_init(&req);
    req.prompt = "hi";
    req.max_new_tokens = 5;
    req.stream = true;
    req.timeout_ms = 5000;
    loom_client_result res;
    seen s = {0};
    EXPECT(loom_client_generate(c, &req, count_chunks, &s, &res, &err) == LOOM_OK, "generate: %s", err.msg);
    EXPECT(s.chunks == 5 && s.terminal == 1, "5 chunks, 1 terminal (got %d, %d)", s.chunks, s.terminal);
    EXPECT(res.finish == LOOM_CLIENT_FINISH_LENGTH && res.n_output_ids == 5 && res.output_ids[4] == 1004, "result ids");
    EXPECT(res.text && !strcmp(res.text, "w0 w1 w2 w3 w4 ") && res.text_len == s.text, "result text '%s'", res.text);
    EXPECT(res.n_prompt_ids == 2 && res.prompt_ids[0] == 'h' && res.prompt_ids[1] == 'i', "prompt ids from the server");
    EXPECT(res.prompt_tokens == 2 && res.completion_tokens == 5, "usage");
    loom_client_result_free(&res);
    loom_client_result_free(NULL);

    /* non-streaming: one chunk with everything; token ids as the prompt */
    int32_t ids[] = {7, 8, 9};
    req.prompt = NULL;
    req.prompt_ids = ids;
    req.n_prompt_ids = 3;
    req.stream = false;
    memset(&s, 0, sizeof s);
    EXPECT(loom_client_generate(c, &req, count_chunks, &s, &res, &err) == LOOM_OK, "generate: %s", err.msg);
    EXPECT(s.chunks == 1 && res.n_output_ids == 5 && res.n_prompt_ids == 3 && res.prompt_ids[2] == 9, "non-stream");
    loom_client_result_free(&res);
    EXPECT(loom_client_generate(c, &req, NULL, NULL, NULL, &err) == LOOM_OK, "no callback, no result: %s", err.msg);

    /* stop strings travel and end the request with STOP */
    const char *stops[] = {"w2"};
    req.stop = stops;
    req.n_stop = 1;
    EXPECT(loom_client_generate(c, &req, NULL, NULL, &res, &err) == LOOM_OK, "generate: %s", err.msg);
    EXPECT(res.finish == LOOM_CLIENT_FINISH_STOP && !strcmp(res.text, "w0 w1 "), "stop: %s '%s'",
           loom_client_finish_name(res.finish), res.text);
    loom_client_result_free(&res);
    req.stop = NULL;
    req.n_stop = 0;

    /* the callback cancels: the server confirms, the call returns OK */
    req.prompt = "SLOW";
    req.prompt_ids = NULL;
    req.n_prompt_ids = 0;
    req.stream = true;
    req.max_new_tokens = 50;
    memset(&s, 0, sizeof s);
    s.stop_after = 2;
    double t0 = now_s();
    EXPECT(loom_client_generate(c, &req, count_chunks, &s, &res, &err) == LOOM_OK, "cancelled generate: %s", err.msg);
    EXPECT(res.finish == LOOM_CLIENT_FINISH_CANCELLED && s.chunks == 2 && res.n_output_ids == 2, "cancelled after 2 (%s, %d)",
           loom_client_finish_name(res.finish), s.chunks);
    EXPECT(now_s() - t0 < 3, "cancel is quick");
    loom_client_result_free(&res);

    /* an error chunk from the server */
    req.prompt = "ERROR";
    req.max_new_tokens = 5;
    memset(&s, 0, sizeof s);
    EXPECT(loom_client_generate(c, &req, count_chunks, &s, &res, &err) == LOOM_EINVAL, "error chunk -> EINVAL");
    EXPECT(strstr(err.msg, "mock: the worker failed") != NULL, "error message: %s", err.msg);
    EXPECT(res.finish == LOOM_CLIENT_FINISH_ERROR && s.chunks == 3 && res.n_output_ids == 2, "error after 2 tokens");
    loom_client_result_free(&res);
    req.prompt = "";
    EXPECT(loom_client_generate(c, &req, NULL, NULL, NULL, &err) == LOOM_EINVAL && strstr(err.msg, "prompt is empty"),
           "empty prompt: %s", err.msg);

    /* a silent request: the idle timeout ends it, and the client goes on working */
    req.prompt = "SILENT";
    req.idle_timeout_ms = 300;
    req.timeout_ms = 0;
    t0 = now_s();
    EXPECT(loom_client_generate(c, &req, NULL, NULL, NULL, &err) == LOOM_EIO && strstr(err.msg, "idle timeout"),
           "idle timeout: %s", err.msg);
    EXPECT(now_s() - t0 < 2, "idle timeout in time (%.2f s)", now_s() - t0);
    req.idle_timeout_ms = 0;
    req.timeout_ms = 400;
    t0 = now_s();
    EXPECT(loom_client_generate(c, &req, NULL, NULL, NULL, &err) == LOOM_EIO && strstr(err.msg, "timed out"),
           "overall timeout: %s", err.msg);
    EXPECT(now_s() - t0 < 2, "overall timeout in time");
    EXPECT(loom_client_in_flight(c) == 0, "nothing left in flight");
    EXPECT(loom_client_health(c, 2000, &serving, &err) == LOOM_OK && serving, "health after timeouts: %s", err.msg);

    /* many requests on one client */
    req.prompt = "abc";
    req.timeout_ms = 0;
    req.max_new_tokens = 4;
    char id[4][LOOM_CLIENT_ID_MAX];
    for (int i = 0; i < 4; i++) EXPECT(loom_client_submit(c, &req, id[i], &err) == LOOM_OK, "submit: %s", err.msg);
    EXPECT(loom_client_in_flight(c) == 4, "4 in flight");
    EXPECT(loom_client_health(c, 1000, &serving, &err) == LOOM_EINVAL, "health refused while requests are in flight");
    int per[4] = {0}, terminals = 0;
    while (loom_client_in_flight(c) > 0) {
        loom_client_chunk ch;
        bool got;
        if (loom_client_next(c, 5000, &ch, &got, &err) != LOOM_OK || !got) {
            EXPECT(0, "next: %s", got ? err.msg : "timed out");
            break;
        }
        for (int i = 0; i < 4; i++)
            if (!strcmp(ch.request_id, id[i])) per[i] += (int)ch.n_token_ids;
        terminals += ch.finish != LOOM_CLIENT_FINISH_NONE;
    }
    EXPECT(terminals == 4 && per[0] == 4 && per[3] == 4, "4 terminals, 4 tokens each");
    for (int i = 1; i < 4; i++) EXPECT(strcmp(id[i], id[0]), "unique ids");
    req.request_id = "mine";
    EXPECT(loom_client_submit(c, &req, id[0], &err) == LOOM_OK && !strcmp(id[0], "mine"), "own request id");
    EXPECT(loom_client_submit(c, &req, id[1], &err) == LOOM_EINVAL, "duplicate id refused");
    EXPECT(loom_client_cancel(c, "mine", &err) == LOOM_OK, "cancel");
    bool done = false;
    while (loom_client_in_flight(c) > 0) {
        loom_client_chunk ch;
        bool got;
        if (loom_client_next(c, 5000, &ch, &got, &err) != LOOM_OK || !got) break;
        done |= ch.finish != LOOM_CLIENT_FINISH_NONE;
    }
    EXPECT(done && loom_client_in_flight(c) == 0, "own id finished");
    loom_client_chunk ch;
    bool got;
    EXPECT(loom_client_next(c, 10, &ch, &got, &err) == LOOM_EINVAL, "next with nothing in flight");

    /* the server dies mid-stream: a prompt error, no timeout needed */
    req.request_id = NULL;
    req.prompt = "DIE";
    req.max_new_tokens = 10;
    t0 = now_s();
    memset(&s, 0, sizeof s);
    EXPECT(loom_client_generate(c, &req, count_chunks, &s, NULL, &err) == LOOM_EIO && strstr(err.msg, "lost the connection"),
           "server died: %s", err.msg);
    EXPECT(now_s() - t0 < 8, "death noticed in %.2f s", now_s() - t0);
    EXPECT(s.chunks == 1, "the chunk before the crash arrived");
out:
    loom_client_close(c);
    int status = mock_stop(&m);
    EXPECT(WIFEXITED(status) && WEXITSTATUS(status) == 3, "the mock crashed on purpose (status %d)", status);
}

static void test_bad_servers(void)
{
    loom_err err = {{0}};
    mock m;
    if (mock_start(&m, "badversion")) {
        loom_client *c = loom_client_connect(m.endpoint, 3000, &err);
        EXPECT(!c && strstr(err.msg, "wire version 2 is not supported"), "wrong version: %s", err.msg);
        loom_client_close(c);
        mock_stop_clean(&m);
    } else {
        failures++;
    }
    if (mock_start(&m, "garbage")) {
        loom_client *c = loom_client_connect(m.endpoint, 3000, &err);
        EXPECT(!c && strstr(err.msg, "malformed"), "garbage: %s", err.msg);
        loom_client_close(c);
        mock_stop_clean(&m);
    } else {
        failures++;
    }
    if (mock_start(&m, "silent")) {
        double t0 = now_s();
        loom_client *c = loom_client_connect(m.endpoint, 500, &err);
        EXPECT(!c && strstr(err.msg, "no health reply"), "silent: %s", err.msg);
        EXPECT(now_s() - t0 < 2, "silent connect gives up in time");
        loom_client_close(c);
        /* lazy connect, then a generate with a timeout */
        c = loom_client_connect(m.endpoint, 0, &err);
        loom_client_request req;
        loom_client_request_init(&req);
        req.prompt = "hi";
        req.max_new_tokens = 2;
        req.timeout_ms = 300;
        EXPECT(c && loom_client_generate(c, &req, NULL, NULL, NULL, &err) == LOOM_EIO, "silent generate: %s", err.msg);
        loom_client_close(c);
        mock_stop_clean(&m);
    } else {
        failures++;
    }
    /* nobody listens: a port we bound and released */
    double t0 = now_s();
    loom_client *c = loom_client_connect("tcp://127.0.0.1:1", 400, &err);
    /* "no connection" when the refusal is seen in time, "no health reply" when it is not (a loaded machine) */
    EXPECT(!c && (strstr(err.msg, "no connection") || strstr(err.msg, "no health reply")), "nobody listening: %s", err.msg);
    EXPECT(now_s() - t0 < 2, "gives up in time");
    c = loom_client_connect("not an endpoint", 0, &err);
    EXPECT(!c && strstr(err.msg, "cannot connect"), "bad endpoint: %s", err.msg);
    loom_client_close(NULL);
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: test_client_lib MOCK_SERVER\n");
        return 2;
    }
    mock_bin = argv[1];
    signal(SIGPIPE, SIG_IGN);
    test_normal();
    test_bad_servers();
    if (failures) {
        fprintf(stderr, "%d failure(s)\n", failures);
        return 1;
    }
    printf("client library: all tests passed\n");
    return 0;
}
