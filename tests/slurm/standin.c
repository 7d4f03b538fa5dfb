/* loom-standin: a stand-in for `loom serve` and `loom client`, used by the Slurm
 * test until the real commands exist (and kept to test the launch machinery alone).
 *
 *   loom-standin serve --model DIR --tp N --pp M [--listen tcp://HOST:PORT] [...]
 *       under mpirun or srun: every rank joins MPI_COMM_WORLD, the world size must be
 *       1+TP*PP, rank 0 gathers one line per rank (rank, role, stage/tp, host, the
 *       launcher's rank variables) and prints them, then serves a line protocol on a
 *       TCP socket at --listen until SIGTERM/SIGINT; workers wait for its shutdown
 *       message. Exits 0 on a clean shutdown.
 *   loom-standin client --endpoint tcp://HOST:PORT --health [--wait SEC]
 *   loom-standin client --endpoint tcp://HOST:PORT (--prompt T | --prompt-ids L)
 *                       --max-new-tokens N [--json]
 *       --health exits 0 once the server answers; a query prints the server's
 *       reply: `standin: world=3 tp=2 pp=1 ranks=[...] prompt=... max_new_tokens=N`.
 *
 * Wire protocol (one line each way): "HEALTH" -> "OK"; "GENERATE n=<N> p=<text>" ->
 * one line of reply.
 */
#include <mpi.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define LINE 512

static volatile sig_atomic_t stop_flag;
static void on_signal(int sig) { (void)sig; stop_flag = 1; }

static void die(const char *msg) {
    fprintf(stderr, "loom-standin: %s\n", msg);
    exit(2);
}

static const char *arg_value(int argc, char **argv, const char *flag) {
    for (int i = 0; i < argc; i++)
        if (strcmp(argv[i], flag) == 0) return i + 1 < argc ? argv[i + 1] : NULL;
    return NULL;
}

static int has_flag(int argc, char **argv, const char *flag) {
    for (int i = 0; i < argc; i++)
        if (strcmp(argv[i], flag) == 0) return 1;
    return 0;
}

/* tcp://HOST:PORT -> host, port; "*" means every interface. */
static void parse_endpoint(const char *ep, char *host, size_t hn, char *port, size_t pn) {
    if (strncmp(ep, "tcp://", 6) != 0) die("endpoint must be tcp://HOST:PORT");
    const char *h = ep + 6, *colon = strrchr(h, ':');
    if (!colon || colon == h || !colon[1]) die("endpoint must be tcp://HOST:PORT");
    snprintf(host, hn, "%.*s", (int)(colon - h), h);
    snprintf(port, pn, "%s", colon + 1);
}

static int tcp_socket(const char *ep, int listening) {
    char host[256], port[32];
    parse_endpoint(ep, host, sizeof host, port, sizeof port);
    struct addrinfo hints = {0}, *res;
    hints.ai_family = AF_INET;
    hints.ai_socktype = SOCK_STREAM;
    if (listening) hints.ai_flags = AI_PASSIVE;
    const char *node = strcmp(host, "*") == 0 ? NULL : host;
    if (!listening && !node) node = "127.0.0.1";
    if (getaddrinfo(node, port, &hints, &res) != 0) return -1;
    int fd = socket(res->ai_family, res->ai_socktype, 0);
    if (fd < 0) { freeaddrinfo(res); return -1; }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    int rc = listening ? bind(fd, res->ai_addr, res->ai_addrlen) : connect(fd, res->ai_addr, res->ai_addrlen);
    freeaddrinfo(res);
    if (rc != 0 || (listening && listen(fd, 16) != 0)) { close(fd); return -1; }
    return fd;
}

static int read_line(int fd, char *buf, size_t n) {
    size_t len = 0;
    while (len + 1 < n) {
        ssize_t r = read(fd, buf + len, 1);
        if (r <= 0) break;
        if (buf[len] == '\n') break;
        len++;
    }
    buf[len] = 0;
    return (int)len;
}

static int write_all(int fd, const char *s) {
    size_t n = strlen(s);
    while (n) {
        ssize_t w = write(fd, s, n);
        if (w <= 0) return -1;
        s += w;
        n -= (size_t)w;
    }
    return 0;
}

static int serve(int argc, char **argv) {
    const char *model = arg_value(argc, argv, "--model");
    const char *tps = arg_value(argc, argv, "--tp"), *pps = arg_value(argc, argv, "--pp");
    const char *listen_ep = arg_value(argc, argv, "--listen");
    if (!listen_ep) listen_ep = "tcp://127.0.0.1:5555";
    int tp = tps ? atoi(tps) : 1, pp = pps ? atoi(pps) : 1;
    if (!model || tp < 1 || pp < 1) die("serve: needs --model DIR and positive --tp/--pp");

    MPI_Init(&argc, &argv);
    int rank, size;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    if (size != 1 + tp * pp) {
        if (rank == 0)
            fprintf(stderr, "loom-standin: world size %d, but --tp %d --pp %d needs %d ranks "
                            "(a world of 1 usually means the launcher's MPI plugin did not wire up MPI)\n",
                    size, tp, pp, 1 + tp * pp);
        MPI_Abort(MPI_COMM_WORLD, 3);
    }

    char host[128] = "?", info[LINE];
    gethostname(host, sizeof host);
    const char *ompi = getenv("OMPI_COMM_WORLD_RANK"), *pmix = getenv("PMIX_RANK"), *slurm = getenv("SLURM_PROCID");
    if (rank == 0)
        snprintf(info, sizeof info, "rank 0 coordinator host=%s OMPI_COMM_WORLD_RANK=%s PMIX_RANK=%s SLURM_PROCID=%s",
                 host, ompi ? ompi : "-", pmix ? pmix : "-", slurm ? slurm : "-");
    else
        snprintf(info, sizeof info, "rank %d worker stage=%d tp=%d host=%s OMPI_COMM_WORLD_RANK=%s PMIX_RANK=%s SLURM_PROCID=%s",
                 rank, (rank - 1) / tp, (rank - 1) % tp, host, ompi ? ompi : "-", pmix ? pmix : "-",
                 slurm ? slurm : "-");
    char *all = rank == 0 ? calloc((size_t)size, LINE) : NULL;
    MPI_Gather(info, LINE, MPI_CHAR, all, LINE, MPI_CHAR, 0, MPI_COMM_WORLD);

    struct sigaction sa = {0};
    sa.sa_handler = on_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);

    if (rank != 0) {
        /* Wait for the coordinator's shutdown message without spinning a core. */
        int flag = 0, msg;
        MPI_Status st;
        while (!flag) {
            MPI_Iprobe(0, 7, MPI_COMM_WORLD, &flag, &st);
            if (!flag) usleep(20000);
        }
        MPI_Recv(&msg, 1, MPI_INT, 0, 7, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        MPI_Finalize();
        return 0;
    }

    for (int r = 0; r < size; r++) printf("loom-standin: %s\n", all + (size_t)r * LINE);
    int lfd = tcp_socket(listen_ep, 1);
    if (lfd < 0) {
        fprintf(stderr, "loom-standin: cannot listen at %s: %s\n", listen_ep, strerror(errno));
        MPI_Abort(MPI_COMM_WORLD, 4);
    }
    printf("loom-standin: world of %d ranks (tp=%d pp=%d) serving %s at %s\n", size, tp, pp, model, listen_ep);
    fflush(stdout);

    while (!stop_flag) {
        struct pollfd p = {.fd = lfd, .events = POLLIN};
        if (poll(&p, 1, 200) <= 0) continue;
        int c = accept(lfd, NULL, NULL);
        if (c < 0) continue;
        char req[LINE], rep[4 * LINE];
        read_line(c, req, sizeof req);
        if (strcmp(req, "HEALTH") == 0) {
            snprintf(rep, sizeof rep, "OK\n");
        } else if (strncmp(req, "GENERATE ", 9) == 0) {
            int len = snprintf(rep, sizeof rep, "standin: world=%d tp=%d pp=%d ranks=[", size, tp, pp);
            for (int r = 0; r < size && len < (int)sizeof rep - 64; r++)
                len += snprintf(rep + len, sizeof rep - (size_t)len, "%s%d", r ? "," : "", r);
            snprintf(rep + len, sizeof rep - (size_t)len, "] %s\n", req + 9);
        } else {
            snprintf(rep, sizeof rep, "ERROR unknown request\n");
        }
        write_all(c, rep);
        close(c);
    }
    close(lfd);
    printf("loom-standin: shutting down\n");
    fflush(stdout);
    int msg = 0;
    for (int r = 1; r < size; r++) MPI_Send(&msg, 1, MPI_INT, r, 7, MPI_COMM_WORLD);
    free(all);
    MPI_Finalize();
    return 0;
}

static int request(const char *ep, const char *line, char *reply, size_t n) {
    int fd = tcp_socket(ep, 0);
    if (fd < 0) return -1;
    if (write_all(fd, line) != 0) { close(fd); return -1; }
    int len = read_line(fd, reply, n);
    close(fd);
    return len > 0 ? 0 : -1;
}

static int client(int argc, char **argv) {
    const char *ep = arg_value(argc, argv, "--endpoint");
    if (!ep) die("client: needs --endpoint");
    char reply[4 * LINE];
    if (has_flag(argc, argv, "--health")) {
        const char *w = arg_value(argc, argv, "--wait");
        double wait = w ? atof(w) : 0;
        struct timespec t0, t;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        for (;;) {
            if (request(ep, "HEALTH\n", reply, sizeof reply) == 0 && strcmp(reply, "OK") == 0) {
                printf("ok\n");
                return 0;
            }
            clock_gettime(CLOCK_MONOTONIC, &t);
            if ((double)(t.tv_sec - t0.tv_sec) + (double)(t.tv_nsec - t0.tv_nsec) * 1e-9 >= wait) break;
            usleep(200000);
        }
        fprintf(stderr, "loom-standin: no server at %s\n", ep);
        return 1;
    }
    const char *prompt = arg_value(argc, argv, "--prompt"), *ids = arg_value(argc, argv, "--prompt-ids");
    const char *n = arg_value(argc, argv, "--max-new-tokens");
    if ((!prompt && !ids) || !n) die("client: needs --prompt T or --prompt-ids L, and --max-new-tokens N");
    char line[2 * LINE];
    snprintf(line, sizeof line, "GENERATE max_new_tokens=%s prompt%s=%s\n", n, ids ? "_ids" : "", ids ? ids : prompt);
    if (request(ep, line, reply, sizeof reply) != 0) {
        fprintf(stderr, "loom-standin: request to %s failed\n", ep);
        return 1;
    }
    if (has_flag(argc, argv, "--json")) {
        printf("{\"text\":\"");
        for (const char *c = reply; *c; c++) {
            if (*c == '"' || *c == '\\') putchar('\\');
            putchar(*c);
        }
        printf("\"}\n");
    } else {
        printf("%s\n", reply);
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc >= 2 && strcmp(argv[1], "serve") == 0) return serve(argc - 1, argv + 1);
    if (argc >= 2 && strcmp(argv[1], "client") == 0) return client(argc - 1, argv + 1);
    fprintf(stderr, "usage: loom-standin serve|client ... (see the source)\n");
    return 2;
}
