/* `loom serve`: the cluster, under mpirun or srun. Rank 0 becomes the
 * coordinator (tokenizer, scheduler, client endpoint), ranks 1..tp*pp the
 * workers (one model partition each). Start-up is all-or-nothing: if any rank
 * fails to load, every rank exits non-zero with the failing rank's message. */
#include <getopt.h>
#include <mpi.h>
#include <omp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../parallel/topology.h"
#include "../util/parse.h"
#include "../worker/config.h"
#include "../worker/serve_worker.h"
#include "commands.h"
#include "server.h"

#define MAX_PP 4096
#define EP_LEN 256

typedef struct serve_opts {
    const char *model, *listen, *control_host;
    int64_t tp, pp, max_batch, max_tokens, max_seq;
    int64_t *pp_layers;
    int verbose;
    int cuda;
    int static_batching;
    float kv_fraction;
    int64_t kv_tokens;
    int64_t tokens_per_block;
    loom_dtype kv_dtype; /* --kv-cache-dtype after loom_kv_dtype_check: LOOM_DTYPE_COUNT (as the activations) or LOOM_F8E4M3 */
    int kv_reuse;
    int chunked;
    int dummy;
} serve_opts;

static void serve_usage(FILE *f)
{
    fprintf(f,
            "usage: mpirun -n $((1+TP*PP)) loom serve --model DIR [--tp TP] [--pp PP] [options]\n"
            "\n"
            "Runs the cluster: rank 0 is the coordinator, ranks 1..TP*PP the workers.\n"
            "  --model DIR             Hugging Face directory or `loom convert` output\n"
            "  --tp N                  tensor-parallel ranks per stage (default 1)\n"
            "  --pp N                  pipeline stages (default 1)\n"
            "  --pp-layers a,b,...     layers per stage (default: as even as possible)\n"
            "  --listen ENDPOINT       client endpoint (default tcp://127.0.0.1:5555; a non-loopback\n"
            "                          address such as tcp://0.0.0.0:5555 must be asked for)\n"
            "  --control-host HOST     address workers use to reach rank 0 (default: 127.0.0.1 on\n"
            "                          one node, else rank 0's hostname)\n"
            "  --max-batch-size N      sequences in flight at once (default 8)\n"
            "  --scheduler inflight|static  in-flight batching (default): a finished sequence's slot\n"
            "                          takes a waiting request at the next step; static: a batch\n"
            "                          starts when the previous one has ended\n"
            "  --max-num-tokens N      tokens per step (default 512)\n"
            "  --enable-chunked-context   prompts longer than a step's room are fed over several steps\n"
            "                          (the default); --disable-chunked-context feeds each prompt in one\n"
            "                          step and refuses prompts longer than --max-num-tokens\n"
            "  --max-seq-len N         prompt + new tokens per request (default: max_position_embeddings)\n"
            "  --device cpu|cuda       where the workers compute (default cpu; cuda: one GPU per\n"
            "                          worker, NCCL between them, fp16)\n"
            "  --tokens-per-block N    tokens per paged KV block: 8, 16, 32, 64 (default) or 128\n"
            "  --max-tokens-in-paged-kv-cache N    the KV pool in tokens (cpu default: max-batch-size x\n"
            "                          max-seq-len; cuda: a cap on what the memory fraction gives)\n"
            "  --kv-cache-free-gpu-mem-fraction F  (cuda) KV pool share of the memory free after weights (0.9)\n"
            "  --kv-cache-dtype auto|fp16|bf16|fp8  KV cache elements: auto (default) = the activations (fp32 on\n"
            "                          cpu, fp16 on cuda); fp8 = E4M3, unit scale: half the bytes of fp16 (on the\n"
            "                          cpu K/V are only rounded to fp8 values, as the GPU's oracle)\n"
            "  --enable-kv-cache-reuse reuse the KV of full blocks of tokens (prompt or generated) that\n"
            "                          earlier requests computed\n"
            "  --dummy-weights         (cuda, tp 1, pp 1) random weights of --model's config.json shapes,\n"
            "                          for benchmarks; send prompt ids\n"
            "  --verbose               log requests and errors to stderr\n"
            "Query it with: loom client --endpoint ENDPOINT --prompt TEXT --max-new-tokens N\n");
}

enum { OPT_TP = 256, OPT_PP, OPT_PP_LAYERS, OPT_LISTEN, OPT_CONTROL, OPT_BATCH, OPT_TOKENS, OPT_SEQ, OPT_VERBOSE, OPT_DEVICE, OPT_KV_FRAC, OPT_KV_TOKENS, OPT_SCHED, OPT_TPB, OPT_REUSE, OPT_CHUNKED, OPT_NO_CHUNKED, OPT_DUMMY, OPT_KV_DTYPE, OPT_HELP };

/* Returns 0, 2 (usage error, message in err) or -1 (--help). */
static int parse_args(int argc, char **argv, serve_opts *o, loom_err *err)
{
    static const struct option longopts[] = {
        {"model", required_argument, 0, 'm'},
        {"tp", required_argument, 0, OPT_TP},
        {"pp", required_argument, 0, OPT_PP},
        {"pp-layers", required_argument, 0, OPT_PP_LAYERS},
        {"listen", required_argument, 0, OPT_LISTEN},
        {"control-host", required_argument, 0, OPT_CONTROL},
        {"max-batch-size", required_argument, 0, OPT_BATCH},
        {"max-num-tokens", required_argument, 0, OPT_TOKENS},
        {"max-seq-len", required_argument, 0, OPT_SEQ},
        {"verbose", no_argument, 0, OPT_VERBOSE},
        {"device", required_argument, 0, OPT_DEVICE},
        {"scheduler", required_argument, 0, OPT_SCHED},
        {"kv-cache-free-gpu-mem-fraction", required_argument, 0, OPT_KV_FRAC},
        {"kv-cache-dtype", required_argument, 0, OPT_KV_DTYPE},
        {"max-tokens-in-paged-kv-cache", required_argument, 0, OPT_KV_TOKENS},
        {"tokens-per-block", required_argument, 0, OPT_TPB},
        {"enable-kv-cache-reuse", no_argument, 0, OPT_REUSE},
        {"enable-chunked-context", no_argument, 0, OPT_CHUNKED},
        {"disable-chunked-context", no_argument, 0, OPT_NO_CHUNKED},
        {"dummy-weights", no_argument, 0, OPT_DUMMY},
        {"help", no_argument, 0, OPT_HELP},
        {0, 0, 0, 0},
    };
    memset(o, 0, sizeof *o);
    o->tokens_per_block = 64;
    o->kv_dtype = LOOM_DTYPE_COUNT;
    o->chunked = 1;
    o->listen = "tcp://127.0.0.1:5555";
    o->tp = o->pp = 1;
    o->max_batch = 8;
    o->max_tokens = 512;
    const char *pp_layers = NULL;
    int c;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":", longopts, NULL)) != -1) {
        loom_status st = LOOM_OK;
        switch (c) {
        case 'm': o->model = optarg; break;
        case OPT_TP: st = loom_parse_i64(optarg, 1, 4096, "--tp", &o->tp, err); break;
        case OPT_PP: st = loom_parse_i64(optarg, 1, MAX_PP, "--pp", &o->pp, err); break;
        case OPT_PP_LAYERS: pp_layers = optarg; break;
        case OPT_LISTEN: o->listen = optarg; break;
        case OPT_CONTROL: o->control_host = optarg; break;
        case OPT_BATCH: st = loom_parse_i64(optarg, 1, 4096, "--max-batch-size", &o->max_batch, err); break;
        case OPT_TOKENS: st = loom_parse_i64(optarg, 1, 1 << 20, "--max-num-tokens", &o->max_tokens, err); break;
        case OPT_SEQ: st = loom_parse_i64(optarg, 2, INT32_MAX, "--max-seq-len", &o->max_seq, err); break;
        case OPT_VERBOSE: o->verbose = 1; break;
        case OPT_DEVICE:
            if (!strcmp(optarg, "cuda")) o->cuda = 1;
            else if (strcmp(optarg, "cpu")) st = loom_err_set(err, LOOM_EINVAL, "--device must be cpu or cuda (got %s)", optarg);
            break;
        case OPT_KV_FRAC:
            st = loom_parse_f32(optarg, "--kv-cache-free-gpu-mem-fraction", &o->kv_fraction, err);
            if (st == LOOM_OK && !(o->kv_fraction > 0 && o->kv_fraction <= 1))
                st = loom_err_set(err, LOOM_EINVAL, "--kv-cache-free-gpu-mem-fraction must be in (0, 1]");
            break;
        case OPT_SCHED:
            if (!strcmp(optarg, "static")) o->static_batching = 1;
            else if (strcmp(optarg, "inflight")) st = loom_err_set(err, LOOM_EINVAL, "--scheduler must be inflight or static (got %s)", optarg);
            break;
        case OPT_KV_DTYPE: st = loom_parse_kv_dtype(optarg, &o->kv_dtype, err); break;
        case OPT_KV_TOKENS: st = loom_parse_i64(optarg, 1, INT32_MAX, "--max-tokens-in-paged-kv-cache", &o->kv_tokens, err); break;
        case OPT_TPB:
            st = loom_parse_i64(optarg, 8, 128, "--tokens-per-block", &o->tokens_per_block, err);
            if (st == LOOM_OK && (o->tokens_per_block & (o->tokens_per_block - 1)))
                st = loom_err_set(err, LOOM_EINVAL, "--tokens-per-block must be a power of two in 8..128 (got %s)", optarg);
            break;
        case OPT_REUSE: o->kv_reuse = 1; break;
        case OPT_CHUNKED: o->chunked = 1; break;
        case OPT_NO_CHUNKED: o->chunked = 0; break;
        case OPT_DUMMY: o->dummy = 1; break;
        case OPT_HELP: return -1;
        case ':': st = loom_err_set(err, LOOM_EINVAL, "option %s needs a value", argv[optind - 1]); break;
        default: st = loom_err_set(err, LOOM_EINVAL, "unknown option %s", argv[optind - 1]); break;
        }
        if (st != LOOM_OK) return 2;
    }
    if (optind < argc) {
        loom_err_set(err, LOOM_EINVAL, "unexpected argument '%s'", argv[optind]);
        return 2;
    }
    if (!o->model) {
        loom_err_set(err, LOOM_EINVAL, "--model DIR is required");
        return 2;
    }
    /* the workers compute in fp32 on the CPU, fp16 on GPUs (serve has no --dtype) */
    if (loom_kv_dtype_check(&o->kv_dtype, o->cuda ? LOOM_F16 : LOOM_F32, NULL, o->cuda ? "--device cuda" : "the CPU backend", err) != LOOM_OK)
        return 2;
    if (o->dummy && (!o->cuda || o->tp != 1 || o->pp != 1)) {
        loom_err_set(err, LOOM_EINVAL, "--dummy-weights needs --device cuda with --tp 1 and --pp 1");
        return 2;
    }
    if (strncmp(o->listen, "tcp://", 6) && strncmp(o->listen, "ipc://", 6)) {
        loom_err_set(err, LOOM_EINVAL, "--listen must be a tcp:// or ipc:// endpoint (got %s)", o->listen);
        return 2;
    }
    if (pp_layers) {
        int32_t *ids;
        size_t n;
        if (loom_parse_id_list(pp_layers, "--pp-layers", &ids, &n, err) != LOOM_OK) return 2;
        if ((int64_t)n != o->pp) {
            free(ids);
            loom_err_set(err, LOOM_EINVAL, "--pp-layers lists %zu stages but --pp is %lld", n, (long long)o->pp);
            return 2;
        }
        o->pp_layers = malloc(n * sizeof *o->pp_layers);
        for (size_t i = 0; o->pp_layers && i < n; i++) o->pp_layers[i] = ids[i];
        free(ids);
    }
    return 0;
}

/* 127.0.0.1 when every rank shares this node, else this host's name. */
static void default_control_host(char *out, size_t cap)
{
    MPI_Comm node;
    int node_size = 0, world = 0;
    MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node);
    MPI_Comm_size(node, &node_size);
    MPI_Comm_size(MPI_COMM_WORLD, &world);
    MPI_Comm_free(&node);
    if (node_size == world) {
        snprintf(out, cap, "127.0.0.1");
        return;
    }
    if (gethostname(out, cap) != 0) snprintf(out, cap, "localhost");
    out[cap - 1] = '\0';
}

/* CPU threads per rank: unless OMP_NUM_THREADS says otherwise, the node's
 * cores shared by the ranks on it (OpenMP threads that outnumber the cores
 * spin at every barrier and run many times slower). Collective. */
static void set_threads(void)
{
    MPI_Comm node;
    int on_node = 1;
    MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node);
    MPI_Comm_size(node, &on_node);
    MPI_Comm_free(&node);
    if (getenv("OMP_NUM_THREADS")) return;
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    int workers_here = on_node > 1 ? on_node - 1 : 1; /* the coordinator mostly waits */
    int n = (int)(cores / workers_here);
    omp_set_num_threads(n < 1 ? 1 : n);
}

/* All ranks agree whether start-up worked. */
static int all_ok(int ok)
{
    int all = 0;
    MPI_Allreduce(&ok, &all, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
    return all;
}

static int run_coordinator(const serve_opts *o, int n_workers, int64_t max_seq, const char *host)
{
    loom_err err = {{0}};
    loom_server_opts so = {.model_dir = o->model, .listen = o->listen, .control_host = host, .tp = (int)o->tp, .pp = (int)o->pp,
                           .max_batch_size = o->max_batch, .max_num_tokens = o->max_tokens, .max_seq_len = max_seq, .verbose = o->verbose,
                           .static_batching = o->static_batching, .enable_kv_reuse = o->kv_reuse, .chunked_context = o->chunked};
    loom_server_install_signals();
    loom_server *s = loom_server_create(&so, n_workers, &err);
    if (!s) fprintf(stderr, "loom serve: coordinator: %s\n", err.msg);
    if (!all_ok(s != NULL)) {
        loom_server_destroy(s);
        return 1;
    }
    char eps[2][EP_LEN];
    snprintf(eps[0], EP_LEN, "%s", loom_server_plan_endpoint(s));
    snprintf(eps[1], EP_LEN, "%s", loom_server_result_endpoint(s));
    MPI_Bcast(eps, 2 * EP_LEN, MPI_CHAR, 0, MPI_COMM_WORLD);
    loom_status st = loom_server_run(s, &err);
    loom_server_shutdown_workers(s);
    loom_server_destroy(s); /* flushes the last chunks to clients */
    if (st != LOOM_OK) {
        fprintf(stderr, "loom serve: %s\n", err.msg);
        MPI_Abort(MPI_COMM_WORLD, 1); /* workers may be stuck in collectives with the failed one */
        return 1;
    }
    fprintf(stderr, "loom serve: shut down\n");
    return 0;
}

static volatile sig_atomic_t g_worker_term;
static void worker_on_term(int sig)
{
    (void)sig;
    /* The coordinator decides: it answers clients, then sends Shutdown. If that
     * never comes (a peer died inside a collective), SIGALRM ends this rank. */
    if (!g_worker_term) alarm(5);
    g_worker_term = 1;
}

static int run_worker(const serve_opts *o, MPI_Comm workers, int64_t max_seq)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = worker_on_term;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    loom_err err = {{0}};
    loom_worker_opts wo = {.model_dir = o->model, .tp = (int)o->tp, .pp = (int)o->pp, .pp_layers = o->pp_layers,
                           .max_batch_size = o->max_batch, .max_num_tokens = o->max_tokens, .max_seq_len = max_seq, .verbose = o->verbose,
                           .device_cuda = o->cuda, .kv_free_fraction = o->kv_fraction, .max_kv_tokens = o->kv_tokens,
                           .tokens_per_block = o->tokens_per_block, .kv_dtype = o->kv_dtype, .dummy_weights = o->dummy};
    loom_worker *w = loom_worker_create(workers, &wo, &err);
    int rank;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    if (!w) fprintf(stderr, "loom serve: rank %d: %s\n", rank, err.msg);
    if (!all_ok(w != NULL)) {
        /* loom_worker_destroy is collective over the workers: every worker calls it */
        loom_worker_destroy(w);
        return 1;
    }
    char eps[2][EP_LEN];
    MPI_Bcast(eps, 2 * EP_LEN, MPI_CHAR, 0, MPI_COMM_WORLD);
    loom_status st = loom_worker_serve(w, eps[0], eps[1], &err);
    if (st != LOOM_OK) {
        fprintf(stderr, "loom serve: rank %d: %s\n", rank, err.msg);
        sleep(10); /* the coordinator tells the clients and aborts the job; abort ourselves if it cannot */
        MPI_Abort(MPI_COMM_WORLD, 1);
        return 1;
    }
    loom_worker_destroy(w);
    return 0;
}

int loom_cmd_serve(int argc, char **argv)
{
    serve_opts o;
    loom_err err = {{0}};
    int rc = parse_args(argc, argv, &o, &err);
    if (rc == -1) {
        serve_usage(stdout);
        return 0;
    }
    if (rc) {
        fprintf(stderr, "loom serve: %s (see 'loom serve --help')\n", err.msg);
        free(o.pp_layers);
        return 2;
    }
    int provided, rank, size;
    MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    rc = 1;
    /* Every rank checks the layout and the config, so every rank agrees on failure. */
    loom_config cfg;
    loom_status st = loom_topo_check_world((int)o.tp, (int)o.pp, size, &err);
    if (st == LOOM_OK) st = loom_config_load(o.model, &cfg, &err);
    if (st != LOOM_OK) {
        if (rank == 0) fprintf(stderr, "loom serve: %s\n", err.msg);
        MPI_Finalize();
        free(o.pp_layers);
        return st == LOOM_EINVAL && size != 1 + o.tp * o.pp ? 2 : 1;
    }
    int64_t max_seq = o.max_seq ? o.max_seq : cfg.max_position_embeddings;
    loom_config_free(&cfg);
    set_threads();
    char host[256]; /* collective: every rank takes part */
    default_control_host(host, sizeof host);
    if (o.control_host) snprintf(host, sizeof host, "%s", o.control_host);
    MPI_Comm workers;
    MPI_Comm_split(MPI_COMM_WORLD, rank == 0 ? MPI_UNDEFINED : 1, rank, &workers);
    if (rank == 0) {
        rc = run_coordinator(&o, size - 1, max_seq, host);
    } else {
        rc = run_worker(&o, workers, max_seq);
        MPI_Comm_free(&workers);
    }
    MPI_Finalize();
    free(o.pp_layers);
    return rc;
}
