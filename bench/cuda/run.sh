#!/usr/bin/env bash
# On the GPU machine (no Rust there): make the CUDA libraries findable, then run the
# prebuilt check/benchmark binary, keeping the whole log under $OUT.
#
#   bench/cuda/run.sh [BINARY] [ARGS...]     (default .device/gpu_check, no args = check + bench)
#
# The log goes to $OUT/$LOG (default gpu_check.log).
# cudarc's cuda-12080 bindings look for libcublas.so / libcublas.so.12 and libnvrtc.so /
# libnvrtc.so.12; a CUDA 13 install may ship only the .so.13 files, so link those.
set -uo pipefail
BIN=${1:-.device/gpu_check}
shift || true
OUT=${OUT:-/tmp/cuda-out}
mkdir -p "$OUT"
LINKS=/tmp/cuda-links
mkdir -p "$LINKS"
{
dirs=$(ls -d /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib /usr/local/cuda-*/lib64 \
  /usr/lib/x86_64-linux-gnu /opt/*/.venv/lib/python3*/site-packages/nvidia/*/lib \
  /usr/local/lib/python3*/dist-packages/nvidia/*/lib 2>/dev/null)
for lib in cublas cublasLt nvrtc; do
  if ldconfig -p | grep -q "lib$lib\.so "; then echo "lib$lib.so: $(ldconfig -p | grep "lib$lib\.so " | head -1)"; continue; fi
  f=$(for d in $dirs; do ls "$d"/lib$lib.so.1[0-9]* 2>/dev/null; done | grep -v alt | sort -V | tail -1)
  if [ -n "$f" ]; then
    ln -sf "$f" "$LINKS/lib$lib.so"
    export LD_LIBRARY_PATH="$LINKS:$(dirname "$f")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    echo "linked lib$lib.so -> $f"
  else
    echo "lib$lib not found in: $dirs"
  fi
done
echo "date: $(date -u +%FT%TZ)  host cores: $(nproc)"
nvidia-smi --query-gpu=name,driver_version,memory.total,pcie.link.gen.current,pcie.link.width.current --format=csv,noheader 2>&1
"$BIN" "$@"
echo "exit code: $?"
} 2>&1 | tee "$OUT/${LOG:-gpu_check.log}"
grep -q "^exit code: 0$" "$OUT/${LOG:-gpu_check.log}"
