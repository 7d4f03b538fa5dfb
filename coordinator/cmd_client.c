/* `loom client`: the command-line client of a running cluster. Sends one
 * generation request (prints the text, streamed with --stream, or the one JSON
 * line of `loom run --json`), or probes --health / --stats, through
 * libloomclient (coordinator/client/loom_client.h). */
#include <getopt.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../util/parse.h"
#include "client/loom_client.h"
#include "commands.h"
#include "gen_flags.h"

#define PROBE_TIMEOUT_MS 5000   /* --health / --stats without --timeout */
#define CONNECT_PROBE_MS 10000  /* longest wait for the server's first health reply */

typedef struct client_opts {
    const char *endpoint;
    loom_gen_flags g;     /* prompt, length, sampling, stops (as loom run) */
    bool stream, json, health, stats, have_wait;
    int timeout_ms;       /* 0 = none */
    int idle_timeout_ms;  /* 0 = none */
    int wait_ms;          /* --health --wait */
} client_opts;

static void client_usage(FILE *f)
{
    fprintf(f,
            "usage: loom client [--endpoint E] (--prompt TEXT | --prompt-ids 1,2,3) --max-new-tokens N [options]\n"
            "       loom client [--endpoint E] --health [--wait SEC]\n"
            "       loom client [--endpoint E] --stats\n"
            "\n"
            "Sends a request to a running loom cluster (loom serve) and prints the answer.\n"
            "  --endpoint E             the coordinator's address (default " LOOM_CLIENT_DEFAULT_ENDPOINT ")\n"
            "  --prompt TEXT            prompt text (the server tokenizes it)\n"
            "  --prompt-ids IDS         prompt as comma-separated token ids\n"
            "  --max-new-tokens N       tokens to generate (>= 1)\n"
            "  --temperature X          0 = greedy (default 0)\n"
            "  --top-k K                keep the K most likely tokens (0 = off)\n"
            "  --top-p P                nucleus sampling mass in (0, 1] (1 = off)\n"
            "  --repetition-penalty R   > 0 (1 = off)\n"
            "  --seed S                 sampling seed (default 0)\n"
            "  --stop STR               stop when the output contains STR (repeatable)\n"
            "  --stop-id ID             stop after token ID (repeatable)\n"
            "  --stream                 print the text as it is generated\n"
            "  --json                   print one line {\"prompt_ids\":[...],\"output_ids\":[...],\"text\":\"...\"}\n"
            "  --timeout SEC            give up (and cancel) after SEC seconds (default: none; 5 for --health/--stats)\n"
            "  --idle-timeout SEC       give up when no token arrives for SEC seconds (default: none)\n"
            "  --health                 exit 0 if the cluster serves, 1 if not\n"
            "  --wait SEC               with --health: keep asking for up to SEC seconds\n"
            "  --stats                  print the server's load as one JSON line: running, waiting,\n"
            "                           tokens_per_s, kv_used_fraction, kv_blocks_{total,used,free,cached},\n"
            "                           tokens_per_block, prefix_hit_rate, preemptions, refused, completed,\n"
            "                           timed_steps, step_cycle_ms, step_compute_ms, overhead_fraction\n"
            "\n"
            "Exit status: 0 done, 1 the server failed or refused the request (message on stderr), 2 bad flags.\n");
}

enum { OPT_ENDPOINT = 256, OPT_STREAM, OPT_JSON, OPT_TIMEOUT, OPT_IDLE, OPT_HEALTH, OPT_WAIT, OPT_STATS, OPT_HELP };

/* Seconds (fractions allowed) to milliseconds; 0 stays 0 (= none). */
static loom_status parse_seconds(const char *s, const char *what, int *ms, loom_err *err)
{
    float v;
    LOOM_CHECK(loom_parse_f32(s, what, &v, err));
    if (!(v >= 0) || v > 86400.0f * 24)
        return loom_err_set(err, LOOM_EINVAL, "%s must be a number of seconds in [0, 2073600]", what);
    *ms = (int)ceilf(v * 1000.0f);
    return LOOM_OK;
}

/* Returns 0 on success, 2 on a usage error (message printed), -1 for --help. */
static int parse_args(int argc, char **argv, client_opts *o)
{
    static const struct option longopts[] = {
        {"endpoint", required_argument, 0, OPT_ENDPOINT},
        LOOM_GEN_LONGOPTS,
        {"stream", no_argument, 0, OPT_STREAM},
        {"json", no_argument, 0, OPT_JSON},
        {"timeout", required_argument, 0, OPT_TIMEOUT},
        {"idle-timeout", required_argument, 0, OPT_IDLE},
        {"health", no_argument, 0, OPT_HEALTH},
        {"wait", required_argument, 0, OPT_WAIT},
        {"stats", no_argument, 0, OPT_STATS},
        {"help", no_argument, 0, OPT_HELP},
        {0, 0, 0, 0},
    };
    memset(o, 0, sizeof *o);
    o->endpoint = LOOM_CLIENT_DEFAULT_ENDPOINT;
    loom_gen_flags_init(&o->g);
    loom_err err = {{0}};
    int c;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":", longopts, NULL)) != -1) {
        loom_status st = LOOM_OK;
        if (!loom_gen_flags_apply(&o->g, c, optarg, &st, &err)) switch (c) {
        case OPT_ENDPOINT:
            if (!*optarg) st = loom_err_set(&err, LOOM_EINVAL, "--endpoint is empty");
            o->endpoint = optarg;
            break;
        case OPT_STREAM: o->stream = true; break;
        case OPT_JSON: o->json = true; break;
        case OPT_TIMEOUT: st = parse_seconds(optarg, "--timeout", &o->timeout_ms, &err); break;
        case OPT_IDLE: st = parse_seconds(optarg, "--idle-timeout", &o->idle_timeout_ms, &err); break;
        case OPT_HEALTH: o->health = true; break;
        case OPT_WAIT:
            st = parse_seconds(optarg, "--wait", &o->wait_ms, &err);
            o->have_wait = true;
            break;
        case OPT_STATS: o->stats = true; break;
        case OPT_HELP: return -1;
        case ':':
            st = loom_err_set(&err, LOOM_EINVAL, "option %s needs a value", argv[optind - 1]);
            break;
        default:
            st = loom_err_set(&err, LOOM_EINVAL, "unknown option %s", argv[optind - 1]);
            break;
        }
        if (st != LOOM_OK) {
            fprintf(stderr, "loom client: %s (see 'loom client --help')\n", err.msg);
            return 2;
        }
    }
    const char *problem = NULL;
    bool generate = o->g.prompt || o->g.prompt_ids || o->g.have_max_new;
    if (optind < argc) {
        fprintf(stderr, "loom client: unexpected argument '%s' (see 'loom client --help')\n", argv[optind]);
        return 2;
    }
    if (o->health + o->stats + generate > 1) problem = "--health, --stats and a generation request (--prompt ...) exclude each other";
    else if (o->have_wait && !o->health) problem = "--wait goes with --health";
    else if (!o->health && !o->stats) {
        if (!o->g.prompt == !o->g.prompt_ids) problem = "give exactly one of --prompt or --prompt-ids (or --health / --stats)";
        else if (!o->g.have_max_new) problem = "--max-new-tokens N is required";
        else if (loom_gen_flags_check(&o->g, &err) != LOOM_OK) problem = err.msg;
    }
    if (problem) {
        fprintf(stderr, "loom client: %s (see 'loom client --help')\n", problem);
        return 2;
    }
    return 0;
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* --health [--wait SEC]: 0 once the server says it serves, 1 otherwise. */
static int do_health(const client_opts *o)
{
    loom_err err = {{0}};
    loom_client *c = loom_client_connect(o->endpoint, 0, &err);
    if (!c) {
        fprintf(stderr, "loom client: %s\n", err.msg);
        return 1;
    }
    int64_t deadline = now_ms() + o->wait_ms;
    int probe_ms = o->timeout_ms > 0 ? o->timeout_ms : PROBE_TIMEOUT_MS;
    bool serving = false;
    loom_status st;
    for (;;) {
        int64_t left = deadline - now_ms();
        int t = probe_ms;
        if (o->have_wait) t = left < 1000 ? (left > 100 ? (int)left : 100) : 1000; /* retry about once a second */
        int64_t t0 = now_ms();
        st = loom_client_health(c, t, &serving, &err);
        if ((st == LOOM_OK && serving) || !o->have_wait || now_ms() >= deadline) break;
        if (st == LOOM_EINVAL && !strncmp(err.msg, "reply from", 10)) break; /* a wrong-version or non-loom peer: no use waiting */
        int64_t spent = now_ms() - t0;
        if (spent < 250) sleep_ms((int)(250 - spent));
    }
    loom_client_close(c);
    if (st != LOOM_OK) {
        fprintf(stderr, "loom client: %s\n", err.msg);
        return 1;
    }
    if (!serving) {
        fprintf(stderr, "loom client: %s answers but is not serving yet%s\n", o->endpoint, o->have_wait ? " (gave up waiting)" : "");
        return 1;
    }
    printf("serving\n");
    return 0;
}

static int do_stats(const client_opts *o)
{
    loom_err err = {{0}};
    loom_client_server_stats s;
    int rc = 1;
    loom_client *c = loom_client_connect(o->endpoint, 0, &err);
    if (!c || loom_client_stats(c, o->timeout_ms > 0 ? o->timeout_ms : PROBE_TIMEOUT_MS, &s, &err) != LOOM_OK) {
        fprintf(stderr, "loom client: %s\n", err.msg);
        goto done;
    }
    json_t *root = json_object();
    json_object_set_new(root, "running", json_integer(s.running));
    json_object_set_new(root, "waiting", json_integer(s.waiting));
    json_object_set_new(root, "tokens_per_s", json_real(s.tokens_per_s));
    json_object_set_new(root, "kv_used_fraction", json_real(s.kv_used_fraction));
    /* added later: after the original four keys, so they keep their place */
    json_object_set_new(root, "kv_blocks_total", json_integer(s.kv_blocks_total));
    json_object_set_new(root, "kv_blocks_used", json_integer(s.kv_blocks_used));
    json_object_set_new(root, "kv_blocks_free", json_integer(s.kv_blocks_free));
    json_object_set_new(root, "kv_blocks_cached", json_integer(s.kv_blocks_cached));
    json_object_set_new(root, "tokens_per_block", json_integer(s.tokens_per_block));
    json_object_set_new(root, "prefix_hit_rate", json_real(s.prefix_hit_rate));
    json_object_set_new(root, "preemptions", json_integer(s.preemptions));
    json_object_set_new(root, "refused", json_integer(s.refused));
    json_object_set_new(root, "completed", json_integer(s.completed));
    json_object_set_new(root, "timed_steps", json_integer(s.timed_steps));
    json_object_set_new(root, "step_cycle_ms", json_real(s.step_cycle_ms));
    json_object_set_new(root, "step_compute_ms", json_real(s.step_compute_ms));
    json_object_set_new(root, "overhead_fraction", json_real(s.overhead_fraction));
    char *text = json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(root);
    if (text) {
        printf("%s\n", text);
        rc = 0;
    }
    free(text);
done:
    loom_client_close(c);
    return rc;
}

/* Streaming printout state. */
typedef struct print_ctx {
    bool printed_any;   /* some text went to stdout */
    bool ends_newline;  /* the last byte printed was '\n' */
} print_ctx;

static bool on_chunk(void *ctx, const loom_client_chunk *ch)
{
    print_ctx *p = ctx;
    if (ch->text_len) {
        fwrite(ch->text, 1, ch->text_len, stdout);
        fflush(stdout);
        p->printed_any = true;
        p->ends_newline = ch->text[ch->text_len - 1] == '\n';
    }
    return true;
}

static void print_json(const int32_t *prompt, size_t n_prompt, const loom_client_result *r)
{
    json_t *pj = json_array(), *oj = json_array();
    for (size_t i = 0; i < n_prompt; i++) json_array_append_new(pj, json_integer(prompt[i]));
    for (size_t i = 0; i < r->n_output_ids; i++) json_array_append_new(oj, json_integer(r->output_ids[i]));
    json_t *root = json_object();
    json_object_set_new(root, "prompt_ids", pj);
    json_object_set_new(root, "output_ids", oj);
    json_t *tj = json_stringn(r->text ? r->text : "", r->text ? r->text_len : 0);
    json_object_set_new(root, "text", tj ? tj : json_string(""));
    char *s = json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER);
    if (s) printf("%s\n", s);
    free(s);
    json_decref(root);
}

static int do_generate(const client_opts *o)
{
    loom_err err = {{0}};
    int32_t *ids = NULL;
    size_t n_ids = 0;
    loom_client *c = NULL;
    loom_client_result res = {0};
    print_ctx pc = {0};
    int rc = 1;
    int64_t start = now_ms();

    if (o->g.prompt_ids && loom_parse_id_list(o->g.prompt_ids, "--prompt-ids", &ids, &n_ids, &err) != LOOM_OK) {
        fprintf(stderr, "loom client: %s (see 'loom client --help')\n", err.msg);
        return 2;
    }
    /* The probe checks that a loom server of this wire version is there. */
    int probe = o->timeout_ms > 0 && o->timeout_ms < CONNECT_PROBE_MS ? o->timeout_ms : CONNECT_PROBE_MS;
    c = loom_client_connect(o->endpoint, probe, &err);
    if (!c) goto fail;

    loom_client_request req;
    loom_client_request_init(&req);
    req.prompt = o->g.prompt;
    req.prompt_ids = ids;
    req.n_prompt_ids = n_ids;
    req.max_new_tokens = (int32_t)o->g.max_new_tokens;
    req.temperature = o->g.sampling.temperature;
    req.top_k = o->g.sampling.top_k;
    req.top_p = o->g.sampling.top_p;
    req.repetition_penalty = o->g.sampling.repetition_penalty;
    req.seed = o->g.sampling.seed;
    req.stop = o->g.stops;
    req.n_stop = (size_t)o->g.n_stops;
    req.stop_ids = o->g.stop_ids;
    req.n_stop_ids = (size_t)o->g.n_stop_ids;
    req.stream = o->stream;
    req.idle_timeout_ms = o->idle_timeout_ms;
    if (o->timeout_ms > 0) {
        int64_t left = o->timeout_ms - (now_ms() - start);
        req.timeout_ms = left > 1 ? (int)left : 1;
    }
    bool print_live = o->stream && !o->json;
    if (loom_client_generate(c, &req, print_live ? on_chunk : NULL, &pc, &res, &err) != LOOM_OK) goto fail;
    if (res.finish == LOOM_CLIENT_FINISH_CANCELLED) {
        loom_err_set(&err, LOOM_EIO, "the server cancelled the request");
        goto fail;
    }
    if (o->json) {
        /* the server's view of the prompt; our own ids if it did not say */
        if (res.n_prompt_ids) print_json(res.prompt_ids, res.n_prompt_ids, &res);
        else print_json(ids, n_ids, &res);
    } else if (!res.text_len && res.n_output_ids) {
        for (size_t i = 0; i < res.n_output_ids; i++) printf("%s%d", i ? " " : "", res.output_ids[i]);
        printf("\n");
    } else {
        if (!print_live) fwrite(res.text ? res.text : "", 1, res.text_len, stdout);
        printf("\n");
    }
    rc = 0;
    goto done;
fail:
    if (pc.printed_any && !pc.ends_newline) printf("\n");
    fflush(stdout);
    fprintf(stderr, "loom client: %s\n", err.msg);
done:
    loom_client_result_free(&res);
    loom_client_close(c);
    free(ids);
    return rc;
}

int loom_cmd_client(int argc, char **argv)
{
    client_opts o;
    int rc = parse_args(argc, argv, &o);
    if (rc == -1) {
        client_usage(stdout);
        return 0;
    }
    if (rc) return rc;
    if (o.health) return do_health(&o);
    if (o.stats) return do_stats(&o);
    return do_generate(&o);
}
