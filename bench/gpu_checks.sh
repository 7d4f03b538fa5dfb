#!/bin/sh
# Runs the GPU-machine checks from a bundle made by launch/bundle.sh (with the
# test binaries in LOOM_BUNDLE_EXTRA): the ops suite (every CUDA op against the
# CPU op), the golden fixtures and the demo model on the GPU (fp16/bf16 KV against
# transformers, FP8 KV against the CPU fp8 oracle), with 2+ GPUs the
# TP/PP tests (test_dist_gpu, test_allreduce_gpu under mpirun), then `loom bench`
# and the Hugging Face baseline on the same shapes. Writes logs and JSON to
# $OUT (or ./gpu-out).
#   bench/gpu_checks.sh BUNDLE [ops|golden|dist|bench|hf]...   (default: all)
set -u
bundle=$1
shift
out=${OUT:-gpu-out}
mkdir -p "$out"
here=$(cd "$(dirname "$0")/.." && pwd)
steps=${*:-ops golden dist bench hf}
export NCCL_NVLS_ENABLE=0
fail=0
for step in $steps; do
    case $step in
    ops)
        for t in test_ops_cuda test_cuda_elementwise test_cuda_sampling test_cuda_attention test_cuda_gemm test_cuda_gemv \
            test_cuda_fused test_cuda_decode_step; do
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
        for f in llama_gqa llama_mqa qwen2 mistral_swa llama_big llama_bf16 ../../data/stories260K; do
            dt=fp16
            case $f in *bf16*) dt=bf16 ;; esac
            "$bundle/bin/test_golden_gpu" "$here/tests/golden/fixtures/$f" $dt fp8kv >>"$out/golden_gpu.log" 2>&1 ||
                { echo "FAILED: golden fp8kv $f"; fail=1; }
        done
        grep -E "cosine|identical|positions|FAIL" "$out/golden_gpu.log"
        ;;
    dist)
        ngpu=$(nvidia-smi -L | wc -l)
        if [ "$ngpu" -lt 2 ]; then echo "== dist: skipped ($ngpu GPU)"; continue; fi
        export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
        for c in "llama_big 2 1" "llama_big 1 2" "stories260K 2 1" "stories260K 1 2"; do
            set -- $c
            d="$here/tests/golden/fixtures/$1"
            [ "$1" = stories260K ] && d="$here/tests/data/stories260K"
            mpirun -n 2 "$bundle/bin/test_dist_gpu" "$d" "$2" "$3" >>"$out/dist_gpu.log" 2>&1 || { echo "FAILED: dist $c"; fail=1; }
        done
        grep identical "$out/dist_gpu.log"
        mpirun -n 2 "$bundle/bin/test_allreduce_gpu" >"$out/allreduce_gpu.log" 2>&1 || { echo "FAILED: test_allreduce_gpu"; fail=1; }
        tail -1 "$out/allreduce_gpu.log"
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
