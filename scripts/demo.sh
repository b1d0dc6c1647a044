#!/usr/bin/env bash
# The main job on the default model: a question whose answer splits into four independent
# branches, decoded in parallel over one shared prompt, joined, and summed up.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release --quiet
exec ./target/release/pardec run \
    --prompt "Give four tips for staying healthy while working at a desk. One sentence each." \
    --branch "1. Posture:" --branch "2. Movement:" --branch "3. Eyes:" --branch "4. Hydration:" \
    --max-branch-tokens 40 --branch-stop $'\n' --then $'\n\nIn summary,' --max-tokens 40 \
    --temp 0.6 --top-p 0.9 --seed 1 "$@"
