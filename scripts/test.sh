#!/usr/bin/env bash
# Every test: the Rust unit and integration tests (both real models and the tiny float32
# oracle), the C ABI header check, the C/C++ examples and misuse tests, the Python shim, and
# the training recipe's smoke test.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Release profile only: llama.cpp is compiled once, and tests run at real speed.
cargo test --release --all-targets
cargo test --release --doc
if [[ -f scripts/test-ffi.sh ]]; then
    bash scripts/test-ffi.sh
fi
bash scripts/test-training.sh
echo "test.sh: all tests passed"
