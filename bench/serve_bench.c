/* loom-serve-bench: drives a running loom cluster with a reproducible stream of
 * streaming requests (Poisson arrivals or all at once, fixed / uniform / listed
 * lengths) through libloomclient and measures what a user sees: TTFT,
 * inter-token and end-to-end latency, throughput, and the server's own load
 * (Stats polled by a second client on its own thread, so polling never delays
 * the timestamps of chunks). --shared-prefix gives every prompt the same head,
 * to measure KV cache reuse. Prints a short table last; --json writes it all. */
#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "json_util.h"
#include "loom_client.h"
#include "parse.h"
#include "status.h"

#define SB_ID_PREFIX "sb-"
#define SB_STATS_PERIOD_MS 100   /* how often the stats thread asks the server */
#define SB_STATS_WAIT_MS 2000    /* longest wait for one Stats reply */
#define SB_CONNECT_MAX_MS 10000  /* longest wait for the first connection */
#define SB_CANCEL_GRACE_MS 5000  /* after --timeout: wait this long for cancellations */
#define SB_ERR_MSG_MAX 240       /* error messages are grouped by their first bytes */
#define SB_PREFIX_SALT 0x5ea4ed9f1e1d0c0bULL /* the shared prefix's RNG stream: seed ^ this */

/* ---- configuration ------------------------------------------------------ */

typedef struct sb_config {
    const char *endpoint;
    int64_t num_requests;
    double rate;                 /* requests/s; INFINITY = all at once */
    int64_t in_lo, in_hi;        /* prompt length range, tokens */
    int64_t out_lo, out_hi;      /* max_new_tokens range */
    int32_t (*pairs)[2];         /* --lengths: (n_pairs, [input, output]) or NULL */
    size_t n_pairs;
    const char *lengths_path;
    uint64_t seed;
    int64_t vocab;               /* prompt ids are uniform in [3, vocab) */
    int64_t shared_prefix;       /* tokens every prompt starts with (0 = none) */
    double timeout_s;            /* whole-run limit */
    const char *json_path;
} sb_config;

/* One request: what was asked, and when its chunks came back (seconds since t0). */
typedef struct sb_req {
    int32_t *own;                /* (input_len,): the prompt after the shared prefix */
    int32_t prompt_len;          /* shared_prefix + input_len */
    int32_t input_len;           /* the request's own tokens (the length asked for) */
    int32_t output_len;          /* max_new_tokens asked for */
    double arrival;              /* planned send time */
    double sent;                 /* actual send time; < 0 before */
    double first_token;          /* < 0 until a chunk with tokens */
    double last_token;
    double done;                 /* terminal chunk time; < 0 before */
    int32_t produced;            /* tokens received in chunks */
    int32_t usage_completion;    /* completion_tokens of the terminal chunk */
    int32_t n_terminal;          /* terminal chunks seen: must end at exactly 1 */
    loom_client_finish finish;
    bool failed;
} sb_req;

typedef struct sb_err_count {
    char msg[SB_ERR_MSG_MAX];
    int64_t count;
} sb_err_count;

typedef struct sb_errors {
    sb_err_count *v;
    size_t n, cap;
} sb_errors;

typedef struct sb_sample {
    double t;                    /* seconds since t0 */
    loom_client_server_stats s;
} sb_sample;

/* The stats thread's state: it alone touches samples until joined. */
typedef struct sb_poller {
    loom_client *client;
    struct timespec t0;
    atomic_bool stop;
    sb_sample *samples;
    size_t n, cap;
    int64_t failures;            /* Stats calls without a reply */
    char last_error[LOOM_ERR_LEN];
} sb_poller;

/* ---- small helpers ------------------------------------------------------ */

static double since(const struct timespec *t0)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)(t.tv_sec - t0->tv_sec) + (double)(t.tv_nsec - t0->tv_nsec) * 1e-9;
}

static void sleep_s(double s)
{
    if (s <= 0) return;
    struct timespec ts = {.tv_sec = (time_t)s, .tv_nsec = (long)((s - floor(s)) * 1e9)};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

/* splitmix64: small, seedable, identical everywhere. */
static uint64_t rng_next(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static int64_t rng_range(uint64_t *s, int64_t lo, int64_t hi) /* uniform in [lo, hi] */
{
    return lo + (int64_t)(rng_next(s) % (uint64_t)(hi - lo + 1));
}

static double rng_unit(uint64_t *s) /* uniform in [0, 1) */
{
    return (double)(rng_next(s) >> 11) * 0x1.0p-53;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Percentile of sorted v by linear interpolation (numpy's default). */
static double pct(const double *v, size_t n, double p)
{
    if (n == 0) return 0;
    double r = p / 100.0 * (double)(n - 1);
    size_t i = (size_t)r;
    if (i + 1 >= n) return v[n - 1];
    return v[i] + (v[i + 1] - v[i]) * (r - (double)i);
}

typedef struct sb_dist {
    double mean, p50, p90, p99, max;
    size_t n;
} sb_dist;

static sb_dist dist_of(double *v, size_t n) /* sorts v */
{
    sb_dist d = {0};
    d.n = n;
    if (n == 0) return d;
    qsort(v, n, sizeof *v, cmp_double);
    double sum = 0;
    for (size_t i = 0; i < n; i++) sum += v[i];
    d.mean = sum / (double)n;
    d.p50 = pct(v, n, 50);
    d.p90 = pct(v, n, 90);
    d.p99 = pct(v, n, 99);
    d.max = v[n - 1];
    return d;
}

static loom_status errors_add(sb_errors *e, const char *msg)
{
    char key[SB_ERR_MSG_MAX];
    snprintf(key, sizeof key, "%s", msg && *msg ? msg : "(no message)");
    for (size_t i = 0; i < e->n; i++)
        if (strcmp(e->v[i].msg, key) == 0) {
            e->v[i].count++;
            return LOOM_OK;
        }
    if (e->n == e->cap) {
        size_t cap = e->cap ? 2 * e->cap : 8;
        sb_err_count *v = realloc(e->v, cap * sizeof *v);
        if (!v) return LOOM_ENOMEM;
        e->v = v;
        e->cap = cap;
    }
    memcpy(e->v[e->n].msg, key, sizeof key);
    e->v[e->n++].count = 1;
    return LOOM_OK;
}

/* ---- flags -------------------------------------------------------------- */

static void usage(FILE *f)
{
    fprintf(f,
            "usage: loom-serve-bench --endpoint E --num-requests N [options]\n"
            "  --endpoint E              coordinator, e.g. tcp://127.0.0.1:5555\n"
            "  --num-requests N          requests to send (default with --lengths: one per pair)\n"
            "  --rate R                  mean requests/s, Poisson arrivals (default inf: all at once)\n"
            "  --input-len L | --input-len-range A,B    prompt tokens (default 32)\n"
            "  --output-len L | --output-len-range A,B  max_new_tokens (default 64)\n"
            "  --lengths FILE.json       a JSON list of [input_len, output_len] pairs, used in order and\n"
            "                            cycled (instead of the length flags)\n"
            "  --seed S                  request generation seed (default 0)\n"
            "  --vocab V                 prompt ids are uniform in [3, V) (default 512)\n"
            "  --shared-prefix N         every prompt starts with the same N tokens (drawn once from the\n"
            "                            seed), then its own input-length tokens: prompt = N + input len\n"
            "                            (default 0; for KV cache reuse, e.g. serve --enable-kv-cache-reuse)\n"
            "  --timeout SEC             whole-run limit; requests still running then are cancelled and\n"
            "                            count as failed (default 600)\n"
            "  --json FILE               write every number (and per-request records) to FILE\n"
            "Requests stream with greedy sampling; EOS cannot be switched off on the server, so a request\n"
            "may stop early: the report gives requested and produced tokens.\n"
            "Exit status: 0 the benchmark ran (failed requests are reported), 1 the server could not be\n"
            "reached or the connection was lost, 2 bad flags.\n");
}

static loom_status parse_range(const char *s, const char *what, int64_t *lo, int64_t *hi, loom_err *err)
{
    int32_t *ids = NULL;
    size_t n = 0;
    LOOM_CHECK(loom_parse_id_list(s, what, &ids, &n, err));
    loom_status st = LOOM_OK;
    if (n != 2)
        st = loom_err_set(err, LOOM_EINVAL, "%s: expected A,B (two numbers), got %zu", what, n);
    else if (ids[0] < 1 || ids[0] > ids[1])
        st = loom_err_set(err, LOOM_EINVAL, "%s: expected 1 <= A <= B, got %d,%d", what, ids[0], ids[1]);
    else {
        *lo = ids[0];
        *hi = ids[1];
    }
    free(ids);
    return st;
}

static loom_status load_lengths(sb_config *cfg, const char *path, loom_err *err)
{
    json_t *root = loom_json_load_file(path, err);
    if (!root) return LOOM_EINVAL;
    loom_status st = LOOM_OK;
    if (!json_is_array(root) || json_array_size(root) == 0) {
        st = loom_err_set(err, LOOM_EINVAL, "%s: expected a non-empty JSON list of [input_len, output_len] pairs", path);
        goto out;
    }
    size_t n = json_array_size(root);
    cfg->pairs = calloc(n, sizeof *cfg->pairs);
    if (!cfg->pairs) {
        st = loom_err_set(err, LOOM_ENOMEM, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        json_t *p = json_array_get(root, i);
        if (!json_is_array(p) || json_array_size(p) != 2 || !json_is_integer(json_array_get(p, 0)) ||
            !json_is_integer(json_array_get(p, 1))) {
            st = loom_err_set(err, LOOM_EINVAL, "%s: item %zu is not an [input_len, output_len] pair of integers", path, i);
            goto out;
        }
        json_int_t a = json_integer_value(json_array_get(p, 0)), b = json_integer_value(json_array_get(p, 1));
        if (a < 1 || b < 1 || a > INT32_MAX || b > INT32_MAX) {
            st = loom_err_set(err, LOOM_EINVAL, "%s: item %zu: lengths must be >= 1, got [%lld, %lld]", path, i, (long long)a,
                              (long long)b);
            goto out;
        }
        cfg->pairs[i][0] = (int32_t)a;
        cfg->pairs[i][1] = (int32_t)b;
    }
    cfg->n_pairs = n;
    cfg->lengths_path = path;
out:
    json_decref(root);
    return st;
}

/* Fills cfg from argv. Returns LOOM_OK, or LOOM_EINVAL with a message. *help is
 * set for --help. */
static loom_status parse_flags(int argc, char **argv, sb_config *cfg, bool *help, loom_err *err)
{
    *cfg = (sb_config){.rate = INFINITY, .in_lo = 32, .in_hi = 32, .out_lo = 64, .out_hi = 64, .vocab = 512,
                       .timeout_s = 600, .num_requests = -1};
    bool have_in = false, have_out = false;
    const char *lengths = NULL;
    *help = false;
    for (int i = 1; i < argc; i++) {
        const char *f = argv[i];
        if (strcmp(f, "--help") == 0 || strcmp(f, "-h") == 0) {
            *help = true;
            return LOOM_OK;
        }
        if (strncmp(f, "--", 2) != 0) return loom_err_set(err, LOOM_EINVAL, "unexpected argument '%s'", f);
        if (i + 1 >= argc) return loom_err_set(err, LOOM_EINVAL, "%s needs a value", f);
        const char *v = argv[++i];
        float x;
        if (strcmp(f, "--endpoint") == 0) {
            if (!*v) return loom_err_set(err, LOOM_EINVAL, "--endpoint is empty");
            cfg->endpoint = v;
        } else if (strcmp(f, "--num-requests") == 0) {
            LOOM_CHECK(loom_parse_i64(v, 1, 10000000, f, &cfg->num_requests, err));
        } else if (strcmp(f, "--rate") == 0) {
            if (strcmp(v, "inf") == 0) {
                cfg->rate = INFINITY;
            } else {
                LOOM_CHECK(loom_parse_f32(v, f, &x, err));
                if (!(x > 0)) return loom_err_set(err, LOOM_EINVAL, "--rate must be > 0 (or inf), got %s", v);
                cfg->rate = x;
            }
        } else if (strcmp(f, "--input-len") == 0 || strcmp(f, "--input-len-range") == 0) {
            if (have_in) return loom_err_set(err, LOOM_EINVAL, "give the input length once (--input-len or --input-len-range)");
            have_in = true;
            if (f[11] == '\0') {
                LOOM_CHECK(loom_parse_i64(v, 1, INT32_MAX, f, &cfg->in_lo, err));
                cfg->in_hi = cfg->in_lo;
            } else {
                LOOM_CHECK(parse_range(v, f, &cfg->in_lo, &cfg->in_hi, err));
            }
        } else if (strcmp(f, "--output-len") == 0 || strcmp(f, "--output-len-range") == 0) {
            if (have_out)
                return loom_err_set(err, LOOM_EINVAL, "give the output length once (--output-len or --output-len-range)");
            have_out = true;
            if (f[12] == '\0') {
                LOOM_CHECK(loom_parse_i64(v, 1, INT32_MAX, f, &cfg->out_lo, err));
                cfg->out_hi = cfg->out_lo;
            } else {
                LOOM_CHECK(parse_range(v, f, &cfg->out_lo, &cfg->out_hi, err));
            }
        } else if (strcmp(f, "--lengths") == 0) {
            if (lengths) return loom_err_set(err, LOOM_EINVAL, "--lengths given twice");
            lengths = v;
        } else if (strcmp(f, "--seed") == 0) {
            LOOM_CHECK(loom_parse_u64(v, f, &cfg->seed, err));
        } else if (strcmp(f, "--vocab") == 0) {
            LOOM_CHECK(loom_parse_i64(v, 4, INT32_MAX, f, &cfg->vocab, err));
        } else if (strcmp(f, "--shared-prefix") == 0) {
            LOOM_CHECK(loom_parse_i64(v, 0, INT32_MAX, f, &cfg->shared_prefix, err));
        } else if (strcmp(f, "--timeout") == 0) {
            LOOM_CHECK(loom_parse_f32(v, f, &x, err));
            if (!(x > 0) || x > 1e7) return loom_err_set(err, LOOM_EINVAL, "--timeout must be in (0, 1e7] seconds, got %s", v);
            cfg->timeout_s = x;
        } else if (strcmp(f, "--json") == 0) {
            if (!*v) return loom_err_set(err, LOOM_EINVAL, "--json is empty");
            cfg->json_path = v;
        } else {
            return loom_err_set(err, LOOM_EINVAL, "unknown flag '%s' (see --help)", f);
        }
    }
    if (!cfg->endpoint) return loom_err_set(err, LOOM_EINVAL, "--endpoint is required");
    if (lengths) {
        if (have_in || have_out)
            return loom_err_set(err, LOOM_EINVAL, "--lengths replaces --input-len* and --output-len*: give one or the other");
        LOOM_CHECK(load_lengths(cfg, lengths, err));
        if (cfg->num_requests < 0) cfg->num_requests = (int64_t)cfg->n_pairs;
    }
    if (cfg->num_requests < 0) return loom_err_set(err, LOOM_EINVAL, "--num-requests is required");
    int64_t longest = cfg->in_hi;
    for (size_t i = 0; i < cfg->n_pairs; i++)
        if (cfg->pairs[i][0] > longest) longest = cfg->pairs[i][0];
    if (cfg->shared_prefix > INT32_MAX - longest)
        return loom_err_set(err, LOOM_EINVAL,
                            "--shared-prefix %" PRId64 " + the longest input length %" PRId64 " exceeds %d tokens",
                            cfg->shared_prefix, longest, INT32_MAX);
    return LOOM_OK;
}

/* ---- request generation ------------------------------------------------- */

/* Builds cfg->num_requests requests; the same seed gives the same lengths,
 * prompts and arrival times. The shared prefix is kept once, at the head of
 * *prompt_buf (sized for the longest prompt; a request's own tokens are copied
 * behind it when it is sent). It comes from its own stream (seed ^
 * SB_PREFIX_SALT), so --shared-prefix changes no length, arrival or own token
 * of a request: only what is put in front. */
static loom_status make_requests(const sb_config *cfg, sb_req **out, int32_t **prompt_buf, loom_err *err)
{
    size_t n = (size_t)cfg->num_requests;
    int32_t np = (int32_t)cfg->shared_prefix;
    *out = NULL;
    *prompt_buf = NULL;
    sb_req *r = calloc(n, sizeof *r);
    if (!r) return loom_err_set(err, LOOM_ENOMEM, "out of memory for %zu requests", n);
    uint64_t s = cfg->seed;
    double t = 0;
    int32_t longest = 0;
    for (size_t i = 0; i < n; i++) {
        if (cfg->pairs) {
            r[i].input_len = cfg->pairs[i % cfg->n_pairs][0];
            r[i].output_len = cfg->pairs[i % cfg->n_pairs][1];
        } else {
            r[i].input_len = (int32_t)rng_range(&s, cfg->in_lo, cfg->in_hi);
            r[i].output_len = (int32_t)rng_range(&s, cfg->out_lo, cfg->out_hi);
        }
        if (isfinite(cfg->rate) && i > 0) t += -log(1.0 - rng_unit(&s)) / cfg->rate;
        r[i].arrival = t;
        r[i].sent = r[i].first_token = r[i].last_token = r[i].done = -1;
        r[i].prompt_len = np + r[i].input_len; /* parse_flags checked that it fits */
        if (r[i].input_len > longest) longest = r[i].input_len;
        r[i].own = malloc((size_t)r[i].input_len * sizeof *r[i].own);
        if (!r[i].own) {
            for (size_t j = 0; j < i; j++) free(r[j].own);
            free(r);
            return loom_err_set(err, LOOM_ENOMEM, "out of memory for request %zu's prompt", i);
        }
        for (int32_t k = 0; k < r[i].input_len; k++) r[i].own[k] = (int32_t)rng_range(&s, 3, cfg->vocab - 1);
    }
    if (np) {
        *prompt_buf = malloc(((size_t)np + (size_t)longest) * sizeof **prompt_buf);
        if (!*prompt_buf) {
            for (size_t j = 0; j < n; j++) free(r[j].own);
            free(r);
            return loom_err_set(err, LOOM_ENOMEM, "out of memory for a %d-token shared prefix", np);
        }
        uint64_t ps = cfg->seed ^ SB_PREFIX_SALT;
        for (int32_t k = 0; k < np; k++) (*prompt_buf)[k] = (int32_t)rng_range(&ps, 3, cfg->vocab - 1);
    }
    *out = r;
    return LOOM_OK;
}

/* ---- the stats thread --------------------------------------------------- */

static void *poll_stats(void *arg)
{
    sb_poller *p = arg;
    while (!atomic_load(&p->stop)) {
        loom_client_server_stats s;
        loom_err err = {0};
        double t = since(&p->t0);
        if (loom_client_stats(p->client, SB_STATS_WAIT_MS, &s, &err) == LOOM_OK) {
            if (p->n == p->cap) {
                size_t cap = p->cap ? 2 * p->cap : 256;
                sb_sample *v = realloc(p->samples, cap * sizeof *v);
                if (!v) break; /* keep what we have; the run goes on */
                p->samples = v;
                p->cap = cap;
            }
            p->samples[p->n++] = (sb_sample){.t = t, .s = s};
        } else {
            p->failures++;
            snprintf(p->last_error, sizeof p->last_error, "%s", err.msg);
        }
        double left = SB_STATS_PERIOD_MS * 1e-3 - (since(&p->t0) - t);
        sleep_s(left);
    }
    return NULL;
}

/* ---- the run ------------------------------------------------------------ */

typedef struct sb_run {
    sb_req *req;
    size_t n;
    int32_t *prompt_buf;         /* with --shared-prefix: the prefix, then room for the longest own tokens */
    sb_errors errors;
    int64_t unattributed;        /* error chunks with no request id */
    int64_t extra_terminal;      /* terminal chunks after a request's first */
    int64_t timed_out;
    bool cancelling;             /* --timeout passed: what ends now was cut off */
    bool connection_lost;
    char lost_msg[LOOM_ERR_LEN];
    double duration;             /* first send to last terminal chunk, s */
} sb_run;

static sb_req *req_of(sb_run *run, const char *id)
{
    if (strncmp(id, SB_ID_PREFIX, strlen(SB_ID_PREFIX)) != 0) return NULL;
    char *end;
    errno = 0;
    unsigned long long i = strtoull(id + strlen(SB_ID_PREFIX), &end, 10);
    if (errno || *end || i >= run->n) return NULL;
    return &run->req[i];
}

static loom_status on_chunk(sb_run *run, const loom_client_chunk *ch, double t)
{
    if (!*ch->request_id) {
        run->unattributed++;
        char m[LOOM_ERR_LEN];
        snprintf(m, sizeof m, "(no request id) %s", ch->error);
        return errors_add(&run->errors, m);
    }
    sb_req *r = req_of(run, ch->request_id);
    if (!r) return LOOM_OK; /* not ours: the client library should not pass these on */
    if (r->n_terminal > 0) {
        if (ch->finish != LOOM_CLIENT_FINISH_NONE) run->extra_terminal++;
        return LOOM_OK;
    }
    if (ch->n_token_ids > 0) {
        if (r->first_token < 0) r->first_token = t;
        r->last_token = t;
        r->produced += (int32_t)ch->n_token_ids;
    }
    if (ch->finish == LOOM_CLIENT_FINISH_NONE) return LOOM_OK;
    r->n_terminal++;
    r->finish = ch->finish;
    r->done = t;
    r->usage_completion = ch->completion_tokens;
    if (ch->finish == LOOM_CLIENT_FINISH_ERROR || ch->finish == LOOM_CLIENT_FINISH_CANCELLED) {
        r->failed = true;
        if (ch->finish == LOOM_CLIENT_FINISH_ERROR) return errors_add(&run->errors, ch->error);
        if (run->cancelling) run->timed_out++;
        return errors_add(&run->errors, run->cancelling ? "cancelled at --timeout" : "cancelled");
    }
    return LOOM_OK;
}

/* Inter-token latency samples: the gap before each streamed chunk after a
 * request's first, spread evenly over the chunk's tokens. */
typedef struct sb_itl {
    double *v;
    size_t n, cap;
} sb_itl;

static loom_status itl_push(sb_itl *d, double x, size_t k)
{
    while (d->n + k > d->cap) {
        size_t cap = d->cap ? 2 * d->cap : 1024;
        double *v = realloc(d->v, cap * sizeof *v);
        if (!v) return LOOM_ENOMEM;
        d->v = v;
        d->cap = cap;
    }
    for (size_t i = 0; i < k; i++) d->v[d->n++] = x / (double)k;
    return LOOM_OK;
}

/* Sends every request at its arrival time and reads chunks until each has its
 * terminal chunk, the connection drops, or cfg->timeout_s passes. */
static loom_status run_bench(const sb_config *cfg, loom_client *c, sb_run *run, sb_itl *itl, const struct timespec *t0,
                             loom_err *err)
{
    size_t next = 0, ended = 0;
    bool cancelling = false;
    double cancel_until = 0;
    for (;;) {
        double now = since(t0);
        if (!cancelling && now >= cfg->timeout_s) {
            cancelling = run->cancelling = true;
            cancel_until = now + SB_CANCEL_GRACE_MS * 1e-3;
            for (size_t i = 0; i < next; i++)
                if (run->req[i].n_terminal == 0) {
                    loom_err e2 = {0};
                    char id[LOOM_CLIENT_ID_MAX];
                    snprintf(id, sizeof id, SB_ID_PREFIX "%zu", i);
                    (void)loom_client_cancel(c, id, &e2);
                }
        }
        if (cancelling && (now >= cancel_until || loom_client_in_flight(c) == 0)) break;
        while (!cancelling && next < run->n && run->req[next].arrival <= now) {
            sb_req *r = &run->req[next];
            char id[LOOM_CLIENT_ID_MAX], got_id[LOOM_CLIENT_ID_MAX];
            snprintf(id, sizeof id, SB_ID_PREFIX "%zu", next);
            loom_client_request q;
            loom_client_request_init(&q);
            q.request_id = id;
            q.prompt_ids = r->own;
            if (cfg->shared_prefix) {
                memcpy(run->prompt_buf + cfg->shared_prefix, r->own, (size_t)r->input_len * sizeof *r->own);
                q.prompt_ids = run->prompt_buf;
            }
            q.n_prompt_ids = (size_t)r->prompt_len;
            q.max_new_tokens = r->output_len;
            q.stream = true;
            loom_err e2 = {0};
            r->sent = since(t0);
            loom_status st = loom_client_submit(c, &q, got_id, &e2);
            if (st == LOOM_EIO) {
                run->connection_lost = true;
                snprintf(run->lost_msg, sizeof run->lost_msg, "%s", e2.msg);
                return loom_err_set(err, LOOM_EIO, "sending request %zu: %s", next, e2.msg);
            }
            if (st != LOOM_OK) { /* refused before it left: a failed request, the run goes on */
                r->failed = true;
                r->done = r->sent;
                r->n_terminal = 1;
                ended++;
                LOOM_CHECK(errors_add(&run->errors, e2.msg));
            }
            next++;
            now = since(t0);
        }
        if (!cancelling && ended == run->n) break;
        double wait = cancelling ? cancel_until - now : cfg->timeout_s - now;
        if (!cancelling && next < run->n && run->req[next].arrival - now < wait) wait = run->req[next].arrival - now;
        if (wait < 0) wait = 0;
        if (loom_client_in_flight(c) == 0) {
            sleep_s(wait);
            continue;
        }
        loom_client_chunk ch;
        bool got = false;
        loom_err e2 = {0};
        loom_status st = loom_client_next(c, (int)ceil(wait * 1e3), &ch, &got, &e2);
        double t = since(t0);
        if (st == LOOM_EIO) {
            run->connection_lost = true;
            snprintf(run->lost_msg, sizeof run->lost_msg, "%s", e2.msg);
            break;
        }
        if (st != LOOM_OK) return loom_err_set(err, st, "reading replies: %s", e2.msg);
        if (!got) continue;
        sb_req *r = *ch.request_id ? req_of(run, ch.request_id) : NULL;
        double prev = r ? r->last_token : -1;
        bool had_first = r && r->first_token >= 0;
        int32_t before = r ? r->n_terminal : 0;
        if (on_chunk(run, &ch, t) != LOOM_OK) return loom_err_set(err, LOOM_ENOMEM, "out of memory");
        if (r && had_first && before == 0 && ch.n_token_ids > 0 && itl_push(itl, t - prev, ch.n_token_ids) != LOOM_OK)
            return loom_err_set(err, LOOM_ENOMEM, "out of memory");
        if (r && before == 0 && r->n_terminal == 1) ended++;
    }
    /* whatever has no terminal chunk now failed: timed out or lost with the connection */
    for (size_t i = 0; i < run->n; i++) {
        sb_req *r = &run->req[i];
        if (r->n_terminal > 0) continue;
        r->failed = true;
        if (run->connection_lost) {
            char m[LOOM_ERR_LEN + 32]; /* errors_add keeps the first SB_ERR_MSG_MAX bytes */
            snprintf(m, sizeof m, "connection lost: %s", run->lost_msg);
            LOOM_CHECK(errors_add(&run->errors, m));
        } else {
            run->timed_out++;
            LOOM_CHECK(errors_add(&run->errors, r->sent < 0 ? "not sent before --timeout" : "no terminal chunk before --timeout"));
        }
    }
    double first = -1, last = 0;
    for (size_t i = 0; i < run->n; i++) {
        if (run->req[i].sent >= 0 && (first < 0 || run->req[i].sent < first)) first = run->req[i].sent;
        if (run->req[i].done > last) last = run->req[i].done;
    }
    run->duration = first < 0 ? 0 : last - first;
    return LOOM_OK;
}

/* ---- report ------------------------------------------------------------- */

typedef struct sb_summary {
    int64_t completed, failed, input_tokens, requested_tokens, produced_tokens, early_stops, usage_mismatch;
    int64_t finish[LOOM_CLIENT_FINISH_ERROR + 1];
    double req_per_s, out_tok_per_s, total_tok_per_s;
    sb_dist ttft, itl, e2e, tpot;  /* milliseconds */
    int32_t peak_running, peak_waiting;
    double peak_kv, mean_kv, peak_server_tps;
    int64_t peak_kv_blocks, kv_blocks_total; /* blocks used at the peak; the pool (last sample) */
    int32_t tokens_per_block;
    double prefix_hit_rate;      /* the last sample's (the server's figure since it started) */
    int64_t preemptions, refused; /* during the run: last sample - first sample */
    int64_t timed_steps;          /* during the run, and the coordinator's step timing over them */
    double step_cycle_ms, step_compute_ms, overhead_fraction;
} sb_summary;

static loom_status summarize(const sb_run *run, sb_itl *itl, const sb_poller *p, sb_summary *s, loom_err *err)
{
    memset(s, 0, sizeof *s);
    double *ttft = malloc((run->n + 1) * sizeof *ttft), *e2e = malloc((run->n + 1) * sizeof *e2e);
    double *tpot = malloc((run->n + 1) * sizeof *tpot);
    if (!ttft || !e2e || !tpot) {
        free(ttft);
        free(e2e);
        free(tpot);
        return loom_err_set(err, LOOM_ENOMEM, "out of memory");
    }
    size_t nt = 0, ne = 0, np = 0;
    for (size_t i = 0; i < run->n; i++) {
        const sb_req *r = &run->req[i];
        s->finish[r->finish]++;
        if (r->failed) {
            s->failed++;
            continue;
        }
        s->completed++;
        s->input_tokens += r->prompt_len;
        s->requested_tokens += r->output_len;
        s->produced_tokens += r->produced;
        if (r->produced < r->output_len) s->early_stops++;
        if (r->usage_completion != r->produced) s->usage_mismatch++;
        if (r->first_token >= 0) ttft[nt++] = (r->first_token - r->sent) * 1e3;
        e2e[ne++] = (r->done - r->sent) * 1e3;
        if (r->produced > 1) tpot[np++] = (r->last_token - r->first_token) * 1e3 / (r->produced - 1);
    }
    for (size_t i = 0; i < itl->n; i++) itl->v[i] *= 1e3;
    s->ttft = dist_of(ttft, nt);
    s->e2e = dist_of(e2e, ne);
    s->tpot = dist_of(tpot, np);
    s->itl = dist_of(itl->v, itl->n);
    free(ttft);
    free(e2e);
    free(tpot);
    if (run->duration > 0) {
        s->req_per_s = (double)s->completed / run->duration;
        s->out_tok_per_s = (double)s->produced_tokens / run->duration;
        s->total_tok_per_s = (double)(s->produced_tokens + s->input_tokens) / run->duration;
    }
    double kv_sum = 0;
    for (size_t i = 0; i < p->n; i++) {
        const loom_client_server_stats *x = &p->samples[i].s;
        if (x->running > s->peak_running) s->peak_running = x->running;
        if (x->waiting > s->peak_waiting) s->peak_waiting = x->waiting;
        if (x->kv_used_fraction > s->peak_kv) s->peak_kv = x->kv_used_fraction;
        if (x->tokens_per_s > s->peak_server_tps) s->peak_server_tps = x->tokens_per_s;
        if (x->kv_blocks_used > s->peak_kv_blocks) s->peak_kv_blocks = x->kv_blocks_used;
        kv_sum += x->kv_used_fraction;
    }
    s->mean_kv = p->n ? kv_sum / (double)p->n : 0;
    if (p->n) {
        /* the server counts since it started: the run's share is the change */
        const loom_client_server_stats *first = &p->samples[0].s, *last = &p->samples[p->n - 1].s;
        s->kv_blocks_total = last->kv_blocks_total;
        s->tokens_per_block = last->tokens_per_block;
        s->prefix_hit_rate = last->prefix_hit_rate;
        s->preemptions = last->preemptions - first->preemptions;
        s->refused = last->refused - first->refused;
        /* coordinator overhead over the run's timed steps */
        s->timed_steps = last->timed_steps - first->timed_steps;
        double cycle = last->step_cycle_ms * (double)last->timed_steps - first->step_cycle_ms * (double)first->timed_steps;
        double compute = last->step_compute_ms * (double)last->timed_steps - first->step_compute_ms * (double)first->timed_steps;
        if (s->timed_steps > 0 && cycle > 0) {
            s->step_cycle_ms = cycle / (double)s->timed_steps;
            s->step_compute_ms = compute / (double)s->timed_steps;
            s->overhead_fraction = 1.0 - compute / cycle;
        }
    }
    return LOOM_OK;
}

static json_t *dist_json(const sb_dist *d)
{
    return json_pack("{s:f, s:f, s:f, s:f, s:f, s:I}", "mean", d->mean, "p50", d->p50, "p90", d->p90, "p99", d->p99, "max",
                     d->max, "count", (json_int_t)d->n);
}

static loom_status write_json(const char *path, const sb_config *cfg, const sb_run *run, const sb_summary *s,
                              const sb_poller *p, loom_err *err)
{
    json_t *root = json_object(), *conf = json_object(), *errs = json_object(), *fin = json_object();
    json_t *server = json_object(), *samples = json_array(), *reqs = json_array();
    loom_status st = LOOM_OK;
    if (!root || !conf || !errs || !fin || !server || !samples || !reqs) goto nomem;
    int bad = 0;
    bad |= json_object_set_new(conf, "endpoint", json_string(cfg->endpoint));
    bad |= json_object_set_new(conf, "num_requests", json_integer(cfg->num_requests));
    bad |= json_object_set_new(conf, "rate", isfinite(cfg->rate) ? json_real(cfg->rate) : json_string("inf"));
    if (cfg->pairs) {
        bad |= json_object_set_new(conf, "lengths", json_string(cfg->lengths_path));
    } else {
        bad |= json_object_set_new(conf, "input_len", json_pack("[I, I]", (json_int_t)cfg->in_lo, (json_int_t)cfg->in_hi));
        bad |= json_object_set_new(conf, "output_len", json_pack("[I, I]", (json_int_t)cfg->out_lo, (json_int_t)cfg->out_hi));
    }
    bad |= json_object_set_new(conf, "seed", json_integer((json_int_t)cfg->seed));
    bad |= json_object_set_new(conf, "vocab", json_integer(cfg->vocab));
    bad |= json_object_set_new(conf, "shared_prefix", json_integer(cfg->shared_prefix));
    bad |= json_object_set_new(conf, "timeout_s", json_real(cfg->timeout_s));
    for (size_t i = 0; i < run->errors.n; i++)
        bad |= json_object_set_new(errs, run->errors.v[i].msg, json_integer(run->errors.v[i].count));
    for (int f = LOOM_CLIENT_FINISH_NONE; f <= LOOM_CLIENT_FINISH_ERROR; f++)
        if (s->finish[f]) bad |= json_object_set_new(fin, loom_client_finish_name((loom_client_finish)f), json_integer(s->finish[f]));
    for (size_t i = 0; i < p->n; i++) {
        const sb_sample *x = &p->samples[i];
        bad |= json_array_append_new(samples, json_pack("[f, i, i, f, f, I, f, I, I]", x->t, x->s.running, x->s.waiting,
                                                        x->s.kv_used_fraction, x->s.tokens_per_s,
                                                        (json_int_t)x->s.kv_blocks_used, x->s.prefix_hit_rate,
                                                        (json_int_t)x->s.preemptions, (json_int_t)x->s.refused));
    }
    bad |= json_object_set_new(server, "samples", json_integer((json_int_t)p->n));
    bad |= json_object_set_new(server, "failed_polls", json_integer(p->failures));
    bad |= json_object_set_new(server, "peak_running", json_integer(s->peak_running));
    bad |= json_object_set_new(server, "peak_waiting", json_integer(s->peak_waiting));
    bad |= json_object_set_new(server, "peak_kv_used_fraction", json_real(s->peak_kv));
    bad |= json_object_set_new(server, "mean_kv_used_fraction", json_real(s->mean_kv));
    bad |= json_object_set_new(server, "peak_tokens_per_s", json_real(s->peak_server_tps));
    bad |= json_object_set_new(server, "peak_kv_blocks_used", json_integer(s->peak_kv_blocks));
    bad |= json_object_set_new(server, "kv_blocks_total", json_integer(s->kv_blocks_total));
    bad |= json_object_set_new(server, "tokens_per_block", json_integer(s->tokens_per_block));
    bad |= json_object_set_new(server, "prefix_hit_rate", json_real(s->prefix_hit_rate));
    bad |= json_object_set_new(server, "preemptions", json_integer(s->preemptions));
    bad |= json_object_set_new(server, "refused", json_integer(s->refused));
    bad |= json_object_set_new(server, "timed_steps", json_integer(s->timed_steps));
    bad |= json_object_set_new(server, "step_cycle_ms", json_real(s->step_cycle_ms));
    bad |= json_object_set_new(server, "step_compute_ms", json_real(s->step_compute_ms));
    bad |= json_object_set_new(server, "coordinator_overhead_fraction", json_real(s->overhead_fraction));
    bad |= json_object_set_new(server, "series_columns",
                               json_pack("[s, s, s, s, s, s, s, s, s]", "t_s", "running", "waiting", "kv_used_fraction",
                                         "tokens_per_s", "kv_blocks_used", "prefix_hit_rate", "preemptions", "refused"));
    json_object_set_new(server, "series", samples);
    samples = NULL;
    for (size_t i = 0; i < run->n; i++) {
        const sb_req *r = &run->req[i];
        json_t *o = json_pack("{s:i, s:i, s:i, s:i, s:s, s:f, s:f, s:f, s:f}", "input_len", r->input_len, "prompt_len",
                              r->prompt_len, "output_len", r->output_len, "produced", r->produced, "finish",
                              loom_client_finish_name(r->finish),
                              "arrival_s", r->arrival, "sent_s", r->sent,
                              "ttft_ms", r->first_token >= 0 ? (r->first_token - r->sent) * 1e3 : -1.0,
                              "e2e_ms", r->done >= 0 && r->sent >= 0 ? (r->done - r->sent) * 1e3 : -1.0);
        bad |= json_array_append_new(reqs, o);
    }
    bad |= json_object_set_new(root, "config", conf);
    conf = NULL;
    bad |= json_object_set_new(root, "completed", json_integer(s->completed));
    bad |= json_object_set_new(root, "failed", json_integer(s->failed));
    bad |= json_object_set_new(root, "errors", errs);
    errs = NULL;
    bad |= json_object_set_new(root, "finish", fin);
    fin = NULL;
    bad |= json_object_set_new(root, "unattributed_errors", json_integer(run->unattributed));
    bad |= json_object_set_new(root, "extra_terminal_chunks", json_integer(run->extra_terminal));
    bad |= json_object_set_new(root, "timed_out", json_integer(run->timed_out));
    bad |= json_object_set_new(root, "connection_lost", json_boolean(run->connection_lost));
    bad |= json_object_set_new(root, "duration_s", json_real(run->duration));
    bad |= json_object_set_new(root, "input_tokens", json_integer(s->input_tokens));
    bad |= json_object_set_new(root, "requested_output_tokens", json_integer(s->requested_tokens));
    bad |= json_object_set_new(root, "output_tokens", json_integer(s->produced_tokens));
    bad |= json_object_set_new(root, "early_stops", json_integer(s->early_stops));
    bad |= json_object_set_new(root, "usage_mismatch", json_integer(s->usage_mismatch));
    bad |= json_object_set_new(root, "requests_per_s", json_real(s->req_per_s));
    bad |= json_object_set_new(root, "output_tokens_per_s", json_real(s->out_tok_per_s));
    bad |= json_object_set_new(root, "total_tokens_per_s", json_real(s->total_tok_per_s));
    bad |= json_object_set_new(root, "ttft_ms", dist_json(&s->ttft));
    bad |= json_object_set_new(root, "itl_ms", dist_json(&s->itl));
    bad |= json_object_set_new(root, "tpot_ms", dist_json(&s->tpot));
    bad |= json_object_set_new(root, "e2e_ms", dist_json(&s->e2e));
    bad |= json_object_set_new(root, "server", server);
    server = NULL;
    bad |= json_object_set_new(root, "requests", reqs);
    reqs = NULL;
    if (bad) goto nomem;
    if (json_dump_file(root, path, JSON_INDENT(2) | JSON_SORT_KEYS) != 0)
        st = loom_err_set(err, LOOM_EIO, "cannot write %s: %s", path, strerror(errno));
    goto out;
nomem:
    st = loom_err_set(err, LOOM_ENOMEM, "out of memory building the JSON report");
out:
    json_decref(root);
    json_decref(conf);
    json_decref(errs);
    json_decref(fin);
    json_decref(server);
    json_decref(samples);
    json_decref(reqs);
    return st;
}

static void print_table(const sb_config *cfg, const sb_run *run, const sb_summary *s, const sb_poller *p)
{
    if (run->errors.n) {
        printf("errors (by message):\n");
        for (size_t i = 0; i < run->errors.n; i++) printf("  %6" PRId64 "  %s\n", run->errors.v[i].count, run->errors.v[i].msg);
    }
    if (p->failures) printf("stats polls without a reply: %" PRId64 " (last: %s)\n", p->failures, p->last_error);
    char rate[32];
    if (isfinite(cfg->rate))
        snprintf(rate, sizeof rate, "%g req/s", cfg->rate);
    else
        snprintf(rate, sizeof rate, "inf (all at once)");
    printf("============ loom serving benchmark ============\n");
    printf("%-28s %s\n", "endpoint", cfg->endpoint);
    printf("%-28s %s\n", "arrival rate", rate);
    if (cfg->shared_prefix) printf("%-28s %" PRId64 " tokens\n", "shared prompt prefix", cfg->shared_prefix);
    printf("%-28s %" PRId64 " / %" PRId64 "\n", "completed / failed", s->completed, s->failed);
    printf("%-28s %.3f\n", "duration (s)", run->duration);
    printf("%-28s %" PRId64 "\n", "input tokens", s->input_tokens);
    printf("%-28s %" PRId64 " / %" PRId64 " (%" PRId64 " stopped early)\n", "output tokens produced/asked",
           s->produced_tokens, s->requested_tokens, s->early_stops);
    printf("%-28s %.2f\n", "requests/s", s->req_per_s);
    printf("%-28s %.1f\n", "output tokens/s", s->out_tok_per_s);
    printf("%-28s %.1f\n", "total tokens/s", s->total_tok_per_s);
    printf("%-28s %10s %10s %10s %10s\n", "latency (ms)", "mean", "p50", "p90", "p99");
    const struct { const char *name; const sb_dist *d; } rows[] = {
        {"  TTFT", &s->ttft}, {"  inter-token", &s->itl}, {"  per output token", &s->tpot}, {"  end-to-end", &s->e2e}};
    for (size_t i = 0; i < sizeof rows / sizeof rows[0]; i++)
        printf("%-28s %10.2f %10.2f %10.2f %10.2f\n", rows[i].name, rows[i].d->mean, rows[i].d->p50, rows[i].d->p90,
               rows[i].d->p99);
    printf("%-28s %d / %d\n", "peak running / waiting", s->peak_running, s->peak_waiting);
    printf("%-28s %.1f%% (mean %.1f%%, %zu samples)\n", "peak KV use", 100 * s->peak_kv, 100 * s->mean_kv, p->n);
    printf("%-28s %" PRId64 " / %" PRId64 " (%d tokens/block)\n", "peak KV blocks used / total", s->peak_kv_blocks,
           s->kv_blocks_total, s->tokens_per_block);
    printf("%-28s %.1f%%\n", "prefix cache hit rate", 100 * s->prefix_hit_rate);
    printf("%-28s %" PRId64 " / %" PRId64 "\n", "preemptions / refused", s->preemptions, s->refused);
    if (s->timed_steps > 0)
        printf("%-28s %.2f%% of a %.3f ms step (compute %.3f ms, %" PRId64 " steps)\n", "coordinator overhead", 100 * s->overhead_fraction,
               s->step_cycle_ms, s->step_compute_ms, s->timed_steps);
    printf("================================================\n");
}

/* ---- main --------------------------------------------------------------- */

int main(int argc, char **argv)
{
    sb_config cfg;
    loom_err err = {0};
    bool help;
    if (parse_flags(argc, argv, &cfg, &help, &err) != LOOM_OK) {
        fprintf(stderr, "loom-serve-bench: %s\n", err.msg);
        fprintf(stderr, "run loom-serve-bench --help for usage\n");
        free(cfg.pairs);
        return 2;
    }
    if (help) {
        usage(stdout);
        free(cfg.pairs);
        return 0;
    }
    int rc = 1;
    sb_run run = {0};
    sb_itl itl = {0};
    sb_poller poller = {0};
    sb_summary sum;
    loom_client *c = NULL;
    pthread_t poll_thread;
    bool polling = false;
    atomic_init(&poller.stop, false);
    if (make_requests(&cfg, &run.req, &run.prompt_buf, &err) != LOOM_OK) goto out;
    run.n = (size_t)cfg.num_requests;

    /* connect waits for a health reply, so an unreachable server fails here, within the limit */
    int connect_ms = cfg.timeout_s * 1e3 < SB_CONNECT_MAX_MS ? (int)ceil(cfg.timeout_s * 1e3) : SB_CONNECT_MAX_MS;
    c = loom_client_connect(cfg.endpoint, connect_ms, &err);
    if (c) poller.client = loom_client_connect(cfg.endpoint, connect_ms, &err);
    if (!c || !poller.client) {
        loom_err_wrap(&err, LOOM_EIO, "cannot reach a loom server at %s", cfg.endpoint);
        goto out;
    }
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    poller.t0 = t0;
    if (pthread_create(&poll_thread, NULL, poll_stats, &poller) != 0) {
        loom_err_set(&err, LOOM_EINTERNAL, "cannot start the stats thread");
        goto out;
    }
    polling = true;
    loom_status st = run_bench(&cfg, c, &run, &itl, &t0, &err);
    atomic_store(&poller.stop, true);
    pthread_join(poll_thread, NULL);
    polling = false;
    if (st != LOOM_OK) goto out;
    if (summarize(&run, &itl, &poller, &sum, &err) != LOOM_OK) goto out;
    if (cfg.json_path && write_json(cfg.json_path, &cfg, &run, &sum, &poller, &err) != LOOM_OK) goto out;
    print_table(&cfg, &run, &sum, &poller);
    if (run.connection_lost) {
        loom_err_set(&err, LOOM_EIO, "lost the connection to %s: %s", cfg.endpoint, run.lost_msg);
        goto out;
    }
    rc = 0;
out:
    if (polling) {
        atomic_store(&poller.stop, true);
        pthread_join(poll_thread, NULL);
    }
    if (rc != 0) fprintf(stderr, "loom-serve-bench: %s\n", err.msg);
    loom_client_close(c);
    loom_client_close(poller.client);
    for (size_t i = 0; i < run.n; i++) free(run.req[i].own);
    free(run.prompt_buf);
    free(run.req);
    free(run.errors.v);
    free(itl.v);
    free(poller.samples);
    free(cfg.pairs);
    return rc;
}
