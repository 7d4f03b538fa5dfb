/* `loom tokenize`: placeholder until the tokenizer lands. */
#include "commands.h"
#include <stdio.h>
int loom_cmd_tokenize(int argc, char **argv) { (void)argc; (void)argv; fprintf(stderr, "loom tokenize: not built yet\n"); return 1; }
