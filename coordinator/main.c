/* The multi-call `loom` binary: dispatches `loom <command> ...` to the
 * command's entry point, git-style. The only place that exits. */
#include <stdio.h>
#include <string.h>

#include "commands.h"

static const struct {
    const char *name;
    int (*fn)(int, char **);
    const char *summary;
} commands[] = {
    {"tokenize", loom_cmd_tokenize, "print the token ids of a text"},
    {"run", loom_cmd_run, "one-shot generation from a prompt"},
    {"convert", loom_cmd_convert, "split a Hugging Face checkpoint into per-rank files"},
    {"serve", loom_cmd_serve, "run the cluster (under mpirun or srun)"},
    {"bench", loom_cmd_bench, "benchmark static batches on one or more GPUs (--tp/--pp under mpirun) against measured floors"},
    {"client", loom_cmd_client, "query a running cluster (protobuf over ZeroMQ)"},
};

static void usage(FILE *f)
{
    fprintf(f, "usage: loom <command> [options]\n\ncommands:\n");
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        fprintf(f, "  %-10s %s\n", commands[i].name, commands[i].summary);
    fprintf(f, "\n'loom <command> --help' describes a command's options.\n");
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "--help") || !strcmp(cmd, "-h") || !strcmp(cmd, "help")) {
        usage(stdout);
        return 0;
    }
    if (!strcmp(cmd, "--version")) {
        printf("loom 0.1.0\n");
        return 0;
    }
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (!strcmp(cmd, commands[i].name)) return commands[i].fn(argc - 1, argv + 1);
    fprintf(stderr, "loom: unknown command '%s' (see 'loom --help')\n", cmd);
    return 2;
}
