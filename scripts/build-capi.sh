#!/usr/bin/env bash
# Builds the C artifacts into target/release (or $CARGO_TARGET_DIR/release) with the C ABI
# feature: libpardec.so, whose SONAME is libpardec.so.<PARDEC_ABI_MAJOR from include/pardec.h>,
# and libpardec.a. The crate itself is an rlib only, so a Rust crate depending on pardec never
# builds them (cargo-c's convention: crate types on request).
#   scripts/build-capi.sh [extra cargo arguments, e.g. --features cuda]
set -euo pipefail
cd "$(dirname "$0")/.."
abi=$(sed -n 's/^#define PARDEC_ABI_MAJOR \([0-9][0-9]*\)$/\1/p' include/pardec.h)
[[ -n "$abi" ]] || { echo "build-capi: include/pardec.h has no PARDEC_ABI_MAJOR" >&2; exit 1; }
link_args=()
case "$(uname -s)" in
    Linux) link_args=(-C "link-arg=-Wl,-soname,libpardec.so.$abi") ;;
    Darwin) link_args=(-C "link-arg=-Wl,-install_name,@rpath/libpardec.$abi.dylib") ;;
esac
cargo rustc --release --quiet -p pardec --lib --features capi \
    --crate-type cdylib --crate-type staticlib "$@" -- "${link_args[@]}"

# Programs linked with -lpardec record the SONAME: give the build folder that name too, so they
# run in place (ffi-examples/, with an rpath to it).
if [[ $(uname -s) == Linux ]]; then
    target_args=()
    for ((i = 1; i <= $#; i++)); do
        [[ ${!i} == --target ]] && { j=$((i + 1)); target_args=("${!j}"); }
    done
    source scripts/lib/target-dir.sh
    release="$(cargo_target_dir)/${target_args[0]:+${target_args[0]}/}release"
    ln -sf libpardec.so "$release/libpardec.so.$abi"
fi
