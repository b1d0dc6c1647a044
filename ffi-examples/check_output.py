#!/usr/bin/env python3
"""Checks the output of the C/C++ examples (scripts/test-ffi.sh).

    check_output.py OUT [OUT ...]

Each output must show three streamed branches, the trunk's continuation, one result line per
branch and sane statistics; all outputs must agree on everything but timings (the examples
decode greedily, so the C, C++, static and shared builds must produce the same text).
"""

import re
import sys


def fail(path, why):
    sys.exit(f"check_output: {path}: {why}")


def parse(path):
    text = open(path, encoding="utf-8").read()
    for label in ("1", "2", "3", "trunk"):
        if f"\n[{label}] " not in text:
            fail(path, f"no streamed tokens for [{label}]")
    if text.count("<done: success>") != 2:
        fail(path, "expected two <done: success> events (run and generate)")
    branches = re.findall(r"^== branch (\S+) \((\w+), (\d+) tokens\): (.*)$", text, re.M)
    if [b[0] for b in branches] != ["1", "2", "3"]:
        fail(path, f"branch result lines {branches!r}")
    for label, reason, n_tokens, body in branches:
        if reason not in ("max_tokens", "stop_string", "eog") or int(n_tokens) <= 0:
            fail(path, f"branch {label}: {reason}, {n_tokens} tokens")
        prefix = {"1": "1. Apple:", "2": "2. Banana:", "3": "3. Cherry:"}[label]
        if not body.startswith(prefix):
            fail(path, f"branch {label} does not start with its prefix: {body!r}")
    m = re.search(r"^== stats: (.*)$", text, re.M)
    if not m:
        fail(path, "no stats line")
    stats = {k: float(v) for k, v in re.findall(r"(\w+)=([0-9.]+)", m.group(1))}
    checks = [
        (stats["blocks"] == 1, "blocks == 1"),
        (stats["branches"] == 3, "branches == 3"),
        (stats["abn"] == 3.0, "abn == 3"),
        (0 < stats["tokens_branch"] < stats["tokens_total"], "0 < tokens_branch < tokens_total"),
        (0 < stats["dp"] < 1, "0 < dp < 1"),
        (abs(stats["dp"] - stats["tokens_branch"] / stats["tokens_total"]) < 1e-3, "dp = branch/total"),
        (stats["steps"] < stats["tokens_total"], "steps < tokens (parallel steps count once)"),
        (stats["parallel"] > 1, "#parallel > 1"),
        (stats["tps"] > 0 and stats["p_tps"] > 0, "tps, p_tps > 0"),
        (stats["kv_cells_unshared"] > stats["kv_cells_used"] > 0, "kv cells shared"),
    ]
    for ok, what in checks:
        if not ok:
            fail(path, f"stats: {what} does not hold: {stats}")
    # Everything that must not depend on the build: branch lines, flattened text, counts.
    flat = re.search(r"^== text:\n(.*?)\n== ", text, re.M | re.S)
    if not flat:
        fail(path, "no text section")
    counts = {k: v for k, v in stats.items() if not k.endswith("tps") and k != "events"}
    return branches, flat.group(1), counts


def main(paths):
    results = [(p, parse(p)) for p in paths]
    first_path, first = results[0]
    for path, result in results[1:]:
        if result != first:
            fail(path, f"differs from {first_path}:\n{result!r}\nvs\n{first!r}")
    print(f"check_output: {len(paths)} outputs agree ({len(first[0])} branches, text {len(first[1])} chars)")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:])
