/* Tokenizer tests. `--hf DIR EXPECT.json` compares encode, decode and the
 * streaming decoder with Hugging Face results written by expected_ids.py;
 * `--bad-input GPT2_DIR SMALL_DIR` checks that broken files, bad ids and bad
 * UTF-8 fail with an error (never a crash), including mutated tokenizer.json. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "tokenizer/tokenizer.h"

static int failures;
static int reported;
#define MAX_REPORT 25

static void print_escaped(const char *s, size_t n)
{
    putchar('"');
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') printf("\\%c", c);
        else if (c == '\n') fputs("\\n", stdout);
        else if (c == '\t') fputs("\\t", stdout);
        else if (c == '\r') fputs("\\r", stdout);
        else if (c < 0x20) printf("\\x%02x", c);
        else putchar(c);
    }
    putchar('"');
}

static void print_ids(const int32_t *ids, size_t n)
{
    putchar('[');
    for (size_t i = 0; i < n; i++) printf("%s%d", i ? "," : "", (int)ids[i]);
    putchar(']');
}

/* Records a failure; returns true when it should be printed. */
static bool fail(void)
{
    failures++;
    return ++reported <= MAX_REPORT;
}

static int32_t *json_ids(json_t *arr, size_t *n)
{
    *n = json_array_size(arr);
    int32_t *ids = malloc((*n ? *n : 1) * sizeof *ids);
    if (!ids) abort();
    for (size_t i = 0; i < *n; i++) ids[i] = (int32_t)json_integer_value(json_array_get(arr, i));
    return ids;
}

/* A piece must be valid UTF-8 on its own: no sequence cut in half. */
static bool whole_utf8(const char *s, size_t n)
{
    const unsigned char *b = (const unsigned char *)s;
    for (size_t i = 0; i < n;) {
        size_t w = b[i] < 0x80 ? 1 : b[i] >= 0xC2 && b[i] <= 0xDF ? 2 : b[i] >= 0xE0 && b[i] <= 0xEF ? 3
                 : b[i] >= 0xF0 && b[i] <= 0xF4 ? 4 : 0;
        if (w == 0 || i + w > n) return false;
        for (size_t k = 1; k < w; k++)
            if ((b[i + k] & 0xC0) != 0x80) return false;
        i += w;
    }
    return true;
}

/* ---- --hf --------------------------------------------------------------- */

static void check_encode(const loom_tokenizer *tok, size_t ci, const char *text, size_t len, bool special,
                         json_t *want_arr)
{
    size_t nwant;
    int32_t *want = json_ids(want_arr, &nwant);
    int32_t *got = NULL;
    size_t ngot = 0;
    loom_err err = {{0}};
    loom_status st = loom_tokenizer_encode(tok, text, len, special, &got, &ngot, &err);
    if (st != LOOM_OK || ngot != nwant || (nwant && memcmp(got, want, nwant * sizeof *got) != 0)) {
        if (fail()) {
            printf("MISMATCH encode case %zu add_special=%d\n  text: ", ci, special);
            print_escaped(text, len);
            printf("\n  expected: ");
            print_ids(want, nwant);
            printf("\n  got:      ");
            if (st != LOOM_OK) printf("error: %s", err.msg);
            else print_ids(got, ngot);
            putchar('\n');
        }
    }
    free(want);
    free(got);
}

static void check_decode(const loom_tokenizer *tok, const char *what, size_t ci, const int32_t *ids, size_t n,
                         bool skip, const char *want, size_t want_len)
{
    char *got = NULL;
    size_t ngot = 0;
    loom_err err = {{0}};
    loom_status st = loom_tokenizer_decode(tok, ids, n, skip, &got, &ngot, &err);
    if (st != LOOM_OK || ngot != want_len || memcmp(got, want, want_len) != 0) {
        if (fail()) {
            printf("MISMATCH decode %s %zu skip_special=%d\n  ids: ", what, ci, skip);
            print_ids(ids, n);
            printf("\n  expected: ");
            print_escaped(want, want_len);
            printf("\n  got:      ");
            if (st != LOOM_OK) printf("error: %s", err.msg);
            else print_escaped(got, ngot);
            putchar('\n');
        }
    }
    free(got);
}

static void check_stream(const loom_tokenizer *tok, const char *what, size_t ci, const int32_t *ids, size_t n,
                         bool skip, const char *want, size_t want_len)
{
    loom_detok *d = loom_detok_create(tok, skip);
    if (!d) {
        if (fail()) printf("FAIL loom_detok_create returned NULL\n");
        return;
    }
    char *all = malloc(want_len * 2 + 64);
    size_t cap = want_len * 2 + 64, len = 0;
    loom_err err = {{0}};
    bool ok = true;
    for (size_t i = 0; i <= n && ok; i++) {
        const char *piece;
        size_t plen;
        loom_status st = i < n ? loom_detok_push(d, ids[i], &piece, &plen, &err)
                               : loom_detok_flush(d, &piece, &plen, &err);
        if (st != LOOM_OK) {
            if (fail()) printf("FAIL stream %s %zu: error at id %zu: %s\n", what, ci, i, err.msg);
            ok = false;
            break;
        }
        if (!whole_utf8(piece, plen)) {
            if (fail()) {
                printf("FAIL stream %s %zu skip_special=%d: piece after id %zu is not whole UTF-8: ", what, ci, skip, i);
                print_escaped(piece, plen);
                putchar('\n');
            }
            ok = false;
        }
        if (len + plen > cap) {
            cap = (len + plen) * 2;
            all = realloc(all, cap);
        }
        memcpy(all + len, piece, plen);
        len += plen;
    }
    if (ok && (len != want_len || memcmp(all, want, len) != 0)) {
        if (fail()) {
            printf("MISMATCH stream %s %zu skip_special=%d\n  ids: ", what, ci, skip);
            print_ids(ids, n);
            printf("\n  expected: ");
            print_escaped(want, want_len);
            printf("\n  got:      ");
            print_escaped(all, len);
            putchar('\n');
        }
    }
    free(all);
    loom_detok_destroy(d);
}

static int run_hf(const char *dir, const char *expect_path)
{
    json_error_t jerr;
    json_t *ex = json_load_file(expect_path, JSON_ALLOW_NUL, &jerr);
    if (!ex) {
        printf("cannot read %s: %s\n", expect_path, jerr.text);
        return 1;
    }
    loom_err err = {{0}};
    loom_tokenizer *tok = loom_tokenizer_load(dir, &err);
    if (!tok) {
        printf("FAIL load %s: %s\n", dir, err.msg);
        json_decref(ex);
        return 1;
    }
    int64_t want_vs = json_integer_value(json_object_get(ex, "vocab_size"));
    if (loom_tokenizer_vocab_size(tok) != want_vs && fail())
        printf("MISMATCH vocab_size: expected %lld got %lld\n", (long long)want_vs,
               (long long)loom_tokenizer_vocab_size(tok));

    size_t i;
    json_t *a;
    json_array_foreach(json_object_get(ex, "added"), i, a) {
        const char *content = json_string_value(json_object_get(a, "content"));
        int32_t id = (int32_t)json_integer_value(json_object_get(a, "id"));
        bool special = json_is_true(json_object_get(a, "special"));
        if (loom_tokenizer_token_id(tok, content) != id && fail())
            printf("MISMATCH token_id(\"%s\"): expected %d got %d\n", content, (int)id,
                   (int)loom_tokenizer_token_id(tok, content));
        if (loom_tokenizer_is_special(tok, id) != special && fail())
            printf("MISMATCH is_special(%d): expected %d\n", (int)id, special);
    }

    size_t ncases = 0, nrandom = 0;
    json_t *c;
    json_array_foreach(json_object_get(ex, "cases"), i, c) {
        json_t *jt = json_object_get(c, "text");
        const char *text = json_string_value(jt);
        size_t len = json_string_length(jt);
        check_encode(tok, i, text, len, false, json_object_get(c, "ids"));
        check_encode(tok, i, text, len, true, json_object_get(c, "ids_special"));
        size_t n, ns;
        int32_t *ids = json_ids(json_object_get(c, "ids"), &n);
        int32_t *ids_sp = json_ids(json_object_get(c, "ids_special"), &ns);
        static const char *keys[] = {"decode", "decode_skip"};
        for (int skip = 0; skip < 2; skip++) {
            json_t *w = json_object_get(c, keys[skip]);
            check_decode(tok, "case", i, ids_sp, ns, skip, json_string_value(w), json_string_length(w));
            check_stream(tok, "case", i, ids_sp, ns, skip, json_string_value(w), json_string_length(w));
        }
        json_t *wp = json_object_get(c, "decode_plain");
        check_decode(tok, "case(no specials added)", i, ids, n, false, json_string_value(wp), json_string_length(wp));
        if (json_is_true(json_object_get(c, "roundtrip"))) {
            /* decode(encode(x)) == x with loom's own encode */
            int32_t *mine = NULL;
            size_t nm = 0;
            if (loom_tokenizer_encode(tok, text, len, false, &mine, &nm, &err) == LOOM_OK)
                check_decode(tok, "roundtrip", i, mine, nm, false, text, len);
            free(mine);
        }
        free(ids);
        free(ids_sp);
        ncases++;
    }
    json_array_foreach(json_object_get(ex, "random"), i, c) {
        size_t n;
        int32_t *ids = json_ids(json_object_get(c, "ids"), &n);
        static const char *keys[] = {"decode", "decode_skip"};
        for (int skip = 0; skip < 2; skip++) {
            json_t *w = json_object_get(c, keys[skip]);
            check_decode(tok, "random", i, ids, n, skip, json_string_value(w), json_string_length(w));
            check_stream(tok, "random", i, ids, n, skip, json_string_value(w), json_string_length(w));
        }
        free(ids);
        nrandom++;
    }
    loom_tokenizer_destroy(tok);
    json_decref(ex);
    printf("%s: %zu text cases, %zu random id sequences, %d failure(s)%s\n", dir, ncases, nrandom, failures,
           failures > MAX_REPORT ? " (first ones shown)" : "");
    return failures ? 1 : 0;
}

/* ---- --bad-input -------------------------------------------------------- */

static char tmpdir[4096];

static void write_file(const char *name, const char *data, size_t n)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/%s", tmpdir, name);
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(data, 1, n, f) != n) {
        printf("cannot write %s: %s\n", path, strerror(errno));
        exit(1);
    }
    fclose(f);
}

static void remove_file(const char *name)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/%s", tmpdir, name);
    unlink(path);
}

static char *read_all(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        printf("cannot open %s\n", path);
        exit(1);
    }
    fseek(f, 0, SEEK_END);
    long sz = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *p = malloc((size_t)sz + 1);
    if (!p || fread(p, 1, (size_t)sz, f) != (size_t)sz) exit(1);
    fclose(f);
    p[sz] = '\0';
    *n = (size_t)sz;
    return p;
}

/* Loading `json` as tokenizer.json must fail with a message containing want. */
static void expect_load_error(const char *label, const char *json, const char *want)
{
    write_file("tokenizer.json", json, strlen(json));
    loom_err err = {{0}};
    loom_tokenizer *tok = loom_tokenizer_load(tmpdir, &err);
    if (tok) {
        if (fail()) printf("FAIL bad-input %s: load succeeded\n", label);
        loom_tokenizer_destroy(tok);
    } else if (err.msg[0] == '\0' || (want && !strstr(err.msg, want))) {
        if (fail()) printf("FAIL bad-input %s: error \"%s\" lacks \"%s\"\n", label, err.msg, want ? want : "");
    } else {
        printf("ok   %-28s -> %s\n", label, err.msg);
    }
}

#define BPE_AB "\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":1,\"ab\":2},\"merges\":[\"a b\"]}"

static const struct {
    const char *label, *json, *want;
} BAD[] = {
    {"empty file", "", "malformed JSON"},
    {"not an object", "[1,2]", "top level must be a JSON object"},
    {"no model", "{}", "missing \"model\""},
    {"model not object", "{\"model\":5}", "must be an object"},
    {"model WordPiece", "{\"model\":{\"type\":\"WordPiece\",\"vocab\":{}}}", "unsupported model type WordPiece in tokenizer.json"},
    {"model Unigram", "{\"model\":{\"type\":\"Unigram\",\"vocab\":[]}}", "unsupported model type Unigram"},
    {"model type number", "{\"model\":{\"type\":3}}", "model.type must be a string"},
    {"no type no merges", "{\"model\":{\"vocab\":{}}}", "not BPE"},
    {"vocab array", "{\"model\":{\"type\":\"BPE\",\"vocab\":[],\"merges\":[]}}", "model.vocab must be an object"},
    {"vocab missing", "{\"model\":{\"type\":\"BPE\",\"merges\":[]}}", "model.vocab must be an object"},
    {"vocab string id", "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":\"x\"},\"merges\":[]}}", "must be an id"},
    {"vocab negative id", "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":-1},\"merges\":[]}}", "must be an id"},
    {"vocab huge id", "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":99999999999},\"merges\":[]}}", "must be an id"},
    {"merges object", "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":{}}}", "model.merges must be an array"},
    {"merges missing", "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0}}}", "model.merges must be an array"},
    {"merge unknown token", "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":1},\"merges\":[\"a c\"]}}", "not in the vocab"},
    {"merge result unknown", "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0,\"b\":1},\"merges\":[[\"a\",\"b\"]]}}", "merged token"},
    {"merge three parts", "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[\"a b c\"]}}", "is not \"left right\""},
    {"merge no space", "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[\"ab\"]}}", "is not \"left right\""},
    {"merge short list", "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[[\"a\"]]}}", "must be \"a b\" or"},
    {"merge number", "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[7]}}", "must be \"a b\" or"},
    {"unk_token number", "{\"model\":{\"type\":\"BPE\",\"vocab\":{},\"merges\":[],\"unk_token\":1}}", "unk_token must be a string"},
    {"byte_fallback string", "{\"model\":{\"type\":\"BPE\",\"vocab\":{},\"merges\":[],\"byte_fallback\":\"yes\"}}", "byte_fallback must be a boolean"},
    {"dropout", "{\"model\":{\"type\":\"BPE\",\"vocab\":{},\"merges\":[],\"dropout\":0.1}}", "dropout"},
    {"version 2", "{\"version\":\"2.0\"," BPE_AB "}", "unknown tokenizer.json version"},
    {"pre_tokenizer Whitespace", "{" BPE_AB ",\"pre_tokenizer\":{\"type\":\"Whitespace\"}}", "unsupported pre_tokenizer type Whitespace in tokenizer.json"},
    {"pre_tokenizer no type", "{" BPE_AB ",\"pre_tokenizer\":{\"typ\":\"Split\"}}", "pre_tokenizer without a string \"type\""},
    {"pre_tokenizer number", "{" BPE_AB ",\"pre_tokenizer\":17}", "pre_tokenizer must be an object"},
    {"Split bad regex", "{" BPE_AB ",\"pre_tokenizer\":{\"type\":\"Split\",\"pattern\":{\"Regex\":\"(a\"},\"behavior\":\"Isolated\",\"invert\":false}}", "cannot compile regex"},
    {"Split bad behavior", "{" BPE_AB ",\"pre_tokenizer\":{\"type\":\"Split\",\"pattern\":{\"Regex\":\"a\"},\"behavior\":\"Sideways\"}}", "unknown behavior"},
    {"Split no pattern", "{" BPE_AB ",\"pre_tokenizer\":{\"type\":\"Split\",\"behavior\":\"Isolated\"}}", "\"pattern\" must be"},
    {"Sequence not array", "{" BPE_AB ",\"pre_tokenizer\":{\"type\":\"Sequence\",\"pretokenizers\":3}}", "must be an array"},
    {"Metaspace mismatch", "{" BPE_AB ",\"pre_tokenizer\":{\"type\":\"Metaspace\",\"replacement\":\"_\",\"add_prefix_space\":false}}", "add_prefix_space does not match"},
    {"Metaspace long repl", "{" BPE_AB ",\"pre_tokenizer\":{\"type\":\"Metaspace\",\"replacement\":\"ab\"}}", "one character"},
    {"normalizer Lowercase", "{" BPE_AB ",\"normalizer\":{\"type\":\"Lowercase\"}}", "unsupported normalizer type Lowercase in tokenizer.json"},
    {"normalizer Replace no pattern", "{" BPE_AB ",\"normalizer\":{\"type\":\"Replace\",\"content\":\"x\"}}", "\"pattern\" must be"},
    {"normalizer Prepend number", "{" BPE_AB ",\"normalizer\":{\"type\":\"Prepend\",\"prepend\":1}}", "must be a string"},
    {"normalizer deep nesting",
     "{" BPE_AB ",\"normalizer\":{\"type\":\"Sequence\",\"normalizers\":[{\"type\":\"Sequence\",\"normalizers\":[{\"type\":\"Sequence\",\"normalizers\":[{\"type\":\"Sequence\",\"normalizers\":[{\"type\":\"Sequence\",\"normalizers\":[{\"type\":\"Sequence\",\"normalizers\":[{\"type\":\"Sequence\",\"normalizers\":[{\"type\":\"Sequence\",\"normalizers\":[{\"type\":\"Sequence\",\"normalizers\":[{\"type\":\"Sequence\",\"normalizers\":[{\"type\":\"Sequence\",\"normalizers\":[{\"type\":\"Sequence\",\"normalizers\":[{\"type\":\"Sequence\",\"normalizers\":[{\"type\":\"Sequence\",\"normalizers\":[{\"type\":\"Sequence\",\"normalizers\":[{\"type\":\"Sequence\",\"normalizers\":[{\"type\":\"Sequence\",\"normalizers\":[{\"type\":\"Sequence\",\"normalizers\":[]}]}]}]}]}]}]}]}]}]}]}]}]}]}]}]}]}]}}",
     "nested too deeply"},
    {"decoder WordPiece", "{" BPE_AB ",\"decoder\":{\"type\":\"WordPiece\"}}", "unsupported decoder type WordPiece in tokenizer.json"},
    {"decoder Replace regex", "{" BPE_AB ",\"decoder\":{\"type\":\"Replace\",\"pattern\":{\"Regex\":\"a\"},\"content\":\"b\"}}", "only non-empty"},
    {"decoder Strip bad", "{" BPE_AB ",\"decoder\":{\"type\":\"Strip\",\"content\":\" \",\"start\":-1,\"stop\":0}}", "non-negative"},
    {"decoder ByteLevel after Fuse", "{" BPE_AB ",\"decoder\":{\"type\":\"Sequence\",\"decoders\":[{\"type\":\"Fuse\"},{\"type\":\"ByteFallback\"}]}}", "unsupported decoder chain"},
    {"post_processor Foo", "{" BPE_AB ",\"post_processor\":{\"type\":\"Foo\"}}", "unsupported post_processor type Foo in tokenizer.json"},
    {"template missing special", "{" BPE_AB ",\"post_processor\":{\"type\":\"TemplateProcessing\",\"single\":[{\"SpecialToken\":{\"id\":\"<s>\",\"type_id\":0}},{\"Sequence\":{\"id\":\"A\",\"type_id\":0}}],\"special_tokens\":{}}}", "missing from special_tokens"},
    {"template without A", "{" BPE_AB ",\"post_processor\":{\"type\":\"TemplateProcessing\",\"single\":[],\"special_tokens\":{}}}", "lacks sequence A"},
    {"template id out of vocab", "{" BPE_AB ",\"post_processor\":{\"type\":\"TemplateProcessing\",\"single\":[{\"SpecialToken\":{\"id\":\"<s>\",\"type_id\":0}},{\"Sequence\":{\"id\":\"A\",\"type_id\":0}}],\"special_tokens\":{\"<s>\":{\"id\":\"<s>\",\"ids\":[77],\"tokens\":[\"<s>\"]}}}}", "outside the vocabulary"},
    {"added_tokens string", "{" BPE_AB ",\"added_tokens\":\"x\"}", "\"added_tokens\" must be an array"},
    {"added token no content", "{" BPE_AB ",\"added_tokens\":[{\"id\":3}]}", "needs a string \"content\""},
    {"added token bad flag", "{" BPE_AB ",\"added_tokens\":[{\"id\":3,\"content\":\"x\",\"lstrip\":1}]}", "lstrip must be a boolean"},
};

/* Replaces one random node of a tokenizer.json with a value of another type. */
static json_t *random_value(unsigned *seed)
{
    switch (rand_r(seed) % 9) {
    case 0: return json_null();
    case 1: return json_integer(rand_r(seed) % 3 ? 5 : -7);
    case 2: return json_string("x");
    case 3: return json_array();
    case 4: return json_object();
    case 5: return json_true();
    case 6: return json_real(0.5);
    case 7: return json_string("");
    default: return json_pack("{s:s}", "type", "Nope");
    }
}

struct slot {
    json_t *parent;
    const char *key; /* object member, or NULL for array index */
    size_t index;
};

static void collect(json_t *j, int depth, struct slot *slots, size_t *n, size_t cap)
{
    if (depth > 6) return;
    if (json_is_object(j)) {
        const char *k;
        json_t *v;
        size_t seen = 0;
        json_object_foreach(j, k, v) {
            if (*n < cap) slots[(*n)++] = (struct slot){j, k, 0};
            if (seen++ < 8) collect(v, depth + 1, slots, n, cap);
        }
    } else if (json_is_array(j)) {
        for (size_t i = 0; i < json_array_size(j) && i < 8; i++) {
            if (*n < cap) slots[(*n)++] = (struct slot){j, NULL, i};
            collect(json_array_get(j, i), depth + 1, slots, n, cap);
        }
    }
}

static void try_load_and_use(const char *label)
{
    loom_err err = {{0}};
    loom_tokenizer *tok = loom_tokenizer_load(tmpdir, &err);
    if (!tok) {
        if (err.msg[0] == '\0' && fail()) printf("FAIL %s: load failed without a message\n", label);
        return;
    }
    static const char text[] = "Hello <s> world, caf\xc3\xa9 \xe4\xbd\xa0\xe5\xa5\xbd  \n\t 123 </s>";
    int32_t *ids = NULL;
    size_t n = 0;
    if (loom_tokenizer_encode(tok, text, sizeof text - 1, true, &ids, &n, &err) == LOOM_OK) {
        char *s = NULL;
        size_t sl;
        (void)loom_tokenizer_decode(tok, ids, n, false, &s, &sl, &err);
        free(s);
        loom_detok *d = loom_detok_create(tok, true);
        for (size_t i = 0; d && i < n; i++) {
            const char *p;
            size_t pl;
            (void)loom_detok_push(d, ids[i], &p, &pl, &err);
        }
        loom_detok_destroy(d);
    }
    free(ids);
    loom_tokenizer_destroy(tok);
}

static void fuzz(const char *small_dir)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/tokenizer.json", small_dir);
    size_t n;
    char *orig = read_all(path, &n);
    unsigned seed = 12345;
    /* byte-level damage: truncation, flips, deletions */
    for (int it = 0; it < 150; it++) {
        char *m = malloc(n);
        memcpy(m, orig, n);
        size_t len = n;
        switch (it % 3) {
        case 0: len = (size_t)rand_r(&seed) % n; break;
        case 1: for (int k = 0; k < 4; k++) m[(size_t)rand_r(&seed) % n] = (char)rand_r(&seed); break;
        default: {
            size_t at = (size_t)rand_r(&seed) % n, cut = 1 + (size_t)rand_r(&seed) % 16;
            if (at + cut > n) cut = n - at;
            memmove(m + at, m + at + cut, n - at - cut);
            len = n - cut;
        }
        }
        write_file("tokenizer.json", m, len);
        try_load_and_use("byte fuzz");
        free(m);
    }
    /* structural damage: one node replaced by a value of another type */
    json_error_t jerr;
    json_t *base = json_loads(orig, JSON_ALLOW_NUL, &jerr);
    if (!base) {
        printf("cannot parse %s\n", path);
        exit(1);
    }
    struct slot slots[4096];
    for (int it = 0; it < 400; it++) {
        json_t *doc = json_deep_copy(base);
        size_t ns = 0;
        collect(doc, 0, slots, &ns, 4096);
        struct slot s = slots[(size_t)rand_r(&seed) % ns];
        json_t *v = random_value(&seed);
        if (s.key) json_object_set_new(s.parent, s.key, v);
        else json_array_set_new(s.parent, s.index, v);
        char *dump = json_dumps(doc, JSON_COMPACT);
        write_file("tokenizer.json", dump, strlen(dump));
        try_load_and_use("structure fuzz");
        free(dump);
        json_decref(doc);
    }
    json_decref(base);
    free(orig);
    printf("ok   fuzzed %s (550 mutations)\n", path);
}

static void bad_args(const char *gpt2_dir)
{
    loom_err err = {{0}};
    loom_tokenizer *tok = loom_tokenizer_load(gpt2_dir, &err);
    if (!tok) {
        if (fail()) printf("FAIL load %s: %s\n", gpt2_dir, err.msg);
        return;
    }
    static const struct {
        const char *label, *s;
    } bad_utf8[] = {
        {"lone 0xff", "ab\xff"}, {"truncated 2-byte", "x\xc3"}, {"overlong NUL", "\xc0\x80"},
        {"surrogate", "\xed\xa0\x80"}, {"above U+10FFFF", "\xf4\x90\x80\x80"}, {"stray continuation", "\x80z"},
    };
    for (size_t i = 0; i < sizeof bad_utf8 / sizeof bad_utf8[0]; i++) {
        int32_t *ids = NULL;
        size_t n = 0;
        err.msg[0] = '\0';
        loom_status st = loom_tokenizer_encode(tok, bad_utf8[i].s, strlen(bad_utf8[i].s), false, &ids, &n, &err);
        if (st == LOOM_OK || !strstr(err.msg, "UTF-8")) {
            if (fail()) printf("FAIL encode invalid UTF-8 (%s): status %d msg \"%s\"\n", bad_utf8[i].label, st, err.msg);
        } else {
            printf("ok   encode %-22s -> %s\n", bad_utf8[i].label, err.msg);
        }
        free(ids);
    }
    int64_t vs = loom_tokenizer_vocab_size(tok);
    int32_t bad_ids[] = {-1, (int32_t)vs, INT32_MAX};
    for (size_t i = 0; i < 3; i++) {
        char *s = NULL;
        size_t n;
        int32_t ids[] = {31373, bad_ids[i]};
        err.msg[0] = '\0';
        if (loom_tokenizer_decode(tok, ids, 2, false, &s, &n, &err) == LOOM_OK || !err.msg[0]) {
            if (fail()) printf("FAIL decode of id %d succeeded\n", (int)bad_ids[i]);
        } else {
            printf("ok   decode id %-19d -> %s\n", (int)bad_ids[i], err.msg);
        }
        free(s);
    }
    /* a bad id in a stream is reported and the stream carries on */
    loom_detok *d = loom_detok_create(tok, false);
    const char *p;
    size_t pl;
    if (loom_detok_push(d, -5, &p, &pl, &err) == LOOM_OK && fail()) printf("FAIL detok push of id -5 succeeded\n");
    if ((loom_detok_push(d, 31373, &p, &pl, &err) != LOOM_OK || pl != 5 || memcmp(p, "hello", 5) != 0) && fail())
        printf("FAIL detok after a bad id\n");
    loom_detok_destroy(d);
    /* NULL handling */
    int32_t *ids = NULL;
    size_t n;
    if (loom_tokenizer_encode(NULL, "a", 1, false, &ids, &n, &err) == LOOM_OK && fail()) printf("FAIL encode(NULL)\n");
    if (loom_tokenizer_encode(tok, NULL, 3, false, &ids, &n, &err) == LOOM_OK && fail()) printf("FAIL encode text NULL\n");
    if (loom_tokenizer_encode(tok, NULL, 0, false, &ids, &n, &err) != LOOM_OK && fail()) printf("FAIL encode(NULL, 0)\n");
    loom_tokenizer_destroy(NULL);
    loom_detok_destroy(NULL);
    if (loom_detok_create(NULL, false) != NULL && fail()) printf("FAIL detok_create(NULL)\n");
    if (loom_tokenizer_token_id(tok, "<|endoftext|>") != 50256 && fail()) printf("FAIL token_id\n");
    if (loom_tokenizer_token_id(tok, "no such token \x01") != -1 && fail()) printf("FAIL token_id of unknown\n");
    loom_tokenizer_destroy(tok);

    /* unk_token missing from the vocab surfaces at encode time, as in HF */
    const char *j = "{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[],\"unk_token\":\"<unk>\"}}";
    write_file("tokenizer.json", j, strlen(j));
    tok = loom_tokenizer_load(tmpdir, &err);
    if (!tok) {
        if (fail()) printf("FAIL load of unk test: %s\n", err.msg);
        return;
    }
    err.msg[0] = '\0';
    if ((loom_tokenizer_encode(tok, "ab", 2, false, &ids, &n, &err) == LOOM_OK || !strstr(err.msg, "unk_token")) && fail())
        printf("FAIL encode with missing unk: \"%s\"\n", err.msg);
    else
        printf("ok   encode with unk not in vocab -> %s\n", err.msg);
    loom_tokenizer_destroy(tok);
}

static int run_bad_input(const char *gpt2_dir, const char *small_dir)
{
    const char *base = getenv("TMPDIR");
    snprintf(tmpdir, sizeof tmpdir, "%s/loom-tok-bad-XXXXXX", base && *base ? base : "/tmp");
    if (!mkdtemp(tmpdir)) {
        printf("mkdtemp failed: %s\n", strerror(errno));
        return 1;
    }
    loom_err err = {{0}};
    /* missing directory / file */
    loom_tokenizer *tok = loom_tokenizer_load("/nonexistent/loom/tokenizer", &err);
    if (tok || !strstr(err.msg, "cannot open")) {
        if (fail()) printf("FAIL missing dir: \"%s\"\n", err.msg);
    } else {
        printf("ok   %-28s -> %s\n", "missing directory", err.msg);
    }
    loom_tokenizer_destroy(tok);
    tok = loom_tokenizer_load(tmpdir, &err);
    if (tok || !strstr(err.msg, "tokenizer.json")) {
        if (fail()) printf("FAIL missing tokenizer.json: \"%s\"\n", err.msg);
    } else {
        printf("ok   %-28s -> %s\n", "missing tokenizer.json", err.msg);
    }
    loom_tokenizer_destroy(tok);

    for (size_t i = 0; i < sizeof BAD / sizeof BAD[0]; i++) expect_load_error(BAD[i].label, BAD[i].json, BAD[i].want);

    /* truncated real file */
    char path[4200];
    snprintf(path, sizeof path, "%s/tokenizer.json", gpt2_dir);
    size_t n;
    char *full = read_all(path, &n);
    size_t cuts[] = {1, 10, 100, 1000, n / 3, n / 2, n - 100, n - 2};
    for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
        char label[64];
        snprintf(label, sizeof label, "truncated at %zu", cuts[i]);
        char *t = strndup(full, cuts[i]);
        expect_load_error(label, t, "malformed JSON");
        free(t);
    }
    free(full);

    /* malformed tokenizer_config.json next to a good tokenizer.json */
    const char *good = "{" BPE_AB "}";
    write_file("tokenizer_config.json", "{\"bos_token\": ", 14);
    expect_load_error("bad tokenizer_config.json", good, "tokenizer_config.json");
    remove_file("tokenizer_config.json");

    bad_args(gpt2_dir);
    fuzz(small_dir);
    remove_file("tokenizer.json");
    rmdir(tmpdir);
    printf("bad-input: %d failure(s)\n", failures);
    return failures ? 1 : 0;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc == 4 && strcmp(argv[1], "--hf") == 0) return run_hf(argv[2], argv[3]);
    if (argc == 4 && strcmp(argv[1], "--bad-input") == 0) return run_bad_input(argv[2], argv[3]);
    fprintf(stderr, "usage: %s --hf TOKENIZER_DIR EXPECT.json | --bad-input GPT2_DIR SMALL_DIR\n", argv[0]);
    return 2;
}
