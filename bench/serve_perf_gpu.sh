#!/bin/bash
# In-flight vs static batching on one GPU (issue 5 target): a random-weight
# ~1.1B Llama, 256 requests at once, input 128, output uniform 16..512.
set -u
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 NCCL_NVLS_ENABLE=0
B=.carry/bundle/bin
python3 - <<'PY'
import torch
from transformers import LlamaConfig, LlamaForCausalLM
torch.manual_seed(0)
cfg = LlamaConfig(hidden_size=2048, intermediate_size=5632, num_hidden_layers=16, num_attention_heads=16, num_key_value_heads=16,
                  vocab_size=32000, max_position_embeddings=2048, bos_token_id=1, eos_token_id=2, torch_dtype="float16")
with torch.device("cuda"):
    m = LlamaForCausalLM(cfg).half()
m.save_pretrained("/tmp/m1b")
print("model saved", sum(p.numel() for p in m.parameters()) / 1e9, "B params")
PY
port=7100
for sched in inflight static; do
    port=$((port + 1))
    mpirun -n 2 $B/loom serve --model /tmp/m1b --device cuda --max-batch-size 64 --max-num-tokens 4096 --scheduler $sched \
        --listen tcp://127.0.0.1:$port > $OUT/serve-$sched.log 2>&1 &
    pid=$!
    $B/loom client --endpoint tcp://127.0.0.1:$port --health --wait 180 >/dev/null || { tail $OUT/serve-$sched.log; exit 1; }
    $B/loom-serve-bench --endpoint tcp://127.0.0.1:$port --num-requests 256 --input-len 128 --output-len-range 16,512 --seed 1 \
        --vocab 32000 --json $OUT/servebench-$sched.json 2>&1 | tail -16
    kill -TERM $pid; wait $pid
done
