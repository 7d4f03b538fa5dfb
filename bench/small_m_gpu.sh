#!/bin/sh
# The small-M measurements of bench/results/2026-11-21-h200-small-m-prefill.md,
# from a bundle made by launch/bundle.sh with the test binaries in
# LOOM_BUNDLE_EXTRA: loom bench on the Llama-2-7B shape (a 32-token chunk on
# 1,024 cached tokens, the same 1,056 tokens as one prefill, a 128-token
# prefill and decode at batch 1 and 64) before (LOOM_GEMM_TUNE=0,
# --multi-block off) and after, with the per-op profile (LOOM_GPU_PROFILE=1),
# a run without graphs for the decode breakdown, then the attention and GEMM
# op tests and the golden GPU check. Logs and JSON go to $OUT (or ./gpu-out);
# a summary is printed last.
#   bench/small_m_gpu.sh BUNDLE [after|before|attention|checks|nographs|plain|before-plain]...
#   (default: all but before-plain, in that order)
set -u
bundle=$1
shift
steps=${*:-after before attention checks nographs plain}
out=${OUT:-gpu-out}
mkdir -p "$out"
here=$(cd "$(dirname "$0")/.." && pwd)
export NCCL_NVLS_ENABLE=0
bin=$bundle/bin
cases="32,2;1024+32,2;1056,2;128,64"
log=$out/bench.log
tests=$out/tests.log
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,driver_version --format=csv,noheader | tee "$out/gpu.txt"

bench() { # name, env..., -- , args...
    name=$1
    shift
    echo "==== $name: $*" >>"$log"
    timeout 120 env "$@" >>"$log" 2>&1 || echo "FAILED: bench $name (rc $?)" | tee -a "$log"
}
args="--dummy-weights llama-7b --batch-size 1;64 --input-output-len $cases"
for step in $steps; do
    case $step in
    after) bench after-profile LOOM_GPU_PROFILE=1 LOOM_GEMM_TUNE=1 "$bin/loom" bench $args --json "$out/bench_after.json" ;;
    before) bench before-profile LOOM_GPU_PROFILE=1 LOOM_GEMM_TUNE=0 "$bin/loom" bench $args --multi-block off --json "$out/bench_before.json" ;;
    before-plain) bench before-plain LOOM_GEMM_TUNE=0 "$bin/loom" bench $args --multi-block off --json "$out/bench_before_plain.json" ;;
    plain) bench after-plain LOOM_GEMM_TUNE=1 "$bin/loom" bench $args --json "$out/bench_after_plain.json" ;;
    nographs)
        bench nographs-profile LOOM_GPU_PROFILE=1 LOOM_CUDA_GRAPHS=0 "$bin/loom" bench --dummy-weights llama-7b --batch-size "1;64" \
            --input-output-len "1024+32,2;128,32"
        ;;
    attention)
        echo "==== test_cuda_attention" >>"$tests"
        timeout 150 "$bin/test_cuda_attention" >>"$tests" 2>&1 || echo "FAILED: test_cuda_attention (rc $?)" | tee -a "$tests"
        ;;
    checks)
        # the GEMM and golden checks side by side (their timings are not used)
        (timeout 200 "$bin/test_cuda_gemm" >"$out/gemm.log" 2>&1 || echo "FAILED: test_cuda_gemm (rc $?)" >>"$out/gemm.log") &
        (timeout 200 "$bin/test_cuda_gemv" >"$out/gemv.log" 2>&1 || echo "FAILED: test_cuda_gemv (rc $?)" >>"$out/gemv.log") &
        (OUT=/tmp/golden-out timeout 200 "$here/bench/gpu_checks.sh" "$bundle" golden >"$out/golden.log" 2>&1 || echo "FAILED: golden" >>"$out/golden.log") &
        wait
        for f in gemm gemv golden; do
            echo "==== $f" >>"$tests"
            cat "$out/$f.log" >>"$tests"
            rm -f "$out/$f.log"
        done
        cat /tmp/golden-out/golden_gpu.log >>"$tests" 2>/dev/null
        ;;
    esac
done

echo "######## profiles (after, before, no graphs; full logs in bench.log) ########"
grep -E "^==== |^T=(32|128|1|64|1056|2048) " "$log"
echo
echo "######## summary ########"
cat "$out/gpu.txt"
grep -E "^==== |^batch|^[0-9]+ +[0-9+]+/[0-9]+ |measured copy|FAILED" "$log"
grep -E "^==== |FAIL|passed|failure|unsupported|cosine|identical|^chunk|^prefill 2048|^decode h32/kv32" "$tests" | grep -v "^ok"
