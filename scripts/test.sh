#!/usr/bin/env bash
# Every test: formatting and lints, the Rust unit and integration tests (both real models and
# the tiny float32 oracle), the C ABI header check, the C/C++ examples and misuse tests, the
# Python shim, `pardec serve` with OpenAI's client, and the training recipe's smoke test.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/test-setup.sh
# The ARM64 check's comparison rule (scripts/cross-aarch64.sh itself takes 11 minutes: not here).
python3 scripts/lib/compare-greedy.py --self-test
# Release profile only: llama.cpp is compiled once, and tests run at real speed. The whole
# workspace (the library and the command line), with the C ABI and the CLI's tools compiled in.
features=(--features pardec/capi,pardec/tools)
# Style first, as it fails fastest: formatting (rustfmt.toml) and clippy's lints as errors.
for tool in fmt clippy; do
    cargo "$tool" --version >/dev/null 2>&1 || {
        echo "test.sh: cargo $tool is missing: run \`rustup component add rustfmt clippy\`" >&2
        exit 1
    }
done
cargo fmt --all --check
cargo clippy --release --workspace --all-targets "${features[@]}" -- -D warnings
cargo test --release --workspace --all-targets "${features[@]}"
cargo test --release --workspace --doc "${features[@]}"
if [[ -f scripts/test-ffi.sh ]]; then
    bash scripts/test-ffi.sh
fi
bash scripts/test-serve.sh
bash scripts/test-training.sh
# The RPC backend needs llama.cpp built with GGML_RPC=ON: a second build, in target/rpc.
bash scripts/test-rpc.sh
bash scripts/check-package.sh
echo "test.sh: all tests passed"
