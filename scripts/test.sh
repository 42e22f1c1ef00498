#!/usr/bin/env bash
# The whole test suite: fetch the test models if absent, then run every test.
#   scripts/test.sh [extra cargo test args]
set -euo pipefail
root="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)"
cd "$root"
scripts/fetch-models.sh all
cargo test --workspace --locked "$@"
