/* Tokenizer benchmark: load time and single-thread encode/decode throughput
 * for each tokenizer directory given, on one UTF-8 text file. Prints a short
 * table last and writes every timing to --out (default tokenizer_bench.txt).
 *   tokenizer_bench --text FILE [--runs N] [--out PATH] DIR... */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "tokenizer/tokenizer.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

struct row {
    const char *dir;
    double load_s;      /* best of 3 */
    double enc_mbs;     /* best run, MB/s of input text */
    double dec_mbs;     /* best run, MB/s of output text */
    double stream_us;   /* per token, streaming decoder */
    size_t n_ids;
};

int main(int argc, char **argv)
{
    const char *text_path = NULL, *out_path = "tokenizer_bench.txt";
    int runs = 5, ndirs = 0;
    const char *dirs[32];
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--text") == 0 && i + 1 < argc) text_path = argv[++i];
        else if (strcmp(argv[i], "--runs") == 0 && i + 1 < argc) runs = atoi(argv[++i]);
        else if (strcmp(argv[i], "--out") == 0 && i + 1 < argc) out_path = argv[++i];
        else if (ndirs < 32) dirs[ndirs++] = argv[i];
    }
    if (!text_path || ndirs == 0 || runs < 1) {
        fprintf(stderr, "usage: %s --text FILE [--runs N] [--out PATH] DIR...\n", argv[0]);
        return 2;
    }
    FILE *f = fopen(text_path, "rb");
    if (!f) {
        perror(text_path);
        return 1;
    }
    fseek(f, 0, SEEK_END);
    size_t len = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    char *text = malloc(len + 1);
    if (!text || fread(text, 1, len, f) != len) return 1;
    fclose(f);

    FILE *out = fopen(out_path, "w");
    if (!out) {
        perror(out_path);
        return 1;
    }
    fprintf(out, "# tokenizer_bench text=%s bytes=%zu runs=%d\n# dir what run seconds\n", text_path, len, runs);
    struct row rows[32];
    for (int d = 0; d < ndirs; d++) {
        struct row *r = &rows[d];
        memset(r, 0, sizeof *r);
        r->dir = dirs[d];
        loom_err err = {{0}};
        loom_tokenizer *tok = NULL;
        r->load_s = 1e9;
        for (int k = 0; k < 3; k++) {
            loom_tokenizer_destroy(tok);
            double t0 = now();
            tok = loom_tokenizer_load(dirs[d], &err);
            double t = now() - t0;
            if (!tok) {
                fprintf(stderr, "%s: %s\n", dirs[d], err.msg);
                return 1;
            }
            fprintf(out, "%s load %d %.6f\n", dirs[d], k, t);
            if (t < r->load_s) r->load_s = t;
        }
        int32_t *ids = NULL;
        double best = 1e9;
        for (int k = 0; k < runs; k++) {
            free(ids);
            double t0 = now();
            if (loom_tokenizer_encode(tok, text, len, false, &ids, &r->n_ids, &err) != LOOM_OK) {
                fprintf(stderr, "%s: %s\n", dirs[d], err.msg);
                return 1;
            }
            double t = now() - t0;
            fprintf(out, "%s encode %d %.6f\n", dirs[d], k, t);
            if (t < best) best = t;
        }
        r->enc_mbs = (double)len / best / 1e6;
        best = 1e9;
        for (int k = 0; k < runs; k++) {
            char *s = NULL;
            size_t sl = 0;
            double t0 = now();
            if (loom_tokenizer_decode(tok, ids, r->n_ids, false, &s, &sl, &err) != LOOM_OK) {
                fprintf(stderr, "%s: %s\n", dirs[d], err.msg);
                return 1;
            }
            double t = now() - t0;
            fprintf(out, "%s decode %d %.6f\n", dirs[d], k, t);
            if (t < best) best = t;
            r->dec_mbs = (double)sl;
            free(s);
        }
        r->dec_mbs = r->dec_mbs / best / 1e6;
        loom_detok *dt = loom_detok_create(tok, true);
        double t0 = now();
        for (size_t i = 0; i < r->n_ids; i++) {
            const char *p;
            size_t pl;
            if (loom_detok_push(dt, ids[i], &p, &pl, &err) != LOOM_OK) return 1;
        }
        double t = now() - t0;
        fprintf(out, "%s stream %d %.6f\n", dirs[d], 0, t);
        r->stream_us = r->n_ids ? t / (double)r->n_ids * 1e6 : 0;
        loom_detok_destroy(dt);
        free(ids);
        loom_tokenizer_destroy(tok);
    }
    fclose(out);
    printf("text: %s (%zu bytes), best of %d runs, one thread; all timings in %s\n", text_path, len, runs, out_path);
    printf("%-40s %9s %9s %11s %11s %12s\n", "tokenizer", "load ms", "tokens", "enc MB/s", "dec MB/s", "stream us/tok");
    for (int d = 0; d < ndirs; d++)
        printf("%-40s %9.1f %9zu %11.1f %11.1f %12.3f\n", rows[d].dir, rows[d].load_s * 1e3, rows[d].n_ids,
               rows[d].enc_mbs, rows[d].dec_mbs, rows[d].stream_us);
    free(text);
    return 0;
}
