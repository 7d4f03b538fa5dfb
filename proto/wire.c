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

/* Unpacks and validates with allocator pa (NULL: malloc). */
static loom_status unpack_with(ProtobufCAllocator *pa, const void *data, size_t len, Loom__Envelope **out, loom_err *err)
{
    *out = NULL;
    if (len == 0) return loom_err_set(err, LOOM_EINVAL, "wire: empty message (0 bytes); expected a loom Envelope");
    if (len > LOOM_WIRE_MAX_BYTES)
        return loom_err_set(err, LOOM_EINVAL, "wire: message of %zu bytes exceeds the %zu-byte limit", len, LOOM_WIRE_MAX_BYTES);
    Loom__Envelope *env = loom__envelope__unpack(pa, len, data);
    if (!env)
        return loom_err_set(err, LOOM_EINVAL, "wire: malformed message: %zu bytes that are not a loom protobuf Envelope", len);
    if (env->version != LOOM_WIRE_VERSION) {
        int v = (int)env->version;
        loom__envelope__free_unpacked(env, pa);
        if (v == LOOM__WIRE_VERSION__WIRE_VERSION_UNSPECIFIED)
            return loom_err_set(err, LOOM_EINVAL,
                                "wire: message without a wire version (this peer speaks version %d; is the sender a loom peer?)",
                                (int)LOOM_WIRE_VERSION);
        return loom_err_set(err, LOOM_EINVAL, "wire: wire version %d is not supported (this peer speaks version %d)", v,
                            (int)LOOM_WIRE_VERSION);
    }
    if (env->body_case == LOOM__ENVELOPE__BODY__NOT_SET) {
        loom__envelope__free_unpacked(env, pa);
        return loom_err_set(err, LOOM_EINVAL, "wire: the envelope has no body (empty, or a message type this peer does not know)");
    }
    *out = env;
    return LOOM_OK;
}

loom_status loom_wire_unpack(const void *data, size_t len, Loom__Envelope **out, loom_err *err)
{
    return unpack_with(NULL, data, len, out, err);
}

/* Receives one frame and unpacks it with pa (NULL: malloc). */
static loom_status recv_with(ProtobufCAllocator *pa, void *sock, int flags, Loom__Envelope **out, loom_err *err)
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
    loom_status st = unpack_with(pa, zmq_msg_data(&msg), zmq_msg_size(&msg), out, err);
    zmq_msg_close(&msg); /* protobuf-c copied what it needs */
    return st;
}

loom_status loom_wire_recv(void *sock, int flags, Loom__Envelope **out, loom_err *err)
{
    return recv_with(NULL, sock, flags, out, err);
}

/* --- arena ------------------------------------------------------------------ */

#define ARENA_ALIGN 16
#define ARENA_MAX_CHUNKS 48 /* each overflow chunk at least doubles: far beyond any message */

struct loom_wire_arena {
    ProtobufCAllocator pa;       /* protobuf-c calls these with allocator_data = the arena */
    uint8_t *buf;                /* the main buffer */
    size_t cap;
    uint8_t *chunk;              /* where allocations bump now: buf, or the last overflow chunk */
    size_t chunk_cap, used;
    void *extra[ARENA_MAX_CHUNKS]; /* overflow chunks since the last reset */
    int n_extra;
    size_t total;                /* bytes handed out since the last reset */
};

static void *arena_alloc(void *ctx, size_t n)
{
    loom_wire_arena *a = ctx;
    size_t need = (n + ARENA_ALIGN - 1) & ~(size_t)(ARENA_ALIGN - 1);
    if (need > a->chunk_cap - a->used) {
        /* a message larger than any before: a new chunk now, one bigger buffer at the next reset */
        if (a->n_extra == ARENA_MAX_CHUNKS) return NULL;
        size_t sz = 2 * a->chunk_cap > need ? 2 * a->chunk_cap : need;
        uint8_t *c = malloc(sz);
        if (!c) return NULL;
        a->extra[a->n_extra++] = c;
        a->chunk = c;
        a->chunk_cap = sz;
        a->used = 0;
    }
    void *p = a->chunk + a->used;
    a->used += need;
    a->total += need;
    return p;
}

static void arena_free(void *ctx, void *p) { (void)ctx, (void)p; } /* everything goes at the next reset */

static void arena_reset(loom_wire_arena *a)
{
    if (a->n_extra) {
        for (int i = 0; i < a->n_extra; i++) free(a->extra[i]);
        a->n_extra = 0;
        size_t cap = 2 * a->total;
        uint8_t *b = malloc(cap);
        if (b) {
            free(a->buf);
            a->buf = b;
            a->cap = cap;
        }
    }
    a->chunk = a->buf;
    a->chunk_cap = a->cap;
    a->used = 0;
    a->total = 0;
}

loom_wire_arena *loom_wire_arena_create(size_t bytes, loom_err *err)
{
    loom_wire_arena *a = calloc(1, sizeof *a);
    if (a) a->buf = malloc(bytes ? bytes : 1);
    if (!a || !a->buf) {
        free(a);
        loom_err_set(err, LOOM_ENOMEM, "wire: out of memory for a %zu-byte arena", bytes);
        return NULL;
    }
    a->cap = bytes;
    a->chunk = a->buf;
    a->chunk_cap = bytes;
    a->pa.alloc = arena_alloc;
    a->pa.free = arena_free;
    a->pa.allocator_data = a;
    return a;
}

void loom_wire_arena_destroy(loom_wire_arena *a)
{
    if (!a) return;
    for (int i = 0; i < a->n_extra; i++) free(a->extra[i]);
    free(a->buf);
    free(a);
}

loom_status loom_wire_recv_arena(void *sock, int flags, loom_wire_arena *a, Loom__Envelope **out, loom_err *err)
{
    arena_reset(a);
    return recv_with(&a->pa, sock, flags, out, err);
}

size_t loom_wire_arena_capacity(const loom_wire_arena *a) { return a->cap; }

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
