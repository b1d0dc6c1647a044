#!/usr/bin/env bash
# pardec's GPU check (issue 5), one device call. Run from the repo root ON the device, with the
# folder scripts/gpu/prepare.sh filled here carried along:
#
#   run: carry [".device"], command `bash .device/gpu/run-device.sh`, timeout_s 600
#
# Stages, each behind `timeout` inside one overall budget (PARDEC_GPU_BUDGET_S, 530 s), so a hang
# costs its own stage and never the call:
#   gpu       nvidia-smi: name, driver, memory
#   build     llama.cpp's shared libraries with CUDA (sm_90, flash-attention kernels off) from the
#             carried sources: exactly the libraries the carried binaries need (readelf NEEDED)
#   oracle    the engine_oracle test binary against CUDA (it writes its own tiny f32 model)
#   models    random-weight Q4_0 models of real shapes in /tmp: smol (SmolLM2-135M), 7b
#             (Llama-2-7B), and 1b (Llama-3.2-1B) if the budget allows
#   equiv     pardec equiv --branches 4 --tokens 12 --selection device on each: batch-vs-alone
#             noise vs leak, and device-selected greedy tokens == host-selected ones
#   bench     pardec bench --branches 1,2,4,8,16,32 --tokens 32 --reps 2 --json on each, once
#             with host selection and once with device selection (same raw ceiling definition);
#             on the shapes in PARDEC_GPU_SAMPLED ("1b") also with temperature 0.8, top-k 40,
#             top-p 0.95, both selections
# Results: $OUT/run.log (all of this output), build.log, oracle.log, llama-smol.log (llama.cpp's
# own log of one run: the device and offload lines), bench-SHAPE-{host,device}[-sampled].json.
#
# Dry run on a machine without a GPU (proves the script end to end before device time is spent):
#   PARDEC_GPU_DRY_RUN=1 bash .device/gpu/run-device.sh
# skips nvidia-smi, builds with CUDA off (or, with PARDEC_GPU_LIBDIR=DIR, reuses shared libraries
# already built there and skips the build), uses small settings (smol only, branches 1,2, 4 tokens,
# 1 rep) and writes to $OUT, by default /tmp/pardec-gpu-dry-out.
#
# Knobs: PARDEC_CUDA_ARCH (90: H100/H200), PARDEC_GPU_JOBS (nproc), PARDEC_GPU_SAMPLED, PARDEC_GPU_SHAPES
# ("smol 1b 7b"), PARDEC_GPU_BRANCHES, PARDEC_GPU_TOKENS, PARDEC_GPU_REPS, PARDEC_DEVICE_DIR
# (.device), PARDEC_GPU_BUILD_DIR (/tmp/pardec-llama-build), PYTHON (python3).
set -uo pipefail

D=${PARDEC_DEVICE_DIR:-.device}
DRY=${PARDEC_GPU_DRY_RUN:-0}
if [ "$DRY" = 1 ]; then
  OUT=${OUT:-/tmp/pardec-gpu-dry-out}
  SHAPES=${PARDEC_GPU_SHAPES:-smol}
  BRANCHES=${PARDEC_GPU_BRANCHES:-1,2}
  TOKENS=${PARDEC_GPU_TOKENS:-4}
  REPS=${PARDEC_GPU_REPS:-1}
  EQUIV_BRANCHES=2 EQUIV_TOKENS=4
  BUDGET=${PARDEC_GPU_BUDGET_S:-1800}
  BUILD_MAX=1200  # a CPU-only build on 2 cores takes 5-10 minutes
else
  SHAPES=${PARDEC_GPU_SHAPES:-smol 1b 7b}
  BRANCHES=${PARDEC_GPU_BRANCHES:-1,2,4,8,16,32}
  TOKENS=${PARDEC_GPU_TOKENS:-32}
  REPS=${PARDEC_GPU_REPS:-2}
  EQUIV_BRANCHES=4 EQUIV_TOKENS=12
  BUDGET=${PARDEC_GPU_BUDGET_S:-530}
  BUILD_MAX=420  # ~160 s on the H100 machine's 16 cores (llama + ggml-cuda, FA kernels off)
fi
: "${OUT:?OUT must name the folder for results (set by the device tool)}"
mkdir -p "$OUT"
B=${PARDEC_GPU_BUILD_DIR:-/tmp/pardec-llama-build}
PY=${PYTHON:-python3}
PARDEC=$D/bin/pardec
ORACLE=$D/bin/engine_oracle
MODELS=${PARDEC_GPU_MODEL_DIR:-/tmp}
T0=$(date +%s)

el() { echo $(($(date +%s) - T0)); }
say() { echo "[$(el) s] $*" >&3; }
SUMMARY=()
# stage NAME MAX_S CMD...: CMD under `timeout`, limited to MAX_S and to what is left of the budget.
stage() {
  local name=$1 max=$2 t rc s0
  shift 2
  t=$((BUDGET - $(el)))
  [ "$t" -gt "$max" ] && t=$max
  if [ "$t" -lt 15 ]; then
    say "SKIP $name: budget spent"
    SUMMARY+=("$(printf '%-14s skipped (budget)' "$name")")
    return 99
  fi
  say "BEGIN $name (limit $t s)"
  s0=$(date +%s)
  timeout -k 5 "$t" "$@"
  rc=$?
  local took=$(($(date +%s) - s0))
  if [ $rc = 124 ] || [ $rc = 137 ]; then
    say "TIMEOUT $name after $took s"
    SUMMARY+=("$(printf '%-14s TIMEOUT after %d s (limit %d)' "$name" "$took" "$t")")
  else
    say "END $name: rc $rc, $took s"
    SUMMARY+=("$(printf '%-14s rc %-3d %4d s' "$name" "$rc" "$took")")
  fi
  return $rc
}
finish() {
  say "summary (budget $BUDGET s):"
  for l in "${SUMMARY[@]}"; do echo "  $l" >&3; done
  echo "files in $OUT: $(ls "$OUT" | tr '\n' ' ')" >&3
  say "done"
}
die() { say "FATAL: $*"; finish; exit 1; }

main() {

say "pardec GPU check$([ "$DRY" = 1 ] && echo ' (DRY RUN: no GPU, tiny settings)'): shapes [$SHAPES], branches $BRANCHES, tokens $TOKENS, reps $REPS"
cat "$D/MANIFEST" 2>/dev/null || say "no $D/MANIFEST: was scripts/gpu/prepare.sh run?"
[ -x "$PARDEC" ] && [ -x "$ORACLE" ] && [ -f "$D/llama.cpp/CMakeLists.txt" ] ||
  die "$D/bin/pardec, $D/bin/engine_oracle or $D/llama.cpp missing: run scripts/gpu/prepare.sh and carry $D"
echo "host: $(nproc) cores, $(uname -m), $(. /etc/os-release 2>/dev/null && echo "$PRETTY_NAME"), glibc $(ldd --version 2>/dev/null | head -1 | awk '{ print $NF }')"

# --- gpu ---------------------------------------------------------------------------------------
if [ "$DRY" != 1 ]; then
  command -v nvcc >/dev/null || export PATH=$PATH:/usr/local/cuda/bin
  nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used,clocks.sm,clocks.max.sm \
    --format=csv 2>&1 || say "nvidia-smi failed"
  (nvcc --version 2>/dev/null | tail -2 | head -1) || say "no nvcc on PATH"
fi

# --- build -------------------------------------------------------------------------------------
# The libraries the carried binaries were linked against (NEEDED entries), as cmake targets:
# libllama.so.0 -> llama, libggml-base.so.0 -> ggml-base, libllama-common.so.0 -> llama-common.
needed() {  # NEEDED entries of a binary (readelf; objdump or ldd where it is missing)
  if command -v readelf >/dev/null; then readelf -d "$1" | sed -n 's/.*Shared library: \[\(.*\)\]/\1/p'
  elif command -v objdump >/dev/null; then objdump -p "$1" | awk '$1 == "NEEDED" { print $2 }'
  else ldd "$1" | awk '{ print $1 }'; fi
}
NEEDED=$(for b in "$PARDEC" "$ORACLE"; do needed "$b"; done | grep -E '^lib(llama|ggml|mtmd)' | sort -u)
TARGETS=$(echo "$NEEDED" | sed 's/^lib//; s/\.so.*$//' | sort -u | tr '\n' ' ')
COMMON=OFF
case " $TARGETS " in *" llama-common "*) COMMON=ON ;; esac
MTMD=OFF
case " $TARGETS " in *" mtmd "*) MTMD=ON ;; esac
echo "binaries need: $(echo $NEEDED)"

if [ "$DRY" = 1 ] && [ -n "${PARDEC_GPU_LIBDIR:-}" ]; then
  say "dry run: reusing the shared libraries in $PARDEC_GPU_LIBDIR (no build)"
  LIBDIRS=$PARDEC_GPU_LIBDIR
else
  CUDA=ON
  [ "$DRY" = 1 ] && CUDA=OFF
  [ "$CUDA" = ON ] && TARGETS="$TARGETS ggml-cuda"
  GEN="Unix Makefiles"
  command -v ninja >/dev/null && GEN=Ninja
  JOBS=${PARDEC_GPU_JOBS:-$(nproc)}
  echo "cmake targets: $TARGETS (GGML_CUDA=$CUDA, LLAMA_BUILD_COMMON=$COMMON, $GEN, -j$JOBS)"
  stage configure 120 cmake -S "$D/llama.cpp" -B "$B" -G "$GEN" -DCMAKE_BUILD_TYPE=Release \
    -DBUILD_SHARED_LIBS=ON -DGGML_CUDA=$CUDA -DCMAKE_CUDA_ARCHITECTURES="${PARDEC_CUDA_ARCH:-90}" \
    -DGGML_CUDA_FA=OFF -DGGML_CUDA_NCCL=OFF -DGGML_NATIVE=ON -DGGML_OPENMP=ON \
    -DLLAMA_BUILD_COMMON=$COMMON -DLLAMA_BUILD_MTMD=$MTMD -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF \
    -DLLAMA_BUILD_APP=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_LLGUIDANCE=OFF \
    >"$OUT/build.log" 2>&1 || { tail -25 "$OUT/build.log"; die "cmake configure failed"; }
  # shellcheck disable=SC2086
  stage build "$BUILD_MAX" cmake --build "$B" --target $TARGETS -j "$JOBS" >>"$OUT/build.log" 2>&1 ||
    { tail -30 "$OUT/build.log"; die "llama.cpp build failed"; }
  LIBDIRS=$(find "$B" -name 'lib*.so*' -printf '%h\n' | sort -u | tr '\n' ':')
fi
export LD_LIBRARY_PATH=${LIBDIRS%:}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
ldd "$PARDEC" | grep -E 'llama|ggml|gomp|not found' | sed 's/^\s*/  pardec: /'
for l in $(find ${LD_LIBRARY_PATH//:/ } -maxdepth 1 -name 'libggml.so*' 2>/dev/null | head -1); do
  ldd "$l" | grep -E 'ggml-|cuda|cublas' | sed 's/^\s*/  libggml: /'
done
missing=$(ldd "$PARDEC" "$ORACLE" 2>&1 | grep 'not found' | sort -u | tr -s ' \t\n' ' ')
[ -z "$missing" ] || die "a library the binaries need was not built or not found:$missing"

# --- oracle ------------------------------------------------------------------------------------
# CUDA f32 matmuls measured 2.8e-3..5.3e-3 from the oracle (CPU: ~1e-6); leak controls stay > 1.
stage oracle 120 env PARDEC_ORACLE_TOL="${PARDEC_ORACLE_TOL:-1e-2}" "$ORACLE" --nocapture --test-threads 1 >"$OUT/oracle.log" 2>&1
grep -E '^test |test result|control|panicked|assert|tolerance|distance' "$OUT/oracle.log" | head -40

# --- models, equivalence, bench ----------------------------------------------------------------
table() {  # a compact table of one bench JSON file
  "$PY" - "$1" <<'EOF'
import json, sys
try:
    d = json.load(open(sys.argv[1]))
except Exception as e:
    sys.exit(f"  (no bench JSON: {e})")
sel = d["results"][0].get("selection", "host") if d["results"] else "?"
if isinstance(sel, dict):  # {"device": {"candidates": K}}
    sel = "device:%d" % sel["device"]["candidates"]
smp = d["results"][0].get("sampling", {}) if d["results"] else {}
how = "greedy" if smp.get("temperature", 0) <= 0 else "temp %(temperature)g top-k %(top_k)d top-p %(top_p)g" % smp
print(f"  {d['model']}  threads {d['threads']}  selection {sel}  {how}")
print("    B  serial t/s  engine t/s  raw t/s  raw-ser t/s  speedup  ceiling  vs-ceil  eng/raw  host us/step  select us")
for r in d["results"]:
    print(f"  {r['branches']:>3} {r['serial_tps']:>11.1f} {r['parallel_tps']:>11.1f} {r['raw_tps']:>8.1f}"
          f" {r['raw_serial_tps']:>12.1f} {r['speedup']:>7.2f}x {r['raw_speedup']:>7.2f}x"
          f" {r['speedup_vs_ceiling']:>8.2f} {r['engine_vs_raw']:>8.2f} {r['host_us_per_step']:>13.0f}"
          f" {r.get('selection_us_per_step', 0):>10.0f}")
EOF
}
gen_limit() { case $1 in 7b) echo 150 ;; 1b) echo 90 ;; *) echo 45 ;; esac; }
equiv_limit() { case $1 in 7b) echo 120 ;; *) echo 60 ;; esac; }
bench_limit() { case $1 in 7b) echo 180 ;; 1b) echo 120 ;; *) echo 90 ;; esac; }
[ "$DRY" = 1 ] && bench_limit() { echo 600; } && equiv_limit() { echo 300; }

for shape in $SHAPES; do
  m=$MODELS/pardec-random-$shape.gguf
  if [ "$shape" = 1b ] && [ "$DRY" != 1 ] && [ $((BUDGET - $(el))) -lt 120 ]; then
    say "SKIP shape 1b: under 120 s of budget left"
    SUMMARY+=("$(printf '%-14s skipped (budget)' "shape-1b")")
    continue
  fi
  stage "gen-$shape" "$(gen_limit "$shape")" "$PY" "$D/gpu/make_random_gguf.py" "$m" "$shape" || continue
  if [ "$shape" = smol ]; then
    # llama.cpp's own log of this one run shows the device, the offload and any fallback.
    stage "equiv-$shape" "$(equiv_limit "$shape")" env PARDEC_LLAMA_LOG=1 "$PARDEC" equiv --model "$m" \
      --branches $EQUIV_BRANCHES --tokens $EQUIV_TOKENS --selection device 2>"$OUT/llama-smol.log" ||
      grep -vE '^(llama|load|print_info|create_tensor|graph|sched|repack|\.)' "$OUT/llama-smol.log" | tail -5
    grep -E 'offloaded|ggml_cuda_init|Device [0-9]|model buffer size|KV buffer size|compute buffer size|[Ff]lash.?[Aa]ttn|layer +0 assigned|error|failed|fall' \
      "$OUT/llama-smol.log" | grep -v n_input_tensors | sort | uniq -c | sort -rn | head -20
  else
    stage "equiv-$shape" "$(equiv_limit "$shape")" "$PARDEC" equiv --model "$m" \
      --branches $EQUIV_BRANCHES --tokens $EQUIV_TOKENS --selection device
  fi
  for sel in host device; do
    stage "bench-$shape-$sel" "$(bench_limit "$shape")" "$PARDEC" bench --model "$m" --branches "$BRANCHES" \
      --tokens "$TOKENS" --reps "$REPS" --selection $sel --json >"$OUT/bench-$shape-$sel.json"
    table "$OUT/bench-$shape-$sel.json"
  done
  if [ "$shape" = 1b ]; then
    # Host selection spreads over threads on GPU builds; on the 2-core CPU that contends with
    # llama.cpp's spinning workers. One thread, for comparison:
    stage "bench-$shape-host-1t" "$(bench_limit "$shape")" env PARDEC_SELECT_THREADS=1 "$PARDEC" bench \
      --model "$m" --branches "$BRANCHES" --tokens "$TOKENS" --reps "$REPS" --selection host \
      --json >"$OUT/bench-$shape-host-1thread.json"
    table "$OUT/bench-$shape-host-1thread.json"
  fi
  case " ${PARDEC_GPU_SAMPLED-1b} " in *" $shape "*)
    for sel in host device; do
      stage "sampled-$shape-$sel" "$(bench_limit "$shape")" "$PARDEC" bench --model "$m" --branches "$BRANCHES" \
        --tokens "$TOKENS" --reps "$REPS" --selection $sel --temp 0.8 --top-k 40 --top-p 0.95 --seed 1 \
        --json >"$OUT/bench-$shape-$sel-sampled.json"
      table "$OUT/bench-$shape-$sel-sampled.json"
    done ;;
  esac
  rm -f "$m"
done
finish
}

# All output to the terminal and to $OUT/run.log (the pipeline waits for tee, so nothing is lost
# at the end); fd 3 carries this script's own lines past a stage's redirected stdout.
{ exec 3>&1; main; } 2>&1 | tee -a "$OUT/run.log"
exit "${PIPESTATUS[0]}"
