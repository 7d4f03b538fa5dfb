/* The one-shot TP all-reduce on GPUs (suite ops; the multi-GPU machine),
 * under mpirun with one rank per GPU:
 *  - loom_cuda_ar_run on fp32, fp16 and bf16 sums of awkward lengths (1 to
 *    the staging buffer's capacity, tails of every size) must equal, bitwise,
 *    the host's fp32 sum of every rank's input in rank order, rounded once;
 *  - 400 calls in a row of alternating lengths and dtypes, each checked (the
 *    per-block call counters and the two staging buffers);
 *  - the same calls captured in a CUDA graph and replayed with fresh inputs;
 *  - loom_nccl's all-reduce hook: small sums (one-shot) bitwise, a sum above
 *    the one-shot size (NCCL) within fp32 rounding, a misaligned buffer (NCCL).
 * With --peer-missing: rank 0 calls with a 1 s timeout and the others never
 * do; rank 0's stream must then fail (the kernel traps) within 20 s instead of
 * hanging.
 * Exits 77 when there are fewer GPUs than ranks, or when the GPUs cannot map
 * each other's memory (then there is nothing to test).
 * Usage: mpirun -n N test_allreduce_gpu [--peer-missing] */
#include <cuda_runtime_api.h>
#include <math.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kernels/cuda/allreduce.h"
#include "parallel/custom_ar.h"
#include "parallel/dist_nccl.h"
#include "util/dtype.h"

#define STAGE_BYTES ((size_t)1 << 20)

static int rank_, world_, failures;

#define CK(x)                                                                                                                        \
    do {                                                                                                                             \
        cudaError_t e_ = (x);                                                                                                        \
        if (e_ != cudaSuccess) {                                                                                                     \
            fprintf(stderr, "rank %d: %s: %s\n", rank_, #x, cudaGetErrorString(e_));                                                 \
            MPI_Abort(MPI_COMM_WORLD, 1);                                                                                            \
        }                                                                                                                            \
    } while (0)

static uint64_t rng = 88172645463325252ull;
static float frand(void)
{
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    return (float)((rng >> 40) & 0xffffff) / (float)0x800000 - 1.0f; /* [-1, 1) */
}

static size_t es(loom_dtype dt) { return dt == LOOM_F32 ? 4 : 2; }
static float get(const void *p, loom_dtype dt, int64_t i)
{
    if (dt == LOOM_F32) return ((const float *)p)[i];
    const uint16_t h = ((const uint16_t *)p)[i];
    return dt == LOOM_F16 ? loom_f16_to_f32(h) : loom_bf16_to_f32(h);
}
static void put(void *p, loom_dtype dt, int64_t i, float v)
{
    if (dt == LOOM_F32) ((float *)p)[i] = v;
    else ((uint16_t *)p)[i] = dt == LOOM_F16 ? loom_f32_to_f16(v) : loom_f32_to_bf16(v);
}

/* Random input of n elements of dt on every rank (host copy in *in), and the
 * expected sum (fp32 in rank order, rounded once) in *want. */
static void make_case(loom_dtype dt, int64_t n, void **in, void **want)
{
    const size_t bytes = (size_t)n * es(dt);
    *in = malloc(bytes);
    *want = malloc(bytes);
    void *all = malloc(bytes * (size_t)world_);
    for (int64_t i = 0; i < n; i++) put(*in, dt, i, 4.0f * frand());
    MPI_Allgather(*in, (int)bytes, MPI_BYTE, all, (int)bytes, MPI_BYTE, MPI_COMM_WORLD);
    for (int64_t i = 0; i < n; i++) {
        float s = 0.0f;
        for (int r = 0; r < world_; r++) s += get((char *)all + bytes * (size_t)r, dt, i);
        put(*want, dt, i, s);
    }
    free(all);
}

/* Elements of got (n of dt) not bitwise want. */
static int64_t count_diff(loom_dtype dt, int64_t n, const void *got, const void *want)
{
    int64_t bad = 0;
    for (int64_t i = 0; i < n; i++) bad += memcmp((const char *)got + (size_t)i * es(dt), (const char *)want + (size_t)i * es(dt), es(dt)) != 0;
    return bad;
}

/* Sums this rank's bad elements over the ranks; prints one line on rank 0. */
static void verdict(const char *what, loom_dtype dt, int64_t n, int64_t bad)
{
    int64_t all_bad = 0;
    MPI_Allreduce(&bad, &all_bad, 1, MPI_INT64_T, MPI_SUM, MPI_COMM_WORLD);
    failures += all_bad != 0;
    if (rank_ == 0)
        printf("%s %s %s n=%lld: %lld of %lld elements (all ranks) differ from the rank-order fp32 sum\n", all_bad ? "FAIL" : "ok  ", what,
               loom_dtype_name(dt), (long long)n, (long long)all_bad, (long long)n * world_);
}

/* One call on fresh random inputs; returns this rank's wrong elements. */
static int64_t run_case(const loom_cuda_ar *ar, void *dbuf, loom_dtype dt, int64_t n)
{
    void *in, *want, *got = malloc((size_t)n * es(dt));
    make_case(dt, n, &in, &want);
    CK(cudaMemcpy(dbuf, in, (size_t)n * es(dt), cudaMemcpyHostToDevice));
    const int rc = loom_cuda_ar_run(ar, dbuf, n, dt, NULL);
    if (rc) {
        fprintf(stderr, "rank %d: loom_cuda_ar_run: %d\n", rank_, rc);
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    CK(cudaMemcpy(got, dbuf, (size_t)n * es(dt), cudaMemcpyDeviceToHost));
    const int64_t bad = count_diff(dt, n, got, want);
    free(in), free(want), free(got);
    return bad;
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
    MPI_Comm_size(MPI_COMM_WORLD, &world_);
    int n_dev = 0;
    if (cudaGetDeviceCount(&n_dev) != cudaSuccess || n_dev < world_ || world_ < 2) {
        if (rank_ == 0) printf("needs 2+ ranks and a GPU each (%d ranks, %d GPUs): skipped\n", world_, n_dev);
        MPI_Finalize();
        return 77;
    }
    CK(cudaSetDevice(rank_ % n_dev));
    rng += (uint64_t)rank_ * 0x9e3779b97f4a7c15ull;
    loom_custom_ar *car = loom_custom_ar_create(MPI_COMM_WORLD, STAGE_BYTES);
    if (!car) {
        int can = 1;
        for (int d = 0; d < world_; d++) {
            int c = 0;
            if (d != rank_ % n_dev && (cudaDeviceCanAccessPeer(&c, rank_ % n_dev, d) != cudaSuccess || !c)) can = 0;
        }
        int all = 0;
        MPI_Allreduce(&can, &all, 1, MPI_INT, MPI_LAND, MPI_COMM_WORLD);
        if (rank_ == 0) printf("%s: the one-shot all-reduce could not be set up%s\n", all ? "FAIL" : "skipped", all ? " although the GPUs map each other" : " (no peer access)");
        MPI_Finalize();
        return all ? 1 : 77;
    }
    const loom_cuda_ar *ar = loom_custom_ar_view(car);
    void *dbuf;
    CK(cudaMalloc(&dbuf, STAGE_BYTES + 64));
    if (argc > 1 && !strcmp(argv[1], "--peer-missing")) {
        /* no cleanup afterwards: rank 0's context is gone, and the peers' mappings point into it */
        int ok = 1;
        if (rank_ == 0) {
            loom_cuda_ar short_wait = *ar;
            short_wait.timeout_ns = 1000000000ull;
            struct timespec t0, t1;
            clock_gettime(CLOCK_MONOTONIC, &t0);
            const int rc = loom_cuda_ar_run(&short_wait, dbuf, 4096, LOOM_F32, NULL);
            const cudaError_t e = cudaDeviceSynchronize();
            clock_gettime(CLOCK_MONOTONIC, &t1);
            const double s = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
            ok = rc == 0 && e != cudaSuccess && s < 20.0;
            printf("%s a call no peer joins: launched (rc %d), then the stream failed after %.1f s (%s)\n", ok ? "ok  " : "FAIL", rc, s,
                   cudaGetErrorString(e));
        }
        MPI_Bcast(&ok, 1, MPI_INT, 0, MPI_COMM_WORLD);
        MPI_Finalize();
        return ok ? 0 : 1;
    }

    /* 1. lengths and dtypes */
    const loom_dtype dts[] = {LOOM_F32, LOOM_F16, LOOM_BF16};
    for (int d = 0; d < 3; d++) {
        const int64_t cap = (int64_t)(STAGE_BYTES / es(dts[d]));
        const int64_t ns[] = {1, 2, 3, 7, 8, 9, 17, 4096, 4097, 11008 + 5, 512 * 8 * 36 + 3, cap - 1, cap};
        for (size_t k = 0; k < sizeof ns / sizeof ns[0]; k++) verdict("one-shot", dts[d], ns[k], run_case(ar, dbuf, dts[d], ns[k]));
    }
    /* too large: refused, nothing launched */
    {
        const int rc = loom_cuda_ar_run(ar, dbuf, (int64_t)(STAGE_BYTES / 4) + 1, LOOM_F32, NULL);
        const int rc2 = loom_cuda_ar_run(ar, (char *)dbuf + 4, 8, LOOM_F32, NULL);
        failures += rc == 0 || rc2 == 0;
        if (rank_ == 0) printf("%s too large (rc %d) and misaligned (rc %d) refused\n", rc && rc2 ? "ok  " : "FAIL", rc, rc2);
    }
    /* 2. many calls in a row, each checked */
    {
        int before = failures;
        for (int it = 0; it < 400; it++) {
            const loom_dtype dt = dts[it % 3];
            failures += run_case(ar, dbuf, dt, it % 2 ? 4096 : 37 + it) != 0;
        }
        int mine = failures - before, all = 0;
        MPI_Allreduce(&mine, &all, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
        if (rank_ == 0) printf("%s 400 calls in a row (lengths 37..436 and 4096, three dtypes): %d wrong\n", all ? "FAIL" : "ok  ", all);
    }
    /* 3. in a CUDA graph: two sums per replay, inputs refreshed between replays */
    {
        cudaStream_t st;
        CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
        const int64_t n1 = 4096, n2 = 333;
        void *src1, *src2, *b1, *b2;
        CK(cudaMalloc(&src1, n1 * 4));
        CK(cudaMalloc(&src2, n2 * 2));
        CK(cudaMalloc(&b1, n1 * 4));
        CK(cudaMalloc(&b2, n2 * 2));
        cudaGraph_t g;
        cudaGraphExec_t ge;
        CK(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
        CK(cudaMemcpyAsync(b1, src1, n1 * 4, cudaMemcpyDeviceToDevice, st));
        int rc = loom_cuda_ar_run(ar, b1, n1, LOOM_F32, st);
        CK(cudaMemcpyAsync(b2, src2, n2 * 2, cudaMemcpyDeviceToDevice, st));
        rc |= loom_cuda_ar_run(ar, b2, n2, LOOM_F16, st);
        CK(cudaStreamEndCapture(st, &g));
        CK(cudaGraphInstantiate(&ge, g, 0));
        int bad_replays = rc != 0;
        for (int it = 0; it < 50; it++) {
            void *in1, *w1, *in2, *w2, *g1 = malloc(n1 * 4), *g2 = malloc(n2 * 2);
            make_case(LOOM_F32, n1, &in1, &w1);
            make_case(LOOM_F16, n2, &in2, &w2);
            CK(cudaMemcpy(src1, in1, n1 * 4, cudaMemcpyHostToDevice));
            CK(cudaMemcpy(src2, in2, n2 * 2, cudaMemcpyHostToDevice));
            CK(cudaGraphLaunch(ge, st));
            CK(cudaStreamSynchronize(st));
            CK(cudaMemcpy(g1, b1, n1 * 4, cudaMemcpyDeviceToHost));
            CK(cudaMemcpy(g2, b2, n2 * 2, cudaMemcpyDeviceToHost));
            bad_replays += memcmp(g1, w1, n1 * 4) != 0 || memcmp(g2, w2, n2 * 2) != 0;
            free(in1), free(w1), free(in2), free(w2), free(g1), free(g2);
        }
        int all = 0;
        MPI_Allreduce(&bad_replays, &all, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
        failures += all != 0;
        if (rank_ == 0) printf("%s CUDA graph of two sums, 50 replays with fresh inputs: %d wrong\n", all ? "FAIL" : "ok  ", all);
        cudaGraphExecDestroy(ge), cudaGraphDestroy(g), cudaStreamDestroy(st);
        cudaFree(src1), cudaFree(src2), cudaFree(b1), cudaFree(b2);
    }
    loom_custom_ar_destroy(car);

    /* 4. through loom_nccl's hook: one-shot, NCCL above the one-shot size, NCCL for a misaligned buffer */
    {
        loom_err err = {{0}};
        MPI_Comm self;
        MPI_Comm_split(MPI_COMM_WORLD, rank_, 0, &self);
        loom_nccl *nc = loom_nccl_create(MPI_COMM_WORLD, self, &err);
        if (!nc) {
            fprintf(stderr, "rank %d: %s\n", rank_, err.msg);
            MPI_Abort(MPI_COMM_WORLD, 1);
        }
        const loom_gpu_dist *h = loom_nccl_hooks(nc);
        void *big;
        const int64_t nb = (int64_t)(STAGE_BYTES / 4) + 1001;
        CK(cudaMalloc(&big, nb * 4 + 64));
        struct { int64_t n; int off; const char *what; } cs[] = {{4096, 0, "hook, one-shot"}, {nb, 0, "hook, NCCL (large)"},
                                                               {1000, 4, "hook, NCCL (misaligned)"}};
        for (int k = 0; k < 3; k++) {
            const int64_t n = cs[k].n;
            void *in, *want, *got = malloc((size_t)n * 4);
            make_case(LOOM_F32, n, &in, &want);
            char *p = (char *)big + cs[k].off;
            CK(cudaMemcpy(p, in, (size_t)n * 4, cudaMemcpyHostToDevice));
            if (h->allreduce(h->ctx, p, n, LOOM_F32, NULL)) MPI_Abort(MPI_COMM_WORLD, 1);
            CK(cudaDeviceSynchronize());
            CK(cudaMemcpy(got, p, (size_t)n * 4, cudaMemcpyDeviceToHost));
            if (k == 0) {
                verdict(cs[k].what, LOOM_F32, n, count_diff(LOOM_F32, n, got, want));
            } else { /* NCCL may add in another order: within fp32 rounding */
                double num = 0, den = 0;
                for (int64_t i = 0; i < n; i++) {
                    const double d = (double)((float *)got)[i] - ((float *)want)[i];
                    num += d * d;
                    den += (double)((float *)want)[i] * ((float *)want)[i];
                }
                double rel = sqrt(num / den), worst = 0;
                MPI_Allreduce(&rel, &worst, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
                failures += !(worst <= 1e-6);
                if (rank_ == 0) printf("%s %s fp32 n=%lld: rel L2 %.2e (tol 1e-6)\n", worst <= 1e-6 ? "ok  " : "FAIL", cs[k].what, (long long)n, worst);
            }
            free(in), free(want), free(got);
        }
        cudaFree(big);
        loom_nccl_destroy(nc);
        MPI_Comm_free(&self);
    }
    cudaFree(dbuf);
    int all = 0;
    MPI_Allreduce(&failures, &all, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    if (rank_ == 0) printf("%s\n", all ? "FAILED" : "all passed");
    MPI_Finalize();
    return all ? 1 : 0;
}
