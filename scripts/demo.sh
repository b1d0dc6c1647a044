#!/usr/bin/env bash
# The main job on the default model: the model decides to fork by itself. With the shipped
# self-distilled adapter (adapters/, trained by training/), SmolLM2-135M-Instruct answers a list
# question by writing the titles of its items, then pardec decodes the items' bodies in parallel
# over the shared prompt (each branch starts with its title, prefilled, never decoded twice),
# joins them, and the model goes on. Prints the text and the statistics.
#   scripts/demo.sh            the model forks by itself (auto mode, protocol titles)
#   scripts/demo.sh explicit   the host forks: four branches given on the command line
# Further arguments go to `pardec run` (e.g. --seed 3, --json).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release --quiet
source scripts/lib/target-dir.sh
pardec="$(cargo_target_dir)/release/pardec"
adapter=adapters/titles-smollm2-135m.gguf
# The default model's weights as Q8_0, written once into the model cache: on a CPU, Q8_0's
# kernels share each weight read across a batch of branches better than Q4_1's, at the same
# perplexity (README, "Weight formats"). The adapter is merged into a second Q8_0 copy, named
# by the adapter's hash: merged, it costs nothing per decode step (applied at run time it costs
# a quarter of each step here; README, "Merged or at run time"). PARDEC_MODEL (or a --model
# argument) overrides both: the adapter is then applied at run time.
model_args=()
explicit_args=()
if [[ -z "${PARDEC_MODEL:-}" ]]; then
    models="$(bash scripts/fetch-models.sh default)"
    base="$models/SmolLM2-135M-Instruct.Q4_1.gguf"
    q8="$models/SmolLM2-135M-Instruct.Q4_1.Q8_0.gguf"
    merged="$models/SmolLM2-135M-Instruct.titles-$(sha256sum "$adapter" | cut -c1-12).Q8_0.gguf"
    if [[ ! -f "$q8" ]]; then
        echo "demo: writing the default model as Q8_0 (once): $q8" >&2
        "$pardec" convert --model "$base" --to q8_0 --out "$q8" > /dev/null
    fi
    if [[ ! -f "$merged" ]]; then
        echo "demo: merging the adapter into the default model as Q8_0 (once): $merged" >&2
        "$pardec" merge --model "$base" --lora "$adapter" --to q8_0 --out "$merged" > /dev/null
    fi
    model_args=(--model "$merged")
    explicit_args=(--model "$q8")
else
    model_args=(--lora "$adapter")
fi
if [[ "${1:-}" == "explicit" ]]; then
    shift
    exec "$pardec" run "${explicit_args[@]}" \
        --prompt "Give four tips for staying healthy while working at a desk. One sentence each." \
        --branch "1. Posture:" --branch "2. Movement:" --branch "3. Eyes:" --branch "4. Hydration:" \
        --max-branch-tokens 40 --branch-stop $'\n' --then $'\n\nIn summary,' --max-tokens 40 \
        --temp 0.6 --top-p 0.9 --seed 1 "$@"
fi
exec "$pardec" run "${model_args[@]}" --protocol titles \
    --prompt "Give me 4 tips for keeping a small apartment tidy." \
    --max-tokens 320 --max-branch-tokens 120 --temp 0.7 --top-p 0.95 --seed 1 "$@"
