/* `loom run`: placeholder. */
#include "commands.h"
#include <stdio.h>
int loom_cmd_run(int argc, char **argv) { (void)argc; (void)argv; fprintf(stderr, "loom run: not built yet\n"); return 1; }
