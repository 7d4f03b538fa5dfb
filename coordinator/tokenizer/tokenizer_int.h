/* Internal layout of loom_tokenizer, shared by tokenizer.c (load, encode)
 * and decode.c (decode, streaming). Not part of the public API. */
#ifndef LOOM_TOKENIZER_INT_H
#define LOOM_TOKENIZER_INT_H

#include "added.h"
#include "bpe.h"
#include "decode.h"
#include "normalize.h"
#include "postprocess.h"
#include "pretokenize.h"
#include "tokenizer.h"

struct loom_tokenizer {
    tk_bpe bpe;              /* model vocab and merges */
    tk_added added;          /* added tokens and their matchers */
    tk_strmap added_map;     /* added token content -> id */
    tk_normalizer *norm;     /* NULL = identity */
    tk_pretok *pretok;       /* NULL = whole text is one word */
    tk_post post;            /* ids around the sequence when add_special */
    tk_decoder *dec;         /* never NULL (null decoder = join with " ") */
    int64_t vocab_size;      /* max id + 1 */
    const char **id_str;     /* (vocab_size) token text, NULL for unused ids */
    uint32_t *id_len;        /* (vocab_size) */
    uint8_t *special;        /* (vocab_size) 1 = special added token */
};

#endif
