#!/usr/bin/env bash
# NVIDIA's runtime compiler from its PyPI wheel (no GPU, no CUDA toolkit needed), so the
# test suite compiles every CUDA kernel for sm_80 and sm_90 on any machine.
#   scripts/fetch-nvrtc.sh      prints the directory holding libnvrtc.so.12
set -euo pipefail
version=12.9.86
dir="${XDG_CACHE_HOME:-$HOME/.cache}/tandem/nvrtc-$version"
if [ ! -f "$dir/libnvrtc.so.12" ]; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  python3 -m pip download --quiet --disable-pip-version-check --no-deps \
    --only-binary :all: --platform manylinux2014_x86_64 -d "$tmp" "nvidia-cuda-nvrtc-cu12==$version" >&2
  mkdir -p "$dir"
  python3 - "$tmp" "$dir" <<'PY'
import os, sys, zipfile
tmp, dest = sys.argv[1], sys.argv[2]
wheel = next(os.path.join(tmp, f) for f in os.listdir(tmp) if f.endswith(".whl"))
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        base = os.path.basename(name)
        # The compiler and its builtins; the .alt variants are not needed.
        if base.startswith("libnvrtc") and ".alt." not in base and ".so" in base:
            with z.open(name) as src, open(os.path.join(dest, base), "wb") as out:
                out.write(src.read())
PY
fi
echo "$dir"
