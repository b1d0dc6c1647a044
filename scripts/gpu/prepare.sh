#!/usr/bin/env bash
# Prepare the GPU check's carried folder, .device/, on THIS machine (the device has no Rust).
#
#   bash scripts/gpu/prepare.sh            # builds (incrementally) and fills .device/
#   PARDEC_GPU_NO_BUILD=1 bash scripts/gpu/prepare.sh   # only copies what target-dyn holds
#
# .device/llama.cpp  the llama.cpp sources llama-cpp-sys-2 vendors, less what a CUDA build of
#                    the shared libraries does not need (other backends, docs, tests, tools)
# .device/bin/       pardec and the engine_oracle test, built with `dynamic-link` (they load
#                    libllama.so / libggml*.so at run time), debug info stripped
# .device/gpu/       scripts/gpu/* (run-device.sh, make_random_gguf.py)
# .device/MANIFEST   what was packed: commit, llama.cpp version, the binaries' needed libraries
#
# Fails if .device/ or everything that would travel (the non-ignored tree plus .device/) is
# over the limit. Then: one device call, carry [".device"], `bash .device/gpu/run-device.sh`.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
DEV=.device
TARGET=${PARDEC_DYN_TARGET:-$ROOT/target-dyn}
LIMIT_MIB=${PARDEC_GPU_LIMIT_MIB:-60}

# The llama-cpp-sys-2 version Cargo.lock pins; its vendored llama.cpp sits in cargo's registry.
SYS_VER=$(awk '/^name = "llama-cpp-sys-2"/ { getline; gsub(/[^0-9.]/, ""); print; exit }' Cargo.lock 2>/dev/null || true)
SYS_VER=${SYS_VER:-0.1.161}
SRC=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/llama-cpp-sys-2-"$SYS_VER"/llama.cpp 2>/dev/null | head -1 || true)
[ -n "$SRC" ] && [ -f "$SRC/CMakeLists.txt" ] || {
  echo "prepare: no vendored llama.cpp for llama-cpp-sys-2 $SYS_VER in cargo's registry (run cargo fetch)" >&2
  exit 1
}

# 1. The dynamic-link binaries (a separate target dir leaves target/ untouched).
if [ "${PARDEC_GPU_NO_BUILD:-0}" != 1 ]; then
  echo "prepare: building pardec and engine_oracle with dynamic-link in $TARGET"
  CARGO_TARGET_DIR=$TARGET cargo build --release --features dynamic-link --bin pardec
  CARGO_TARGET_DIR=$TARGET cargo test --release --features dynamic-link --test engine_oracle --no-run \
    --message-format=json-render-diagnostics >"$TARGET/engine_oracle-build.json"
fi
PARDEC_BIN=$TARGET/release/pardec
ORACLE_BIN=$(grep -o '"executable":"[^"]*"' "$TARGET/engine_oracle-build.json" 2>/dev/null |
  sed 's/"executable":"//; s/"$//' | grep '/engine_oracle-' | tail -1 || true)
if [ -z "$ORACLE_BIN" ]; then  # no JSON (NO_BUILD): take the newest engine_oracle test binary
  ORACLE_BIN=$(ls -t "$TARGET"/release/deps/engine_oracle-* 2>/dev/null | grep -v '\.d$' | head -1 || true)
fi
for b in "$PARDEC_BIN" "$ORACLE_BIN"; do
  [ -n "$b" ] && [ -x "$b" ] || { echo "prepare: missing binary ${b:-engine_oracle} (build first)" >&2; exit 1; }
  readelf -d "$b" | grep 'NEEDED.*libllama' >/dev/null || {
    echo "prepare: $b does not link libllama dynamically: was it built with --features dynamic-link?" >&2
    exit 1
  }
done

# 2. Fresh .device/ (never left half-filled from an older run).
rm -rf "$DEV"
mkdir -p "$DEV/llama.cpp" "$DEV/bin" "$DEV/gpu"

# 3. llama.cpp sources, less what `-DGGML_CUDA=ON -DBUILD_SHARED_LIBS=ON` with tests, tools and
#    examples off never reads. vendor/ stays whole: its CMakeLists adds every folder.
tar -C "$SRC" -cf - \
  --exclude=./.git --exclude=./docs --exclude=./tests --exclude=./examples --exclude=./tools \
  --exclude=./pocs --exclude=./ci --exclude=./gguf-py --exclude=./grammars --exclude=./app \
  --exclude='./models/*.gguf' --exclude='./models/*.gguf.*' --exclude=./convert_hf_to_gguf.py \
  --exclude=./ggml/src/ggml-vulkan --exclude=./ggml/src/ggml-metal --exclude=./ggml/src/ggml-sycl \
  --exclude=./ggml/src/ggml-opencl --exclude=./ggml/src/ggml-cann --exclude=./ggml/src/ggml-musa \
  --exclude=./ggml/src/ggml-hip --exclude=./ggml/src/ggml-kompute --exclude=./ggml/src/ggml-webgpu \
  --exclude=./ggml/src/ggml-hexagon --exclude=./ggml/src/ggml-openvino --exclude=./ggml/src/ggml-et \
  --exclude=./ggml/src/ggml-zdnn --exclude=./ggml/src/ggml-zendnn --exclude=./ggml/src/ggml-virtgpu \
  . | tar -C "$DEV/llama.cpp" -xf -

# 4. Binaries without debug info (the release profile keeps line tables: debug = 1).
strip --strip-debug -o "$DEV/bin/pardec" "$PARDEC_BIN"
strip --strip-debug -o "$DEV/bin/engine_oracle" "$ORACLE_BIN"

# 5. The scripts.
cp scripts/gpu/* "$DEV/gpu/"

{
  echo "packed:     $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "commit:     $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD -- src tests 2>/dev/null || echo ' (+ uncommitted changes in src/ or tests/)')"
  echo "llama.cpp:  vendored by llama-cpp-sys-2 $SYS_VER"
  echo "pardec:     $(sha256sum "$DEV/bin/pardec" | cut -c1-16) needs $(readelf -d "$DEV/bin/pardec" | sed -n 's/.*Shared library: \[\(.*\)\]/\1/p' | tr '\n' ' ')"
  echo "oracle:     $(sha256sum "$DEV/bin/engine_oracle" | cut -c1-16) from $(basename "$ORACLE_BIN")"
} >"$DEV/MANIFEST"
cat "$DEV/MANIFEST"

# 6. Sizes: .device/ alone, and everything a device call sends (non-ignored tree + .device/).
dev_b=$(du -sb "$DEV" | cut -f1)
tree_b=$(git ls-files -z --cached --others --exclude-standard | xargs -0 -r stat -c %s -- 2>/dev/null |
  awk '{ s += $1 } END { print s + 0 }')
mib() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1048576 }'; }
echo "prepare: .device/ $(mib "$dev_b") MiB (llama.cpp $(mib "$(du -sb "$DEV/llama.cpp" | cut -f1)"), bin $(mib "$(du -sb "$DEV/bin" | cut -f1)")); with the rest of the tree $(mib $((dev_b + tree_b))) MiB; limit $LIMIT_MIB MiB"
if [ $((dev_b + tree_b)) -ge $((LIMIT_MIB * 1048576)) ]; then
  echo "prepare: FAIL: over ${LIMIT_MIB} MiB; the device call would be refused or too close to its 64 MiB" >&2
  exit 1
fi
git check-ignore -q "$DEV" || echo "prepare: note: .device/ is not ignored by git; add /.device/ to .gitignore"
echo "prepare: ok. Device call: carry [\".device\"], command: bash .device/gpu/run-device.sh"
