"""Benchmark of the self-distilled adapter on the held-out prompts (numbers, not a test).

    python3 training/bench_adapter.py --adapter adapters/multiverse-smollm2.gguf \\
        [--parallel 20 --serial 10] [--json docs/adapter-bench.json]

Per held-out prompt (training/prompts.json, split "heldout": other templates, other topics),
the default model with the adapter runs in auto mode (the model decides to fork; Multiverse):
- fork rate on parallelizable and on serial prompts; structurally valid (`pardec check`) with
  no engine warning;
- DP, ABN, #parallel from the engine's statistics;
- time to the complete answer vs the same number of tokens decoded serially (with the adapter,
  one token per step, measured right after) and vs the base model's own serial answer;
  the ideal is #parallel (every decode step costing the same, whatever its width);
- quality: the base model's per-token NLL of the adapter's answer flattened (tags removed) vs
  of its own serial answer; path titles covered by their bodies; paths repeating each other.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "bindings-python"))
sys.path.insert(0, str(HERE))

import pardec  # noqa: E402
import pardec_cli  # noqa: E402
from build_data import expand_prompts  # noqa: E402
from pardec_cli import default_model  # noqa: E402
from multiverse_text import strip_tags  # noqa: E402

WORD = re.compile(r"[a-z]{3,}")
STOP = {"the", "and", "for", "you", "your", "with", "that", "this", "are", "can", "from", "will", "have"}


def words(text: str) -> set:
    return {w for w in WORD.findall(text.lower()) if w not in STOP}


def paths_of(text: str):
    """(title, body) of every outline/path pair of the response's blocks."""
    titles = dict(re.findall(r"<Outline>\s*([0-9.]+)\s*:\s*(.*?)</Outline>", text, re.S))
    bodies = re.findall(r"<Path>\s*([0-9.]+)\s*:(.*?)</Path>", text, re.S)
    return [(titles.get(label, ""), body) for label, body in bodies]


def mean_nll(session: pardec.Session, context: str, continuation: str) -> float:
    lps = session.score(context, continuation)
    return -sum(lps) / max(len(lps), 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=default_model())
    ap.add_argument("--adapter", required=True)
    ap.add_argument("--parallel", type=int, default=20, help="parallelizable held-out prompts to run")
    ap.add_argument("--serial", type=int, default=10, help="serial held-out prompts to run")
    ap.add_argument("--max-tokens", type=int, default=300)
    ap.add_argument("--max-branch-tokens", type=int, default=120)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--json", help="write every row and the summary here")
    args = ap.parse_args()

    prompts = expand_prompts(HERE / "prompts.json", "heldout", args.seed)
    prompts = ([p for p in prompts if p.kind == "parallel"][: args.parallel]
               + [p for p in prompts if p.kind == "serial"][: args.serial])
    model = pardec.Model(args.model)
    adapter = pardec.Adapter(model, args.adapter)
    common = dict(n_ctx=4096, temperature=args.temperature, seed=args.seed, max_branches=16)
    if args.threads:
        common["n_threads"] = args.threads
    tuned = pardec.Session(model, adapters=[(adapter, 1.0)], **common)
    base = pardec.Session(model, **common)
    scorer = pardec.Session(model, n_ctx=4096)

    rows = []
    for p in prompts:
        chat = model.chat([("user", p.text)])
        tuned.clear()
        tuned.prompt(chat)
        t0 = time.perf_counter()
        report = tuned.generate_auto("multiverse", max_tokens=args.max_tokens,
                                     max_branch_tokens=args.max_branch_tokens)
        t_auto = time.perf_counter() - t0
        res = tuned.result()
        st = res.stats
        text = res.text[len(chat):] if res.text.startswith(chat) else res.text
        forked = st.blocks > 0
        ok, _ = pardec_cli.check(chat + text, "multiverse")
        row = dict(id=p.id, kind=p.kind, prompt=p.text, forked=forked, valid=ok and not report["warnings"],
                   warnings=len(report["warnings"]), tokens=st.tokens_total, steps=st.steps,
                   dp=st.dp, abn=st.abn, parallel=st.parallel, seconds=round(t_auto, 3), text=text)
        # The base model's own serial answer: its time and its text.
        base.clear()
        base.prompt(chat)
        t0 = time.perf_counter()
        base_text = base.generate_text(max_tokens=args.max_tokens)
        row["base_seconds"] = round(time.perf_counter() - t0, 3)
        row["base_tokens"] = base.stats().tokens_total
        if forked:
            # The same number of tokens, decoded serially with the adapter (one per step).
            tuned.clear()
            tuned.prompt(chat)
            t0 = time.perf_counter()
            tuned.generate_text(max_tokens=st.tokens_total, ban_eog=True)
            row["serial_same_seconds"] = round(time.perf_counter() - t0, 3)
            flat = strip_tags(text)
            row["nll_flat"] = mean_nll(scorer, chat, flat)
            row["nll_base"] = mean_nll(scorer, chat, base_text)
            pairs = paths_of(text)
            covered = [len(words(t) & words(b)) >= max(1, len(words(t)) // 2) for t, b in pairs if words(t)]
            row["titles_covered"] = sum(covered) / len(covered) if covered else None
            sets = [words(b) for _, b in pairs]
            row["repeats"] = any(len(a & b) / max(len(a | b), 1) > 0.8
                                 for i, a in enumerate(sets) for b in sets[i + 1:])
        rows.append(row)
        print(f"{p.id} {p.kind:8s} forked={forked!s:5s} valid={row['valid']!s:5s} tokens={st.tokens_total:3d} "
              f"#par={st.parallel:.2f} t={t_auto:.1f}s base={row['base_seconds']:.1f}s", file=sys.stderr, flush=True)

    summary = summarize(rows)
    print(json.dumps(summary, indent=2))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(dict(summary=summary, config=vars(args), rows=rows), indent=2) + "\n")


def summarize(rows):
    par = [r for r in rows if r["kind"] == "parallel"]
    ser = [r for r in rows if r["kind"] == "serial"]
    forked = [r for r in rows if r["forked"]]
    mean = lambda xs: round(statistics.fmean(xs), 3) if xs else None
    total_same = sum(r["serial_same_seconds"] for r in forked)
    total_auto = sum(r["seconds"] for r in forked)
    return dict(
        prompts=dict(parallel=len(par), serial=len(ser)),
        fork_rate_parallel=mean([float(r["forked"]) for r in par]),
        fork_rate_serial=mean([float(r["forked"]) for r in ser]),
        valid_no_warnings=mean([float(r["valid"]) for r in rows]),
        dp=mean([r["dp"] for r in forked]), abn=mean([r["abn"] for r in forked]),
        parallel=mean([r["parallel"] for r in forked]),
        speedup_vs_same_tokens_serial=round(total_same / total_auto, 3) if total_auto else None,
        ideal_speedup=round(sum(r["tokens"] for r in forked) / max(sum(r["steps"] for r in forked), 1), 3)
        if forked else None,
        time_vs_base_answer=round(sum(r["base_seconds"] for r in forked) / total_auto, 3) if total_auto else None,
        tokens_vs_base_answer=round(sum(r["tokens"] for r in forked) / max(sum(r["base_tokens"] for r in forked), 1), 3)
        if forked else None,
        nll_flat_vs_base=round(mean([r["nll_flat"] for r in forked]) / mean([r["nll_base"] for r in forked]), 3)
        if forked else None,
        titles_covered=mean([r["titles_covered"] for r in forked if r.get("titles_covered") is not None]),
        blocks_with_repeated_paths=mean([float(r["repeats"]) for r in forked]),
    )


if __name__ == "__main__":
    main()
