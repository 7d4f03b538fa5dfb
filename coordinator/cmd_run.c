/* `loom run`: one-shot generation on the CPU backend (like TensorRT-LLM's
 * run.py). Tokenizes the prompt, generates, streams text (or prints one JSON
 * line with --json), and handles EOS ids, stop ids and stop strings. */
#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../kernels/ops.h"
#include "../util/fileutil.h"
#include "../util/parse.h"
#include "../worker/generate.h"
#include "../worker/run_gpu.h"
#include "commands.h"
#include "gen_flags.h"
#include "textstream.h"
#include "tokenizer/tokenizer.h"

typedef struct run_opts {
    const char *model;
    loom_gen_flags g;      /* prompt, length, sampling, stops */
    int64_t max_seq_len;   /* 0 = max_position_embeddings */
    int64_t prefill_chunk;
    loom_dtype kv_dtype;   /* --kv-cache-dtype after loom_kv_dtype_check: LOOM_DTYPE_COUNT (as the activations) or LOOM_F8E4M3 */
    bool json, verbose, ignore_eos, cuda;
} run_opts;

static void run_usage(FILE *f)
{
    fprintf(f,
            "usage: loom run --model DIR (--prompt TEXT | --prompt-ids 1,2,3) --max-new-tokens N [options]\n"
            "\n"
            "One-shot generation on the CPU backend.\n"
            "  --model DIR              Hugging Face model directory (config.json, *.safetensors, tokenizer.json)\n"
            "  --prompt TEXT            prompt text, encoded with the model's special tokens (BOS for Llama)\n"
            "  --prompt-ids IDS         prompt as comma-separated token ids (no tokenizer needed)\n"
            "  --max-new-tokens N       tokens to generate (>= 1)\n"
            "  --temperature X          0 = greedy (default 0)\n"
            "  --top-k K                keep the K most likely tokens (0 = off)\n"
            "  --top-p P                nucleus sampling mass in (0, 1] (1 = off)\n"
            "  --repetition-penalty R   > 0 (1 = off)\n"
            "  --seed S                 sampling seed (same seed, same output; default 0)\n"
            "  --stop STR               stop when the output contains STR (repeatable; STR is not printed)\n"
            "  --stop-id ID             stop after token ID (repeatable)\n"
            "  --ignore-eos             do not stop at the model's EOS ids\n"
            "  --max-seq-len N          prompt + new tokens limit (default: max_position_embeddings)\n"
            "  --prefill-chunk N        tokens per prefill forward (default 256)\n"
            "  --json                   print one line {\"prompt_ids\":[...],\"output_ids\":[...],\"text\":\"...\"}\n"
            "  --device cpu|cuda        where to compute (default cpu, fp32; cuda: one GPU, fp16)\n"
            "  --kv-cache-dtype auto|fp16|bf16|fp8  KV cache elements: auto (default) = the activations;\n"
            "                           fp8 = E4M3, unit scale (on the cpu K/V are only rounded to fp8 values)\n"
            "  --verbose                print memory and speed to stderr\n");
}

enum { OPT_MAX_SEQ = 256, OPT_CHUNK, OPT_JSON, OPT_VERBOSE, OPT_IGNORE_EOS, OPT_DEVICE, OPT_KV_DTYPE, OPT_HELP };

/* Returns 0 on success, 2 on a usage error (message printed), -1 for --help. */
static int parse_args(int argc, char **argv, run_opts *o)
{
    static const struct option longopts[] = {
        {"model", required_argument, 0, 'm'},
        LOOM_GEN_LONGOPTS,
        {"max-seq-len", required_argument, 0, OPT_MAX_SEQ},
        {"prefill-chunk", required_argument, 0, OPT_CHUNK},
        {"json", no_argument, 0, OPT_JSON},
        {"verbose", no_argument, 0, OPT_VERBOSE},
        {"device", required_argument, 0, OPT_DEVICE},
        {"kv-cache-dtype", required_argument, 0, OPT_KV_DTYPE},
        {"ignore-eos", no_argument, 0, OPT_IGNORE_EOS},
        {"help", no_argument, 0, OPT_HELP},
        {0, 0, 0, 0},
    };
    memset(o, 0, sizeof *o);
    loom_gen_flags_init(&o->g);
    o->prefill_chunk = 256;
    o->kv_dtype = LOOM_DTYPE_COUNT;
    loom_err err = {{0}};
    int c;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":", longopts, NULL)) != -1) {
        loom_status st = LOOM_OK;
        if (!loom_gen_flags_apply(&o->g, c, optarg, &st, &err)) switch (c) {
        case 'm': o->model = optarg; break;
        case OPT_MAX_SEQ: st = loom_parse_i64(optarg, 1, INT32_MAX, "--max-seq-len", &o->max_seq_len, &err); break;
        case OPT_CHUNK: st = loom_parse_i64(optarg, 1, 1 << 16, "--prefill-chunk", &o->prefill_chunk, &err); break;
        case OPT_JSON: o->json = true; break;
        case OPT_VERBOSE: o->verbose = true; break;
        case OPT_DEVICE:
            if (!strcmp(optarg, "cuda")) o->cuda = true;
            else if (strcmp(optarg, "cpu")) st = loom_err_set(&err, LOOM_EINVAL, "--device must be cpu or cuda (got %s)", optarg);
            break;
        case OPT_KV_DTYPE: st = loom_parse_kv_dtype(optarg, &o->kv_dtype, &err); break;
        case OPT_IGNORE_EOS: o->ignore_eos = true; break;
        case OPT_HELP: return -1;
        case ':':
            st = loom_err_set(&err, LOOM_EINVAL, "option %s needs a value", argv[optind - 1]);
            break;
        default:
            st = loom_err_set(&err, LOOM_EINVAL, "unknown option %s", argv[optind - 1]);
            break;
        }
        if (st != LOOM_OK) {
            fprintf(stderr, "loom run: %s (see 'loom run --help')\n", err.msg);
            return 2;
        }
    }
    const char *problem = NULL;
    if (optind < argc) problem = "unexpected argument";
    else if (!o->model) problem = "--model DIR is required";
    else if (!o->g.prompt == !o->g.prompt_ids) problem = "give exactly one of --prompt or --prompt-ids";
    else if (!o->g.have_max_new) problem = "--max-new-tokens N is required";
    if (problem) {
        if (optind < argc) fprintf(stderr, "loom run: unexpected argument '%s' (see 'loom run --help')\n", argv[optind]);
        else fprintf(stderr, "loom run: %s (see 'loom run --help')\n", problem);
        return 2;
    }
    if (loom_gen_flags_check(&o->g, &err) != LOOM_OK ||
        /* the CPU computes in fp32, one GPU in fp16 (run has no --dtype) */
        loom_kv_dtype_check(&o->kv_dtype, o->cuda ? LOOM_F16 : LOOM_F32, NULL, o->cuda ? "--device cuda" : "the CPU backend", &err) != LOOM_OK) {
        fprintf(stderr, "loom run: %s\n", err.msg);
        return 2;
    }
    return 0;
}

/* Streaming: the text side (detokenizer, stop strings, hold-back) lives in
 * textstream.c, shared with the server; this prints what is ready. */
typedef struct stream_ctx {
    loom_textstream ts;
    bool json;
    loom_status st;
    loom_err *err;
} stream_ctx;

static void print_ready(stream_ctx *s, bool final)
{
    const char *piece;
    size_t n;
    loom_textstream_take(&s->ts, final, &piece, &n);
    if (s->json || !n) return;
    fwrite(piece, 1, n, stdout);
    fflush(stdout);
}

static bool on_token(void *ctx, int32_t id)
{
    stream_ctx *s = ctx;
    s->st = loom_textstream_push(&s->ts, id, s->err);
    if (s->st != LOOM_OK) return false;
    print_ready(s, false);
    return !s->ts.stopped;
}

static void print_json(const int32_t *prompt, size_t n_prompt, const int32_t *out, int64_t n_out, const char *text, size_t len)
{
    json_t *pj = json_array(), *oj = json_array();
    for (size_t i = 0; i < n_prompt; i++) json_array_append_new(pj, json_integer(prompt[i]));
    for (int64_t i = 0; i < n_out; i++) json_array_append_new(oj, json_integer(out[i]));
    json_t *root = json_object();
    json_object_set_new(root, "prompt_ids", pj);
    json_object_set_new(root, "output_ids", oj);
    json_t *tj = json_stringn(text ? text : "", text ? len : 0);
    json_object_set_new(root, "text", tj ? tj : json_string(""));
    char *s = json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER);
    if (s) printf("%s\n", s);
    free(s);
    json_decref(root);
}

static const char *finish_name(loom_finish f)
{
    return f == LOOM_FINISH_EOS ? "eos" : f == LOOM_FINISH_STOP ? "stop" : "length";
}

int loom_cmd_run(int argc, char **argv)
{
    run_opts o;
    int rc = parse_args(argc, argv, &o);
    if (rc == -1) {
        run_usage(stdout);
        return 0;
    }
    if (rc) return rc;

    loom_err err = {{0}};
    loom_model *m = NULL;
    loom_tokenizer *tok = NULL;
    loom_kv_cache *kv = NULL;
    int32_t *prompt = NULL, *out = NULL;
    size_t n_prompt = 0;
    stream_ctx sc = {.json = o.json, .err = &err};
    rc = 1;

    m = loom_model_load(o.model, loom_ops_cpu(), NULL, NULL, o.prefill_chunk, 1, &err);
    if (!m || loom_model_set_kv_dtype(m, o.kv_dtype, &err) != LOOM_OK) goto fail;
    char tpath[4096];
    if (loom_path_join(tpath, sizeof tpath, o.model, "tokenizer.json", &err) != LOOM_OK) goto fail;
    if (loom_file_exists(tpath)) {
        tok = loom_tokenizer_load(o.model, &err);
        if (!tok) goto fail;
    } else if (o.g.prompt) {
        loom_err_set(&err, LOOM_EINVAL, "%s has no tokenizer.json; use --prompt-ids", o.model);
        goto fail;
    }
    if (o.g.prompt) {
        if (loom_tokenizer_encode(tok, o.g.prompt, strlen(o.g.prompt), true, &prompt, &n_prompt, &err) != LOOM_OK) goto fail;
    } else if (loom_parse_id_list(o.g.prompt_ids, "--prompt-ids", &prompt, &n_prompt, &err) != LOOM_OK) {
        goto fail;
    }
    if (n_prompt == 0) {
        loom_err_set(&err, LOOM_EINVAL, "the prompt is empty (it encodes to no tokens)");
        goto fail;
    }
    for (size_t i = 0; i < n_prompt; i++)
        if (prompt[i] >= m->cfg.vocab_size) {
            loom_err_set(&err, LOOM_EINVAL, "--prompt-ids: token id %d is not below the vocabulary size %lld", prompt[i], (long long)m->cfg.vocab_size);
            goto fail;
        }
    for (int i = 0; i < o.g.n_stop_ids; i++)
        if (o.g.stop_ids[i] >= m->cfg.vocab_size) {
            loom_err_set(&err, LOOM_EINVAL, "--stop-id: token id %d is not below the vocabulary size %lld", o.g.stop_ids[i], (long long)m->cfg.vocab_size);
            goto fail;
        }
    int64_t max_seq = o.max_seq_len ? o.max_seq_len : m->cfg.max_position_embeddings;
    if ((int64_t)n_prompt + o.g.max_new_tokens > max_seq) {
        loom_err_set(&err, LOOM_EINVAL, "prompt (%zu tokens) + --max-new-tokens (%lld) exceeds the sequence limit %lld (%s)", n_prompt,
                     (long long)o.g.max_new_tokens, (long long)max_seq, o.max_seq_len ? "--max-seq-len" : "max_position_embeddings; raise it with --max-seq-len");
        goto fail;
    }
    if (!o.cuda && !(kv = loom_model_kv_create(m, (int64_t)n_prompt + o.g.max_new_tokens, &err))) goto fail;
    out = malloc((size_t)o.g.max_new_tokens * sizeof *out);
    if (!out) {
        loom_err_set(&err, LOOM_ENOMEM, "out of memory");
        goto fail;
    }
    if (loom_textstream_init(&sc.ts, tok, o.g.stops, o.g.n_stops, &err) != LOOM_OK) goto fail;
    if (o.verbose && !o.cuda) {
        fprintf(stderr, "loom run: %s, %lld layers, hidden %lld, vocab %lld; weights %.2f MiB (%s), KV cache %.2f MiB (%lld positions%s), activations %.2f MiB\n",
                m->cfg.arch_name, (long long)m->cfg.n_layers, (long long)m->cfg.hidden_size, (long long)m->cfg.vocab_size,
                (double)loom_st_data_bytes(m->st) / 1048576.0, m->cfg.dtype_name[0] ? m->cfg.dtype_name : "?",
                (double)loom_kv_cache_bytes(kv->n_layers, kv->max_seq, kv->n_kv_heads, kv->head_dim) / 1048576.0,
                (long long)kv->max_seq, m->kv_dtype == LOOM_F8E4M3 ? ", fp32 holding fp8 values" : "", (double)m->rs.bytes / 1048576.0);
    }

    loom_gen_params gp = {.max_new_tokens = o.g.max_new_tokens, .sampling = o.g.sampling, .stop_ids = o.g.stop_ids,
                          .n_stop_ids = o.g.n_stop_ids, .ignore_eos = o.ignore_eos};
    int64_t n_out = 0;
    loom_finish fin;
    loom_gen_stats gs;
    loom_status gst = o.cuda ? loom_run_gpu(o.model, o.kv_dtype, prompt, (int64_t)n_prompt, &gp, on_token, &sc, out, &n_out, &fin, &gs, &err)
                             : loom_generate(m, kv, prompt, (int64_t)n_prompt, &gp, on_token, &sc, out, &n_out, &fin, &gs, &err);
    if (gst != LOOM_OK) goto fail;
    if (sc.st != LOOM_OK) goto fail;
    if (loom_textstream_finish(&sc.ts, &err) != LOOM_OK) goto fail;
    if (o.json) {
        print_json(prompt, n_prompt, out, n_out, sc.ts.text, sc.ts.len);
    } else if (tok) {
        print_ready(&sc, true);
        printf("\n");
    } else {
        for (int64_t i = 0; i < n_out; i++) printf("%s%d", i ? " " : "", out[i]);
        printf("\n");
    }
    if (o.verbose)
        fprintf(stderr, "loom run: finish %s; prefill %lld tokens in %.3f s (%.1f tok/s); decode %lld tokens in %.3f s (%.1f tok/s)\n",
                finish_name(fin), (long long)gs.prompt_tokens, gs.prefill_s, gs.prefill_s > 0 ? (double)gs.prompt_tokens / gs.prefill_s : 0.0,
                (long long)(gs.new_tokens > 0 ? gs.new_tokens - 1 : 0), gs.decode_s,
                gs.decode_s > 0 ? (double)(gs.new_tokens - 1) / gs.decode_s : 0.0);
    rc = 0;
    goto done;
fail:
    fflush(stdout);
    fprintf(stderr, "loom run: %s\n", err.msg);
done:
    loom_textstream_free(&sc.ts);
    free(out);
    free(prompt);
    loom_kv_cache_destroy(kv);
    loom_tokenizer_destroy(tok);
    loom_model_destroy(m);
    return rc;
}
