#!/usr/bin/env bash
# On the GPU machine: one real GGUF model through the same binary with --backend cpu and
# --backend cuda — greedy text (temperature 0) after a prompt long enough for the whole
# stack to go to the card, then perplexity over GPL-3 (-c 512, 8 chunks) — and whether
# they agree. Run it through run.sh so the CUDA libraries are found:
#
#   bash bench/cuda/run.sh bench/cuda/real_model.sh TANDEM_BINARY MODEL.gguf
set -uo pipefail
BIN=$1
MODEL=$2
TEXT=tests/fixtures/reference/GPL-3.txt
PROMPT=$(head -c 2000 "$TEXT")
for b in cpu cuda; do
  "$BIN" run -m "$MODEL" -p "$PROMPT" -n 32 --temp 0 --ignore-eos --backend "$b" --verbose >"/tmp/greedy-$b.txt" 2>"/tmp/greedy-$b.err"
  echo "greedy $b: ...$(tail -c 200 "/tmp/greedy-$b.txt" | tr '\n' ' ')"
  grep -E "prompt:|placement: decoder stack N=[0-9]{2,}|error|warning" "/tmp/greedy-$b.err" | head -3
done
if cmp -s /tmp/greedy-cpu.txt /tmp/greedy-cuda.txt; then echo "greedy: the same 32 tokens"; else echo "greedy: the texts differ"; fi
for b in cpu cuda; do
  echo "perplexity $b: $("$BIN" perplexity -m "$MODEL" -f "$TEXT" -c 512 --chunks 8 --backend "$b" 2>&1 | grep -iE "estimate|final|ppl" | tail -1)"
done
