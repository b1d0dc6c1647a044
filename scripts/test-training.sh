#!/usr/bin/env bash
# The training recipe's tests: the list rewrite (plain Python), then the smoke test in the
# recipe's own virtual environment (training/setup-venv.sh; torch from PyPI, ~3.5 GB the first
# time): trainer forward vs the engine, the mask, train -> export -> pardec loads it.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bin pardec
source scripts/lib/target-dir.sh
export PARDEC_BIN="$(cargo_target_dir)/release/pardec"
# The list rewrite's tests need only pytest: the pinned test tools, in the venv
# scripts/test-python.sh makes (a fresh machine's python3 has no pytest).
venv="$PWD/target/python-venv"
if [[ ! -x "$venv/bin/python" ]]; then
    python3 -m venv "$venv" || { echo "test-training: python3 -m venv failed: install python3-venv" >&2; exit 1; }
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r bindings-python/requirements-test.txt
"$venv/bin/python" -m pytest -q -p no:cacheprovider training/test_multiverse_text.py training/test_titles_text.py
PY="$(bash training/setup-venv.sh)"
"$PY" -W ignore training/smoke_test.py
