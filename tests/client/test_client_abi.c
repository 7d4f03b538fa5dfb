/* libloomclient.so's compatibility with programs linked against an earlier
 * version: loom_client_stats@LOOMCLIENT_0 must fill only the original four
 * fields of the stats struct (a program of that time has no room for more),
 * while the default loom_client_stats fills the grown struct.
 *   test_client_abi MOCK_SERVER_BINARY   (linked against the shared library) */
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "loom_client.h"

/* The struct as LOOMCLIENT_0 programs were compiled with it. */
typedef struct stats_v0 {
    int32_t running, waiting;
    double tokens_per_s, kv_used_fraction;
} stats_v0;

/* A reference bound to the old version, as an old program's would be. */
loom_status old_loom_client_stats(loom_client *c, int timeout_ms, stats_v0 *stats, loom_err *err);
__asm__(".symver old_loom_client_stats, loom_client_stats@LOOMCLIENT_0");

static int failures;
#define EXPECT(cond, what)                                               \
    do {                                                                 \
        if (!(cond)) {                                                   \
            failures++;                                                  \
            fprintf(stderr, "FAIL %s:%d: %s\n", __FILE__, __LINE__, what); \
        }                                                                \
    } while (0)

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: test_client_abi MOCK_SERVER_BINARY\n");
        return 2;
    }
    int fd[2];
    if (pipe(fd) != 0) return 1;
    pid_t pid = fork();
    if (pid == 0) {
        dup2(fd[1], 1);
        close(fd[0]);
        close(fd[1]);
        execl(argv[1], argv[1], (char *)NULL);
        _exit(127);
    }
    close(fd[1]);
    char endpoint[256] = "";
    FILE *f = fdopen(fd[0], "r");
    bool ok = f && fgets(endpoint, sizeof endpoint, f);
    if (f) fclose(f);
    endpoint[strcspn(endpoint, "\n")] = '\0';
    EXPECT(ok, "mock_server did not start");

    loom_err err = {{0}};
    loom_client *c = ok ? loom_client_connect(endpoint, 5000, &err) : NULL;
    EXPECT(c, err.msg);
    if (c) {
        /* the old struct with a guard behind it: nothing may be written there */
        struct {
            stats_v0 s;
            unsigned char guard[128];
        } old;
        memset(&old, 0xA5, sizeof old);
        EXPECT(old_loom_client_stats(c, 2000, &old.s, &err) == LOOM_OK, err.msg);
        EXPECT(old.s.waiting == 3 && old.s.tokens_per_s == 42.5 && old.s.kv_used_fraction == 0.25, "v0 values");
        bool intact = true;
        for (size_t i = 0; i < sizeof old.guard; i++) intact &= old.guard[i] == 0xA5;
        EXPECT(intact, "loom_client_stats@LOOMCLIENT_0 wrote past the old struct");

        loom_client_server_stats s;
        EXPECT(loom_client_stats(c, 2000, &s, &err) == LOOM_OK, err.msg);
        EXPECT(s.waiting == 3 && s.kv_blocks_total == 5000000000LL && s.completed == 11, "default version values");
        loom_client_close(c);
    }
    kill(pid, SIGTERM);
    int status = 0;
    waitpid(pid, &status, 0);
    if (failures) return 1;
    printf("client_abi: ok\n");
    return 0;
}
