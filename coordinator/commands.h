/* The subcommands of the multi-call `loom` binary. Each parses its own
 * arguments (argv[0] is the subcommand name), prints errors to stderr, and
 * returns the process exit code (0 ok, 1 runtime error, 2 usage error). */
#ifndef LOOM_COORDINATOR_COMMANDS_H
#define LOOM_COORDINATOR_COMMANDS_H

int loom_cmd_tokenize(int argc, char **argv);
int loom_cmd_run(int argc, char **argv);
int loom_cmd_client(int argc, char **argv);
int loom_cmd_serve(int argc, char **argv);
int loom_cmd_convert(int argc, char **argv);
int loom_cmd_bench(int argc, char **argv);

#endif
