"""The benchmark that decides: a self-distilled adapter against the same model answering plainly,
on the held-out prompts (numbers, not a test).

    python3 training/bench_adapter.py --adapter adapters/titles-smollm2-135m.gguf --protocol titles \\
        [--merged M.gguf] [--temperatures 0.7 0] [--parallel 30 --serial 20] [--json out.json]

Per held-out prompt (training/prompts.json, split "heldout": other templates, other topics) and
per temperature, two answers, in alternating order (the plain one first on every other prompt,
so drift on this noisy machine hits both sides alike):
- plain: the base model file, serial decoding, the same sampling and budget;
- adapted: the model with the adapter (merged into the weights with --merged, the way the demo
  runs it; else applied at run time), auto mode under --protocol: the model decides to fork.
Reported (totals over the prompts the adapter forked on, and over all):
- time to the complete answer, plain over adapted (engine time: from the generate call to its
  return, after the same prompt prefill on both sides), tokens vs plain, and **content words vs
  plain** (tags removed: a faster answer that says less does not count);
- critical path / mean path of the blocks, DP, ABN, #parallel; fork rates on list and on serial
  prompts; structurally valid (`pardec check`) with no engine warning; the base model's NLL per
  token of the flattened answer vs of its own answer;
- a projection for other hardware: the same answers' decode steps priced with a measured
  step-cost curve (a step of width B costs B / speedup(B) one-lane steps), printed as a
  projection, never as a measurement.
"""

from __future__ import annotations

import argparse
import json
import re
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "bindings-python"))
sys.path.insert(0, str(HERE))

import pardec  # noqa: E402
import pardec_cli  # noqa: E402
from build_data import expand_prompts  # noqa: E402
from pardec_cli import default_model  # noqa: E402
from multiverse_text import strip_tags  # noqa: E402
from titles_text import strip_titles_tags  # noqa: E402

WORD = re.compile(r"[a-z]{3,}")
STOP = {"the", "and", "for", "you", "your", "with", "that", "this", "are", "can", "from", "will", "have"}
FLATTEN = {"multiverse": strip_tags, "titles": strip_titles_tags}
# Where the head the engine prefills at a branch's start ends, per protocol.
HEAD_END = {"multiverse": ":", "titles": "**:"}

# Step-cost curves: speedup(B) = B lanes decoded in one step against one lane B times, from
# the engine's own benchmark (`pardec bench`, tokens_per_branch 32).
CURVES = {
    # H200, a random-weight model of SmolLM2-135M's shape (docs/gpu-2026-11-26/run2-h200/bench-smol.json).
    "h200-135m": {1: 1.0, 2: 1.828, 4: 3.460, 8: 5.395, 16: 5.674, 32: 7.816},
    # This 2-core CPU, the default model as Q8_0 (README, "Weight formats", 2026-12-04).
    "cpu-2core-q8_0": {1: 1.0, 2: 1.05, 4: 1.62, 8: 2.12},
}


def content_words(text: str) -> List[str]:
    return [w for w in WORD.findall(text.lower()) if w not in STOP]


def step_cost(curve: Dict[int, float], width: int) -> float:
    """One step of `width` lanes in one-lane steps, interpolated linearly between measured
    widths (and held at the widest measured speedup past it)."""
    if width <= 1:
        return 1.0
    points = sorted(curve.items())
    for (b0, s0), (b1, s1) in zip(points, points[1:]):
        if b0 <= width <= b1:
            speedup = s0 + (s1 - s0) * (width - b0) / (b1 - b0)
            return width / speedup
    return width / points[-1][1]


def priced_steps(serial_tokens: int, branch_lengths: List[List[int]], curve: Dict[int, float]) -> float:
    """An answer's decode cost in one-lane steps: its serial tokens one step each, each block's
    branches in lock-step (a step's width is the number of branches still running)."""
    cost = float(serial_tokens)
    for lengths in branch_lengths:
        for step in range(max(lengths, default=0)):
            cost += step_cost(curve, sum(1 for n in lengths if n > step))
    return cost


def mean_nll(session: pardec.Session, context: str, continuation: str) -> float:
    lps = session.score(context, continuation)
    return -sum(lps) / max(len(lps), 1)


def decoded_lengths(model, protocol: str, branches) -> List[int]:
    """Tokens each branch decoded itself (its n_tokens less its prefilled head)."""
    out = []
    for br in branches:
        cut = br.text.find(HEAD_END[protocol])
        head = len(model.tokenize(br.text[: cut + len(HEAD_END[protocol])], False, special=True)) if cut >= 0 else 0
        out.append(max(br.n_tokens - head, 0))
    return out


def run_adapted(session, model, chat: str, protocol: str, args) -> dict:
    session.clear()
    session.prompt(chat)
    t0 = time.perf_counter()
    report = session.generate_auto(protocol, max_tokens=args.max_tokens, max_branch_tokens=args.max_branch_tokens)
    seconds = time.perf_counter() - t0
    res = session.result()
    st = res.stats
    text = res.text[len(chat):] if res.text.startswith(chat) else res.text
    ok, _ = pardec_cli.check(chat + text, protocol)
    return dict(seconds=seconds, text=text, forked=st.blocks > 0, valid=ok and not report["warnings"],
                warnings=len(report["warnings"]), tokens=st.tokens_total, tokens_branch=st.tokens_branch,
                steps=st.steps, dp=st.dp, abn=st.abn, parallel=st.parallel,
                branch_tokens=[decoded_lengths(model, protocol, b.branches) for b in res.blocks])


def run_plain(session, chat: str, args) -> dict:
    session.clear()
    session.prompt(chat)
    t0 = time.perf_counter()
    text = session.generate_text(max_tokens=args.max_tokens)
    seconds = time.perf_counter() - t0
    return dict(seconds=seconds, text=text, tokens=session.stats().tokens_total)


def engine_under_test() -> Dict[str, str]:
    """Builds this checkout's libpardec and CLI (a no-op when they are current) unless PARDEC_LIB /
    PARDEC_BIN name others, and says which library and commit the numbers come from. The C
    library is built only on request (scripts/build-capi.sh), so `cargo build` leaves an old one
    in place: a benchmark once measured an engine a day of commits older than its checkout."""
    repo = HERE.parent
    if not os.environ.get("PARDEC_LIB"):
        subprocess.run(["bash", str(repo / "scripts" / "build-capi.sh")], cwd=repo, check=True)
    if not os.environ.get("PARDEC_BIN"):
        subprocess.run(["cargo", "build", "--release", "--quiet", "-p", "pardec-cli"], cwd=repo, check=True)
    commit = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=repo, capture_output=True, text=True)
    return dict(library=pardec.library_path(), binary=pardec_cli.binary(), commit=commit.stdout.strip())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=default_model(), help="the plain model file (the baseline)")
    ap.add_argument("--adapter", help="the adapter, applied at run time (unless --merged)")
    ap.add_argument("--merged", help="the model with the adapter merged into its weights (pardec merge)")
    ap.add_argument("--protocol", default="titles", choices=sorted(FLATTEN))
    ap.add_argument("--parallel", type=int, default=30, help="parallelizable held-out prompts to run")
    ap.add_argument("--serial", type=int, default=20, help="serial held-out prompts to run")
    ap.add_argument("--max-tokens", type=int, default=320)
    ap.add_argument("--max-branch-tokens", type=int, default=120)
    ap.add_argument("--temperatures", type=float, nargs="+", default=[0.7, 0.0])
    ap.add_argument("--top-p", type=float, default=0.95)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", help="write every row and the summary here")
    args = ap.parse_args()
    if not (args.adapter or args.merged):
        ap.error("give --adapter or --merged")

    engine = engine_under_test()
    print(f"engine: {engine['library']} ({engine['commit']})", file=sys.stderr, flush=True)
    prompts = expand_prompts(HERE / "prompts.json", "heldout", args.seed)
    prompts = ([p for p in prompts if p.kind == "parallel"][: args.parallel]
               + [p for p in prompts if p.kind == "serial"][: args.serial])
    base = pardec.Model(args.model)
    tuned_model = pardec.Model(args.merged) if args.merged else base
    adapters = [] if args.merged else [(pardec.Adapter(base, args.adapter), 1.0)]
    scorer = pardec.Session(base, n_ctx=4096, n_threads=args.threads)
    flatten = FLATTEN[args.protocol]

    runs = {}
    for temp in args.temperatures:
        common = dict(n_ctx=4096, temperature=temp, top_p=args.top_p, seed=args.seed, max_branches=16,
                      n_threads=args.threads)
        tuned = pardec.Session(tuned_model, adapters=adapters, **common)
        plain_session = pardec.Session(base, **common)
        rows = []
        for n, p in enumerate(prompts):
            chat = base.chat([("user", p.text)])
            if n % 2:
                plain = run_plain(plain_session, chat, args)
                adapted = run_adapted(tuned, tuned_model, chat, args.protocol, args)
            else:
                adapted = run_adapted(tuned, tuned_model, chat, args.protocol, args)
                plain = run_plain(plain_session, chat, args)
            flat = flatten(adapted["text"])
            row = dict(id=p.id, kind=p.kind, prompt=p.text, **{k: v for k, v in adapted.items() if k != "text"},
                       text=adapted["text"], plain_seconds=plain["seconds"], plain_tokens=plain["tokens"],
                       plain_text=plain["text"], words=len(content_words(flat)),
                       plain_words=len(content_words(plain["text"])))
            if adapted["forked"]:
                row["nll_flat"] = mean_nll(scorer, chat, flat)
                row["nll_plain"] = mean_nll(scorer, chat, plain["text"])
            rows.append(row)
            print(f"T={temp} {p.id} {p.kind:8s} forked={row['forked']!s:5s} valid={row['valid']!s:5s} "
                  f"tokens={row['tokens']:3d}/{row['plain_tokens']:3d} words={row['words']}/{row['plain_words']} "
                  f"t={row['seconds']:.2f}s plain={row['plain_seconds']:.2f}s", file=sys.stderr, flush=True)
        runs[str(temp)] = dict(summary=summarize(rows), rows=rows)
        print(f"temperature {temp}:", json.dumps(runs[str(temp)]["summary"], indent=2))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(dict(config=dict(vars(args), **engine), runs=runs), indent=2) + "\n")


def ratio(num: float, den: float) -> Optional[float]:
    return round(num / den, 3) if den else None


def summarize(rows: List[dict]) -> dict:
    par = [r for r in rows if r["kind"] == "parallel"]
    ser = [r for r in rows if r["kind"] == "serial"]
    forked = [r for r in rows if r["forked"]]
    mean = lambda xs: round(statistics.fmean(xs), 3) if xs else None
    total = lambda rs, k: sum(r[k] for r in rs)

    def side(rs: List[dict]) -> dict:
        return dict(
            n=len(rs),
            speed_vs_plain=ratio(total(rs, "plain_seconds"), total(rs, "seconds")),
            tokens_vs_plain=ratio(total(rs, "tokens"), total(rs, "plain_tokens")),
            content_words_vs_plain=ratio(total(rs, "words"), total(rs, "plain_words")),
        )

    shapes = [max(b) / statistics.fmean(b) for r in forked for b in r["branch_tokens"] if b]
    projection = {}
    for name, curve in CURVES.items():
        plain_cost = sum(r["plain_tokens"] for r in forked)
        tuned_cost = sum(priced_steps(r["tokens"] - r["tokens_branch"], r["branch_tokens"], curve) for r in forked)
        projection[name] = ratio(plain_cost, tuned_cost)
    return dict(
        prompts=dict(parallel=len(par), serial=len(ser)),
        fork_rate_parallel=mean([float(r["forked"]) for r in par]),
        fork_rate_serial=mean([float(r["forked"]) for r in ser]),
        valid_no_warnings=mean([float(r["valid"]) for r in rows]),
        forked_answers=side(forked),
        all_answers=side(rows),
        dp=mean([r["dp"] for r in forked]), abn=mean([r["abn"] for r in forked]),
        parallel=mean([r["parallel"] for r in forked]),
        critical_over_mean_path=mean(shapes),
        nll_flat_vs_plain=ratio(mean([r["nll_flat"] for r in forked]) or 0, mean([r["nll_plain"] for r in forked]) or 0)
        if forked else None,
        projected_speed_vs_plain=projection,
    )


if __name__ == "__main__":
    main()
