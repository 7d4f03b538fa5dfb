/* The coordinator's KV block manager: logical block tables per sequence over a
 * pool of fixed-size blocks, reference counts, and prefix reuse (full blocks of
 * tokens hashed in a chain, unreferenced cached blocks evicted LRU). It holds no
 * KV data; workers own the physical pools and index them with these tables.
 *
 * Block life cycle: free --(taken by append)--> referenced --(commit)--> referenced
 * and cached --(last reference dropped)--> cached in the LRU --(match)--> referenced
 * again, or --(evicted when no free block is left)--> taken by a new owner. An
 * uncached block goes straight back to the free list when its last owner lets go.
 *
 * Preemption: recompute-style preemption needs nothing beyond
 * loom_block_manager_free(): all of the sequence's blocks go back at once (its
 * committed full blocks stay cached, so with reuse on the recompute usually
 * matches most of them again), and the scheduler re-admits it later with
 * add + match_prefix + append of prompt + tokens generated so far.
 *
 * Not thread-safe: the coordinator's scheduler thread owns it. */
#ifndef LOOM_KV_BLOCK_MANAGER_H
#define LOOM_KV_BLOCK_MANAGER_H

#include <stdbool.h>
#include <stdint.h>

#include "../util/status.h"

#define LOOM_BLOCK_MANAGER_MIN_TPB 8   /* tokens per block, smallest allowed */
#define LOOM_BLOCK_MANAGER_MAX_TPB 128 /* tokens per block, largest allowed */

typedef struct loom_block_manager loom_block_manager;

typedef struct loom_block_manager_stats {
    int64_t n_blocks;           /* pool size */
    int64_t tokens_per_block;
    int64_t used;               /* blocks referenced by at least one sequence */
    int64_t free;               /* blocks in the free list (no owner, not cached) */
    int64_t cached;             /* cached blocks with no owner (in the LRU, evictable) */
    int64_t cached_total;       /* every block registered in the prefix cache (owned or not) */
    int64_t n_seqs;             /* live sequences */
    int64_t prefix_queries;     /* match_prefix calls with reuse enabled */
    int64_t prefix_hit_queries; /* of those, how many matched at least one block */
    int64_t prefix_query_tokens;/* prompt tokens offered to match_prefix */
    int64_t prefix_hit_tokens;  /* of those, tokens found already computed */
    int64_t evictions;          /* cached blocks evicted to serve an allocation */
} loom_block_manager_stats;

/* Creates a manager over n_blocks blocks of tokens_per_block tokens (a power of
 * two in 8..128). enable_reuse turns prefix caching on (match_prefix and commit
 * do nothing without it). On error returns NULL and fills err. */
loom_block_manager *loom_block_manager_create(int64_t n_blocks, int64_t tokens_per_block,
                                              bool enable_reuse, loom_err *err);

/* Frees the manager and every sequence it holds; accepts NULL. */
void loom_block_manager_destroy(loom_block_manager *bm);

/* True if a request of n_tokens tokens in total (prompt + max_new_tokens) could
 * ever fit, i.e. needs no more blocks than the whole pool. Otherwise returns false
 * and, if err is non-NULL, writes a message fit to send back to the client. */
bool loom_block_manager_can_admit(const loom_block_manager *bm, int64_t n_tokens, loom_err *err);

/* Registers a new, empty sequence. salt separates prefix caches (0 for the base
 * model; a LoRA id later): blocks only match sequences with the same salt.
 * reserve_tokens (>= 0) preallocates its block table for that many tokens so
 * that appends up to there never allocate. Takes no blocks.
 * On error (duplicate id, bad argument, out of memory) returns non-OK, fills err,
 * and changes nothing. */
loom_status loom_block_manager_add(loom_block_manager *bm, int64_t seq_id, uint64_t salt,
                                   int64_t reserve_tokens, loom_err *err);

/* Releases the sequence (finish, cancel, client disconnect or preemption): every
 * block it holds loses one reference at once; blocks nobody else holds go back to
 * the free list, or to the most-recent end of the LRU if they are cached. The id
 * may be added again afterwards. EINVAL for an unknown id. */
loom_status loom_block_manager_free(loom_block_manager *bm, int64_t seq_id, loom_err *err);

/* At admission, on a sequence that holds no tokens yet: maps the longest run of
 * cached full blocks matching prompt[0..n) (same salt, same chain of blocks) into
 * its table, taking a reference on each, and sets *n_cached to the number of
 * tokens already computed (a multiple of tokens_per_block, always <= n - 1 so that
 * at least one token is left to compute). The caller then appends
 * prompt[*n_cached..n). With reuse disabled sets *n_cached = 0.
 * Takes no free blocks, so it cannot run out; EINVAL for an unknown id, a
 * sequence that already holds tokens, or n < 1. */
loom_status loom_block_manager_match_prefix(loom_block_manager *bm, int64_t seq_id,
                                            const int32_t *prompt, int64_t n,
                                            int64_t *n_cached, loom_err *err);

/* Number of blocks appending n_new tokens to the sequence would take (0 while its
 * last block has room), or -1 for an unknown id. */
int64_t loom_block_manager_blocks_needed(const loom_block_manager *bm, int64_t seq_id,
                                         int64_t n_new);

/* Blocks an append could obtain now: free blocks plus evictable cached ones. */
int64_t loom_block_manager_available(const loom_block_manager *bm);

/* Appends ids[0..n) to the sequence, taking blocks as it grows (free ones first,
 * then evicting the least recently used cached block). The ids are kept per full
 * block as a chain hash, so that commit can register them later.
 * If the pool cannot supply the blocks, returns LOOM_ENOMEM with a message naming
 * the shortfall and changes nothing, so the scheduler can preempt and retry.
 * EINVAL for an unknown id or n < 0. Allocates only when the table outgrows its
 * reservation (amortized doubling). */
loom_status loom_block_manager_append_tokens(loom_block_manager *bm, int64_t seq_id,
                                             const int32_t *ids, int64_t n, loom_err *err);

/* Tells the manager that the KV of the sequence's first n_computed tokens has
 * been written by the workers: every full block inside them not yet registered
 * goes into the prefix cache (if a block with the same hash is cached already,
 * this one stays private). Call it after each step result; pass
 * min(n_computed, prompt_len) to cache prompt blocks only. Blocks are registered
 * only once computed so that a new request never reuses KV still in flight.
 * No-op with reuse disabled. EINVAL for an unknown id or n_computed out of
 * [0, len]. */
loom_status loom_block_manager_commit_full_blocks(loom_block_manager *bm, int64_t seq_id,
                                                  int64_t n_computed, loom_err *err);

/* The sequence's block table: *table points at *n block indices in [0, n_blocks)
 * (valid until the next call that changes this sequence or frees it), for
 * positions [i*tokens_per_block, (i+1)*tokens_per_block). EINVAL for an unknown id. */
loom_status loom_block_manager_table(const loom_block_manager *bm, int64_t seq_id,
                                     const int32_t **table, int64_t *n, loom_err *err);

/* Tokens the sequence holds (computed or reserved), or -1 for an unknown id. */
int64_t loom_block_manager_seq_len(const loom_block_manager *bm, int64_t seq_id);

/* Fills *out with the current counts and counters. */
void loom_block_manager_stats_get(const loom_block_manager *bm, loom_block_manager_stats *out);

/* Walks the whole state and verifies its invariants: every block is exactly one of
 * free (once in the free list), referenced (refcount == number of table entries
 * naming it, not in any list) or cached-unreferenced (once in the LRU); cache index
 * and cached flags agree; counters add up. Returns LOOM_EINTERNAL with the first
 * violation in err. O(n_blocks + table entries) and allocates: for tests and
 * debug builds, not the hot path. */
loom_status loom_block_manager_check(const loom_block_manager *bm, loom_err *err);

#endif
