/* placeholder main */
#include "commands.h"
int main(int argc, char **argv) { if (argc > 1) return loom_cmd_run(argc - 1, argv + 1); return 2; }
