/* Model configuration read from a Hugging Face config.json (transformers 4.x
 * style: rope_theta / rope_scaling / torch_dtype, and 5.x style:
 * rope_parameters / dtype) plus generation_config.json's EOS ids. Numbers
 * only; the weights live in model.h. */
#ifndef LOOM_WORKER_CONFIG_H
#define LOOM_WORKER_CONFIG_H

#include <stdbool.h>
#include <stdint.h>

#include "../util/dtype.h"
#include "../util/status.h"

typedef enum loom_arch {
    LOOM_ARCH_LLAMA,   /* LlamaForCausalLM */
    LOOM_ARCH_MISTRAL, /* MistralForCausalLM */
    LOOM_ARCH_QWEN2    /* Qwen2ForCausalLM */
} loom_arch;

typedef enum loom_rope_type {
    LOOM_ROPE_DEFAULT,
    LOOM_ROPE_LINEAR,
    LOOM_ROPE_LLAMA3
} loom_rope_type;

#define LOOM_MAX_EOS 16

typedef struct loom_config {
    loom_arch arch;
    char arch_name[64];          /* as written in "architectures" */
    int64_t vocab_size;
    int64_t hidden_size;         /* model dim */
    int64_t intermediate_size;   /* MLP hidden dim */
    int64_t n_layers;
    int64_t n_heads;
    int64_t n_kv_heads;
    int64_t head_dim;
    int64_t max_position_embeddings;
    float rms_norm_eps;

    loom_rope_type rope_type;
    double rope_theta;
    double rope_factor;          /* linear and llama3 */
    double rope_low_freq_factor; /* llama3 */
    double rope_high_freq_factor;/* llama3 */
    int64_t rope_original_max_position; /* llama3 */

    int64_t *layer_window;       /* (n_layers): sliding window in tokens, 0 = full attention */

    bool qkv_bias;               /* q/k/v projections have a bias */
    bool o_bias;                 /* o_proj has a bias */
    bool mlp_bias;               /* gate/up/down have a bias */
    bool tie_word_embeddings;    /* lm_head shares embed_tokens */

    int32_t bos_token_id;        /* -1 if none */
    int32_t eos_ids[LOOM_MAX_EOS];
    int n_eos;
    char dtype_name[16];         /* torch_dtype / dtype as written ("" if absent) */

    /* Set when the directory is a `loom convert` output ("loom" object in
     * config.json): the partitioning its rank{R}.safetensors files hold. */
    int conv_tp, conv_pp;        /* 0 for a Hugging Face directory */
    int64_t *conv_pp_layers;     /* (conv_pp) layers per stage */
} loom_config;

/* Reads dir/config.json (and dir/generation_config.json if present) and
 * validates every number. On error returns non-OK and fills err naming the
 * file and field; cfg is then left empty (safe to pass to loom_config_free). */
loom_status loom_config_load(const char *dir, loom_config *cfg, loom_err *err);

/* Frees what loom_config_load allocated; accepts a zeroed struct. */
void loom_config_free(loom_config *cfg);

/* Fills inv_freq (head_dim/2) with the rotary frequencies for the config's
 * rope type, computed in fp32 the way transformers computes them. */
void loom_config_rope_inv_freq(const loom_config *cfg, float *inv_freq);

/* True if id is one of the EOS ids. */
bool loom_config_is_eos(const loom_config *cfg, int32_t id);

#endif
