#!/bin/bash
# On a GPU host: the paged-KV serving paths of `loom serve --device cuda` (block
# tables from the coordinator, prefix reuse, preemption) on the trained demo
# model, whose greedy tokens have clear margins, so they must be llama2.c's
# whatever the batch: 8 concurrent requests into a pool too small for them
# (preemption), then repeats of a 48-token prompt with reuse on (prefix hits).
# Each request's prompt is BOS + the first k expected tokens; its continuation
# must be the rest.   bench/gpu_serve_paged_check.sh BUNDLE
set -u
b=$1/bin/loom
here=$(cd "$(dirname "$0")/.." && pwd)
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 NCCL_NVLS_ENABLE=0
model="$here/tests/data/stories260K"
ep=tcp://127.0.0.1:6301
mpirun -n 2 "$b" serve --model "$model" --device "${DEVICE:-cuda}" --listen "$ep" --max-batch-size 8 --tokens-per-block 16 \
    --max-tokens-in-paged-kv-cache 1024 --enable-kv-cache-reuse > "${OUT:-.}/serve-paged.log" 2>&1 &
pid=$!
"$b" client --endpoint "$ep" --health --wait 120 > /dev/null || { tail -5 "${OUT:-.}/serve-paged.log"; kill $pid; exit 1; }
python3 - "$b" "$ep" "$model" <<'PY'
import json, subprocess, sys
b, ep, model = sys.argv[1:]
want = json.load(open(model + "/expected_greedy.json"))["output_ids"]
def req(k):
    return [b, "client", "--endpoint", ep, "--json", "--prompt-ids", ",".join(map(str, [1] + want[:k])), "--max-new-tokens", str(len(want) - k)]
def check(out, k, what):
    got = out["output_ids"]
    same = next((i for i, (x, y) in enumerate(zip(got, want[k:])) if x != y), min(len(got), len(want) - k))
    print(f"  {what}: {same}/{len(want) - k} tokens identical")
    return same == len(want) - k
ok = True
ks = [0, 3, 17, 40, 0, 5, 33, 64]
procs = [subprocess.Popen(req(k), stdout=subprocess.PIPE, text=True) for k in ks]
for k, p in zip(ks, procs):
    ok &= check(json.loads(p.communicate(timeout=300)[0]), k, f"concurrent, prompt 1+{k}")
for i in range(3):
    ok &= check(json.loads(subprocess.run(req(47), capture_output=True, text=True, timeout=300).stdout), 47, f"repeat {i} of prompt 1+47")
st = json.loads(subprocess.run([b, "client", "--endpoint", ep, "--stats", "--json"], capture_output=True, text=True).stdout)
print("  stats:", {k: st.get(k) for k in ("preemptions", "prefix_hit_rate", "kv_blocks_used", "kv_blocks_cached", "completed")})
ok &= st.get("preemptions", 0) > 0 and st.get("prefix_hit_rate", 0) > 0 and st.get("kv_blocks_used", 1) == 0
print("paged serving on the GPU:", "OK" if ok else "FAILED")
sys.exit(0 if ok else 1)
PY
rc=$?
kill -TERM $pid; wait $pid 2>/dev/null
exit $rc
