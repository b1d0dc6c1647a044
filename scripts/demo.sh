#!/usr/bin/env bash
# The main job on the default model: the model decides to fork by itself. With the shipped
# self-distilled adapter (adapters/, trained by training/), SmolLM2-135M-Instruct answers a list
# question by opening a Multiverse block; pardec decodes its paths in parallel over the shared
# prompt, joins them, and the model writes the conclusion. Prints the text and the statistics.
#   scripts/demo.sh            the model forks by itself (auto mode + adapter)
#   scripts/demo.sh explicit   the host forks: four branches given on the command line
# Further arguments go to `pardec run` (e.g. --seed 3, --json).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release --quiet
source scripts/lib/target-dir.sh
pardec="$(cargo_target_dir)/release/pardec"
# The default model's weights as Q8_0, written once into the model cache: on a CPU, Q8_0's
# kernels share each weight read across a batch of branches better than Q4_1's, at the same
# perplexity (README, "Weight formats"). PARDEC_MODEL (or a --model argument) overrides it.
model_args=()
if [[ -z "${PARDEC_MODEL:-}" ]]; then
    models="$(bash scripts/fetch-models.sh default)"
    q8="$models/SmolLM2-135M-Instruct.Q4_1.Q8_0.gguf"
    if [[ ! -f "$q8" ]]; then
        echo "demo: writing the default model as Q8_0 (once): $q8" >&2
        "$pardec" convert --model "$models/SmolLM2-135M-Instruct.Q4_1.gguf" --to q8_0 --out "$q8" > /dev/null
    fi
    model_args=(--model "$q8")
fi
if [[ "${1:-}" == "explicit" ]]; then
    shift
    exec "$pardec" run "${model_args[@]}" \
        --prompt "Give four tips for staying healthy while working at a desk. One sentence each." \
        --branch "1. Posture:" --branch "2. Movement:" --branch "3. Eyes:" --branch "4. Hydration:" \
        --max-branch-tokens 40 --branch-stop $'\n' --then $'\n\nIn summary,' --max-tokens 40 \
        --temp 0.6 --top-p 0.9 --seed 1 "$@"
fi
exec "$pardec" run "${model_args[@]}" --protocol multiverse \
    --lora adapters/multiverse-smollm2-135m.gguf \
    --prompt "Give me 4 tips for keeping a small apartment tidy." \
    --max-tokens 320 --max-branch-tokens 120 --temp 0.7 --top-p 0.95 --seed 1 "$@"
