#!/bin/sh
# Batch-1 decode on one GPU, fused one-token step and programmatic dependent
# launch against the unfused step, in one run: the CUDA op tests of the fused
# kernels, the golden fixtures (the fused step runs where the shapes allow it),
# then `loom bench` on the Llama-2-7B shape at batch 1 under each setting (BENCH_CFGS
# overrides the list: "name:VAR=1,VAR2=0 name2: ...") and
# a per-op profile. Writes logs, JSON and one tarball to $OUT (or ./gpu-out).
#   bench/decode_fused_gpu.sh BUNDLE [tests] [bench] [profile]   (default: all)
set -u
bundle=$1
shift
out=${OUT:-gpu-out}
mkdir -p "$out/logs"
here=$(cd "$(dirname "$0")/.." && pwd)
steps=${*:-tests bench profile}
export NCCL_NVLS_ENABLE=0
fail=0
b="$bundle/bin"
log=$out/logs
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >"$log/gpu.txt" 2>&1
for step in $steps; do
    case $step in
    tests)
        for t in test_cuda_fused test_cuda_gemv test_ops_cuda test_cuda_elementwise test_cuda_attention; do
            [ -x "$b/$t" ] || continue
            "$b/$t" >"$log/$t.log" 2>&1 || { echo "FAILED: $t"; fail=1; }
            echo "== $t: $(grep -c '^FAIL' "$log/$t.log") FAIL lines; $(tail -1 "$log/$t.log")"
        done
        for d in "$here"/tests/golden/fixtures/*/ "$here/tests/data/stories260K/"; do
            dt=fp16
            case $d in *bf16*) dt=bf16 ;; esac
            "$b/test_golden_gpu" "$d" $dt >>"$log/golden_gpu.log" 2>&1 || { echo "FAILED: golden $d"; fail=1; }
        done
        grep -E "identical|FAIL" "$log/golden_gpu.log" | tail -30
        ;;
    bench)
        # name:environment; the defaults: fused step (RoPE in the QKV GEMV, SiLU*mul in the gate/up GEMV),
        # PDL on (GEMVs trigger after their wait), 2 GEMV blocks per SM
        for cfg in ${BENCH_CFGS:-unfused:LOOM_FUSED_DECODE=0,LOOM_PDL=0 fused: fused-nopdl:LOOM_PDL=0 fused-noglu:LOOM_FUSED_GLU=0 \
            fused-rope-kernel:LOOM_FUSED_ROPE=0}; do
            name=${cfg%%:*}
            envs=$(echo "${cfg#*:}" | tr ',' ' ')
            env $envs "$b/loom" bench --dummy-weights llama-7b --batch-size "1" --input-output-len "128,256;2048,256" \
                --json "$out/bench-$name.json" >"$log/bench-$name.txt" 2>&1 || { echo "FAILED: bench $name"; fail=1; }
            echo "== $name ($envs)"
            grep -E "^ *1 " "$log/bench-$name.txt" | head -4
        done
        ;;
    profile)
        for cfg in unfused:"LOOM_FUSED_DECODE=0" fused:""; do
            name=${cfg%%:*}
            envs=${cfg#*:}
            env $envs LOOM_GPU_PROFILE=1 LOOM_CUDA_GRAPHS=0 "$b/loom" bench --dummy-weights llama-7b --batch-size "1" \
                --input-output-len "128,256" >"$log/profile-$name.txt" 2>&1 || { echo "FAILED: profile $name"; fail=1; }
            echo "== profile $name"
            tail -22 "$log/profile-$name.txt"
        done
        ;;
    esac
done
tar -C "$out" -czf "$out/decode-fused-logs.tgz" logs && rm -rf "$log"
exit $fail
