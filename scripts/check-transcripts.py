#!/usr/bin/env python3
"""Runs `pardec check` over real model transcripts, one response per file.

Usage: scripts/check-transcripts.py --protocol multiverse FOLDER [FOLDER...]

Built for the transcripts Multiverse's engine wrote (the `*_results` folders of a copy of the
Multiverse repository: each file holds the question, then the decoded sequence after a
`<|im_start|>assistant\\n`, then the extracted answer). The response is the text after the first
`<|im_start|>assistant\\n` and before a `\\n\\n提取的答案:` line when there is one. Files without
a `<Parallel>` are skipped. Prints how many responses pass and the most common errors.
"""
import argparse
import collections
import pathlib
import subprocess
import sys


def response(text: str) -> str:
    text = text.split("<|im_start|>assistant\n", 1)[-1]
    return text.split("\n\n提取的答案:")[0]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--protocol", default="multiverse")
    ap.add_argument("--pardec", default=str(pathlib.Path(__file__).resolve().parents[1] / "target/release/pardec"))
    ap.add_argument("folders", nargs="+")
    args = ap.parse_args()
    passed, total, errors = 0, 0, collections.Counter()
    for folder in args.folders:
        for f in sorted(pathlib.Path(folder).glob("*.txt")):
            text = response(f.read_text(encoding="utf-8", errors="replace"))
            if "<Parallel>" not in text:
                continue
            total += 1
            r = subprocess.run([args.pardec, "check", "--protocol", args.protocol], input=text.encode(), capture_output=True)
            if r.returncode == 0:
                passed += 1
                continue
            for line in r.stdout.decode().splitlines():
                errors[line.split(": ", 1)[-1][:80]] += 1
    print(f"{passed}/{total} responses with a parallel block pass `pardec check --protocol {args.protocol}`")
    for message, n in errors.most_common(10):
        print(f"{n:5}  {message}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
