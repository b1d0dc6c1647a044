"""The pardec command-line tool, as the training code uses it: `layout` (positions and
visibility, the one rule for training and inference), `score` and `check`.

Training code never re-derives positions or masks; it reads them from `pardec layout --json`.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

REPO = Path(__file__).resolve().parent.parent


def default_model() -> str:
    """The default model, where scripts/fetch-models.sh caches it."""
    return str(Path.home() / ".cache" / "pardec" / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf")


def binary() -> str:
    path = os.environ.get("PARDEC_BIN") or str(REPO / "target" / "release" / "pardec")
    if not os.path.exists(path):
        raise SystemExit(f"pardec binary not found at {path}: run `cargo build --release` "
                         "or set PARDEC_BIN")
    return path


def _run(args: Sequence[str], stdin: Optional[str] = None) -> subprocess.CompletedProcess:
    return subprocess.run([binary(), *args], input=None if stdin is None else stdin.encode(),
                          capture_output=True)


def layout(text: str, protocol: str, model: str, rule: str = "engine") -> dict:
    out = _run(["layout", "--model", model, "--protocol", protocol, "--rule", rule, "--json"], text)
    if out.returncode != 0:
        raise RuntimeError(f"pardec layout failed: {out.stderr.decode(errors='replace').strip()}")
    return json.loads(out.stdout)


def check(text: str, protocol: str) -> Tuple[bool, str]:
    """(well formed, what `pardec check` said)."""
    out = _run(["check", "--protocol", protocol], text)
    said = (out.stdout + out.stderr).decode(errors="replace").strip()
    return out.returncode == 0, said


def score(context: str, continuation: str, model: str, loras: Sequence[str] = ()) -> List[Tuple[int, float]]:
    """(token id, natural-log probability) of each continuation token, from the engine."""
    args = ["score", "--model", model, "--context", context, "--continuation", continuation, "--json"]
    for lora in loras:
        args += ["--lora", lora]
    out = _run(args)
    if out.returncode != 0:
        raise RuntimeError(f"pardec score failed: {out.stderr.decode(errors='replace').strip()}")
    return [(t["id"], t["logprob"]) for t in json.loads(out.stdout)["tokens"]]
