/* Unit tests of the coordinator's KV block manager: ownership and refcounts,
 * prefix reuse hit counts, LRU eviction order, refusal and out-of-blocks errors,
 * and a seeded random stress run that checks every invariant after each step.
 * Usage: test_block_manager [seed] */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kv/block_manager.h"
#include "../common/expect.h"

#define EXPECT_OK(expr)                                                         \
    do {                                                                        \
        loom_err e_ = {{0}};                                                    \
        loom_status s_ = (expr);                                                \
        EXPECT(s_ == LOOM_OK, "%s -> %s: %s", #expr, loom_status_str(s_), e_.msg); \
    } while (0)

/* Invariants hold; reports the checker's message otherwise. */
#define EXPECT_CHECK(bm)                                                        \
    do {                                                                        \
        loom_err ce_ = {{0}};                                                   \
        EXPECT(loom_block_manager_check((bm), &ce_) == LOOM_OK, "check: %s", ce_.msg); \
    } while (0)

static loom_err err;

static loom_block_manager_stats stats(const loom_block_manager *bm)
{
    loom_block_manager_stats s;
    loom_block_manager_stats_get(bm, &s);
    return s;
}

/* Distinct token ids for a test prompt: base + i. */
static void fill(int32_t *ids, int64_t n, int32_t base)
{
    for (int64_t i = 0; i < n; i++) ids[i] = base + (int32_t)i;
}

/* add + match_prefix + append the rest; returns the tokens reused (or -1 on error). */
static int64_t admit(loom_block_manager *bm, int64_t id, uint64_t salt, const int32_t *p, int64_t n)
{
    int64_t cached = -1;
    if (loom_block_manager_add(bm, id, salt, n, &err) != LOOM_OK) return -1;
    if (loom_block_manager_match_prefix(bm, id, p, n, &cached, &err) != LOOM_OK) return -1;
    if (loom_block_manager_append_tokens(bm, id, p + cached, n - cached, &err) != LOOM_OK) return -1;
    return cached;
}

static void test_basic(void)
{
    EXPECT(loom_block_manager_create(8, 12, true, &err) == NULL && err.msg[0], "tpb 12 refused");
    EXPECT(loom_block_manager_create(8, 4, true, &err) == NULL, "tpb 4 refused");
    EXPECT(loom_block_manager_create(8, 256, true, &err) == NULL, "tpb 256 refused");
    EXPECT(loom_block_manager_create(0, 16, true, &err) == NULL, "0 blocks refused");
    loom_block_manager_destroy(NULL);

    loom_block_manager *bm = loom_block_manager_create(8, 16, false, &err);
    EXPECT(bm != NULL, "create: %s", err.msg);
    if (!bm) return;
    int32_t ids[128];
    fill(ids, 128, 1000);
    EXPECT(loom_block_manager_add(bm, 7, 0, 0, &err) == LOOM_OK, "add: %s", err.msg);
    EXPECT(loom_block_manager_add(bm, 7, 0, 0, &err) == LOOM_EINVAL, "duplicate add refused");
    EXPECT(loom_block_manager_add(bm, 8, 0, -1, &err) == LOOM_EINVAL, "negative reserve refused");
    EXPECT(loom_block_manager_add(bm, 8, 0, 1000, &err) == LOOM_OK, "add with reservation: %s", err.msg);
    EXPECT(loom_block_manager_append_tokens(bm, 7, ids, 40, &err) == LOOM_OK, "append: %s", err.msg);
    const int32_t *t;
    int64_t n;
    EXPECT(loom_block_manager_table(bm, 7, &t, &n, &err) == LOOM_OK && n == 3, "3 blocks for 40 tokens");
    EXPECT(n == 3 && t[0] == 0 && t[1] == 1 && t[2] == 2, "blocks 0,1,2 handed out first");
    EXPECT(loom_block_manager_seq_len(bm, 7) == 40, "len 40");
    EXPECT(loom_block_manager_blocks_needed(bm, 7, 8) == 0, "room in the last block");
    EXPECT(loom_block_manager_blocks_needed(bm, 7, 9) == 1, "one more block");
    EXPECT(loom_block_manager_blocks_needed(bm, 99, 1) == -1, "unknown seq");
    EXPECT(loom_block_manager_available(bm) == 5, "5 available");
    EXPECT(loom_block_manager_append_tokens(bm, 7, ids, 0, &err) == LOOM_OK, "empty append");
    EXPECT(loom_block_manager_append_tokens(bm, 7, ids, -1, &err) == LOOM_EINVAL, "negative append");
    EXPECT(loom_block_manager_append_tokens(bm, 99, ids, 1, &err) == LOOM_EINVAL, "append to unknown");
    EXPECT(loom_block_manager_free(bm, 99, &err) == LOOM_EINVAL, "free unknown");
    EXPECT(loom_block_manager_table(bm, 99, &t, &n, &err) == LOOM_EINVAL && t == NULL && n == 0, "table unknown");
    EXPECT(loom_block_manager_seq_len(bm, 99) == -1, "len unknown");
    int64_t c;
    EXPECT(loom_block_manager_match_prefix(bm, 7, ids, 10, &c, &err) == LOOM_EINVAL, "match on a non-empty seq");
    EXPECT(loom_block_manager_commit_full_blocks(bm, 7, 41, &err) == LOOM_EINVAL, "commit past len");
    EXPECT(loom_block_manager_commit_full_blocks(bm, 7, 40, &err) == LOOM_OK, "commit no-op without reuse");
    EXPECT(loom_block_manager_match_prefix(bm, 8, ids, 10, &c, &err) == LOOM_OK && c == 0,
           "match without reuse reports 0");
    EXPECT(loom_block_manager_match_prefix(bm, 8, ids, 0, &c, &err) == LOOM_EINVAL, "empty prompt refused");
    EXPECT(stats(bm).used == 3 && stats(bm).free == 5 && stats(bm).cached_total == 0 && stats(bm).n_seqs == 2,
           "stats after append");
    EXPECT_CHECK(bm);
    EXPECT_OK(loom_block_manager_free(bm, 7, &e_));
    EXPECT_OK(loom_block_manager_free(bm, 8, &e_));
    EXPECT(stats(bm).free == 8 && stats(bm).used == 0 && stats(bm).n_seqs == 0, "all blocks back");
    EXPECT_OK(loom_block_manager_add(bm, 7, 0, 0, &e_)); /* id reusable after free */
    /* Many sequences: the id map grows. */
    for (int64_t i = 100; i < 400; i++) EXPECT_OK(loom_block_manager_add(bm, i * 7919, 0, 0, &e_));
    for (int64_t i = 100; i < 400; i += 2) EXPECT_OK(loom_block_manager_free(bm, i * 7919, &e_));
    EXPECT(stats(bm).n_seqs == 151, "151 sequences left");
    EXPECT_CHECK(bm);
    loom_block_manager_destroy(bm); /* frees live sequences (ASan: no leak) */
}

static void test_reuse(void)
{
    enum { TPB = 16 };
    loom_block_manager *bm = loom_block_manager_create(32, TPB, true, &err);
    if (!bm) { EXPECT(0, "create: %s", err.msg); return; }
    int32_t a[3 * TPB + 5];
    fill(a, 3 * TPB + 5, 1);
    int64_t na = 3 * TPB + 5;

    /* Seq 1 computes all; blocks are cached only once committed. */
    EXPECT(admit(bm, 1, 0, a, na) == 0, "cold start computes everything");
    EXPECT(admit(bm, 2, 0, a, na) == 0, "uncommitted blocks are not reused");
    EXPECT_OK(loom_block_manager_free(bm, 2, &e_));
    EXPECT_OK(loom_block_manager_commit_full_blocks(bm, 1, na, &e_));
    EXPECT(stats(bm).cached_total == 3, "3 full blocks cached, got %" PRId64, stats(bm).cached_total);

    /* Seq 3: same prompt reuses the 3-block prefix and computes only the rest. */
    int64_t before_hits = stats(bm).prefix_hit_tokens;
    EXPECT(admit(bm, 3, 0, a, na) == 3 * TPB, "second request reuses 3 blocks");
    EXPECT(stats(bm).prefix_hit_tokens - before_hits == 3 * TPB, "hit tokens counted");
    const int32_t *t1, *t3;
    int64_t n1, n3;
    loom_block_manager_table(bm, 1, &t1, &n1, &err);
    loom_block_manager_table(bm, 3, &t3, &n3, &err);
    EXPECT(n1 == 4 && n3 == 4, "4 blocks each");
    EXPECT(t1[0] == t3[0] && t1[1] == t3[1] && t1[2] == t3[2] && t1[3] != t3[3], "shared prefix, private tail");
    EXPECT(stats(bm).used == 5, "5 blocks used (3 shared + 2 tails), got %" PRId64, stats(bm).used);
    EXPECT_CHECK(bm);

    /* Whole prompt cached: one token must still be computed. */
    int64_t c = -1;
    EXPECT(admit(bm, 4, 0, a, 3 * TPB) == 2 * TPB, "exact 3-block prompt matches only 2 blocks");
    EXPECT(loom_block_manager_blocks_needed(bm, 4, 0) == 0 && loom_block_manager_seq_len(bm, 4) == 3 * TPB,
           "then appends the last block");
    EXPECT(admit(bm, 5, 0, a, 1) == 0, "1-token prompt never matches");

    /* Different salt (LoRA later): no hit. */
    EXPECT(admit(bm, 6, 42, a, na) == 0, "other salt: no hit");

    /* Prefix differing in the middle block: only the first block hits; then
     * differing in the last block: the first two hit. */
    int32_t b[3 * TPB + 5];
    memcpy(b, a, sizeof b);
    b[TPB + 3] = 99999;
    EXPECT(admit(bm, 7, 0, b, na) == TPB, "middle block differs: 1 block hits");
    memcpy(b, a, sizeof b);
    b[2 * TPB] = 99999;
    EXPECT(admit(bm, 8, 0, b, na) == 2 * TPB, "last block differs: 2 blocks hit");
    memcpy(b, a, sizeof b);
    b[0] = 99999;
    EXPECT(admit(bm, 9, 0, b, na) == 0, "first block differs: no hit (chained hash)");

    loom_block_manager_stats s = stats(bm);
    EXPECT(s.prefix_queries == 9, "9 queries, got %" PRId64, s.prefix_queries);
    EXPECT(s.prefix_hit_queries == 4, "4 queries hit, got %" PRId64, s.prefix_hit_queries);
    EXPECT(s.prefix_hit_tokens == 3 * TPB + 2 * TPB + TPB + 2 * TPB, "hit tokens %" PRId64, s.prefix_hit_tokens);
    EXPECT_CHECK(bm);

    /* Shared blocks survive until the last owner lets go; then they sit in the LRU. */
    EXPECT_OK(loom_block_manager_free(bm, 1, &e_));
    EXPECT(stats(bm).cached == 0, "shared blocks still owned");
    for (int64_t id = 3; id <= 9; id++) EXPECT_OK(loom_block_manager_free(bm, id, &e_));
    s = stats(bm);
    EXPECT(s.used == 0 && s.cached == 3 && s.free == 29, "3 cached + 29 free, got used %" PRId64 " cached %"
           PRId64 " free %" PRId64, s.used, s.cached, s.free);
    EXPECT_CHECK(bm);
    /* Preempt-and-recompute: a re-added sequence finds its prefix again. */
    EXPECT(loom_block_manager_add(bm, 1, 0, 0, &err) == LOOM_OK &&
           loom_block_manager_match_prefix(bm, 1, a, na, &c, &err) == LOOM_OK && c == 3 * TPB,
           "recompute after preemption reuses cached blocks");
    EXPECT_CHECK(bm);
    loom_block_manager_destroy(bm);

    /* Reuse disabled: nothing is ever cached. */
    bm = loom_block_manager_create(32, TPB, false, &err);
    EXPECT(admit(bm, 1, 0, a, na) == 0, "no reuse");
    EXPECT_OK(loom_block_manager_commit_full_blocks(bm, 1, na, &e_));
    EXPECT(admit(bm, 2, 0, a, na) == 0 && stats(bm).cached_total == 0 && stats(bm).prefix_queries == 0,
           "disabled reuse never hits");
    EXPECT_CHECK(bm);
    loom_block_manager_destroy(bm);
}

static int has_block(const loom_block_manager *bm, int64_t id, int32_t blk)
{
    const int32_t *t;
    int64_t n;
    if (loom_block_manager_table(bm, id, &t, &n, &err) != LOOM_OK) return 0;
    for (int64_t i = 0; i < n; i++)
        if (t[i] == blk) return 1;
    return 0;
}

static int32_t block_of(const loom_block_manager *bm, int64_t id, int64_t k)
{
    const int32_t *t;
    int64_t n;
    if (loom_block_manager_table(bm, id, &t, &n, &err) != LOOM_OK || k >= n) return -1;
    return t[k];
}

static void test_eviction(void)
{
    enum { TPB = 8 };
    loom_block_manager *bm = loom_block_manager_create(4, TPB, true, &err);
    if (!bm) { EXPECT(0, "create: %s", err.msg); return; }
    int32_t pa[TPB + 1], pb[TPB + 1], pc[TPB + 1], pd[4 * TPB];
    fill(pa, TPB + 1, 100);
    fill(pb, TPB + 1, 200);
    fill(pc, TPB + 1, 300);
    fill(pd, 4 * TPB, 400);
    /* Three one-block sequences, committed, released in the order A, C, B. */
    EXPECT(admit(bm, 1, 0, pa, TPB) == 0, "A");
    EXPECT(admit(bm, 2, 0, pb, TPB) == 0, "B");
    EXPECT(admit(bm, 3, 0, pc, TPB) == 0, "C");
    int32_t ba = block_of(bm, 1, 0), bb = block_of(bm, 2, 0), bc = block_of(bm, 3, 0);
    for (int64_t id = 1; id <= 3; id++) EXPECT_OK(loom_block_manager_commit_full_blocks(bm, id, TPB, &e_));
    EXPECT_OK(loom_block_manager_free(bm, 1, &e_));
    EXPECT_OK(loom_block_manager_free(bm, 3, &e_));
    EXPECT_OK(loom_block_manager_free(bm, 2, &e_));
    EXPECT(stats(bm).cached == 3 && stats(bm).free == 1, "3 cached, 1 free");
    /* D needs 2 blocks: the free one first, then the LRU (A). */
    EXPECT(admit(bm, 4, 0, pd, 2 * TPB) == 0, "D");
    EXPECT(has_block(bm, 4, ba) && stats(bm).evictions == 1, "A evicted first");
    int64_t c;
    EXPECT(loom_block_manager_add(bm, 5, 0, 0, &err) == LOOM_OK &&
           loom_block_manager_match_prefix(bm, 5, pa, TPB + 1, &c, &err) == LOOM_OK && c == 0,
           "A no longer cached");
    EXPECT_OK(loom_block_manager_free(bm, 5, &e_));
    /* Touch C (match then release): B becomes the least recently used. */
    EXPECT(loom_block_manager_add(bm, 6, 0, 0, &err) == LOOM_OK &&
           loom_block_manager_match_prefix(bm, 6, pc, TPB + 1, &c, &err) == LOOM_OK && c == TPB, "C hits");
    EXPECT(stats(bm).cached == 1, "C owned again, only B evictable");
    EXPECT_OK(loom_block_manager_free(bm, 6, &e_));
    EXPECT_OK(loom_block_manager_append_tokens(bm, 4, pd + 2 * TPB, TPB, &e_));
    EXPECT(has_block(bm, 4, bb) && !has_block(bm, 4, bc) && stats(bm).evictions == 2, "B evicted before C");
    EXPECT(loom_block_manager_add(bm, 7, 0, 0, &err) == LOOM_OK &&
           loom_block_manager_match_prefix(bm, 7, pc, TPB + 1, &c, &err) == LOOM_OK && c == TPB, "C still cached");
    EXPECT_OK(loom_block_manager_free(bm, 7, &e_));
    EXPECT_OK(loom_block_manager_free(bm, 4, &e_));
    EXPECT_CHECK(bm);
    loom_block_manager_destroy(bm);

    /* A released chain is evicted from its tail, so its head stays matchable. */
    bm = loom_block_manager_create(4, TPB, true, &err);
    int32_t px[3 * TPB + 1];
    fill(px, 3 * TPB + 1, 500);
    EXPECT(admit(bm, 1, 0, px, 3 * TPB) == 0, "X");
    int32_t x2 = block_of(bm, 1, 2);
    EXPECT_OK(loom_block_manager_commit_full_blocks(bm, 1, 3 * TPB, &e_));
    EXPECT_OK(loom_block_manager_free(bm, 1, &e_));
    EXPECT(admit(bm, 2, 0, pd, 2 * TPB) == 0, "Y takes the free block and one evicted");
    EXPECT(has_block(bm, 2, x2), "tail block of the chain evicted first");
    EXPECT(loom_block_manager_add(bm, 3, 0, 0, &err) == LOOM_OK &&
           loom_block_manager_match_prefix(bm, 3, px, 3 * TPB + 1, &c, &err) == LOOM_OK && c == 2 * TPB,
           "X's first two blocks still match, got %" PRId64, c);
    EXPECT(stats(bm).prefix_hit_tokens == 2 * TPB, "X's head (2 blocks) still hits, got %" PRId64,
           stats(bm).prefix_hit_tokens);
    EXPECT_CHECK(bm);
    loom_block_manager_destroy(bm);
}

static void test_never_fit(void)
{
    loom_block_manager *bm = loom_block_manager_create(10, 16, true, &err);
    if (!bm) { EXPECT(0, "create: %s", err.msg); return; }
    EXPECT(loom_block_manager_can_admit(bm, 160, &err), "160 tokens fit exactly");
    err.msg[0] = 0;
    EXPECT(!loom_block_manager_can_admit(bm, 161, &err) && strstr(err.msg, "whole pool"), "161 never fits: %s",
           err.msg);
    EXPECT(!loom_block_manager_can_admit(bm, 0, NULL), "empty request refused");
    EXPECT(loom_block_manager_can_admit(bm, 1, NULL), "1 token fits");
    loom_block_manager_destroy(bm);
}

static void test_oom_unchanged(void)
{
    enum { TPB = 8 };
    loom_block_manager *bm = loom_block_manager_create(4, TPB, true, &err);
    if (!bm) { EXPECT(0, "create: %s", err.msg); return; }
    int32_t ids[4 * TPB];
    fill(ids, 4 * TPB, 1);
    EXPECT(admit(bm, 1, 0, ids, 20) == 0, "A takes 3 blocks");
    EXPECT_OK(loom_block_manager_add(bm, 2, 0, 0, &e_));
    EXPECT_OK(loom_block_manager_append_tokens(bm, 2, ids, 3, &e_));
    loom_block_manager_stats before = stats(bm);
    const int32_t *t;
    int64_t n;
    loom_block_manager_table(bm, 1, &t, &n, &err);
    int32_t ta[3] = {t[0], t[1], t[2]};
    err.msg[0] = 0;
    EXPECT(loom_block_manager_append_tokens(bm, 2, ids, 6, &err) == LOOM_ENOMEM, "out of blocks");
    EXPECT(strstr(err.msg, "out of blocks") != NULL, "clear message: %s", err.msg);
    loom_block_manager_stats after = stats(bm);
    EXPECT(memcmp(&before, &after, sizeof before) == 0, "stats unchanged after ENOMEM");
    EXPECT(loom_block_manager_seq_len(bm, 2) == 3, "len unchanged");
    loom_block_manager_table(bm, 1, &t, &n, &err);
    EXPECT(n == 3 && t[0] == ta[0] && t[1] == ta[1] && t[2] == ta[2], "other table unchanged");
    EXPECT_CHECK(bm);
    /* Preempt A and retry: now it fits. */
    EXPECT_OK(loom_block_manager_free(bm, 1, &e_));
    EXPECT_OK(loom_block_manager_append_tokens(bm, 2, ids + 3, 6, &e_));
    EXPECT(loom_block_manager_seq_len(bm, 2) == 9, "retry after preemption");
    EXPECT_OK(loom_block_manager_free(bm, 2, &e_));
    EXPECT(stats(bm).free == 4, "all back");
    EXPECT_CHECK(bm);
    loom_block_manager_destroy(bm);
}

/* ---- seeded stress ------------------------------------------------------------------ */

static uint64_t rng_state;
static uint64_t rnd(void) /* xorshift64* */
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545f4914f6cdd1dULL;
}
static int64_t rnd_in(int64_t lo, int64_t hi) { return lo + (int64_t)(rnd() % (uint64_t)(hi - lo + 1)); }

enum { MAX_SLOTS = 24, MAX_TOK = 160 };
typedef struct slot {
    int state;          /* 0 empty, 1 running, 2 preempted (waiting to recompute) */
    int64_t id;
    uint64_t salt;
    int32_t tok[MAX_TOK]; /* prompt + generated */
    int64_t len;        /* tokens in tok */
    int64_t prompt_len;
    int64_t max_len;    /* prompt + max_new_tokens */
} slot;

typedef struct shadow {
    int64_t tpb, nb;
    int32_t *content;   /* (nb, tpb) tokens last written into each block */
    uint64_t *salt;     /* (nb) salt of the sequence that wrote it */
} shadow;

/* Records that tokens [from, to) of s now live in its blocks. */
static void shadow_write(shadow *sh, loom_block_manager *bm, const slot *s, int64_t from, int64_t to)
{
    const int32_t *t;
    int64_t n;
    loom_block_manager_table(bm, s->id, &t, &n, &err);
    for (int64_t p = from; p < to; p++) {
        int32_t b = t[p / sh->tpb];
        sh->content[b * sh->tpb + p % sh->tpb] = s->tok[p];
        sh->salt[b] = s->salt;
    }
}

/* (Re)admits s: add + match (verifying reused blocks hold exactly this prefix) +
 * append. Returns the status of the append (ENOMEM leaves s added but empty of new
 * blocks; the caller frees it). */
static loom_status stress_admit(shadow *sh, loom_block_manager *bm, slot *s)
{
    int64_t c = -1;
    EXPECT_OK(loom_block_manager_add(bm, s->id, s->salt, s->max_len, &e_));
    EXPECT_OK(loom_block_manager_match_prefix(bm, s->id, s->tok, s->len, &c, &e_));
    EXPECT(c >= 0 && c < s->len && c % sh->tpb == 0, "match result %" PRId64 " of %" PRId64, c, s->len);
    const int32_t *t;
    int64_t n;
    loom_block_manager_table(bm, s->id, &t, &n, &err);
    for (int64_t k = 0; k < c / sh->tpb; k++) {
        int32_t b = t[k];
        EXPECT(memcmp(sh->content + b * sh->tpb, s->tok + k * sh->tpb, (size_t)sh->tpb * 4) == 0 &&
               sh->salt[b] == s->salt, "reused block %d holds other tokens", b);
    }
    loom_block_manager_stats before = stats(bm);
    loom_status st = loom_block_manager_append_tokens(bm, s->id, s->tok + c, s->len - c, &err);
    if (st == LOOM_OK) {
        shadow_write(sh, bm, s, c, s->len);
    } else {
        EXPECT(st == LOOM_ENOMEM, "admission append: %s", err.msg);
        loom_block_manager_stats after = stats(bm);
        EXPECT(memcmp(&before, &after, sizeof before) == 0, "ENOMEM changed state");
        EXPECT(loom_block_manager_seq_len(bm, s->id) == c, "ENOMEM changed length");
    }
    return st;
}

static void stress(uint64_t seed, int64_t nb, int64_t tpb, bool reuse, int64_t n_ops)
{
    loom_block_manager *bm = loom_block_manager_create(nb, tpb, reuse, &err);
    if (!bm) { EXPECT(0, "create: %s", err.msg); return; }
    rng_state = seed * 2654435761ULL + 1;
    shadow sh = {tpb, nb, calloc((size_t)(nb * tpb), 4), calloc((size_t)nb, 8)};
    slot *slots = calloc(MAX_SLOTS, sizeof *slots);
    int64_t op = 0, next_id = 1, n_admit = 0, n_refused = 0, n_oom = 0, n_preempt = 0, n_finish = 0, n_cancel = 0;
    int fail_before = failures;
    for (op = 0; op < n_ops && failures == fail_before; op++) {
        slot *s = &slots[rnd() % MAX_SLOTS];
        int r = (int)(rnd() % 100);
        if (s->state == 0) {
            /* New request: prompt = one of 4 shared documents' prefix + random tail. */
            int64_t doc = rnd_in(0, 3), shared = rnd_in(0, 64), plen = rnd_in(1, 96);
            s->salt = rnd() % 8 == 0 ? 1 : 0;
            s->prompt_len = plen;
            for (int64_t i = 0; i < plen; i++)
                s->tok[i] = i < shared ? (int32_t)(doc * 1000 + i) : (int32_t)rnd_in(0, 50000);
            s->len = plen;
            s->max_len = plen + rnd_in(1, MAX_TOK - 96);
            if (!loom_block_manager_can_admit(bm, s->max_len, NULL)) {
                EXPECT((s->max_len + tpb - 1) / tpb > nb, "refused a request that fits");
                n_refused++;
                s->state = 0;
                continue;
            }
            s->id = next_id++;
            if (stress_admit(&sh, bm, s) == LOOM_OK) {
                s->state = 1;
                n_admit++;
            } else {
                n_oom++;
                EXPECT_OK(loom_block_manager_free(bm, s->id, &e_)); /* stays queued: forget it here */
            }
        } else if (s->state == 2) {
            if (r < 50) {
                if (stress_admit(&sh, bm, s) == LOOM_OK) s->state = 1;
                else EXPECT_OK(loom_block_manager_free(bm, s->id, &e_));
            } else if (r < 55) {
                s->state = 0; /* cancelled while waiting: holds no blocks */
                n_cancel++;
            }
        } else if (r < 60) {
            /* Step result: everything computed; commit prompt-only or all. */
            int64_t upto = rnd() % 2 ? s->len : s->prompt_len;
            EXPECT_OK(loom_block_manager_commit_full_blocks(bm, s->id, upto, &e_));
            /* Decode one token. */
            if (s->len >= s->max_len) {
                EXPECT_OK(loom_block_manager_free(bm, s->id, &e_));
                s->state = 0;
                n_finish++;
            } else {
                s->tok[s->len] = (int32_t)rnd_in(0, 50000);
                loom_block_manager_stats before = stats(bm);
                loom_status st = loom_block_manager_append_tokens(bm, s->id, s->tok + s->len, 1, &err);
                if (st == LOOM_OK) {
                    s->len++;
                    shadow_write(&sh, bm, s, s->len - 1, s->len);
                } else {
                    EXPECT(st == LOOM_ENOMEM, "decode append: %s", err.msg);
                    loom_block_manager_stats after = stats(bm);
                    EXPECT(memcmp(&before, &after, sizeof before) == 0, "ENOMEM changed state");
                    n_oom++;
                    /* Preempt (recompute-style) the most recently admitted running one. */
                    slot *victim = s;
                    for (int i = 0; i < MAX_SLOTS; i++)
                        if (slots[i].state == 1 && slots[i].id > victim->id) victim = &slots[i];
                    EXPECT_OK(loom_block_manager_free(bm, victim->id, &e_));
                    victim->state = 2;
                    n_preempt++;
                }
            }
        } else if (r < 63) {
            EXPECT_OK(loom_block_manager_free(bm, s->id, &e_)); /* cancel / disconnect */
            s->state = 0;
            n_cancel++;
        } else if (r < 66) {
            EXPECT_OK(loom_block_manager_free(bm, s->id, &e_)); /* preempt */
            s->state = 2;
            n_preempt++;
        }
        loom_err ce = {{0}};
        EXPECT(loom_block_manager_check(bm, &ce) == LOOM_OK, "op %" PRId64 ": %s", op, ce.msg);
        loom_block_manager_stats st = stats(bm);
        EXPECT(st.used + st.free + st.cached == nb, "counts add up");
    }
    for (int i = 0; i < MAX_SLOTS; i++)
        if (slots[i].state == 1) EXPECT_OK(loom_block_manager_free(bm, slots[i].id, &e_));
    loom_block_manager_stats st = stats(bm);
    EXPECT(st.used == 0 && st.free + st.cached == nb && st.n_seqs == 0, "every block back at the end");
    EXPECT(reuse || st.free == nb, "no cache without reuse");
    EXPECT_CHECK(bm);
    printf("  stress nb=%" PRId64 " tpb=%" PRId64 " reuse=%d: %" PRId64 " ops, %" PRId64 " admitted, %" PRId64
           " refused, %" PRId64 " out-of-blocks, %" PRId64 " preempted, %" PRId64 " finished, %" PRId64
           " cancelled, prefix hits %" PRId64 "/%" PRId64 " tokens, %" PRId64 " evictions\n",
           nb, tpb, (int)reuse, op, n_admit, n_refused, n_oom, n_preempt, n_finish, n_cancel,
           st.prefix_hit_tokens, st.prefix_query_tokens, st.evictions);
    free(slots);
    free(sh.content);
    free(sh.salt);
    loom_block_manager_destroy(bm);
}

int main(int argc, char **argv)
{
    uint64_t seed = argc > 1 ? strtoull(argv[1], NULL, 10) : 20240601;
    test_basic();
    test_reuse();
    test_eviction();
    test_never_fit();
    test_oom_unchanged();
    printf("block manager, seed %" PRIu64 ":\n", seed);
    stress(seed, 48, 8, true, 20000);
    stress(seed + 1, 24, 16, true, 20000);
    stress(seed + 2, 40, 8, false, 10000);
    stress(seed + 3, 12, 8, true, 20000); /* tight pool: heavy eviction and preemption */
    printf("block manager: %d checks, %d failures\n", checks, failures);
    return failures ? 1 : 0;
}
