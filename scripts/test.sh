#!/usr/bin/env bash
# The whole test suite: fetch the test models if absent, then run every test.
#   scripts/test.sh [extra cargo test args]
set -euo pipefail
root="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)"
cd "$root"
scripts/fetch-models.sh all
# coremltools checks our ANE weight blobs and program shapes byte for byte (runs on Linux).
python3 -m pip install --quiet --disable-pip-version-check coremltools==9.0
export TANDEM_REQUIRE_COREMLTOOLS=1
# The server's tests talk to it with the official OpenAI client, and check structured
# output with an independent JSON Schema validator.
python3 -m pip install --quiet --disable-pip-version-check "openai>=1" "jsonschema>=4"
# NVIDIA's runtime compiler (PyPI wheel, no GPU needed): every CUDA kernel is compiled for
# sm_80 and sm_90, and a compile error fails the suite.
nvrtc_dir="$(scripts/fetch-nvrtc.sh)"
export LD_LIBRARY_PATH="$nvrtc_dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export TANDEM_REQUIRE_NVRTC=1
cargo test --workspace --locked "$@"
