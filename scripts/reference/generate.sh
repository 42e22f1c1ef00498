#!/usr/bin/env bash
# Regenerate the llama.cpp reference fixtures in tests/fixtures/reference/.
#
#   scripts/reference/generate.sh [LLAMA_CPP_BUILD_DIR] [all|tokenize|greedy|perplexity]...
#
# LLAMA_CPP_BUILD_DIR defaults to $LLAMA_CPP_BUILD, else /root/cache/llama/build. It must contain
# bin/llama-tokenize, bin/llama-perplexity and the static libs (libllama.a, libggml*.a); the llama.cpp
# source tree (for include/llama.h) is taken from $LLAMA_CPP_SOURCE or the build's CMakeCache.txt.
# Models come from <repo>/models (scripts/fetch-models.sh is run first; TANDEM_MODELS_DIR overrides).
# Nothing from llama.cpp is written into the repository: greedy.cpp is compiled into a temp dir.
set -euo pipefail

SCRIPT_DIR="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)"
REPO_ROOT="$(cd -- "$SCRIPT_DIR/../.." && pwd -P)"
OUT_DIR="$REPO_ROOT/tests/fixtures/reference"
MODELS_DIR="${TANDEM_MODELS_DIR:-$REPO_ROOT/models}"
PYTHON="${PYTHON:-python3}"
CXX="${CXX:-g++}"

die() { printf 'generate: error: %s\n' "$*" >&2; exit 1; }
log() { printf '[generate] %s\n' "$*" >&2; }

BUILD="${LLAMA_CPP_BUILD:-/root/cache/llama/build}"
if [[ $# -gt 0 && "$1" != all && "$1" != tokenize && "$1" != greedy && "$1" != perplexity ]]; then
    BUILD="$1"
    shift
fi
STEPS=("$@")
[[ ${#STEPS[@]} -gt 0 ]] || STEPS=(all)
want() { local s; for s in "${STEPS[@]}"; do [[ "$s" == all || "$s" == "$1" ]] && return 0; done; return 1; }

BUILD="$(cd -- "$BUILD" 2>/dev/null && pwd -P)" || die "llama.cpp build dir not found"
for t in llama-tokenize llama-perplexity; do
    [[ -x "$BUILD/bin/$t" ]] || die "$BUILD/bin/$t missing (build targets llama-tokenize llama-perplexity)"
done

SRC="${LLAMA_CPP_SOURCE:-}"
if [[ -z "$SRC" ]]; then
    SRC="$(sed -n 's/^CMAKE_HOME_DIRECTORY:INTERNAL=//p' "$BUILD/CMakeCache.txt" 2>/dev/null || true)"
fi
[[ -f "$SRC/include/llama.h" ]] || die "llama.cpp source tree not found (set LLAMA_CPP_SOURCE); got '$SRC'"

# models
TANDEM_MODELS_DIR="$MODELS_DIR" "$REPO_ROOT/scripts/fetch-models.sh" all

WORK="$(mktemp -d "${TMPDIR:-/tmp}/tandem-ref.XXXXXX")"
trap 'rm -rf -- "$WORK"' EXIT

# --- compile greedy.cpp against the build's static libraries ------------------------------------
LIBLLAMA="$(find "$BUILD" -name libllama.a -print -quit)"
[[ -n "$LIBLLAMA" ]] || die "libllama.a not found under $BUILD (static build required: -DBUILD_SHARED_LIBS=OFF)"
mapfile -t LIBGGML < <(find "$BUILD/ggml" -name 'libggml*.a' | sort)
[[ ${#LIBGGML[@]} -gt 0 ]] || die "libggml*.a not found under $BUILD/ggml"
log "compiling greedy.cpp ($CXX; llama.h from $SRC)"
"$CXX" -O2 -std=c++17 -I"$SRC/include" -I"$SRC/ggml/include" "$SCRIPT_DIR/greedy.cpp" -o "$WORK/greedy" \
    -Wl,--start-group "$LIBLLAMA" "${LIBGGML[@]}" -Wl,--end-group -fopenmp -lpthread -ldl -lm

mkdir -p -- "$OUT_DIR"
REF=("$PYTHON" "$SCRIPT_DIR/reference.py")
"${REF[@]}" info --greedy "$WORK/greedy" --models-dir "$MODELS_DIR" --out "$WORK/info.json"

if want tokenize; then
    log "tokenize.json"
    "${REF[@]}" tokenize --build "$BUILD" --models-dir "$MODELS_DIR" --info "$WORK/info.json" \
        --corpus "$SCRIPT_DIR/tokenize_corpus.json" --out "$OUT_DIR/tokenize.json"
fi

if want greedy; then
    log "greedy.json"
    "${REF[@]}" greedy --build "$BUILD" --greedy "$WORK/greedy" --models-dir "$MODELS_DIR" --info "$WORK/info.json" \
        --prompts "$SCRIPT_DIR/greedy_prompts.json" --out "$OUT_DIR/greedy.json"
fi

if want perplexity; then
    log "perplexity.json (takes a few minutes on 2 cores)"
    GPL_COPY="$OUT_DIR/GPL-3.txt"
    GPL_SYS=/usr/share/common-licenses/GPL-3
    if [[ -f "$GPL_SYS" ]]; then
        if [[ -f "$GPL_COPY" ]] && ! cmp -s "$GPL_SYS" "$GPL_COPY"; then
            die "$GPL_SYS differs from the committed $GPL_COPY"
        fi
        [[ -f "$GPL_COPY" ]] || cp -- "$GPL_SYS" "$GPL_COPY"
        TEXT="$GPL_SYS"
    else
        [[ -f "$GPL_COPY" ]] || die "neither $GPL_SYS nor $GPL_COPY exists"
        TEXT="$GPL_COPY"
    fi
    "${REF[@]}" perplexity --build "$BUILD" --models-dir "$MODELS_DIR" --info "$WORK/info.json" \
        --text "$TEXT" --text-display "$TEXT" --out "$OUT_DIR/perplexity.json"
fi

log "done: $(cd "$OUT_DIR" && ls)"
