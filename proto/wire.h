/* The loom wire: every message is one ZeroMQ frame holding a serialized
 * Loom__Envelope that carries the wire version. These helpers are the only
 * place that packs and unpacks envelopes, so every peer (coordinator, worker,
 * client) sets the version the same way and rejects bad frames the same way. */
#ifndef LOOM_PROTO_WIRE_H
#define LOOM_PROTO_WIRE_H

#include <stddef.h>
#include <stdint.h>
#include <zmq.h>

#include "../util/status.h"
#include "loom.pb-c.h"

/* The version this build speaks; a peer rejects every other one. */
#define LOOM_WIRE_VERSION LOOM__WIRE_VERSION__WIRE_VERSION_1

/* The largest envelope a peer accepts (bytes). A non-streamed reply with a
 * long text is the biggest message we send; this is far above it. */
#define LOOM_WIRE_MAX_BYTES ((size_t)64 << 20)

/* Sets env->version to LOOM_WIRE_VERSION and packs env into a malloc'd buffer
 * (*buf, *len; the caller free()s *buf). On error returns non-OK, sets
 * *buf = NULL and fills err. */
loom_status loom_wire_pack(Loom__Envelope *env, uint8_t **buf, size_t *len, loom_err *err);

/* Same, but packs straight into msg (initialized here with zmq_msg_init_size:
 * one allocation, no copy). On success the caller owns msg and must
 * zmq_msg_send or zmq_msg_close it; on error msg is not initialized. */
loom_status loom_wire_pack_msg(Loom__Envelope *env, zmq_msg_t *msg, loom_err *err);

/* Packs env (setting the version) and sends it as one frame on sock. flags are
 * zmq_msg_send's (ZMQ_DONTWAIT; ZMQ_SNDMORE is the caller's business, e.g. a
 * ROUTER sends the peer's identity frame first). A ZeroMQ failure returns
 * LOOM_EIO with zmq's message; errno is left as zmq set it (EAGAIN when a
 * ZMQ_DONTWAIT send would block). */
loom_status loom_wire_send(void *sock, Loom__Envelope *env, int flags, loom_err *err);

/* Unpacks one frame into *out and validates it. Errors (LOOM_EINVAL, *out =
 * NULL, err says which): an empty frame, a frame over LOOM_WIRE_MAX_BYTES, bytes
 * that are not a protobuf Envelope, a version other than LOOM_WIRE_VERSION
 * (the message names both versions), an envelope without a body. The caller
 * frees *out with loom_wire_free. */
loom_status loom_wire_unpack(const void *data, size_t len, Loom__Envelope **out, loom_err *err);

/* Receives the next frame of sock and unpacks it as loom_wire_unpack does.
 * flags are zmq_msg_recv's (ZMQ_DONTWAIT). A ROUTER receives the identity frame
 * itself first and then calls this for the body. A body frame followed by more
 * frames is drained and rejected (LOOM_EINVAL). A ZeroMQ failure returns
 * LOOM_EIO (errno as zmq set it: EAGAIN when nothing is waiting with
 * ZMQ_DONTWAIT); an invalid frame returns LOOM_EINVAL, so a server knows to
 * answer with an error chunk rather than give up. */
loom_status loom_wire_recv(void *sock, int flags, Loom__Envelope **out, loom_err *err);

/* A receive arena: envelopes unpacked into one reused buffer, so a loop that
 * receives a message per step (plans on a worker, results on the coordinator)
 * allocates nothing once the buffer has grown to its largest message. */
typedef struct loom_wire_arena loom_wire_arena;

/* Creates an arena of `bytes` to start with. NULL (err filled) when out of memory. */
loom_wire_arena *loom_wire_arena_create(size_t bytes, loom_err *err);

/* Frees the arena and what it holds; accepts NULL. */
void loom_wire_arena_destroy(loom_wire_arena *a);

/* loom_wire_recv into the arena: *out stays valid until the next
 * loom_wire_recv_arena with the same arena (or its destruction); never pass it
 * to loom_wire_free. A message larger than the buffer is unpacked with malloc
 * and the buffer grows (to twice what was needed) at the next call. */
loom_status loom_wire_recv_arena(void *sock, int flags, loom_wire_arena *a, Loom__Envelope **out, loom_err *err);

/* The arena's buffer size now (for tests). */
size_t loom_wire_arena_capacity(const loom_wire_arena *a);

/* Frees an envelope from loom_wire_unpack/loom_wire_recv; accepts NULL. */
void loom_wire_free(Loom__Envelope *env);

/* Short name of an envelope body ("generate", "chunk", "cancel", ...; "none"
 * when unset), for "wrong message type" errors. */
const char *loom_wire_body_name(Loom__Envelope__BodyCase body);

#endif
