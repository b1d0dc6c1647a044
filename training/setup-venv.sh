#!/usr/bin/env bash
# Creates the training recipe's virtual environment, outside the repository, and prints its
# python. torch comes from PyPI with its CUDA libraries (the PyPI build imports them even on a
# CPU; about 3.5 GB the first time, cached by pip after that).
#   PY=$(bash training/setup-venv.sh) && "$PY" training/train_lora.py ...
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="${PARDEC_TRAIN_VENV:-$HOME/.cache/pardec/train-venv}"
stamp="$venv/.requirements.sha256"
want="$(sha256sum "$here/requirements.txt" | cut -d' ' -f1)"
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "setup-venv: installing $here/requirements.txt into $venv (PyPI)" >&2
    python3 -m venv "$venv" >&2 || { echo "setup-venv: python3 -m venv failed: install python3-venv (apt-get install python3-venv)" >&2; exit 1; }
    "$venv/bin/pip" install --quiet --upgrade pip >&2
    "$venv/bin/pip" install --quiet -r "$here/requirements.txt" >&2
    "$venv/bin/python" -c "import torch, numpy, gguf" >&2
    echo "$want" > "$stamp"
fi
echo "$venv/bin/python"
