#!/usr/bin/env bash
# On the GPU machine: every architecture through --backend cuda against the CPU, on
# random-weight files written there by the prebuilt tandem (no Rust on that machine).
#
#   bash bench/cuda/architectures.sh [TANDEM] [ARCH ...]    (default .device/tandem, every hybrid/new one)
#
# Per architecture: `tandem perplexity` on the CPU (BASE=ref: the exact f32 reference
# engine, whose activations are not quantized — the fair base for the card's f16 products)
# writes llama-perplexity's base file, the same with --backend cuda reports the KL
# divergence against it (the card's matmuls, stacks
# where the layers allow, op by op where they do not), then `tandem bench` pp512/tg32 on both.
# Logs under $OUT/arch/.
set -uo pipefail
T=${1:-.device/tandem}
shift || true
archs=("$@")
[ ${#archs[@]} -gt 0 ] || archs=(llama qwen35 qwen35moe qwen3next gemma4 gpt-oss)
OUT=${OUT:-/tmp/cuda-out}
mkdir -p "$OUT/arch" /tmp/arch-models
# The CUDA libraries as run.sh finds them (linked as the names cudarc looks for).
LINKS=/tmp/cuda-links
mkdir -p "$LINKS"
for lib in cublas cublasLt nvrtc; do
  ldconfig -p | grep -q "lib$lib\.so " && continue
  f=$(ls /usr/local/cuda/lib64/lib$lib.so.1[0-9]* /usr/local/cuda/targets/x86_64-linux/lib/lib$lib.so.1[0-9]* 2>/dev/null | grep -v alt | sort -V | tail -1)
  [ -n "$f" ] && ln -sf "$f" "$LINKS/lib$lib.so" && export LD_LIBRARY_PATH="$LINKS:$(dirname "$f")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
done
text=tests/fixtures/reference/GPL-3.txt
threads=$(nproc)
for a in "${archs[@]}"; do
  m=/tmp/arch-models/$a.gguf
  extra=() ff=${FF:-5632}
  # Mixtures of experts: 16 experts of about a quarter the width (a multiple of 256, the
  # K-quants' block), 4 used (A1B-like).
  moe_ff=$(( (ff / 4 + 255) / 256 * 256 ))
  case $a in
    qwen35moe|qwen3next) extra=(--experts 16 --experts-used 4) ff=$moe_ff ;;
    gpt-oss) extra=(--experts 16 --experts-used 4 --expert-type mxfp4 --head-dim 64) ff=$moe_ff ;;
  esac
  # A 2-3B-class shape by default: 16 layers of 2048 wide (head 128).
  "$T" gen-model --arch "$a" --layers "${LAYERS:-16}" --dim "${DIM:-2048}" --ff "$ff" --heads "${HEADS:-16}" \
    --kv-heads "${KV_HEADS:-8}" --vocab 32000 --type q4_k \
    --output-scale 2 "${extra[@]}" -o "$m" >"$OUT/arch/$a.gen.log" 2>&1 || { echo "$a: gen-model failed"; tail -3 "$OUT/arch/$a.gen.log"; continue; }
  "$T" perplexity -m "$m" -f "$text" -c 512 --chunks 4 -t "$threads" --backend "${BASE:-cpu}" --kl-divergence-base /tmp/arch-models/$a.kld \
    >"$OUT/arch/$a.ppl-cpu.log" 2>&1
  "$T" perplexity -m "$m" --kl-divergence-base /tmp/arch-models/$a.kld --kl-divergence -t "$threads" --backend cuda \
    >"$OUT/arch/$a.kld-cuda.log" 2>&1
  echo "== $a: $(grep -h 'Final estimate' "$OUT/arch/$a.ppl-cpu.log") | cuda vs ${BASE:-cpu}: $(grep -hE 'Mean    KLD|Same top p' "$OUT/arch/$a.kld-cuda.log" | tr -s ' ' | tr '\n' ' ')"
  grep -h "placement:" "$OUT/arch/$a.kld-cuda.log" | head -4
  [ -n "${NO_BENCH:-}" ] && continue
  for b in cpu cuda; do
    "$T" bench -m "$m" -p 512 -n 32 -r 2 -t "$threads" --backend $b 2>"$OUT/arch/$a.bench-$b.err" | tee "$OUT/arch/$a.bench-$b.md" | grep -E "pp512|tg32"
  done
done
