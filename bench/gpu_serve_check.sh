#!/bin/bash
# On a GPU host: `loom serve --device cuda` from a bundle, for several TP/PP
# layouts, queried with loom client: greedy tokens of the demo model must be
# llama2.c's, of llama_big transformers' (16+ identical). It also reports
# whether a batch of sampled requests equals the same requests sent one at a
# time: on GPUs it need not (a one-row batch takes the GEMV kernel, a larger
# one cuBLASLt, and fp16 rounding differs), unlike the CPU backend, whose
# matmul rows do not depend on the batch.
#   [LAYOUTS="1x1 2x2"] bench/gpu_serve_check.sh BUNDLE
set -u
b=$1/bin/loom
here=$(cd "$(dirname "$0")/.." && pwd)
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 NCCL_NVLS_ENABLE=0
ngpu=$(nvidia-smi -L | wc -l)
fail=0
port=6000
check() { # model tp pp
    local model=$1 tp=$2 pp=$3 ep="tcp://127.0.0.1:$port"
    port=$((port + 1))
    [ $((tp * pp)) -le "$ngpu" ] || { echo "skip tp=$tp pp=$pp ($ngpu GPUs)"; return; }
    mpirun --oversubscribe -n $((1 + tp * pp)) "$b" serve --model "$model" --tp "$tp" --pp "$pp" --device cuda --listen "$ep" \
        --max-batch-size 8 > "${OUT:-.}/serve-$tp-$pp-$(basename "$model").log" 2>&1 &
    local pid=$!
    "$b" client --endpoint "$ep" --health --wait 120 > /dev/null || { echo "FAIL: not healthy"; tail -5 "${OUT:-.}/serve-$tp-$pp-$(basename "$model").log"; fail=1; kill $pid; return; }
    python3 - "$b" "$ep" "$model" "$tp" "$pp" <<'PY' || fail=1
import json, os, subprocess, sys
b, ep, model, tp, pp = sys.argv[1:]
def q(*a):
    p = subprocess.run([b, "client", "--endpoint", ep, *a, "--json"], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)
g = os.path.join(model, "golden.json")
if os.path.exists(g):
    g = json.load(open(g)); prompt, want, need = g["prompt_ids"], g["greedy_ids"], 16
else:
    prompt, want = [1], json.load(open(os.path.join(model, "expected_greedy.json")))["output_ids"]; need = len(want)
out = q("--prompt-ids", ",".join(map(str, prompt)), "--max-new-tokens", str(len(want)))["output_ids"]
same = next((i for i, (x, y) in enumerate(zip(out, want)) if x != y), min(len(out), len(want)))
print(f"{os.path.basename(model)} tp={tp} pp={pp} on GPUs via loom serve: {same}/{len(want)} greedy tokens identical")
assert same >= need
args = [["--prompt-ids", f"{5+i},{9+i},{7+i}", "--max-new-tokens", "24", "--temperature", "0.9", "--top-k", "40", "--top-p", "0.9", "--seed", str(i)] for i in range(6)]
solo = [q(*a) for a in args]
procs = [subprocess.Popen([b, "client", "--endpoint", ep, *a, "--json"], stdout=subprocess.PIPE, text=True) for a in args]
together = [json.loads(p.communicate(timeout=300)[0]) for p in procs]
n_same = sum(a == b for a, b in zip(solo, together))
print(f"  sampled requests identical batched and solo: {n_same}/6")
PY
    kill -TERM $pid; wait $pid 2>/dev/null
}
for layout in ${LAYOUTS:-1x1 2x1 1x2 2x2}; do # TPxPP
    check "$here/tests/data/stories260K" "${layout%x*}" "${layout#*x}"
    check "$here/tests/golden/fixtures/llama_big" "${layout%x*}" "${layout#*x}"
done
exit $fail
