#!/usr/bin/env bash
# The C ABI end to end: header and layout tests, the C and C++ examples (shared and static
# library; Makefile, and CMake when installed) with their output checked, the misuse and thread
# tests natively, under valgrind and under ASan/UBSan, and the Python package's tests. Exits non-zero on any
# failure. Called by scripts/test.sh; runs on its own too.
#
# Environment:
#   PARDEC_MODEL          the model (default: the default model from scripts/fetch-models.sh)
#   PARDEC_FFI_VALGRIND   0 skips the valgrind runs (default 1 when valgrind is installed)
#   PARDEC_FFI_CMAKE      0 skips the CMake build (default 1 when cmake is installed)
#   PARDEC_FFI_SANITIZE   0 skips the ASan/UBSan runs (default 1 when cc can build with them)
#   PARDEC_THREADS        compute threads per session in the C programs (default here: 1)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
source scripts/lib/target-dir.sh
TARGET="$(cargo_target_dir)"
OUT="$TARGET/ffi-examples"
LOGS="$TARGET/ffi-test-logs"
mkdir -p "$OUT" "$LOGS"

t0=$SECONDS
step() { echo "== test-ffi [$((SECONDS - t0))s]: $*"; }
fail() { echo "test-ffi: FAIL: $*" >&2; exit 1; }

step "build the command line and the C libraries (scripts/build-capi.sh)"
cargo build --release
bash scripts/build-capi.sh

step "header is current, version macros and ABI layouts"
cargo test --release --quiet --features capi --test ffi_header --test ffi_abi

if [[ -z "${PARDEC_MODEL:-}" ]]; then
    PARDEC_MODEL="$(bash scripts/fetch-models.sh default)/SmolLM2-135M-Instruct.Q4_1.gguf"
fi
[[ -f "$PARDEC_MODEL" ]] || fail "no model at $PARDEC_MODEL"
export PARDEC_MODEL

step "build the examples (Makefile: shared and static)"
make -s -C ffi-examples OUT="$OUT" LIB_DIR="$TARGET/release"

# One compute thread per session in the examples: with several, llama.cpp's threads spin-wait
# for each other, and any other load on the machine slows them a hundredfold. (misuse runs
# once with two.)
export PARDEC_THREADS="${PARDEC_THREADS:-1}"

step "run the C and C++ examples"
outputs=()
for p in example example_static example_cpp example_cpp_static; do
    "$OUT/$p" "$PARDEC_MODEL" > "$LOGS/$p.out" 2> "$LOGS/$p.err" || {
        cat "$LOGS/$p.err" >&2
        fail "$p exited with $?"
    }
    outputs+=("$LOGS/$p.out")
done

if [[ "${PARDEC_FFI_CMAKE:-1}" == 1 ]] && command -v cmake > /dev/null; then
    step "build the examples with CMake"
    cmake -S ffi-examples -B "$TARGET/ffi-examples-cmake" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
        -DPARDEC_LIB_DIR="$TARGET/release" > "$LOGS/cmake.log"
    cmake --build "$TARGET/ffi-examples-cmake" -j 2 >> "$LOGS/cmake.log" || { tail -30 "$LOGS/cmake.log" >&2; fail "CMake build"; }
    for p in example example_cpp_static; do
        "$TARGET/ffi-examples-cmake/$p" "$PARDEC_MODEL" > "$LOGS/cmake-$p.out" 2> "$LOGS/cmake-$p.err" \
            || fail "CMake-built $p exited with $?"
        outputs+=("$LOGS/cmake-$p.out")
    done
else
    step "CMake build skipped (cmake not installed or PARDEC_FFI_CMAKE=0)"
fi

step "check the example outputs (branches, stats, same text from every build)"
python3 ffi-examples/check_output.py "${outputs[@]}"

step "install for C users and build against the install from outside the checkout (scripts/test-install.sh)"
bash scripts/test-install.sh

step "misuse, thread and conversations tests"
"$OUT/conversations" "$PARDEC_MODEL" > "$LOGS/conversations.out" || { cat "$LOGS/conversations.out"; fail "conversations"; }
tail -n 1 "$LOGS/conversations.out"
"$OUT/misuse" "$PARDEC_MODEL"
PARDEC_THREADS=2 "$OUT/misuse" "$PARDEC_MODEL" # also with a multi-threaded llama.cpp
"$OUT/threads" "$PARDEC_MODEL" > "$LOGS/threads.out"
head -1 "$LOGS/threads.out"

if [[ "${PARDEC_FFI_VALGRIND:-1}" == 1 ]] && command -v valgrind > /dev/null; then
    step "misuse, thread and conversations tests under valgrind (in parallel; minimal decoding)"
    # Definite leaks and memory errors fail; "possibly lost" and "still reachable" blocks are
    # thread stacks and caches of llama.cpp/OpenMP that live until exit.
    vg=(valgrind --quiet --leak-check=full --errors-for-leak-kinds=definite
        --show-leak-kinds=definite --error-exitcode=99 --num-callers=40)
    if [[ -f ffi-examples/valgrind.supp ]]; then vg+=(--suppressions=ffi-examples/valgrind.supp); fi
    "${vg[@]}" "$OUT/misuse" "$PARDEC_MODEL" > "$LOGS/valgrind-misuse.log" 2>&1 &
    misuse_pid=$!
    PARDEC_TEST_VALGRIND=1 "${vg[@]}" "$OUT/threads" "$PARDEC_MODEL" > "$LOGS/valgrind-threads.log" 2>&1 &
    threads_pid=$!
    status=0
    PARDEC_TEST_VALGRIND=1 "${vg[@]}" "$OUT/conversations" "$PARDEC_MODEL" > "$LOGS/valgrind-conversations.log" 2>&1 \
        || { status=$?; cat "$LOGS/valgrind-conversations.log" >&2; echo "valgrind conversations: exit $status" >&2; }
    wait "$misuse_pid" || { status=$?; cat "$LOGS/valgrind-misuse.log" >&2; echo "valgrind misuse: exit $status" >&2; }
    wait "$threads_pid" || { s=$?; status=$s; cat "$LOGS/valgrind-threads.log" >&2; echo "valgrind threads: exit $s" >&2; }
    [[ $status == 0 ]] || fail "valgrind found errors or leaks (exit 99) or a test failed"
    tail -n 1 "$LOGS/valgrind-misuse.log"
else
    step "valgrind skipped (not installed or PARDEC_FFI_VALGRIND=0)"
fi

if [[ "${PARDEC_FFI_SANITIZE:-1}" == 1 ]] \
    && echo 'int main(void) { return 0; }' | cc -x c -fsanitize=address,undefined - -o "$OUT/.sanitizer-probe" 2> /dev/null; then
    step "misuse test and the C example under ASan + UBSan (shared and static library)"
    # The C side is instrumented; memory the library allocates is still watched by ASan's
    # allocator. Leaks are valgrind's job above (LSan would list llama.cpp's process-lifetime
    # caches), so detect_leaks=0; any UB report or memory error fails the run.
    san="-O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=all"
    make -s -C ffi-examples OUT="$OUT/sanitized" LIB_DIR="$TARGET/release" OPT="$san" "$OUT/sanitized/misuse" "$OUT/sanitized/example_static"
    ASAN_OPTIONS=detect_leaks=0 UBSAN_OPTIONS=print_stacktrace=1 "$OUT/sanitized/misuse" "$PARDEC_MODEL" \
        > "$LOGS/asan-misuse.log" 2>&1 || { tail -40 "$LOGS/asan-misuse.log" >&2; fail "misuse under ASan/UBSan"; }
    tail -n 1 "$LOGS/asan-misuse.log"
    ASAN_OPTIONS=detect_leaks=0 UBSAN_OPTIONS=print_stacktrace=1 "$OUT/sanitized/example_static" "$PARDEC_MODEL" \
        > "$LOGS/asan-example.log" 2>&1 || { tail -40 "$LOGS/asan-example.log" >&2; fail "static example under ASan/UBSan"; }
else
    step "ASan/UBSan skipped (the compiler cannot build with them, or PARDEC_FFI_SANITIZE=0)"
fi

step "Python package: the wheel built and installed in a venv, tested from outside the checkout (scripts/test-python.sh)"
bash scripts/test-python.sh

step "all C ABI checks passed"
