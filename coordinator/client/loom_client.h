/* libloomclient: talks to a loom coordinator (protobuf over a ZeroMQ DEALER
 * socket) to generate text, stream tokens, cancel, and ask for health and
 * stats. No ZeroMQ or protobuf type appears here, so a program needs only this
 * header, status.h and `pkg-config --cflags --libs loomclient`.
 *
 * A loom_client is one connection and is not thread-safe: use one per thread
 * (they are independent). Errors: functions return a loom_status and write a
 * message into the caller's loom_err (or return NULL and fill err). */
#ifndef LOOM_CLIENT_H
#define LOOM_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "status.h"

#ifdef __cplusplus
extern "C" {
#endif

#define LOOM_CLIENT_DEFAULT_ENDPOINT "tcp://127.0.0.1:5555"
#define LOOM_CLIENT_ID_MAX 64 /* request ids are shorter than this (with the NUL) */

typedef struct loom_client loom_client;

/* Why a request ended; LOOM_CLIENT_FINISH_NONE marks a non-final chunk. */
typedef enum loom_client_finish {
    LOOM_CLIENT_FINISH_NONE = 0,
    LOOM_CLIENT_FINISH_LENGTH,    /* max_new_tokens reached */
    LOOM_CLIENT_FINISH_STOP,      /* a stop string or stop id */
    LOOM_CLIENT_FINISH_EOS,       /* the model's end-of-sequence token */
    LOOM_CLIENT_FINISH_CANCELLED, /* cancelled by the client */
    LOOM_CLIENT_FINISH_ERROR      /* the server refused or failed the request; see error */
} loom_client_finish;

/* One generation request. Fill with loom_client_request_init, then set the
 * prompt and max_new_tokens. Pointers are only read during the call. */
typedef struct loom_client_request {
    const char *request_id;        /* NULL: the client makes a unique one */
    const char *prompt;            /* prompt text (tokenized by the server), or NULL */
    const int32_t *prompt_ids;     /* or token ids; used when n_prompt_ids > 0 */
    size_t n_prompt_ids;
    int32_t max_new_tokens;        /* >= 1 */
    float temperature;             /* 0 = greedy (default) */
    int32_t top_k;                 /* 0 = off (default) */
    float top_p;                   /* 1 = off (default) */
    float repetition_penalty;      /* 1 = off (default) */
    uint64_t seed;                 /* default 0 */
    const char *const *stop;       /* stop strings (n_stop of them) */
    size_t n_stop;
    const int32_t *stop_ids;       /* stop token ids */
    size_t n_stop_ids;
    bool stream;                   /* true: a chunk per new token; false: one chunk at the end */
    int timeout_ms;                /* loom_client_generate: whole request limit, 0 = none (default) */
    int idle_timeout_ms;           /* loom_client_generate: longest wait for the next chunk, 0 = none (default) */
} loom_client_request;

/* A chunk of a request's output. Every pointer is a view into the client's
 * receive buffer: valid only until the next call on the same client (inside a
 * loom_client_chunk_fn, until it returns). */
typedef struct loom_client_chunk {
    const char *request_id;        /* "" for an error about a message the server could not attribute */
    const int32_t *token_ids;      /* new token ids */
    size_t n_token_ids;
    const char *text;              /* new text (UTF-8, NUL-terminated) */
    size_t text_len;
    loom_client_finish finish;     /* != NONE: the request's one terminal chunk */
    const char *error;             /* finish == ERROR: the server's message; else "" */
    int32_t prompt_tokens;         /* terminal chunk: usage counts */
    int32_t completion_tokens;
    const int32_t *prompt_ids;     /* terminal chunk: the prompt as the server tokenized it (may be empty) */
    size_t n_prompt_ids;
} loom_client_chunk;

/* What loom_client_generate collected (malloc'd; free with loom_client_result_free). */
typedef struct loom_client_result {
    int32_t *output_ids;           /* every generated token id */
    size_t n_output_ids;
    char *text;                    /* the whole generated text, NUL-terminated */
    size_t text_len;
    int32_t *prompt_ids;           /* from the terminal chunk (empty when the server did not say) */
    size_t n_prompt_ids;
    loom_client_finish finish;
    int32_t prompt_tokens, completion_tokens;
    char request_id[LOOM_CLIENT_ID_MAX];
} loom_client_result;

/* The server's load (loom_client_stats). Fields after kv_used_fraction were
 * added later (appended, so the first four keep their offsets); a server that
 * does not report one leaves it 0. The counters (preemptions, refused,
 * completed) and prefix_hit_rate cover the server's life since it started. */
typedef struct loom_client_stats {
    int32_t running;               /* requests being generated */
    int32_t waiting;               /* requests queued */
    double tokens_per_s;           /* recent generation throughput */
    double kv_used_fraction;       /* KV blocks used / kv_blocks_total, in [0, 1] */
    int64_t kv_blocks_total;       /* blocks of the paged KV pool (the smallest worker's) */
    int64_t kv_blocks_used;        /* blocks referenced by a running sequence */
    int64_t kv_blocks_free;        /* blocks never filled, or released without being cached */
    int64_t kv_blocks_cached;      /* cached prefix blocks no sequence holds (evictable) */
    int32_t tokens_per_block;      /* tokens one KV block holds */
    double prefix_hit_rate;        /* prompt tokens found in the prefix cache / prompt tokens offered, in [0, 1] */
    int64_t preemptions;           /* sequences evicted to make room (recomputed later) */
    int64_t refused;               /* requests refused at admission */
    int64_t completed;             /* requests answered with a terminal chunk */
    /* Back-to-back steps (a result in, the same micro-batch's next plan out), timed: */
    int64_t timed_steps;           /* how many */
    double step_cycle_ms;          /* mean time from one plan's publication to the next */
    double step_compute_ms;        /* mean time the worker computed */
    double overhead_fraction;      /* 1 - compute / cycle: scheduling, protobuf and ZeroMQ */
} loom_client_server_stats;

/* Called for each chunk of a request, the terminal one included. Return true
 * to go on; false cancels the request: the callback is not called again and
 * loom_client_generate waits for the server to confirm. */
typedef bool (*loom_client_chunk_fn)(void *ctx, const loom_client_chunk *chunk);

/* Creates a client connected to endpoint (NULL: LOOM_CLIENT_DEFAULT_ENDPOINT,
 * e.g. "tcp://host:5555", "ipc:///path"). ZeroMQ connects in the background;
 * with timeout_ms > 0 this waits up to that long for the connection and a
 * health reply in this wire version (serving or not), and fails if none comes.
 * With timeout_ms = 0 it returns at once (use loom_client_health to probe).
 * Later sends wait up to max(timeout_ms, 10 s) for a connection. A dropped
 * connection (peer closed, or 5 s without ZeroMQ heartbeats) fails the
 * requests in flight at once. On error returns NULL and fills err. */
loom_client *loom_client_connect(const char *endpoint, int timeout_ms, loom_err *err);

/* Closes the connection and frees c, dropping whatever is in flight (the
 * server cancels a vanished client's requests). Accepts NULL. */
void loom_client_close(loom_client *c);

/* The endpoint c was connected to. */
const char *loom_client_endpoint(const loom_client *c);

/* Fills r with the defaults: no prompt, greedy, top_p 1, repetition penalty 1,
 * no stops, stream off, no timeouts. */
void loom_client_request_init(loom_client_request *r);

/* Sends one request, streams its chunks to on_chunk (NULL: none) and returns
 * once its terminal chunk arrived. If res is non-NULL it receives the token
 * ids, text, finish reason, usage and the server's prompt ids (free it with
 * loom_client_result_free, also after an error). Returns:
 *   LOOM_OK       finished (length, stop, eos, or cancelled by on_chunk);
 *   LOOM_EINVAL   the request is invalid here, or the server answered with an
 *                 error chunk (err holds its message; res->finish = ERROR);
 *   LOOM_EIO      no connection, connection lost, an unreadable reply, or
 *                 req->timeout_ms / req->idle_timeout_ms passed (the request
 *                 is then cancelled on the server);
 *   LOOM_ENOMEM.
 * Chunks of other requests submitted on c (loom_client_submit) are dropped. */
loom_status loom_client_generate(loom_client *c, const loom_client_request *req, loom_client_chunk_fn on_chunk, void *ctx,
                                 loom_client_result *res, loom_err *err);

/* Frees what a result holds and zeroes it; accepts NULL. */
void loom_client_result_free(loom_client_result *res);

/* Asynchronous use (many requests on one client): sends req without waiting
 * and writes its id into id (LOOM_CLIENT_ID_MAX bytes). Pair with
 * loom_client_next. A caller-supplied request_id must be non-empty and
 * shorter than LOOM_CLIENT_ID_MAX. */
loom_status loom_client_submit(loom_client *c, const loom_client_request *req, char id[LOOM_CLIENT_ID_MAX], loom_err *err);

/* Waits up to timeout_ms (< 0: no limit) for the next chunk of any request in
 * flight on c and sets *got. *got = false with LOOM_OK means the time ran out.
 * Chunks of requests that are not in flight (finished, cancelled, abandoned)
 * are skipped. chunk's pointers are valid until the next call on c. Returns
 * LOOM_EIO when the connection to the server is lost while requests are in
 * flight (they are then all forgotten) or on a ZeroMQ failure, LOOM_EINVAL for
 * a frame that is not a valid envelope of this wire version. */
loom_status loom_client_next(loom_client *c, int timeout_ms, loom_client_chunk *chunk, bool *got, loom_err *err);

/* Asks the server to cancel request id (its terminal chunk, finish CANCELLED,
 * then arrives through loom_client_next). Does not wait. */
loom_status loom_client_cancel(loom_client *c, const char *id, loom_err *err);

/* Number of requests submitted on c whose terminal chunk has not arrived. */
size_t loom_client_in_flight(const loom_client *c);

/* Asks the server whether it serves (model loaded, workers up) and waits up to
 * timeout_ms (> 0) for the connection and the reply. Sets *serving. No reply
 * in time returns LOOM_EIO. Not while requests are in flight on c (LOOM_EINVAL):
 * use a second client. */
loom_status loom_client_health(loom_client *c, int timeout_ms, bool *serving, loom_err *err);

/* Asks the server for its load; as loom_client_health otherwise. */
loom_status loom_client_stats(loom_client *c, int timeout_ms, loom_client_server_stats *stats, loom_err *err);

/* "length", "stop", "eos", "cancelled", "error" ("none" for NONE). */
const char *loom_client_finish_name(loom_client_finish f);

#ifdef __cplusplus
}
#endif

#endif
