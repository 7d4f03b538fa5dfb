/* tokenizer.json "decoder": ByteLevel, Replace, ByteFallback, Fuse, Strip,
 * Metaspace, Sequence, or null (tokens joined with spaces). Every chain is run
 * as a stream, so full decoding and loom_detok share one code path. */
#ifndef LOOM_TOKENIZER_DECODE_H
#define LOOM_TOKENIZER_DECODE_H

#include <jansson.h>

#include "../../util/status.h"

typedef struct tk_decoder tk_decoder;

/* Parses a decoder object; JSON null (or j == NULL) gives HF's default of
 * joining tokens with " ". Chains that cannot be streamed exactly (ByteLevel
 * or ByteFallback after a fusing step) are LOOM_EUNSUPPORTED. */
loom_status tk_decoder_parse(json_t *j, tk_decoder **out, loom_err *err);

/* Frees; accepts NULL. */
void tk_decoder_free(tk_decoder *d);

#endif
