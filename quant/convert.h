/* `loom convert`: splits a Hugging Face checkpoint into per-rank files, as
 * TensorRT-LLM's convert_checkpoint does: DIR/config.json (the original plus
 * a "loom" section naming the layout) and DIR/rank{R}.safetensors holding
 * exactly the slices worker R loads (R = stage * tp + tp_rank), optionally
 * cast to another dtype. Tokenizer and generation files are copied. */
#ifndef LOOM_QUANT_CONVERT_H
#define LOOM_QUANT_CONVERT_H

#include <stdint.h>

#include "../util/dtype.h"
#include "../util/status.h"

typedef struct loom_convert_opts {
    const char *model_dir;
    const char *out_dir;
    int tp, pp;
    const int64_t *pp_layers; /* (pp) or NULL for an even split */
    int have_dtype;           /* cast every tensor to dtype */
    loom_dtype dtype;
    int progress;             /* print a line per rank to stderr */
} loom_convert_opts;

/* Converts; refuses layouts the model cannot be split into (the message names
 * the shape and the TP sizes that work). On error returns non-OK and fills err;
 * files already written stay (rank files are written via a temporary name). */
loom_status loom_convert(const loom_convert_opts *o, loom_err *err);

#endif
