#!/bin/bash
# On a GPU host: `loom bench` from a bundle over every GPU of the host in the
# tensor/pipeline-parallel layouts that fit (issue 6). With N GPUs: TP=N,
# TP=N/2 x PP=2, PP=N, and PP=N again with NCCL_P2P_DISABLE=1
# NCCL_SHM_DISABLE=1 (the network path between stages). One JSON and one log
# per layout in $OUT (or ./gpu-out), then a summary table of all of them.
#   bench/multi_gpu_bench.sh BUNDLE [LAYOUT]...
# LAYOUT is TPxPP, with "-nop2p" for the NCCL variant (e.g. 4x1 2x2 1x4
# 1x4-nop2p; default: the four above). MODEL, BATCH and IO override the
# preset (llama-70b), the batch sizes ("1;8;64") and in,out lengths
# ("128,256;2048,256").
set -u
b=$1/bin/loom
shift
out=${OUT:-gpu-out}
mkdir -p "$out"
model=${MODEL:-llama-70b}
batch=${BATCH:-1;8;64}
io=${IO:-128,256;2048,256}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 NCCL_NVLS_ENABLE=0
ngpu=$(nvidia-smi -L | wc -l)
if [ $# -gt 0 ]; then
    layouts="$*"
elif [ "$ngpu" -le 1 ]; then
    layouts="1x1"
elif [ "$ngpu" -ge 4 ]; then
    layouts="${ngpu}x1 $((ngpu / 2))x2 1x${ngpu} 1x${ngpu}-nop2p"
else
    layouts="${ngpu}x1 1x${ngpu} 1x${ngpu}-nop2p"
fi
echo "== $ngpu GPUs: $(nvidia-smi --query-gpu=name --format=csv,noheader | sort | uniq -c | xargs); layouts: $layouts"
fail=0
jsons=()
for layout in $layouts; do
    tp=${layout%%x*}
    rest=${layout#*x}
    pp=${rest%%-*}
    n=$((tp * pp))
    name="bench_${model//[^a-zA-Z0-9]/}_tp${tp}pp${pp}"
    envs=()
    case $layout in
    *-nop2p)
        name="${name}_nop2p"
        envs=(-x NCCL_P2P_DISABLE=1 -x NCCL_SHM_DISABLE=1)
        ;;
    esac
    if [ "$n" -gt "$ngpu" ]; then
        echo "skip $layout: needs $n GPUs, this host has $ngpu"
        continue
    fi
    echo "== $layout: mpirun -n $n ${envs[*]:+${envs[*]} }loom bench --dummy-weights $model --tp $tp --pp $pp"
    rm -f "$out/$name.json"
    mpirun --oversubscribe -n "$n" "${envs[@]}" "$b" bench --dummy-weights "$model" --tp "$tp" --pp "$pp" \
        --batch-size "$batch" --input-output-len "$io" --json "$out/$name.json" > "$out/$name.txt" 2>&1
    rc=$?
    cat "$out/$name.txt"
    if [ $rc -ne 0 ]; then
        echo "FAILED: $layout (exit $rc; log $out/$name.txt)"
        fail=1
    fi
    [ -f "$out/$name.json" ] && jsons+=("$out/$name.json")
done
# the summary: one row per layout and case
[ ${#jsons[@]} -eq 0 ] || python3 - "${jsons[@]}" <<'PY' || fail=1
import json, os, sys
print(f"\n{'layout':<16} {'batch':>5} {'in/out':>9} {'decode_tok/s':>12} {'ttft_ms':>9} {'step/floor':>10} "
      f"{'mem_GiB':>8} {'need_GiB':>8} {'est_GiB':>8}")
for path in sys.argv[1:]:
    j = json.load(open(path))
    lay = j.get("layout", {"tp": 1, "pp": 1})
    env = j.get("nccl_env", {})
    name = f"tp{lay['tp']}xpp{lay['pp']}" + ("-nop2p" if env.get("NCCL_P2P_DISABLE") == "1" else "")
    for c in j["cases"]:
        io = f"{c['input_len']}/{c['output_len']}"
        if "skipped" in c:
            print(f"{name:<16} {c['batch_size']:>5} {io:>9} skipped: {c['skipped']}")
            continue
        print(f"{name:<16} {c['batch_size']:>5} {io:>9} {c['decode_tokens_per_s']:>12.1f} {c['ttft_ms']:>9.1f} "
              f"{c['decode_step_over_floor']:>10.2f} {c['gpu_mem_used_gib']:>8.1f} {c.get('gpu_mem_needed_gib', 0):>8.1f} "
              f"{c.get('gpu_mem_estimate_gib', 0):>8.1f}")
PY
exit $fail
