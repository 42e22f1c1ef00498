#!/usr/bin/env bash
# A real generation on the default model (SmolLM2-135M-Instruct Q4_1), fetched if absent.
#   scripts/demo.sh ["prompt"] [extra tandem run flags]
set -euo pipefail
root="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)"
cd "$root"
scripts/fetch-models.sh smollm2
prompt="${1:-The three most useful things to know about the Rust borrow checker are}"
shift || true
cargo run --release --locked -p tandem -- run -m models/SmolLM2-135M-Instruct.Q4_1.gguf -p "$prompt" -n 128 --temp 0 "$@"
