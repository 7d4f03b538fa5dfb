/* `loom tokenize`: encodes one text with a model directory's tokenizer.json
 * and prints the ids, matching HF encode(text, add_special_tokens=...). Useful
 * for checking loom's tokenizer against transformers by hand. */
#include <getopt.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "commands.h"
#include "tokenizer/tokenizer.h"

static void usage(FILE *f)
{
    fputs("usage: loom tokenize --model DIR --text T [--json] [--add-special-tokens]\n"
          "\n"
          "Encodes T with DIR/tokenizer.json and prints the token ids.\n"
          "\n"
          "  --model DIR            directory holding tokenizer.json\n"
          "  --text T               text to encode (UTF-8)\n"
          "  --json                 print {\"ids\":[...]} instead of space-separated ids\n"
          "  --add-special-tokens   apply the post-processor template (e.g. BOS); off by default\n"
          "  --help                 show this help\n",
          f);
}

int loom_cmd_tokenize(int argc, char **argv)
{
    enum { OPT_MODEL = 1, OPT_TEXT, OPT_JSON, OPT_SPECIAL, OPT_HELP };
    static const struct option opts[] = {
        {"model", required_argument, NULL, OPT_MODEL},
        {"text", required_argument, NULL, OPT_TEXT},
        {"json", no_argument, NULL, OPT_JSON},
        {"add-special-tokens", no_argument, NULL, OPT_SPECIAL},
        {"help", no_argument, NULL, OPT_HELP},
        {NULL, 0, NULL, 0},
    };
    const char *model = NULL, *text = NULL;
    bool json = false, add_special = false;
    optind = 0; /* glibc: rescan from argv[1] even if getopt ran before */
    opterr = 0;
    int c;
    while ((c = getopt_long(argc, argv, ":", opts, NULL)) != -1) {
        switch (c) {
        case OPT_MODEL: model = optarg; break;
        case OPT_TEXT: text = optarg; break;
        case OPT_JSON: json = true; break;
        case OPT_SPECIAL: add_special = true; break;
        case OPT_HELP: usage(stdout); return 0;
        case ':':
            fprintf(stderr, "loom tokenize: option %s needs a value\n", argv[optind - 1]);
            return 2;
        default:
            fprintf(stderr, "loom tokenize: unknown option %s (see --help)\n", argv[optind - 1]);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "loom tokenize: unexpected argument \"%s\" (see --help)\n", argv[optind]);
        return 2;
    }
    if (!model || !text) {
        fprintf(stderr, "loom tokenize: --model and --text are required (see --help)\n");
        return 2;
    }

    loom_err err = {{0}};
    loom_tokenizer *tok = loom_tokenizer_load(model, &err);
    if (!tok) {
        fprintf(stderr, "loom tokenize: %s\n", err.msg);
        return 1;
    }
    int32_t *ids = NULL;
    size_t n = 0;
    if (loom_tokenizer_encode(tok, text, strlen(text), add_special, &ids, &n, &err) != LOOM_OK) {
        fprintf(stderr, "loom tokenize: %s\n", err.msg);
        loom_tokenizer_destroy(tok);
        return 1;
    }
    fputs(json ? "{\"ids\":[" : "", stdout);
    for (size_t i = 0; i < n; i++) printf("%s%d", i ? (json ? "," : " ") : "", (int)ids[i]);
    fputs(json ? "]}\n" : "\n", stdout);
    free(ids);
    loom_tokenizer_destroy(tok);
    if (fflush(stdout) != 0) {
        fprintf(stderr, "loom tokenize: cannot write output\n");
        return 1;
    }
    return 0;
}
