/* `loom bench` in a build without CUDA: says so. */
#include <stdio.h>

#include "../coordinator/commands.h"

int loom_cmd_bench(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    fprintf(stderr, "loom bench: this loom was built without CUDA; bench needs nvcc at build time and a GPU at run time\n");
    return 1;
}
