/* Packing and validated unpacking of loom envelopes (see wire.h). Every frame
 * that crosses a socket goes through here, so a version mismatch or a stray
 * non-loom peer gets the same clear message everywhere. */
#include "wire.h"

#include <errno.h>
#include <stdlib.h>

static loom_status pack_check(Loom__Envelope *env, size_t *len, loom_err *err)
{
    if (!env) return loom_err_set(err, LOOM_EINTERNAL, "wire: no envelope to pack");
    if (env->body_case == LOOM__ENVELOPE__BODY__NOT_SET)
        return loom_err_set(err, LOOM_EINTERNAL, "wire: refusing to pack an envelope without a body");
    env->version = LOOM_WIRE_VERSION;
    *len = protobuf_c_message_get_packed_size(&env->base);
    if (*len > LOOM_WIRE_MAX_BYTES)
        return loom_err_set(err, LOOM_EINVAL, "wire: a %s message of %zu bytes exceeds the %zu-byte limit",
                            loom_wire_body_name(env->body_case), *len, LOOM_WIRE_MAX_BYTES);
    return LOOM_OK;
}

loom_status loom_wire_pack(Loom__Envelope *env, uint8_t **buf, size_t *len, loom_err *err)
{
    *buf = NULL;
    *len = 0;
    size_t n = 0;
    LOOM_CHECK(pack_check(env, &n, err));
    uint8_t *b = malloc(n ? n : 1);
    if (!b) return loom_err_set(err, LOOM_ENOMEM, "wire: out of memory packing %zu bytes", n);
    size_t w = protobuf_c_message_pack(&env->base, b);
    if (w != n) {
        free(b);
        return loom_err_set(err, LOOM_EINTERNAL, "wire: packed %zu bytes, expected %zu", w, n);
    }
    *buf = b;
    *len = n;
    return LOOM_OK;
}

loom_status loom_wire_pack_msg(Loom__Envelope *env, zmq_msg_t *msg, loom_err *err)
{
    size_t n = 0;
    LOOM_CHECK(pack_check(env, &n, err));
    if (zmq_msg_init_size(msg, n) != 0)
        return loom_err_set(err, LOOM_ENOMEM, "wire: cannot allocate a %zu-byte message: %s", n, zmq_strerror(errno));
    size_t w = protobuf_c_message_pack(&env->base, zmq_msg_data(msg));
    if (w != n) {
        zmq_msg_close(msg);
        return loom_err_set(err, LOOM_EINTERNAL, "wire: packed %zu bytes, expected %zu", w, n);
    }
    return LOOM_OK;
}

loom_status loom_wire_send(void *sock, Loom__Envelope *env, int flags, loom_err *err)
{
    zmq_msg_t msg;
    LOOM_CHECK(loom_wire_pack_msg(env, &msg, err));
    if (zmq_msg_send(&msg, sock, flags) < 0) {
        int e = errno;
        zmq_msg_close(&msg);
        loom_err_set(err, LOOM_EIO, "wire: sending a %s message failed: %s", loom_wire_body_name(env->body_case),
                     e == EAGAIN ? "the peer is not connected or its queue is full" : zmq_strerror(e));
        errno = e;
        return LOOM_EIO;
    }
    return LOOM_OK; /* zmq owns the message now */
}

loom_status loom_wire_unpack(const void *data, size_t len, Loom__Envelope **out, loom_err *err)
{
    *out = NULL;
    if (len == 0) return loom_err_set(err, LOOM_EINVAL, "wire: empty message (0 bytes); expected a loom Envelope");
    if (len > LOOM_WIRE_MAX_BYTES)
        return loom_err_set(err, LOOM_EINVAL, "wire: message of %zu bytes exceeds the %zu-byte limit", len, LOOM_WIRE_MAX_BYTES);
    Loom__Envelope *env = loom__envelope__unpack(NULL, len, data);
    if (!env)
        return loom_err_set(err, LOOM_EINVAL, "wire: malformed message: %zu bytes that are not a loom protobuf Envelope", len);
    if (env->version != LOOM_WIRE_VERSION) {
        int v = (int)env->version;
        loom__envelope__free_unpacked(env, NULL);
        if (v == LOOM__WIRE_VERSION__WIRE_VERSION_UNSPECIFIED)
            return loom_err_set(err, LOOM_EINVAL,
                                "wire: message without a wire version (this peer speaks version %d; is the sender a loom peer?)",
                                (int)LOOM_WIRE_VERSION);
        return loom_err_set(err, LOOM_EINVAL, "wire: wire version %d is not supported (this peer speaks version %d)", v,
                            (int)LOOM_WIRE_VERSION);
    }
    if (env->body_case == LOOM__ENVELOPE__BODY__NOT_SET) {
        loom__envelope__free_unpacked(env, NULL);
        return loom_err_set(err, LOOM_EINVAL, "wire: the envelope has no body (empty, or a message type this peer does not know)");
    }
    *out = env;
    return LOOM_OK;
}

loom_status loom_wire_recv(void *sock, int flags, Loom__Envelope **out, loom_err *err)
{
    *out = NULL;
    zmq_msg_t msg;
    zmq_msg_init(&msg);
    if (zmq_msg_recv(&msg, sock, flags) < 0) {
        int e = errno;
        zmq_msg_close(&msg);
        errno = e;
        return loom_err_set(err, LOOM_EIO, "wire: receive failed: %s", zmq_strerror(e));
    }
    if (zmq_msg_more(&msg)) {
        int extra = 0;
        while (zmq_msg_more(&msg) && zmq_msg_recv(&msg, sock, 0) >= 0) extra++;
        zmq_msg_close(&msg);
        return loom_err_set(err, LOOM_EINVAL, "wire: malformed message: %d frames where one Envelope frame was expected", extra + 1);
    }
    loom_status st = loom_wire_unpack(zmq_msg_data(&msg), zmq_msg_size(&msg), out, err);
    zmq_msg_close(&msg); /* protobuf-c copied what it needs */
    return st;
}

void loom_wire_free(Loom__Envelope *env)
{
    if (env) loom__envelope__free_unpacked(env, NULL);
}

const char *loom_wire_body_name(Loom__Envelope__BodyCase body)
{
    switch (body) {
    case LOOM__ENVELOPE__BODY__NOT_SET: return "none";
    case LOOM__ENVELOPE__BODY_GENERATE: return "generate";
    case LOOM__ENVELOPE__BODY_CHUNK: return "chunk";
    case LOOM__ENVELOPE__BODY_CANCEL: return "cancel";
    case LOOM__ENVELOPE__BODY_HEALTH: return "health";
    case LOOM__ENVELOPE__BODY_HEALTH_REPLY: return "health_reply";
    case LOOM__ENVELOPE__BODY_STATS: return "stats";
    case LOOM__ENVELOPE__BODY_STATS_REPLY: return "stats_reply";
    case LOOM__ENVELOPE__BODY_PLAN: return "plan";
    case LOOM__ENVELOPE__BODY_RESULT: return "result";
    case LOOM__ENVELOPE__BODY_SHUTDOWN: return "shutdown";
    default: return "unknown";
    }
}
