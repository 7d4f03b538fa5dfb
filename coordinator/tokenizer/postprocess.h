/* tokenizer.json "post_processor" for single sequences: TemplateProcessing,
 * RobertaProcessing/BertProcessing, ByteLevel (no effect on ids) and
 * Sequence, reduced at load to the ids that go before and after the text. */
#ifndef LOOM_TOKENIZER_POSTPROCESS_H
#define LOOM_TOKENIZER_POSTPROCESS_H

#include <jansson.h>

#include "../../util/status.h"
#include "buf.h"

typedef struct tk_post {
    tk_ivec prefix; /* ids before sequence A */
    tk_ivec suffix; /* ids after sequence A */
} tk_post;

/* Parses a post_processor (JSON null or NULL = none). */
loom_status tk_post_parse(json_t *j, tk_post *out, loom_err *err);

/* Frees; accepts a zeroed struct. */
void tk_post_free(tk_post *p);

#endif
