#!/usr/bin/env bash
# Tests scripts/lib/find-libclang.sh (setup.sh's "is libclang there?") on fake library folders:
# it must find exactly what bindgen's loader (clang-sys) would load, never libclang-cpp, and
# honour LIBCLANG_PATH. Called by scripts/test.sh; seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/find-libclang.sh

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
failures=0

# A file that looks like a shared library of the given ELF class (2: 64-bit, 1: 32-bit).
fake_lib() {
    mkdir -p "$(dirname "$1")"
    { printf '\177ELF'; printf "\\$(printf '%03o' "$2")"; head -c 59 /dev/zero; } > "$1"
}

expect() { # expect <description> <wanted path or "none">
    local got
    got=$(find_libclang || echo none)
    if [[ $got == "$2" ]]; then
        echo "ok: $1"
    else
        echo "FAIL: $1: found '$got', wanted '$2'" >&2
        failures=$((failures + 1))
    fi
}

# Nothing outside the fake root may be consulted.
export PARDEC_SYSROOT=$root LLVM_CONFIG_PATH=/nonexistent/llvm-config
unset LIBCLANG_PATH LD_LIBRARY_PATH LIBRARY_PATH

expect "an empty system" none

# Debian 12 without libclang-dev: the clang runtime's libclang-cpp only (the reported bug).
fake_lib "$root/usr/lib/x86_64-linux-gnu/libclang-cpp.so.14" 2
fake_lib "$root/usr/lib/llvm-14/lib/libclang-cpp.so.14" 2
expect "only libclang-cpp.so.14" none

# A 32-bit libclang is skipped on a 64-bit host.
fake_lib "$root/usr/lib/i386-linux-gnu/libclang-14.so.1" 1
expect "only a 32-bit libclang" none

# A file with the right name that is not ELF at all.
mkdir -p "$root/usr/lib/broken"
echo "not a library" > "$root/usr/lib/broken/libclang.so"
expect "a libclang.so that is not ELF" none

# libclang-dev's real layout: found under llvm-14/lib.
fake_lib "$root/usr/lib/llvm-14/lib/libclang-14.so.1" 2
expect "libclang-14.so.1 (suffix-versioned)" "$root/usr/lib/llvm-14/lib/libclang-14.so.1"

# LIBCLANG_PATH: that folder (or file) only.
mkdir -p "$root/elsewhere"
LIBCLANG_PATH=$root/elsewhere expect "LIBCLANG_PATH to a folder without it (system one ignored)" none
fake_lib "$root/elsewhere/libclang.so" 2
LIBCLANG_PATH=$root/elsewhere expect "LIBCLANG_PATH to a folder with it" "$root/elsewhere/libclang.so"
LIBCLANG_PATH=$root/elsewhere/libclang.so expect "LIBCLANG_PATH to the file" "$root/elsewhere/libclang.so"
LIBCLANG_PATH=$root/usr/lib/llvm-14/lib/libclang-cpp.so.14 expect "LIBCLANG_PATH to libclang-cpp" none

# LD_LIBRARY_PATH is searched before the system folders.
mkdir -p "$root/ld"
fake_lib "$root/ld/libclang-15.so" 2
LD_LIBRARY_PATH=$root/ld expect "LD_LIBRARY_PATH first" "$root/ld/libclang-15.so"

((failures == 0)) || { echo "test-setup: $failures failure(s)" >&2; exit 1; }
echo "test-setup: libclang detection: all cases passed"
