/* Distributed golden test, run under mpirun with tp*pp ranks (workers only):
 * each rank loads its partition of a fixture, the ranks run transformers'
 * greedy continuation together (last stage's TP rank 0 picks each token and
 * broadcasts it), and that rank checks prompt logits (1e-4 relative L2) and
 * every greedy token against the golden file. Also the stories260K model,
 * against llama2.c's expected output.
 * Usage: test_dist FIXTURE_DIR TP PP [PP_LAYERS like 2,1] */
#include <jansson.h>
#include <math.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/ops.h"
#include "parallel/dist_mpi.h"
#include "util/parse.h"
#include "worker/model.h"

static int32_t argmax(const float *x, int64_t n)
{
    int64_t b = 0;
    for (int64_t i = 1; i < n; i++)
        if (x[i] > x[b]) b = i;
    return (int32_t)b;
}

static int64_t json_ids(json_t *a, int32_t **out)
{
    size_t n = json_array_size(a);
    *out = malloc((n ? n : 1) * sizeof **out);
    for (size_t i = 0; i < n; i++) (*out)[i] = (int32_t)json_integer_value(json_array_get(a, i));
    return (int64_t)n;
}

static int run(const char *dir, int tp, int pp, const int64_t *pp_layers, int rank)
{
    loom_err err = {{0}};
    char path[4096];
    /* golden.json for fixtures; expected_greedy.json for the demo model */
    snprintf(path, sizeof path, "%s/golden.json", dir);
    json_t *g = json_load_file(path, 0, NULL);
    int stories = 0;
    if (!g) {
        snprintf(path, sizeof path, "%s/expected_greedy.json", dir);
        g = json_load_file(path, 0, NULL);
        stories = 1;
    }
    if (!g) {
        fprintf(stderr, "rank %d: no golden.json or expected_greedy.json in %s\n", rank, dir);
        return 1;
    }
    int32_t *prompt, *want;
    int64_t n_prompt = json_ids(json_object_get(g, "prompt_ids"), &prompt);
    int64_t n_want = json_ids(json_object_get(g, stories ? "output_ids" : "greedy_ids"), &want);
    json_t *jl = json_object_get(g, "prompt_last_logits");

    loom_mpi_dist *d = loom_mpi_dist_create(MPI_COMM_WORLD, tp, pp, &err);
    if (!d) {
        fprintf(stderr, "rank %d: %s\n", rank, err.msg);
        return 1;
    }
    const loom_topo *t = loom_mpi_dist_topo(d);
    loom_shard sh = {.tp_rank = t->tp_rank, .tp_size = tp, .pp_rank = t->pp_rank, .pp_size = pp};
    int fail = 0;
    loom_model *m = NULL;
    loom_kv_cache *kv = NULL;
    loom_config cfg;
    if (loom_config_load(dir, &cfg, &err) != LOOM_OK ||
        loom_shard_layers(cfg.n_layers, pp, pp_layers, t->pp_rank, &sh.layer_begin, &sh.layer_end, &err) != LOOM_OK) {
        fprintf(stderr, "rank %d: %s\n", rank, err.msg);
        return 1;
    }
    loom_config_free(&cfg);
    m = loom_model_load(dir, loom_ops_cpu(), &sh, loom_mpi_dist_hooks(d), 5, 1, &err);
    if (!m) {
        fprintf(stderr, "rank %d: load: %s\n", rank, err.msg);
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    kv = loom_model_kv_create(m, n_prompt + n_want, &err);
    const int root = loom_topo_worker(tp, pp - 1, 0);
    int32_t *got = malloc((size_t)n_want * sizeof *got);
    if (loom_model_prefill(m, kv, prompt, n_prompt, &err) != LOOM_OK) {
        fprintf(stderr, "rank %d: prefill: %s\n", rank, err.msg);
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    if (rank == root && jl) {
        double num = 0, den = 0;
        for (int64_t i = 0; i < m->cfg.vocab_size; i++) {
            double r = json_number_value(json_array_get(jl, (size_t)i)), e = m->rs.logits[i] - r;
            num += e * e;
            den += r * r;
        }
        double rel = sqrt(num / den);
        printf("%s tp=%d pp=%d: prompt logits rel L2 %.3g\n", dir, tp, pp, rel);
        if (!(rel <= 1e-4)) fail = 1;
    }
    for (int64_t i = 0; i < n_want; i++) {
        int32_t id = rank == root ? argmax(m->rs.logits, m->cfg.vocab_size) : 0;
        MPI_Bcast(&id, 1, MPI_INT32_T, root, MPI_COMM_WORLD);
        got[i] = id;
        if (i + 1 < n_want && loom_model_forward(m, kv, &id, 1, &err) != LOOM_OK) {
            fprintf(stderr, "rank %d: decode: %s\n", rank, err.msg);
            MPI_Abort(MPI_COMM_WORLD, 1);
        }
    }
    if (rank == root) {
        int64_t same = 0;
        while (same < n_want && got[same] == want[same]) same++;
        printf("%s tp=%d pp=%d: %lld/%lld greedy tokens identical\n", dir, tp, pp, (long long)same, (long long)n_want);
        if (same != n_want) fail = 1;
    }
    MPI_Bcast(&fail, 1, MPI_INT, root, MPI_COMM_WORLD);
    free(got);
    free(prompt);
    free(want);
    json_decref(g);
    loom_kv_cache_destroy(kv);
    loom_model_destroy(m);
    loom_mpi_dist_destroy(d);
    return fail;
}

int main(int argc, char **argv)
{
    int provided;
    MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided);
    int rank, size;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    loom_err err;
    int64_t tp = 0, pp = 0;
    int64_t *layers = NULL;
    if (argc < 4 || loom_parse_i64(argv[2], 1, 64, "tp", &tp, &err) || loom_parse_i64(argv[3], 1, 64, "pp", &pp, &err)) {
        if (rank == 0) fprintf(stderr, "usage: test_dist FIXTURE TP PP [PP_LAYERS]\n");
        MPI_Finalize();
        return 2;
    }
    if (size != tp * pp) {
        if (rank == 0) fprintf(stderr, "run with mpirun -n %lld\n", (long long)(tp * pp));
        MPI_Finalize();
        return 2;
    }
    if (argc > 4) {
        int32_t *ids;
        size_t n;
        if (loom_parse_id_list(argv[4], "pp layers", &ids, &n, &err) != LOOM_OK || (int64_t)n != pp) {
            if (rank == 0) fprintf(stderr, "bad PP_LAYERS\n");
            MPI_Finalize();
            return 2;
        }
        layers = malloc(n * sizeof *layers);
        for (size_t i = 0; i < n; i++) layers[i] = ids[i];
        free(ids);
    }
    int fail = run(argv[1], (int)tp, (int)pp, layers, rank);
    free(layers);
    MPI_Finalize();
    if (rank == 0) printf("%s\n", fail ? "FAIL" : "ok");
    return fail;
}
