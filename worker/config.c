/* config.json parsing for the Llama family (see config.h). Both transformers
 * 4.x and 5.x spellings are accepted; anything loom cannot run is refused
 * here, with the file and field named, before a byte of weights is mapped. */
#include "config.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../util/fileutil.h"
#include "../util/json_util.h"

#define SUPPORTED_ARCHS "LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM"

static loom_status parse_arch(const json_t *root, loom_config *cfg, const char *what, loom_err *err)
{
    const char *name = NULL;
    json_t *archs = json_object_get(root, "architectures");
    if (json_is_array(archs) && json_array_size(archs) > 0) {
        if (!json_is_string(json_array_get(archs, 0)))
            return loom_err_set(err, LOOM_EINVAL, "%s: \"architectures\" must be a list of strings", what);
        name = json_string_value(json_array_get(archs, 0));
    } else {
        const char *mt = NULL;
        LOOM_CHECK(loom_json_str(root, "model_type", false, &mt, what, err));
        if (!mt) return loom_err_set(err, LOOM_EINVAL, "%s: neither \"architectures\" nor \"model_type\" is set", what);
        if (!strcmp(mt, "llama")) name = "LlamaForCausalLM";
        else if (!strcmp(mt, "mistral")) name = "MistralForCausalLM";
        else if (!strcmp(mt, "qwen2")) name = "Qwen2ForCausalLM";
        else name = mt;
    }
    snprintf(cfg->arch_name, sizeof cfg->arch_name, "%s", name);
    if (!strcmp(name, "LlamaForCausalLM")) cfg->arch = LOOM_ARCH_LLAMA;
    else if (!strcmp(name, "MistralForCausalLM")) cfg->arch = LOOM_ARCH_MISTRAL;
    else if (!strcmp(name, "Qwen2ForCausalLM")) cfg->arch = LOOM_ARCH_QWEN2;
    else return loom_err_set(err, LOOM_EUNSUPPORTED, "unsupported architecture %s (supported: " SUPPORTED_ARCHS ")", name);
    return LOOM_OK;
}

/* Rope: 5.x `rope_parameters` {rope_type, rope_theta, factor, ...} or 4.x
 * top-level `rope_theta` + `rope_scaling` {type|rope_type, factor, ...}. */
static loom_status parse_rope(const json_t *root, loom_config *cfg, const char *what, loom_err *err)
{
    cfg->rope_theta = 10000.0;
    cfg->rope_type = LOOM_ROPE_DEFAULT;
    cfg->rope_factor = 1.0;
    LOOM_CHECK(loom_json_num(root, "rope_theta", false, &cfg->rope_theta, what, err));
    json_t *rp = json_object_get(root, "rope_parameters");
    json_t *rs = json_object_get(root, "rope_scaling");
    json_t *p = NULL;
    char ctx[4200];
    if (rp && !json_is_null(rp)) {
        if (!json_is_object(rp)) return loom_err_set(err, LOOM_EINVAL, "%s: \"rope_parameters\" must be an object", what);
        if (json_object_get(rp, "full_attention"))
            return loom_err_set(err, LOOM_EUNSUPPORTED, "%s: per-layer-type rope_parameters are not supported", what);
        p = rp;
        snprintf(ctx, sizeof ctx, "%s: rope_parameters", what);
        LOOM_CHECK(loom_json_num(p, "rope_theta", false, &cfg->rope_theta, ctx, err));
    } else if (rs && !json_is_null(rs)) {
        if (!json_is_object(rs)) return loom_err_set(err, LOOM_EINVAL, "%s: \"rope_scaling\" must be an object or null", what);
        p = rs;
        snprintf(ctx, sizeof ctx, "%s: rope_scaling", what);
    }
    if (!(cfg->rope_theta > 0) || !isfinite(cfg->rope_theta))
        return loom_err_set(err, LOOM_EINVAL, "%s: rope_theta must be a positive number", what);
    if (!p) return LOOM_OK;
    const char *type = NULL;
    LOOM_CHECK(loom_json_str(p, "rope_type", false, &type, ctx, err));
    if (!type) LOOM_CHECK(loom_json_str(p, "type", false, &type, ctx, err));
    if (!type || !strcmp(type, "default")) return LOOM_OK;
    if (!strcmp(type, "linear")) {
        cfg->rope_type = LOOM_ROPE_LINEAR;
        LOOM_CHECK(loom_json_num(p, "factor", true, &cfg->rope_factor, ctx, err));
    } else if (!strcmp(type, "llama3")) {
        cfg->rope_type = LOOM_ROPE_LLAMA3;
        LOOM_CHECK(loom_json_num(p, "factor", true, &cfg->rope_factor, ctx, err));
        LOOM_CHECK(loom_json_num(p, "low_freq_factor", true, &cfg->rope_low_freq_factor, ctx, err));
        LOOM_CHECK(loom_json_num(p, "high_freq_factor", true, &cfg->rope_high_freq_factor, ctx, err));
        LOOM_CHECK(loom_json_int(p, "original_max_position_embeddings", true, &cfg->rope_original_max_position, ctx, err));
        if (!(cfg->rope_high_freq_factor > cfg->rope_low_freq_factor) || !(cfg->rope_low_freq_factor > 0) ||
            cfg->rope_original_max_position <= 0)
            return loom_err_set(err, LOOM_EINVAL, "%s: llama3 rope needs high_freq_factor > low_freq_factor > 0 and original_max_position_embeddings > 0", ctx);
    } else {
        return loom_err_set(err, LOOM_EUNSUPPORTED, "%s: unsupported rope type \"%s\" (supported: default, linear, llama3)", ctx, type);
    }
    if (!(cfg->rope_factor > 0) || !isfinite(cfg->rope_factor))
        return loom_err_set(err, LOOM_EINVAL, "%s: rope factor must be a positive number", ctx);
    return LOOM_OK;
}

/* Sliding windows per layer: `layer_types` when given, else the
 * architecture's rule (Mistral: every layer; Qwen2: layers >=
 * max_window_layers when use_sliding_window). */
static loom_status parse_windows(const json_t *root, loom_config *cfg, const char *what, loom_err *err)
{
    cfg->layer_window = calloc((size_t)cfg->n_layers, sizeof *cfg->layer_window);
    if (!cfg->layer_window) return loom_err_set(err, LOOM_ENOMEM, "out of memory");
    if (cfg->arch == LOOM_ARCH_LLAMA) return LOOM_OK;
    int64_t window = 0;
    LOOM_CHECK(loom_json_int(root, "sliding_window", false, &window, what, err));
    if (window < 0) return loom_err_set(err, LOOM_EINVAL, "%s: sliding_window must be positive or null", what);
    bool use = true;
    int64_t max_window_layers = 0;
    if (cfg->arch == LOOM_ARCH_QWEN2) {
        use = false;
        LOOM_CHECK(loom_json_bool(root, "use_sliding_window", false, &use, what, err));
        LOOM_CHECK(loom_json_int(root, "max_window_layers", false, &max_window_layers, what, err));
        if (!use) window = 0;
    }
    json_t *lt = json_object_get(root, "layer_types");
    if (lt && !json_is_null(lt)) {
        if (!json_is_array(lt) || (int64_t)json_array_size(lt) != cfg->n_layers)
            return loom_err_set(err, LOOM_EINVAL, "%s: \"layer_types\" must list one type per layer (%lld)", what, (long long)cfg->n_layers);
        for (int64_t i = 0; i < cfg->n_layers; i++) {
            const char *t = json_string_value(json_array_get(lt, (size_t)i));
            if (!t) return loom_err_set(err, LOOM_EINVAL, "%s: layer_types[%lld] is not a string", what, (long long)i);
            if (!strcmp(t, "sliding_attention")) {
                if (window <= 0) return loom_err_set(err, LOOM_EINVAL, "%s: layer %lld is sliding_attention but sliding_window is not set", what, (long long)i);
                cfg->layer_window[i] = window;
            } else if (strcmp(t, "full_attention")) {
                return loom_err_set(err, LOOM_EUNSUPPORTED, "%s: unsupported layer type \"%s\"", what, t);
            }
        }
        return LOOM_OK;
    }
    for (int64_t i = 0; i < cfg->n_layers; i++)
        if (window > 0 && (cfg->arch == LOOM_ARCH_MISTRAL || i >= max_window_layers)) cfg->layer_window[i] = window;
    return LOOM_OK;
}

/* Adds the ids of an eos_token_id field (integer or list) to cfg. */
static loom_status add_eos(const json_t *root, loom_config *cfg, const char *what, loom_err *err)
{
    json_t *e = json_object_get(root, "eos_token_id");
    if (!e || json_is_null(e)) return LOOM_OK;
    size_t n = json_is_array(e) ? json_array_size(e) : 1;
    for (size_t i = 0; i < n; i++) {
        json_t *v = json_is_array(e) ? json_array_get(e, i) : e;
        if (!json_is_integer(v) || json_integer_value(v) < 0)
            return loom_err_set(err, LOOM_EINVAL, "%s: \"eos_token_id\" must be a non-negative integer or a list of them", what);
        int32_t id = (int32_t)json_integer_value(v);
        if (loom_config_is_eos(cfg, id)) continue;
        if (cfg->n_eos == LOOM_MAX_EOS) return loom_err_set(err, LOOM_EINVAL, "%s: more than %d eos ids", what, LOOM_MAX_EOS);
        cfg->eos_ids[cfg->n_eos++] = id;
    }
    return LOOM_OK;
}

static loom_status check_range(int64_t v, int64_t lo, int64_t hi, const char *key, const char *what, loom_err *err)
{
    if (v < lo || v > hi)
        return loom_err_set(err, LOOM_EINVAL, "%s: \"%s\" is %lld; it must be between %lld and %lld", what, key, (long long)v, (long long)lo, (long long)hi);
    return LOOM_OK;
}

/* The "loom" object `loom convert` adds: {"format": 1, "tp": N, "pp": M,
 * "pp_layers": [layers per stage]}. */
static loom_status parse_loom_section(const json_t *root, loom_config *cfg, const char *what, loom_err *err)
{
    json_t *l = json_object_get(root, "loom");
    if (!l || json_is_null(l)) return LOOM_OK;
    char ctx[4200];
    snprintf(ctx, sizeof ctx, "%s: loom", what);
    int64_t fmt = 0, tp = 0, pp = 0;
    LOOM_CHECK(loom_json_int(l, "format", true, &fmt, ctx, err));
    if (fmt != 1) return loom_err_set(err, LOOM_EUNSUPPORTED, "%s: converted-checkpoint format %lld is not supported (this loom reads format 1)", ctx, (long long)fmt);
    LOOM_CHECK(loom_json_int(l, "tp", true, &tp, ctx, err));
    LOOM_CHECK(loom_json_int(l, "pp", true, &pp, ctx, err));
    LOOM_CHECK(check_range(tp, 1, 4096, "tp", ctx, err));
    LOOM_CHECK(check_range(pp, 1, cfg->n_layers, "pp", ctx, err));
    json_t *pl = json_object_get(l, "pp_layers");
    if (!json_is_array(pl) || (int64_t)json_array_size(pl) != pp)
        return loom_err_set(err, LOOM_EINVAL, "%s: \"pp_layers\" must list the layers of each of the %lld stages", ctx, (long long)pp);
    cfg->conv_pp_layers = calloc((size_t)pp, sizeof *cfg->conv_pp_layers);
    if (!cfg->conv_pp_layers) return loom_err_set(err, LOOM_ENOMEM, "out of memory");
    int64_t sum = 0;
    for (int64_t i = 0; i < pp; i++) {
        json_t *v = json_array_get(pl, (size_t)i);
        if (!json_is_integer(v) || json_integer_value(v) < 1)
            return loom_err_set(err, LOOM_EINVAL, "%s: pp_layers[%lld] must be a positive integer", ctx, (long long)i);
        cfg->conv_pp_layers[i] = json_integer_value(v);
        sum += cfg->conv_pp_layers[i];
    }
    if (sum != cfg->n_layers)
        return loom_err_set(err, LOOM_EINVAL, "%s: pp_layers add up to %lld, not num_hidden_layers (%lld)", ctx, (long long)sum, (long long)cfg->n_layers);
    cfg->conv_tp = (int)tp;
    cfg->conv_pp = (int)pp;
    return LOOM_OK;
}

static loom_status parse_config(const json_t *root, loom_config *cfg, const char *what, loom_err *err)
{
    if (!json_is_object(root)) return loom_err_set(err, LOOM_EINVAL, "%s: not a JSON object", what);
    LOOM_CHECK(parse_arch(root, cfg, what, err));
    LOOM_CHECK(loom_json_int(root, "vocab_size", true, &cfg->vocab_size, what, err));
    LOOM_CHECK(loom_json_int(root, "hidden_size", true, &cfg->hidden_size, what, err));
    LOOM_CHECK(loom_json_int(root, "intermediate_size", true, &cfg->intermediate_size, what, err));
    LOOM_CHECK(loom_json_int(root, "num_hidden_layers", true, &cfg->n_layers, what, err));
    LOOM_CHECK(loom_json_int(root, "num_attention_heads", true, &cfg->n_heads, what, err));
    cfg->n_kv_heads = cfg->n_heads;
    LOOM_CHECK(loom_json_int(root, "num_key_value_heads", false, &cfg->n_kv_heads, what, err));
    cfg->max_position_embeddings = 2048;
    LOOM_CHECK(loom_json_int(root, "max_position_embeddings", false, &cfg->max_position_embeddings, what, err));
    LOOM_CHECK(check_range(cfg->vocab_size, 1, INT32_MAX, "vocab_size", what, err));
    LOOM_CHECK(check_range(cfg->hidden_size, 1, 1 << 20, "hidden_size", what, err));
    LOOM_CHECK(check_range(cfg->intermediate_size, 1, 1 << 22, "intermediate_size", what, err));
    LOOM_CHECK(check_range(cfg->n_layers, 1, 4096, "num_hidden_layers", what, err));
    LOOM_CHECK(check_range(cfg->n_heads, 1, 4096, "num_attention_heads", what, err));
    LOOM_CHECK(check_range(cfg->n_kv_heads, 1, cfg->n_heads, "num_key_value_heads", what, err));
    LOOM_CHECK(check_range(cfg->max_position_embeddings, 1, INT32_MAX, "max_position_embeddings", what, err));
    if (cfg->n_heads % cfg->n_kv_heads)
        return loom_err_set(err, LOOM_EINVAL, "%s: num_attention_heads (%lld) is not a multiple of num_key_value_heads (%lld)", what,
                            (long long)cfg->n_heads, (long long)cfg->n_kv_heads);
    cfg->head_dim = cfg->hidden_size / cfg->n_heads;
    if (cfg->hidden_size % cfg->n_heads) cfg->head_dim = 0;
    LOOM_CHECK(loom_json_int(root, "head_dim", false, &cfg->head_dim, what, err));
    if (cfg->head_dim <= 0)
        return loom_err_set(err, LOOM_EINVAL, "%s: hidden_size is not a multiple of num_attention_heads and head_dim is not set", what);
    LOOM_CHECK(check_range(cfg->head_dim, 2, 512, "head_dim", what, err));
    if (cfg->head_dim % 2) return loom_err_set(err, LOOM_EINVAL, "%s: head_dim (%lld) must be even for rotary embeddings", what, (long long)cfg->head_dim);

    double eps = 1e-6;
    LOOM_CHECK(loom_json_num(root, "rms_norm_eps", false, &eps, what, err));
    if (!(eps > 0) || eps > 1) return loom_err_set(err, LOOM_EINVAL, "%s: rms_norm_eps must be in (0, 1]", what);
    cfg->rms_norm_eps = (float)eps;

    const char *act = NULL;
    LOOM_CHECK(loom_json_str(root, "hidden_act", false, &act, what, err));
    if (act && strcmp(act, "silu"))
        return loom_err_set(err, LOOM_EUNSUPPORTED, "%s: unsupported hidden_act \"%s\" (supported: silu)", what, act);

    LOOM_CHECK(parse_rope(root, cfg, what, err));
    LOOM_CHECK(parse_windows(root, cfg, what, err));

    if (cfg->arch == LOOM_ARCH_LLAMA) {
        bool ab = false;
        LOOM_CHECK(loom_json_bool(root, "attention_bias", false, &ab, what, err));
        cfg->qkv_bias = cfg->o_bias = ab;
        LOOM_CHECK(loom_json_bool(root, "mlp_bias", false, &cfg->mlp_bias, what, err));
    } else if (cfg->arch == LOOM_ARCH_QWEN2) {
        cfg->qkv_bias = true;
    }
    LOOM_CHECK(loom_json_bool(root, "tie_word_embeddings", false, &cfg->tie_word_embeddings, what, err));

    int64_t bos = -1;
    LOOM_CHECK(loom_json_int(root, "bos_token_id", false, &bos, what, err));
    cfg->bos_token_id = (bos >= 0 && bos < cfg->vocab_size) ? (int32_t)bos : -1;
    LOOM_CHECK(add_eos(root, cfg, what, err));

    const char *dt = NULL;
    LOOM_CHECK(loom_json_str(root, "dtype", false, &dt, what, err));
    if (!dt) LOOM_CHECK(loom_json_str(root, "torch_dtype", false, &dt, what, err));
    snprintf(cfg->dtype_name, sizeof cfg->dtype_name, "%s", dt ? dt : "");
    return parse_loom_section(root, cfg, what, err);
}

loom_status loom_config_load(const char *dir, loom_config *cfg, loom_err *err)
{
    memset(cfg, 0, sizeof *cfg);
    char path[4096];
    LOOM_CHECK(loom_path_join(path, sizeof path, dir, "config.json", err));
    if (!loom_file_exists(path)) {
        if (!loom_dir_exists(dir)) return loom_err_set(err, LOOM_EIO, "model directory %s does not exist", dir);
        return loom_err_set(err, LOOM_EIO, "%s: no config.json in the model directory", dir);
    }
    json_t *root = loom_json_load_file(path, err);
    if (!root) return LOOM_EINVAL;
    loom_status st = parse_config(root, cfg, path, err);
    json_decref(root);
    if (st != LOOM_OK) goto fail;

    char gpath[4096];
    LOOM_CHECK_GOTO(st, loom_path_join(gpath, sizeof gpath, dir, "generation_config.json", err), fail);
    if (loom_file_exists(gpath)) {
        json_t *g = loom_json_load_file(gpath, err);
        if (!g) {
            st = LOOM_EINVAL;
            goto fail;
        }
        st = json_is_object(g) ? add_eos(g, cfg, gpath, err) : loom_err_set(err, LOOM_EINVAL, "%s: not a JSON object", gpath);
        json_decref(g);
        if (st != LOOM_OK) goto fail;
    }
    return LOOM_OK;
fail:
    loom_config_free(cfg);
    return st;
}

void loom_config_free(loom_config *cfg)
{
    if (!cfg) return;
    free(cfg->layer_window);
    free(cfg->conv_pp_layers);
    memset(cfg, 0, sizeof *cfg);
}

bool loom_config_is_eos(const loom_config *cfg, int32_t id)
{
    for (int i = 0; i < cfg->n_eos; i++)
        if (cfg->eos_ids[i] == id) return true;
    return false;
}

void loom_config_rope_inv_freq(const loom_config *cfg, float *inv_freq)
{
    int64_t half = cfg->head_dim / 2;
    float base = (float)cfg->rope_theta;
    for (int64_t i = 0; i < half; i++) {
        /* transformers: 1.0 / (base ** (arange(0, dim, 2).float() / dim)), in fp32 */
        float expo = (float)(2 * i) / (float)cfg->head_dim;
        inv_freq[i] = 1.0f / powf(base, expo);
    }
    if (cfg->rope_type == LOOM_ROPE_LINEAR) {
        for (int64_t i = 0; i < half; i++) inv_freq[i] /= (float)cfg->rope_factor;
    } else if (cfg->rope_type == LOOM_ROPE_LLAMA3) {
        /* transformers _compute_llama3_parameters */
        float factor = (float)cfg->rope_factor;
        float lo = (float)cfg->rope_low_freq_factor, hi = (float)cfg->rope_high_freq_factor;
        float old_ctx = (float)cfg->rope_original_max_position;
        float low_freq_wavelen = old_ctx / lo;
        float high_freq_wavelen = old_ctx / hi;
        for (int64_t i = 0; i < half; i++) {
            float f = inv_freq[i];
            float wavelen = 2.0f * (float)M_PI / f;
            float out = wavelen > low_freq_wavelen ? f / factor : f;
            float smooth = (old_ctx / wavelen - lo) / (hi - lo);
            float smoothed = (1.0f - smooth) * out / factor + smooth * out;
            bool medium = !(wavelen < high_freq_wavelen) && !(wavelen > low_freq_wavelen);
            inv_freq[i] = medium ? smoothed : out;
        }
    }
}
