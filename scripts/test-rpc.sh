#!/usr/bin/env bash
# llama.cpp's RPC backend: builds the workspace with it (GGML_RPC=ON, which llama-cpp-sys-2
# forwards to CMake) in its own target directory, target/rpc, because llama-cpp-sys-2's CMake
# cache keeps the setting of a directory's first build. Then runs cli/tests/rpc.rs there:
# `pardec rpc-server` on 127.0.0.1, the same greedy tokens and the batch-vs-alone check through
# it, a server that is down or killed mid-generation. PARDEC_EXPECT_RPC=1 makes a build that
# lacks the backend fail instead of testing the "no backend" error. About 6 minutes cold.
set -euo pipefail
cd "$(dirname "$0")/.."
export GGML_RPC=ON GGML_RPC_RDMA=OFF CARGO_TARGET_DIR=target/rpc PARDEC_EXPECT_RPC=1
cargo test --release -p pardec-cli --features rpc --test rpc -- --test-threads 1
echo "test-rpc.sh: the RPC tests passed"
