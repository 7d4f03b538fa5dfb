/* The coordinator (MPI rank 0) of `loom serve`: a ZeroMQ ROUTER for clients,
 * a PUB for BatchPlans and a PULL for StepResults; it tokenizes, validates,
 * batches (split into PP micro-batches that are in flight at once),
 * detokenizes and streams, and gives every request exactly one terminal chunk.
 * Scheduling is in-flight (a finished sequence's slot takes the next waiting
 * request at the next step, new prompts are fed in chunks beside running
 * decodes) or, with static_batching, one batch at a time.
 *
 * KV: the coordinator owns the block manager (kv/block_manager.h) over a pool
 * as large as the smallest worker's (each reports its size when it first
 * answers); every PlanSequence carries its block table. A request that could
 * never fit the pool is refused at admission; when the pool runs out, the most
 * recently admitted sequences are preempted (their blocks freed, the request
 * queued again at the front and recomputed later, streaming on where it
 * stopped). With enable_kv_reuse, full blocks of computed tokens (prompt and
 * generated) are cached and matched by later requests. */
#ifndef LOOM_COORDINATOR_SERVER_H
#define LOOM_COORDINATOR_SERVER_H

#include <stdint.h>

#include "../util/status.h"

typedef struct loom_server_opts {
    const char *model_dir;
    const char *listen;         /* client endpoint, e.g. tcp://127.0.0.1:5555 */
    const char *control_host;   /* host workers reach the coordinator at */
    int tp, pp;
    int64_t max_batch_size;
    int64_t max_num_tokens;     /* tokens per step (prompt chunks are cut to fit) */
    int64_t max_seq_len;        /* prompt + new tokens */
    int verbose;
    int static_batching;        /* 1: --scheduler static (a batch starts when the last ends) */
    int enable_kv_reuse;        /* reuse cached full blocks of prompt tokens across requests */
    int chunked_context;        /* 1: prompts longer than the step's room are fed over several
                                   steps; 0: a prompt is fed in one step (and one longer than
                                   max_num_tokens is refused) */
} loom_server_opts;

typedef struct loom_server loom_server;

/* Loads the config and tokenizer and binds the three sockets. On error
 * returns NULL and fills err. */
loom_server *loom_server_create(const loom_server_opts *o, int n_workers, loom_err *err);

/* The endpoints workers connect to (valid while s lives). */
const char *loom_server_plan_endpoint(const loom_server *s);
const char *loom_server_result_endpoint(const loom_server *s);

/* Waits until every worker is subscribed, then serves until SIGTERM/SIGINT
 * (returns LOOM_OK after answering every request) or a worker fails (every
 * request gets an error chunk; returns non-OK with the worker's message). */
loom_status loom_server_run(loom_server *s, loom_err *err);

/* Tells the workers to stop (publishes Shutdown). */
void loom_server_shutdown_workers(loom_server *s);

/* Closes the sockets (flushing what is queued, up to a second) and frees;
 * accepts NULL. */
void loom_server_destroy(loom_server *s);

/* Installs SIGTERM/SIGINT handlers that make loom_server_run return. */
void loom_server_install_signals(void);

/* True once SIGTERM/SIGINT arrived. */
int loom_server_stopping(void);

#endif
