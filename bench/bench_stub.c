/* `loom bench` in a build without CUDA: checks the flags like the CUDA build
 * (a bad flag is a usage error either way), then says why it cannot run. */
#include <stdio.h>

#include "../coordinator/commands.h"
#include "bench_args.h"

int loom_cmd_bench(int argc, char **argv)
{
    loom_bench_args a;
    int rc = loom_bench_parse(argc, argv, &a);
    if (rc) return rc == 1 ? 0 : 2;
    fprintf(stderr, "loom bench: this loom was built without CUDA; bench needs nvcc at build time and a GPU at run time%s\n",
            a.tp * a.pp > 1 ? " (and NCCL for --tp/--pp)" : "");
    return 1;
}
