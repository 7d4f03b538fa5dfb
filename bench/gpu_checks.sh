#!/bin/sh
# Runs the GPU-machine checks from a bundle made by launch/bundle.sh (with the
# test binaries in LOOM_BUNDLE_EXTRA): the ops suite (every CUDA op against the
# CPU op), the golden fixtures and the demo model on the GPU, then `loom bench`
# and the Hugging Face baseline on the same shapes. Writes logs and JSON to
# $OUT (or ./gpu-out).
#   bench/gpu_checks.sh BUNDLE [ops|golden|bench|hf]...   (default: all)
set -u
bundle=$1
shift
out=${OUT:-gpu-out}
mkdir -p "$out"
here=$(cd "$(dirname "$0")/.." && pwd)
steps=${*:-ops golden bench hf}
export NCCL_NVLS_ENABLE=0
fail=0
for step in $steps; do
    case $step in
    ops)
        for t in test_ops_cuda test_cuda_elementwise test_cuda_sampling test_cuda_attention test_cuda_gemm; do
            echo "== $t"
            "$bundle/bin/$t" >"$out/$t.log" 2>&1 || { echo "FAILED: $t"; fail=1; }
            tail -4 "$out/$t.log"
        done
        ;;
    golden)
        for d in "$here"/tests/golden/fixtures/*/ "$here/tests/data/stories260K/"; do
            dt=fp16
            case $d in *bf16*) dt=bf16 ;; esac
            "$bundle/bin/test_golden_gpu" "$d" $dt >>"$out/golden_gpu.log" 2>&1 || { echo "FAILED: golden $d"; fail=1; }
        done
        grep -E "cosine|identical|FAIL" "$out/golden_gpu.log"
        ;;
    bench)
        "$bundle/bin/loom" bench --dummy-weights llama-7b --batch-size "1;8;64" --input-output-len "128,256;2048,256" \
            --json "$out/bench_llama7b_fp16.json" 2>&1 | tee "$out/bench_llama7b_fp16.txt" || fail=1
        ;;
    hf)
        python3 "$here/bench/hf_baseline.py" --preset llama-7b --batch-size "1;8;64" --input-output-len "128,256;2048,256" \
            --json "$out/hf_llama7b_fp16.json" 2>&1 | tee "$out/hf_llama7b_fp16.txt" | tail -12 || fail=1
        ;;
    esac
done
exit $fail
