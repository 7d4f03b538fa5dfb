/* The CPU backend's op table: the fp32 reference every other backend is
 * tested against. One op per file in this folder; this file only wires them. */
#include "../ops.h"

#include "attention.h"
#include "elementwise.h"
#include "embedding.h"
#include "matmul.h"
#include "rmsnorm.h"
#include "rope.h"

static const loom_ops cpu_ops = {
    .name = "cpu",
    .embedding = loom_cpu_embedding,
    .rmsnorm = loom_cpu_rmsnorm,
    .matmul = loom_cpu_matmul,
    .rope = loom_cpu_rope,
    .attention = loom_cpu_attention,
    .attention_paged = loom_cpu_attention_paged,
    .swiglu = loom_cpu_swiglu,
    .add = loom_cpu_add,
};

const loom_ops *loom_ops_cpu(void) { return &cpu_ops; }
