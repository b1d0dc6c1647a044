#!/usr/bin/env bash
# The C install as a user meets it, from a folder outside the checkout: scripts/install-c.sh
# into a temporary prefix, then the C example built three ways against the installed files only
# (pkg-config, CMake find_package with pardec::pardec, and pardec::pardec_static), each run on
# the model; the SONAME; and the static library's symbols: an app that defines llama.cpp's own
# llama_decode and ggml_init links with the installed libpardec.a and works, while the raw
# cargo staticlib fails to link it (the control: the check can see a leak).
# Called by scripts/test-ffi.sh after the C libraries are built.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
source scripts/lib/target-dir.sh
release="$(cargo_target_dir)/release"
fail() { echo "test-install: FAIL: $*" >&2; exit 1; }
model=${PARDEC_MODEL:-$(bash scripts/fetch-models.sh default)/SmolLM2-135M-Instruct.Q4_1.gguf}
export PARDEC_THREADS=${PARDEC_THREADS:-1}
# A user's machine: no search path of the build's may stand in for the installed library.
unset LD_LIBRARY_PATH

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
prefix=$tmp/prefix
bash scripts/install-c.sh --prefix "$prefix" --no-build > "$tmp/install.log" || { cat "$tmp/install.log" >&2; fail "install-c.sh"; }

app=$tmp/app
mkdir -p "$app"
cp ffi-examples/example.c ffi-examples/check_output.py "$app/"
cd "$app" # nothing below may read the checkout

soname=$(readelf -d "$prefix/lib/libpardec.so" | sed -n 's/.*Library soname: \[\(.*\)\]/\1/p')
[[ $soname == libpardec.so.0 ]] || fail "SONAME is '$soname'"
echo "ok: SONAME $soname"

export PKG_CONFIG_PATH=$prefix/lib/pkgconfig
[[ $(pkg-config --modversion pardec) == "$(sed -n 's/^#define PARDEC_VERSION "\(.*\)"$/\1/p' "$prefix/include/pardec.h")" ]] \
    || fail "pkg-config version differs from the header"
# shellcheck disable=SC2046 # word splitting of pkg-config's flags is meant
cc -std=c11 -Wall -Wextra -Werror example.c $(pkg-config --cflags --libs pardec) \
    -Wl,-rpath,"$(pkg-config --variable=libdir pardec)" -o example_pc
./example_pc "$model" > pc.out 2> pc.err || { cat pc.err >&2; fail "pkg-config-built example"; }
outputs=(pc.out)
# Which file the loader picks, compared as real paths (the prefix may sit behind a symlink, or be
# spelt with '//' or '..' by pkg-config's libdir); on failure, what the loader saw. sed reads all of
# ldd's output: `ldd | grep -q` under pipefail failed in CI when grep left early and ldd got SIGPIPE.
loaded=$(ldd ./example_pc | sed -n 's/^[[:space:]]*libpardec\.so\.0 => \(.*\) (0x[0-9a-f]*)$/\1/p')
[[ -n $loaded && $(realpath "$loaded") == "$(realpath "$prefix/lib/libpardec.so.0")" ]] || {
    ldd ./example_pc >&2
    readelf -d ./example_pc | grep -E 'RPATH|RUNPATH' >&2 || true
    fail "example_pc loads '${loaded:-nothing}', not the installed $prefix/lib/libpardec.so.0"
}
echo "ok: pkg-config (shared), loads libpardec.so.0 from the prefix"

if command -v cmake > /dev/null; then
    cat > CMakeLists.txt <<'CMAKE'
cmake_minimum_required(VERSION 3.16)
project(pardec_user LANGUAGES C CXX)
find_package(pardec 0.4 REQUIRED)
add_executable(example_shared example.c)
target_link_libraries(example_shared PRIVATE pardec::pardec)
add_executable(example_static example.c)
target_link_libraries(example_static PRIVATE pardec::pardec_static)
CMAKE
    cmake -S . -B build -DCMAKE_PREFIX_PATH="$prefix" -DCMAKE_BUILD_TYPE=Release > cmake.log 2>&1 \
        && cmake --build build -j 2 >> cmake.log 2>&1 || { tail -30 cmake.log >&2; fail "CMake find_package build"; }
    for p in example_shared example_static; do
        build/$p "$model" > "$p.out" 2> "$p.err" || { cat "$p.err" >&2; fail "CMake-built $p"; }
        outputs+=("$p.out")
    done
    echo "ok: CMake find_package(pardec 0.4): pardec::pardec and pardec::pardec_static built and ran"
    # A request for another major version is refused.
    sed -i 's/find_package(pardec 0.4 REQUIRED)/find_package(pardec 1.0 REQUIRED)/' CMakeLists.txt
    if cmake -S . -B build-v1 -DCMAKE_PREFIX_PATH="$prefix" > cmake-v1.log 2>&1; then
        fail "find_package(pardec 1.0) accepted version 0.x"
    fi
    echo "ok: find_package(pardec 1.0) refused"
else
    echo "test-install: cmake not installed: the CMake package check is skipped" >&2
fi

# Branches, stats, and the same text from every build (greedy decoding).
python3 check_output.py "${outputs[@]}" || fail "example outputs"
echo "ok: the example's output from ${#outputs[@]} builds"

# The static library keeps llama.cpp's symbols to itself.
cat > clash.c <<'C'
#include <stdio.h>
#include <pardec.h>
/* The app's own llama.cpp, or any library using these names. */
int llama_decode(void *ctx, int batch) { (void)ctx; (void)batch; return -1; }
void *ggml_init(int params) { (void)params; return NULL; }
int main(int argc, char **argv) {
    pardec_model *m = NULL;
    if (argc < 2 || pardec_model_load(argv[1], NULL, &m) != PARDEC_STATUS_OK) return 1;
    pardec_model_free(m);
    puts(pardec_version());
    return 0;
}
C
static_libs="-lstdc++ -lgomp -lm -lpthread -ldl"
# shellcheck disable=SC2086
cc -std=c11 -I"$prefix/include" clash.c "$prefix/lib/libpardec.a" $static_libs -o clash > clash.log 2>&1 \
    || { head -20 clash.log >&2; fail "an app defining llama_decode and ggml_init does not link with the installed libpardec.a"; }
./clash "$model" > /dev/null 2>&1 || fail "the app with its own llama_decode could not load the model through pardec"
# shellcheck disable=SC2086
if cc -std=c11 -I"$prefix/include" clash.c "$release/libpardec.a" $static_libs -o clash_raw > clash_raw.log 2>&1; then
    fail "control: the raw cargo staticlib linked an app defining llama_decode (the clash test cannot see a leak)"
fi
grep -q "multiple definition of .llama_decode" clash_raw.log || fail "control failed for another reason: $(head -3 clash_raw.log)"
echo "ok: installed libpardec.a exports only pardec_*; an app with its own llama_decode/ggml_init links (raw staticlib: multiple definition, as expected)"
echo "test-install: all install checks passed"
