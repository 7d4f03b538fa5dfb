/* The paged decode kernel for small query groups (attention_decode.cu), as
 * attention.cu's launcher calls it: one block per (split, kv head, sequence)
 * over the pool layout of loom_cuda_attention. Internal to kernels/cuda/;
 * included by .cu files only. */
#ifndef LOOM_KERNELS_CUDA_ATTENTION_DECODE_H
#define LOOM_KERNELS_CUDA_ATTENTION_DECODE_H

#include <cuda_runtime.h>
#include <stdint.h>

#include "../../util/dtype.h"
#include "attention_args.h"

/* Largest query group (n_heads / n_kv_heads) the kernel takes. */
#define ATT_ROWS_MAX_GROUP 8


/* Whether the kernel takes this shape: group <= ATT_ROWS_MAX_GROUP, head_dim
 * 64 or 128. */
bool att_rows_ok(int group, int head_dim);

/* Blocks of the kernel for this shape resident per SM on the current device
 * (at least 1; cached per device). */
int att_rows_blocks_per_sm(loom_dtype act, loom_dtype kv, int group, int head_dim);

/* Launches grid (n_splits, n_kv_heads, n_seqs) on st with PDL; reads a's
 * tensors and shape, n_splits with part_o/part_lse, and min_chunk. Each block
 * attends the tokens of its sequence (one, in a decode batch) for the
 * group's query heads over its split of the visible keys: splits of equal
 * size, whole multiples of 16 keys and at least min_chunk, the last taking
 * the rest. With n_splits 1 it writes out; else the partials (o normalized,
 * lse; lse -inf and o 0 for a split with no keys) for a reduction. kv is
 * the pool's element: act, or LOOM_F8E4M3 (widened exactly). q_start,
 * ctx_len and the block tables are read before the PDL wait (the kernel
 * before must not write them). Returns cudaErrorInvalidValue for a shape
 * att_rows_ok refuses. */
cudaError_t att_rows_launch(const AttParams &a, loom_dtype act, loom_dtype kv, int head_dim, int n_seqs, cudaStream_t st);

#endif
