/* Stand-alone driver for `loom tokenize` so its tests do not depend on the
 * multi-call binary's dispatch: argv[1..] are the subcommand's arguments. */
#include "commands.h"

int main(int argc, char **argv)
{
    argv[0] = "tokenize";
    return loom_cmd_tokenize(argc, argv);
}
