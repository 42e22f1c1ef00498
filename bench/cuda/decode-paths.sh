#!/usr/bin/env bash
# On the GPU machine, one call of about 8 minutes: the opt-in decode paths checked
# (gpu_check --check --quick turns graphs, the split decode attention, MoE and Gated DeltaNet
# stacks on for its model check), every decode kernel timed alone (gpu_check --bench-mv), then
# tandem's own 8B-shaped Q4_K pp512/tg128 with the paths on and off. No llama.cpp here: for
# the ratios, bench/cuda/vs-llama-cpp.sh with FORMATS of the same suffixes.
#
#   bash bench/cuda/decode-paths.sh [TANDEM] [GPU_CHECK]     (default .device/tandem, .device/gpu_check)
#
# Formats: "gguf" (defaults), "-g" graphs + split attention on, "-w" the wide Q4_K kernel.
set -uo pipefail
T=${1:-.device/tandem}
G=${2:-.device/gpu_check}
export OUT=${OUT:-/tmp/cuda-out}
mkdir -p "$OUT"
M=/tmp/vs-8b-32l-q4_k.gguf
( [ -f $M ] || "$T" gen-model --arch llama --layers 32 --dim 4096 --ff 14336 --heads 32 --kv-heads 8 \
    --vocab 128256 --type q4_k -o $M >"$OUT/gen.log" 2>&1 ) &
gen=$!
LOG=check.log timeout 200 bash "$(dirname "$0")/run.sh" "$G" --check --quick >/dev/null 2>&1
grep -E "graphs|FAIL|model tiny|all checks|exit code|kernel mv_|split decode|start-up|device:" "$OUT/check.log" | tail -90
LOG=bench-mv.log timeout 100 bash "$(dirname "$0")/run.sh" "$G" --bench-mv >/dev/null 2>&1
tail -32 "$OUT/bench-mv.log"
wait $gen
ls -l $M
for f in ${FORMATS:-gguf gguf-g gguf-g-w}; do
  (
    case "$f" in *-g*) export TANDEM_CUDA_GRAPHS=1 TANDEM_CUDA_SPLIT_ATTENTION=1 ;; esac
    case "$f" in *-w*) export TANDEM_CUDA_MV_WIDE=1 ;; esac
    LOG=tg-$f.log timeout 120 bash "$(dirname "$0")/run.sh" "$T" bench -m $M -p 512 -n 128 -r 2 -t "$(nproc)" --backend cuda -ngl 99 --gpu-weights gguf >/dev/null 2>&1
  )
  echo "== $f"
  grep -E "^\||error|exit code" "$OUT/tg-$f.log"
done
