#!/bin/bash
# Serving benchmarks on one GPU (issue 5 targets), a Llama-2-7B shape with
# random weights (`loom serve --dummy-weights`), fp16, through loom-serve-bench:
#   A. in-flight vs static batching: 512 requests at once, input 128, output
#      uniform 16..512 (and a long-tailed mix from a --lengths file);
#   B. KV cache reuse: a shared 1,024-token prefix + 32 own tokens, 8 new
#      tokens, $PREFIX_RATE requests/s (default 2: requests seldom overlap, so
#      TTFT is the prefill's, not a wait behind another request's step), reuse
#      on vs off (TTFT);
#   C. coordinator overhead at batch 64: the Stats timing of run A (in-flight).
# Run from the repository root with a bundle in .carry/bundle:
#   bench/serve_perf_gpu.sh [uniform] [longtail] [prefix]   (default: all three)
# Writes logs and JSON to $OUT, packed into $OUT/serve-perf.tgz.
set -u
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 NCCL_NVLS_ENABLE=0
B=.carry/bundle/bin
OUT=${OUT:-serve-out}
mkdir -p "$OUT" /tmp/m7b
cat > /tmp/m7b/config.json <<'JSON'
{"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096, "intermediate_size": 11008,
 "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 32000,
 "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "bos_token_id": 1, "eos_token_id": 2,
 "tie_word_embeddings": false, "torch_dtype": "float16"}
JSON
python3 - "$OUT/longtail.json" <<'PY'
import json, random, sys
r = random.Random(7)  # 90% short answers (16..128), 10% long ones (512..1024): a long-tailed mix
json.dump([[128, r.randint(16, 128) if r.random() < 0.9 else r.randint(512, 1024)] for _ in range(512)], open(sys.argv[1], "w"))
PY
port=7200
run() { # name, serve flags..., then -- bench flags...
    local name=$1; shift
    local sflags=() bflags=()
    while [ "$1" != "--" ]; do sflags+=("$1"); shift; done; shift
    bflags=("$@")
    port=$((port + 1))
    mpirun -n 2 $B/loom serve --model /tmp/m7b --dummy-weights --device cuda --max-batch-size 64 --max-num-tokens 4096 \
        --listen tcp://127.0.0.1:$port "${sflags[@]}" > "$OUT/serve-$name.log" 2>&1 &
    local pid=$!
    $B/loom client --endpoint tcp://127.0.0.1:$port --health --wait 300 > /dev/null || { tail "$OUT/serve-$name.log"; kill $pid; return 1; }
    echo "== $name: serve ${sflags[*]} / bench ${bflags[*]}"
    $B/loom-serve-bench --endpoint tcp://127.0.0.1:$port --seed 1 --vocab 32000 --json "$OUT/servebench-$name.json" "${bflags[@]}" 2>&1 | tail -18
    $B/loom client --endpoint tcp://127.0.0.1:$port --stats > "$OUT/stats-$name.json"
    cat "$OUT/stats-$name.json"; echo
    kill -TERM $pid; wait $pid
}
steps=${*:-uniform longtail prefix}
has() { case " $steps " in *" $1 "*) return 0 ;; esac; return 1; }
has uniform && for sched in inflight static; do
    run "uniform-$sched" --scheduler $sched -- --num-requests 512 --input-len 128 --output-len-range 16,512
done
has longtail && for sched in inflight static; do
    run "longtail-$sched" --scheduler $sched -- --lengths "$OUT/longtail.json"
done
has prefix && for reuse in on off; do
    flags=(); [ $reuse = on ] && flags=(--enable-kv-cache-reuse)
    run "prefix-reuse-$reuse" "${flags[@]}" -- --num-requests 40 --rate "${PREFIX_RATE:-2}" --shared-prefix 1024 --input-len 32 --output-len 8
done
(cd "$OUT" && tar czf serve-perf.tgz --remove-files servebench-*.json stats-*.json serve-*.log 2>/dev/null)
