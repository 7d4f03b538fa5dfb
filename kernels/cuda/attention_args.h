/* The arguments of the paged attention kernels, shared by attention.cu's
 * flash tile kernels and attention_decode.cu's decode kernel. Internal to
 * kernels/cuda/; included by .cu files only. */
#ifndef LOOM_KERNELS_CUDA_ATTENTION_ARGS_H
#define LOOM_KERNELS_CUDA_ATTENTION_ARGS_H

#include <stdint.h>

struct AttParams {
    void *out;               /* (n_tokens, n_heads, D) act */
    const void *q;           /* (n_tokens, n_heads, D) act, rows q_stride apart */
    const void *pool;        /* [block][K|V][kv_head][slot][D] act */
    const int32_t *q_start;  /* (n_seqs + 1) */
    const int32_t *ctx_len;  /* (n_seqs) */
    const int32_t *block_tables; /* (n_seqs, max_blocks) */
    float *part_o;           /* multi-block: (n_tokens, n_heads, n_splits, D), else NULL */
    float *part_lse;         /* multi-block: (n_tokens, n_heads, n_splits), log2 domain */
    int64_t q_stride;        /* elements */
    int64_t max_blocks;
    int n_seqs, n_heads, n_kv_heads, group; /* group = n_heads / n_kv_heads */
    int block_shift;         /* log2(tokens_per_block) */
    int window;              /* 0 = no sliding window */
    int q_vec;               /* q rows 16-byte aligned: vector loads */
    float scale_log2;        /* scale * log2(e): softmax in base 2 */
    int n_splits, chunk;     /* multi-block: splits per row and keys per split (tile kernels; 0: per sequence) */
    int min_chunk;           /* multi-block, decode kernel: fewest keys a split takes (a multiple of 16) */
    int rt_grid;             /* tile decode: row tiles per kv head in the grid */
};

#endif
