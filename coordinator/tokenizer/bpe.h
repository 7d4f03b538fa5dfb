/* The BPE model of tokenizer.json: vocab, ranked merges, unk/byte-fallback
 * handling and ignore_merges. Encodes one pre-tokenized word at a time with
 * the same heap-driven merge order as HF's Word::merge_all. */
#ifndef LOOM_TOKENIZER_BPE_H
#define LOOM_TOKENIZER_BPE_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "../../util/status.h"
#include "buf.h"
#include "strmap.h"

/* Largest token id accepted from a file; guards table allocations. */
#define TK_MAX_ID (1 << 24)

typedef struct tk_bpe {
    tk_strmap vocab;          /* token string -> id */
    tk_pairmap merges;        /* (left id, right id) -> (rank, merged id) */
    int32_t max_id;           /* largest id in vocab, -1 when empty */
    int32_t byte_ids[256];    /* id of "<0xAB>" or -1 */
    int32_t char_ids[2048];   /* id of the one-character token U+0000..U+07FF, or -1 */
    char *unk_token;          /* NULL when unset */
    size_t unk_len;
    char *prefix;             /* continuing_subword_prefix, NULL when unset */
    size_t prefix_len;
    char *suffix;             /* end_of_word_suffix, NULL when unset */
    size_t suffix_len;
    bool fuse_unk;
    bool byte_fallback;
    bool ignore_merges;
} tk_bpe;

/* Per-call scratch for tk_bpe_encode; zero-initialize, free with tk_bpe_scratch_free.
 * It also caches the ids of short words seen during the call (text repeats
 * words a lot); being per call, the model itself stays read-only. */
typedef struct tk_bpe_scratch {
    struct tk_bpe_sym *sym;   /* symbols of the current word */
    size_t sym_cap;
    struct tk_bpe_merge *heap;
    size_t heap_cap;
    tk_buf tmp;               /* piece + prefix/suffix for lookups */
    struct tk_bpe_cached *cache; /* (TK_BPE_CACHE_SLOTS) open addressing, len 0 = empty */
    size_t cache_used;
    size_t words;             /* words encoded this call; the cache starts after a few */
    tk_buf cache_keys;        /* word bytes of all entries */
    tk_ivec cache_ids;        /* ids of all entries */
} tk_bpe_scratch;

/* Loads the "model" object. Only type "BPE" is supported; others are
 * LOOM_EUNSUPPORTED. Merges may be "a b" strings or ["a", "b"] pairs. */
loom_status tk_bpe_load(json_t *model, tk_bpe *m, loom_err *err);

/* Frees the model's tables; accepts a zeroed struct. */
void tk_bpe_free(tk_bpe *m);

/* Appends the ids for one word w[0..n) (valid UTF-8, n > 0) to out. */
loom_status tk_bpe_encode(const tk_bpe *m, const char *w, size_t n, tk_bpe_scratch *sc, tk_ivec *out,
                          loom_err *err);

void tk_bpe_scratch_free(tk_bpe_scratch *sc);

#endif
