#!/usr/bin/env bash
# `pardec serve` end to end: builds the command line, installs OpenAI's Python client (pinned
# in scripts/serve-tests/requirements.txt) into the venv target/serve-venv (made once, reused),
# and runs scripts/serve-tests/ against servers it starts on free ports: the SDK plain and
# streamed, bad requests, a client that hangs up, a bounded load test (200 requests, 16
# clients, plain and forking), the API key and SIGTERM; and the chat page in headless Chromium
# (Debian's chromium and chromium-driver, installed here with apt-get when missing). Called by
# scripts/test.sh.
#
# The server runs the demo's model: the default model with the shipped titles adapter merged
# in as Q8_0 (written once into the model cache, as scripts/demo.sh does), so answers can fork.
#
# Environment:
#   PARDEC_SERVE_MODEL  the model to serve instead (a model with an adapter merged in, or any)
#   PYTHON              the interpreter the venv is made with (default: python3)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
source scripts/lib/target-dir.sh
TARGET="$(cargo_target_dir)"
VENV="$ROOT/target/serve-venv"
PY="$VENV/bin/python"

t0=$SECONDS
step() { echo "== test-serve [$((SECONDS - t0))s]: $*"; }

step "build the command line"
cargo build --release -p pardec-cli
export PARDEC_BIN="$TARGET/release/pardec"

if ! command -v chromium > /dev/null || ! command -v chromedriver > /dev/null; then
    step "install Debian's chromium and chromium-driver (the page test)"
    sudo=""
    [[ $(id -u) -ne 0 ]] && sudo="sudo"
    $sudo apt-get install -y -q chromium chromium-driver > /dev/null || {
        $sudo apt-get update -q > /dev/null && $sudo apt-get install -y -q chromium chromium-driver > /dev/null
    } || {
        echo "test-serve: could not install chromium and chromium-driver: install them (apt-get install chromium chromium-driver)" >&2
        exit 1
    }
fi

if [[ ! -x "$PY" ]]; then
    step "create the venv $VENV"
    "${PYTHON:-python3}" -m venv "$VENV"
fi
step "pinned client and test runner (scripts/serve-tests/requirements.txt)"
"$PY" -m pip install --quiet --disable-pip-version-check -r scripts/serve-tests/requirements.txt

if [[ -z "${PARDEC_SERVE_MODEL:-}" ]]; then
    models="$(bash scripts/fetch-models.sh default)"
    adapter=adapters/titles-smollm2-135m.gguf
    PARDEC_SERVE_MODEL="$models/SmolLM2-135M-Instruct.titles-$(sha256sum "$adapter" | cut -c1-12).Q8_0.gguf"
    if [[ ! -f "$PARDEC_SERVE_MODEL" ]]; then
        step "merge the titles adapter into the default model (once): $PARDEC_SERVE_MODEL"
        "$PARDEC_BIN" merge --model "$models/SmolLM2-135M-Instruct.Q4_1.gguf" --lora "$adapter" --to q8_0 \
            --out "$PARDEC_SERVE_MODEL" > /dev/null
    fi
fi
export PARDEC_SERVE_MODEL
export SERVE_LOGS="$TARGET/serve-test-logs"
mkdir -p "$SERVE_LOGS"

step "tests (server logs in $SERVE_LOGS)"
"$PY" -m pytest -q -p no:cacheprovider scripts/serve-tests
step "done"
