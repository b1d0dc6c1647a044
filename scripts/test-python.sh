#!/usr/bin/env bash
# The Python package as users get it: builds the wheel with `pip install ./bindings-python`
# (cargo builds libpardec into the repository's target/ dir, so after scripts/build-capi.sh it
# compiles nothing), into the venv target/python-venv (made once, reused), then from a folder
# outside the checkout checks that `import pardec` loads the bundled library with
# PARDEC_LIB unset (its SONAME, no debug info), runs the tests against the installed package,
# and runs mypy --strict on it. pytest and mypy are pinned in bindings-python/requirements-test.txt.
#
# Environment:
#   PARDEC_MODEL   the model for the tests (default: the default model from scripts/fetch-models.sh)
#   PYTHON         the interpreter the venv is made with (default: python3)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
VENV="$ROOT/target/python-venv"
PY="$VENV/bin/python"

t0=$SECONDS
step() { echo "== test-python [$((SECONDS - t0))s]: $*"; }
fail() { echo "test-python: FAIL: $*" >&2; exit 1; }

abi=$(sed -n 's/^#define PARDEC_ABI_MAJOR \([0-9][0-9]*\)$/\1/p' include/pardec.h)
[[ -n "$abi" ]] || fail "include/pardec.h has no PARDEC_ABI_MAJOR"

if [[ ! -x "$PY" ]]; then
    step "create the venv $VENV"
    "${PYTHON:-python3}" -m venv "$VENV"
fi
step "pinned test tools (bindings-python/requirements-test.txt)"
"$PY" -m pip install --quiet --disable-pip-version-check -r bindings-python/requirements-test.txt

step "build and install the wheel: pip install ./bindings-python"
# A stale build/ could put files removed from the source into the wheel.
rm -rf bindings-python/build
build_start=$EPOCHREALTIME
"$PY" -m pip install --quiet --disable-pip-version-check --force-reinstall --no-deps ./bindings-python
echo "wheel build and install: $(awk "BEGIN { printf \"%.1f\", $EPOCHREALTIME - $build_start }") s"

if [[ -z "${PARDEC_MODEL:-}" ]]; then
    PARDEC_MODEL="$(bash scripts/fetch-models.sh default)/SmolLM2-135M-Instruct.Q4_1.gguf"
fi
[[ -f "$PARDEC_MODEL" ]] || fail "no model at $PARDEC_MODEL"
export PARDEC_MODEL

away="$(mktemp -d)"
trap 'rm -rf "$away"' EXIT
cd "$away"
# Nothing may point the package at the checkout's library or source.
unset PARDEC_LIB CARGO_TARGET_DIR PYTHONPATH

step "import pardec from $away, PARDEC_LIB unset"
lib=$("$PY" - "$VENV" <<'EOF'
import os, sys
import pardec
venv = os.path.realpath(sys.argv[1])
pkg = os.path.dirname(os.path.realpath(pardec.__file__))
assert pkg.startswith(venv + os.sep), f"pardec imported from {pkg}, not from the venv {venv}"
lib = os.path.realpath(pardec.library_path())
assert os.path.dirname(lib) == pkg, f"the library was loaded from {lib}, not from the package {pkg}"
assert pardec.__version__ == pardec.version(), (pardec.__version__, pardec.version())
print(lib)
EOF
)
echo "pardec $("$PY" -c 'import pardec; print(pardec.__version__)') loads $lib"
soname=$(readelf -d "$lib" | sed -n 's/.*(SONAME).*\[\(.*\)\]/\1/p')
[[ "$soname" == "libpardec.so.$abi" ]] || fail "the bundled library's SONAME is '$soname', not libpardec.so.$abi"
# grep reads to the end (no -q): with pipefail, a reader that leaves early lets readelf die of SIGPIPE.
if readelf -S "$lib" | grep '\.debug_' > /dev/null; then
    fail "the bundled library still has debug sections"
fi
echo "SONAME $soname, no debug sections, $(du -h "$lib" | cut -f1)"

step "pytest on the installed package"
# -c: this folder's empty config, so bindings-python/pyproject.toml's pythonpath (which puts
# the source package first) does not apply; the tests import the installed pardec.
printf '[pytest]\n' > pytest.ini
PARDEC_TEST_INSTALLED=1 "$PY" -m pytest -q -c pytest.ini --rootdir "$away" -p no:cacheprovider \
    "$ROOT/bindings-python/tests"

step "mypy --strict on the installed package"
"$PY" -m mypy --strict --cache-dir "$away/.mypy_cache" -p pardec

step "all Python package checks passed"
