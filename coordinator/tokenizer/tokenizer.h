/* Hugging Face tokenizer.json: byte-level BPE (GPT-2, Llama-3, Qwen2) and
 * SentencePiece-style BPE with byte fallback (Llama-2, Mistral), added and
 * special tokens, the post-processor's BOS/EOS, and decoding, including an
 * incremental decoder that only emits whole UTF-8 characters. */
#ifndef LOOM_COORDINATOR_TOKENIZER_H
#define LOOM_COORDINATOR_TOKENIZER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../../util/status.h"

typedef struct loom_tokenizer loom_tokenizer;

/* Loads dir/tokenizer.json (and dir/tokenizer_config.json when present).
 * On error returns NULL and fills err (missing file, malformed JSON, an
 * unsupported model/normalizer/pre-tokenizer type, ...). Behaviour follows
 * tokenizer.json alone, as HF `Tokenizer.from_file` does; tokenizer_config.json
 * only has to parse. A loaded tokenizer is read-only: encode, decode and
 * separate loom_detok streams may run on several threads at once. */
loom_tokenizer *loom_tokenizer_load(const char *dir, loom_err *err);

/* Frees everything; accepts NULL. */
void loom_tokenizer_destroy(loom_tokenizer *tok);

/* Number of ids the tokenizer can produce (model vocab + added tokens). */
int64_t loom_tokenizer_vocab_size(const loom_tokenizer *tok);

/* Encodes len bytes of UTF-8 text exactly as Hugging Face
 * `tokenizer.encode(text, add_special_tokens=add_special)` does.
 * On success *ids is a malloc'd array (caller frees; may be NULL when
 * *n_ids == 0). Invalid UTF-8 in text is an error. */
loom_status loom_tokenizer_encode(const loom_tokenizer *tok, const char *text, size_t len,
                                  bool add_special, int32_t **ids, size_t *n_ids,
                                  loom_err *err);

/* Decodes ids as Hugging Face `tokenizer.decode(ids, skip_special_tokens=skip_special)`.
 * On success *text is a malloc'd NUL-terminated string (caller frees), *len its
 * length. An id outside the vocabulary is an error. */
loom_status loom_tokenizer_decode(const loom_tokenizer *tok, const int32_t *ids, size_t n_ids,
                                  bool skip_special, char **text, size_t *len, loom_err *err);

/* Id of a token string (e.g. "<s>"), or -1. */
int32_t loom_tokenizer_token_id(const loom_tokenizer *tok, const char *token);

/* True when id is a special added token (skipped by skip_special decoding). */
bool loom_tokenizer_is_special(const loom_tokenizer *tok, int32_t id);

/* Incremental detokenizer for streaming: feed output ids one at a time and
 * get back only newly completed text. The concatenation of all pieces equals
 * loom_tokenizer_decode(all ids, skip_special) and a multi-byte UTF-8
 * character split over tokens is emitted once, whole. */
typedef struct loom_detok loom_detok;

/* Creates a stream decoder; skip_special as in loom_tokenizer_decode.
 * Returns NULL on allocation failure. */
loom_detok *loom_detok_create(const loom_tokenizer *tok, bool skip_special);

/* Frees; accepts NULL. */
void loom_detok_destroy(loom_detok *d);

/* Adds one id. *piece points into d's own buffer (valid until the next call)
 * and holds *piece_len new bytes (possibly 0). */
loom_status loom_detok_push(loom_detok *d, int32_t id, const char **piece, size_t *piece_len,
                            loom_err *err);

/* Emits whatever is still held back at the end of the stream (an incomplete
 * UTF-8 sequence comes out as U+FFFD, as Hugging Face decodes it). */
loom_status loom_detok_flush(loom_detok *d, const char **piece, size_t *piece_len, loom_err *err);

#endif
