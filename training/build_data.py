"""Builds the self-distilled parallel training set from the default model itself (ASPD's
"non-invasive parallel data transformation", done on device with pardec).

    python training/build_data.py --out training/data/titles-smollm2.jsonl [--protocol titles] [--seed 1]

Deterministic for a seed (sampling is seeded; the engine is deterministic on one machine):
1. prompts from training/prompts.json (train split): list-like requests and serial ones;
2. own answers: each prompt is answered --samples times by the model, sampled, all samples of
   several prompts in one batch of pardec forks (one decode step for all of them); reused
   answers that a smaller budget cut are continued to --max-tokens; a serial answer the budget
   still cuts is kept without its end token (the model's own length), a list only when whole;
3. parallel rewrite: an answer whose body is a list of items becomes a block of --protocol
   (`titles`: the outline of titles, one branch per item writing only its body, the model's own
   closing text after the join; `multiverse`, the first adapter's: outline, paths, the closing
   text as the conclusion), titles from the items' heads;
4. structural check with `pardec check`, then selection among the samples by the speed the block
   allows (response tokens / critical path: balanced items win, as PASTA and ThreadWeaver
   reward), then DP;
5. independence check with the engine: each item's body is scored as a branch sees it (prefix,
   outline and its own path opening only) and as a serial reader does (the items before it
   too); a block whose item loses more than --max-isolation-loss nats per token when isolated
   degrades to a serial example;
6. output: JSONL (text, protocol, DP, ABN, provenance) and <out>.summary.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "bindings-python"))
sys.path.insert(0, str(HERE))

import pardec  # noqa: E402
import pardec_cli  # noqa: E402
from pardec_cli import default_model  # noqa: E402
from multiverse_text import ListAnswer, parse_list_answer, multiverse_response  # noqa: E402
import titles_text  # noqa: E402

END = "<|im_end|>"


@dataclass
class Rewrite:
    """How a list answer becomes a block of one protocol, and where that block forks."""
    protocol: str
    response: object  # ListAnswer -> str
    fork_after: str  # the trigger and whatever the engine writes after it before the branches
    opening: object  # (1-based index, Item) -> the branch's opening the isolation check scores after
    between: str  # what a serial reader reads between one item's content and the next opening


REWRITES = {
    "multiverse": Rewrite("multiverse", multiverse_response, "</Goal>\n",
                          lambda i, item: f"<Path>\n{i}: {item.body[:item.head]}", "</Path>\n"),
    "titles": Rewrite("titles", titles_text.titles_response, titles_text.TRIGGER,
                      lambda i, item: titles_text.branch_head(i, item.title), titles_text.BRANCH_END),
}


@dataclass
class Prompt:
    id: str
    split: str
    kind: str  # "parallel" or "serial"
    template: str
    text: str


def expand_prompts(path: Path, split: str, seed: int) -> List[Prompt]:
    spec = json.loads(path.read_text())[split]
    rng = random.Random(f"{seed}:{split}")
    out: List[Prompt] = []
    for kind in ("parallel", "serial"):
        for group in spec[kind]:
            for template in group["templates"]:
                for topic in group["topics"]:
                    fill = dict(n=rng.choice([3, 4]), a=rng.randint(2, 19), b=rng.randint(2, 19),
                                c=rng.randint(2, 5), topic=topic, thing=topic)
                    text = template.format(**fill)
                    out.append(Prompt(f"{split}-{len(out):03d}", split, kind, template, text))
    return out


def sample_answers(model: pardec.Model, prompts: List[Prompt], samples: int, max_tokens: int,
                   seed: int, batch: int, temperature: float) -> Dict[str, List[Tuple[str, str]]]:
    """Every prompt answered `samples` times: (text, stop reason). Several prompts share one
    fork block (each branch's prefix is its whole chat prompt), so all are decoded together."""
    per_fork = max(1, batch // samples)
    session = pardec.Session(model, n_ctx=16384, max_branches=per_fork * samples,
                             temperature=temperature, top_p=0.95, seed=seed)
    answers: Dict[str, List[Tuple[str, str]]] = {}
    for start in range(0, len(prompts), per_fork):
        group = prompts[start:start + per_fork]
        session.clear()
        prefixes = [model.chat([("user", p.text)]) for p in group for _ in range(samples)]
        session.fork(prefixes, max_tokens=max_tokens)
        session.run()
        branches = session.result().blocks[-1].branches
        for i, p in enumerate(group):
            mine = zip(prefixes[i * samples:(i + 1) * samples], branches[i * samples:(i + 1) * samples])
            # A branch's text starts with its prefix (here: the chat prompt).
            answers[p.id] = [(b.text[len(pre):] if b.text.startswith(pre) else b.text, b.stop_reason or "")
                             for pre, b in mine]
        print(f"  answered {min(start + per_fork, len(prompts))}/{len(prompts)}", file=sys.stderr, flush=True)
    return answers


# Tokens an answer may fall short of its budget and still count as having reached it: the text
# tokenized again need not give the sampled tokens back one for one.
RETOKENIZE_SLACK = 8


def extend_cut_answers(model: pardec.Model, prompts: List[Prompt], answers: Dict[str, List[Tuple[str, str]]],
                       max_tokens: int, seed: int, batch: int, temperature: float) -> int:
    """Continues, in place, every answer an earlier and smaller budget cut (stop "max_tokens",
    fewer than `max_tokens` tokens) up to `max_tokens`. A sampled continuation of a sampled
    prefix is a sample under the larger budget, so the raw samples need not be drawn again;
    dropping the cut ones instead would teach the adapter the shorter answers only. Returns how
    many were continued."""
    cut = [(p.id, k) for p in prompts for k, (text, stop) in enumerate(answers.get(p.id, []))
           if stop == "max_tokens" and len(model.tokenize(text, add_bos=False)) < max_tokens - RETOKENIZE_SLACK]
    session = pardec.Session(model, n_ctx=16384, max_branches=batch, temperature=temperature, top_p=0.95,
                             seed=seed)
    for start in range(0, len(cut), batch):
        group = cut[start:start + batch]
        chats = {pid: model.chat([("user", next(p.text for p in prompts if p.id == pid))]) for pid, _ in group}
        prefixes = [chats[pid] + answers[pid][k][0] for pid, k in group]
        # One budget per fork: the smallest that is left in the group, so none exceeds max_tokens.
        left = min(max_tokens - len(model.tokenize(answers[pid][k][0], add_bos=False)) for pid, k in group)
        session.clear()
        session.fork(prefixes, max_tokens=left)
        session.run()
        for (pid, k), pre, b in zip(group, prefixes, session.result().blocks[-1].branches):
            more = b.text[len(pre):] if b.text.startswith(pre) else b.text
            answers[pid][k] = (answers[pid][k][0] + more, b.stop_reason or "")
        print(f"  continued {min(start + batch, len(cut))}/{len(cut)} cut answers", file=sys.stderr, flush=True)
    return len(cut)


def degenerate(text: str) -> Optional[str]:
    """Why a sampled answer is not worth learning from, or None."""
    lines = [l.strip() for l in text.splitlines() if l.strip()]
    if not lines:
        return "empty"
    if len(set(lines)) < len(lines):
        return "repeats a line"
    words = text.split()
    if len(words) >= 12 and len(set(words)) < 0.35 * len(words):
        return "repetitive"
    return None


def isolation_losses(session: pardec.Session, chat: str, answer: ListAnswer, parallel_text: str,
                     rw: Rewrite) -> List[float]:
    """Per item: mean log-likelihood per token of its content as a serial reader sees it (after
    the items before it) minus as its branch sees it (prefix, outline, its own path opening).
    The item's head (it restates the outline) and the closing tag are context, not scored:
    there the serial reader only gains from copying the format of the items before, which
    says nothing about whether the content depends on them.

    One prefill of the shared prefix serves both readings: the serial one continues the trunk
    item by item; each isolated one is a branch forked from the prefix (it sees the prefix and
    itself, exactly as the engine decodes a path)."""
    fork_at = parallel_text.index(rw.fork_after) + len(rw.fork_after)
    openings = [rw.opening(i, item) for i, item in enumerate(answer.items, start=1)]
    session.clear()
    session.prompt(chat + parallel_text[:fork_at])
    branches = session.fork(openings, max_tokens=0)  # prefilled, nothing sampled
    session.run()
    isolated = []
    for node, item in zip(branches, answer.items):
        content = item.content()
        isolated.append(session.score(None, content, node=node) if len(content.split()) >= 3 else None)
    session.join(keep="discard")
    losses = []
    for i, (opening, item, iso) in enumerate(zip(openings, answer.items, isolated)):
        session.append(opening if i == 0 else rw.between + opening)
        if iso is None:  # nothing beyond the title to depend on anything: no loss
            if item.content().strip():
                session.append(item.content())
            losses.append(0.0)
            continue
        ser = session.score(None, item.content())
        losses.append(sum(ser) / len(ser) - sum(iso) / len(iso))
    return losses


@dataclass
class BlockShape:
    """A rewritten answer's tokens as the engine lays them out."""
    tokens: int  # response tokens
    in_branches: int  # of them inside branches
    branches: int
    longest: int  # the longest branch
    mean: float  # a branch's mean length

    def dp(self) -> float:
        return self.in_branches / max(self.tokens, 1)

    def ideal_speedup(self) -> float:
        """Response tokens / decode steps with every branch in one step each: the most a block
        of this shape can gain if a step costs the same whatever its width."""
        return self.tokens / max(self.tokens - self.in_branches + self.longest, 1)


def block_shape(text: str, response_start: int, model_path: str, protocol: str) -> BlockShape:
    lay = pardec_cli.layout(text, protocol, model_path)
    response = [t for t in lay["tokens"] if t["start"] >= response_start]
    per_branch: Dict[object, int] = {}
    for t in response:
        if t["branch"] is not None:
            per_branch[t["branch"]] = per_branch.get(t["branch"], 0) + 1
    lengths = list(per_branch.values()) or [0]
    return BlockShape(len(response), sum(lengths), len(per_branch), max(lengths),
                      sum(lengths) / max(len(per_branch), 1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=default_model())
    ap.add_argument("--prompts", default=str(HERE / "prompts.json"))
    ap.add_argument("--out", required=True)
    ap.add_argument("--protocol", default="titles", choices=sorted(REWRITES),
                    help="the block format to rewrite lists into (the first adapter used multiverse)")
    ap.add_argument("--answers", help="the sampled answers to reuse (default: <out>.answers.json)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--serial-per-prompt", type=int, default=2,
                    help="serial examples kept per serial prompt (balances the two kinds)")
    ap.add_argument("--max-tokens", type=int, default=400,
                    help="answer budget; reused answers cut by a smaller one are continued to it (the "
                         "benchmark's plain answers get 320)")
    ap.add_argument("--batch", type=int, default=16, help="sequences decoded together")
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--max-isolation-loss", type=float, default=0.6,
                    help="nats per token an item may lose when it cannot see the items before it")
    ap.add_argument("--min-body-words", type=int, default=3,
                    help="words each item's body needs for its list to become a block (v2's data: 0)")
    ap.add_argument("--keep-cut-serial", action=argparse.BooleanOptionalAction, default=True,
                    help="keep serial answers the budget cut, without their end token (v2's data: "
                         "--no-keep-cut-serial, with --max-tokens 220 and v1's raw samples)")
    ap.add_argument("--limit", type=int, default=0, help="first N prompts only (smoke runs)")
    args = ap.parse_args()

    prompts = expand_prompts(Path(args.prompts), "train", args.seed)
    if args.limit:
        prompts = prompts[: args.limit // 2] + [p for p in prompts if p.kind == "serial"][: args.limit - args.limit // 2]
    model = pardec.Model(args.model)
    # The sampled answers are kept beside the output: the later stages can be rerun on them.
    rw = REWRITES[args.protocol]
    cache = Path(args.answers or str(args.out) + ".answers.json")
    own_cache = Path(str(args.out) + ".answers.json")
    if cache.exists():
        answers = {k: [tuple(a) for a in v] for k, v in json.loads(cache.read_text()).items()}
        print(f"answers read from {cache}", file=sys.stderr)
        fresh = extend_cut_answers(model, prompts, answers, args.max_tokens, args.seed, args.batch, args.temperature)
        if fresh:  # kept beside the output; the file that was read stays as it was
            own_cache.write_text(json.dumps(answers, ensure_ascii=False, indent=0) + "\n")
            print(f"{fresh} cut answers continued to {args.max_tokens} tokens, written to {own_cache}",
                  file=sys.stderr)
    else:
        print(f"sampling {len(prompts)} prompts x {args.samples}", file=sys.stderr)
        answers = sample_answers(model, prompts, args.samples, args.max_tokens, args.seed, args.batch, args.temperature)
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(answers, ensure_ascii=False, indent=0) + "\n")
    scorer = pardec.Session(model, n_ctx=4096, max_branches=8)

    examples, reasons, iso_all = [], {}, []
    count = lambda why: reasons.__setitem__(why, reasons.get(why, 0) + 1)
    for n, p in enumerate(prompts):
        if n % 10 == 0:
            print(f"  checked {n}/{len(prompts)}", file=sys.stderr, flush=True)
        chat = model.chat([("user", p.text)])
        usable, unfinished = [], set()
        for k, (text, stop) in enumerate(answers[p.id]):
            # A serial answer the budget cut is kept, without its end token: dropping the long
            # answers would teach the adapter to answer shorter than the model does. A block
            # needs its whole list.
            keep_cut = p.kind == "serial" and args.keep_cut_serial
            why = "unfinished" if stop != "eog" and not keep_cut else degenerate(text)
            if why:
                count(f"sample dropped: {why}")
                continue
            if stop != "eog":
                unfinished.add(k)
            usable.append((k, text.strip()))
        if not usable:
            count(f"{p.kind} prompt dropped: no usable sample")
            continue
        chosen: List[dict] = []
        if p.kind == "parallel":
            candidates = []
            for k, text in usable:
                answer = parse_list_answer(text)
                if answer is None:
                    count("sample is not a list")
                    continue
                if any(len(it.content().split()) < args.min_body_words for it in answer.items):
                    # A branch with nothing to write: forking gains nothing, and a block that
                    # teaches empty bodies teaches the adapter to end branches at once.
                    count("sample dropped: list items without bodies")
                    continue
                response = rw.response(answer)
                full = chat + response + END
                ok, said = pardec_cli.check(full, rw.protocol)
                if not ok:
                    count("rewrite fails pardec check")
                    continue
                shape = block_shape(full, len(chat.encode()), args.model, rw.protocol)
                candidates.append((shape, k, text, answer, response))
            # Selection by the speed the block allows (balanced items), then DP; the first one
            # whose items are independent wins.
            ranked = sorted(candidates, key=lambda c: (-round(c[0].ideal_speedup(), 2), -c[0].dp(), c[1]))
            for shape, k, text, answer, response in ranked:
                losses = isolation_losses(scorer, chat, answer, response, rw)
                iso_all.extend(losses)
                if max(losses) > args.max_isolation_loss:
                    count("block degraded: items not independent")
                    continue
                chosen.append(dict(response=response, parallel=True, dp=shape.dp(), abn=float(shape.branches),
                                   sample=k, closing=bool(answer.closing),
                                   ideal_speedup=round(shape.ideal_speedup(), 3),
                                   longest_over_mean=round(shape.longest / max(shape.mean, 1e-9), 3),
                                   isolation_loss=[round(x, 4) for x in losses], flat=answer.flat()))
                break
            if not chosen:
                if candidates:
                    # The model's own list, kept serial: it teaches when not to fork.
                    _, k, text, _, _ = sorted(candidates, key=lambda c: c[1])[0]
                    chosen.append(dict(response=text, parallel=False, dp=0.0, abn=0.0, sample=k, flat=text))
                else:
                    count("parallel prompt dropped: no list answer")
        else:
            plain = [(k, t) for k, t in usable if parse_list_answer(t) is None] or usable
            for k, text in plain[: args.serial_per_prompt]:
                chosen.append(dict(response=text, parallel=False, dp=0.0, abn=0.0, sample=k, flat=text))
        for c in chosen:
            c["finished"] = c["sample"] not in unfinished
            text = chat + c.pop("response") + (END if c["finished"] else "")
            examples.append(dict(id=f"{p.id}-s{c['sample']}", prompt=p.text, kind=p.kind, protocol=rw.protocol,
                                 text=text, response_start=len(chat.encode()), **c,
                                 provenance=dict(seed=args.seed, sample=c["sample"], template=p.template,
                                                 temperature=args.temperature, model=Path(args.model).name)))

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w") as f:
        for e in examples:
            f.write(json.dumps(e, ensure_ascii=False) + "\n")
    par = [e for e in examples if e["parallel"]]
    summary = dict(
        examples=len(examples), parallel=len(par), serial=len(examples) - len(par),
        parallel_share=round(len(par) / max(len(examples), 1), 3),
        mean_dp=round(sum(e["dp"] for e in par) / max(len(par), 1), 3),
        mean_abn=round(sum(e["abn"] for e in par) / max(len(par), 1), 3),
        protocol=rw.protocol,
        # Critical path over mean path per block (1.0: perfectly balanced items) and the speed
        # each block allows at a width-free step cost.
        mean_longest_over_mean=round(sum(e["longest_over_mean"] for e in par) / max(len(par), 1), 3),
        mean_ideal_speedup=round(sum(e["ideal_speedup"] for e in par) / max(len(par), 1), 3),
        with_closing=sum(1 for e in par if e["closing"]),
        serial_cut_by_budget=sum(1 for e in examples if not e["finished"]),
        prompts=len(prompts), samples_per_prompt=args.samples, seed=args.seed,
        max_isolation_loss=args.max_isolation_loss,
        isolation_loss_quantiles=_quantiles(iso_all), reasons=reasons,
        sha256=hashlib.sha256(out.read_bytes()).hexdigest())
    Path(str(out) + ".summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


def _quantiles(xs: List[float]) -> Dict[str, float]:
    if not xs:
        return {}
    s = sorted(xs)
    q = lambda f: round(s[min(len(s) - 1, int(f * len(s)))], 4)
    return {"p10": q(0.1), "p50": q(0.5), "p90": q(0.9), "max": round(s[-1], 4)}


if __name__ == "__main__":
    main()
