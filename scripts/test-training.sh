#!/usr/bin/env bash
# The training recipe's tests: the list rewrite (plain Python), then the smoke test in the
# recipe's own virtual environment (training/setup-venv.sh; torch from PyPI, ~3.5 GB the first
# time): trainer forward vs the engine, the mask, train -> export -> pardec loads it.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bin pardec
source scripts/lib/target-dir.sh
export PARDEC_BIN="$(cargo_target_dir)/release/pardec"
python3 -m pytest -q training/test_multiverse_text.py
PY="$(bash training/setup-venv.sh)"
"$PY" -W ignore training/smoke_test.py
