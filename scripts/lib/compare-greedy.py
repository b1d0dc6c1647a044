#!/usr/bin/env python3
"""Compares two greedy runs of `pardec run --stream --json --logprobs N` made by different
builds (x86-64 and aarch64: different matmul kernels, so logits differ in their last bits).

    compare-greedy.py REFERENCE.jsonl OTHER.jsonl [--agree NATS] [--tie NATS]

Exact token equality is too strict across kernels: where the two best tokens of a step are
nearly tied, the argmax may flip, and everything after it differs. So, node by node (the trunk
and each branch, matched by label):
- up to the first differing token, every token is the same and its log-probability agrees
  within --agree nats on both builds;
- at the first difference, if any, each build's token is within --tie nats of the other
  build's choice in its own ranking (a near-tie, not a wrong kernel), and that node is not
  compared further;
- text generated after a differing branch (the trunk after the join sees it) is not compared.
Exits non-zero, naming the node and token, when a check fails.
"""

import json
import sys


def fail(why):
    sys.exit(f"compare-greedy: {why}")


def token_events(path):
    """(label, [(token, logprob, {token: logprob of the step's top list}), ...]) in first-seen order."""
    nodes = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            ev = json.loads(line)
            if ev.get("kind") != "token" or "logprob" not in ev:
                continue
            lp = ev["logprob"]
            top = {tok: val for tok, val in lp["top"]}
            nodes.setdefault(ev["branch"], []).append((lp["token"], lp["logprob"], top))
    if not nodes:
        fail(f"{path}: no token events with log-probabilities (run with --stream --json --logprobs N)")
    return nodes


def compare(ref_path, other_path, agree, tie):
    ref, other = token_events(ref_path), token_events(other_path)
    if set(ref) != set(other):
        fail(f"the runs have different nodes: {sorted(ref)} vs {sorted(other)}")
    diverged = []
    worst = 0.0
    # Branches first: the trunk ("") is judged knowing whether a branch diverged.
    for label in sorted(ref, key=lambda l: (l == "", l)):
        a, b = ref[label], other[label]
        name = f"branch {label}" if label else "the trunk"
        if label == "" and diverged:
            # The trunk's tokens before the fork are compared; after the join it reads
            # branches that differ. Explicit runs have no trunk tokens before the fork.
            print(f"{name}: not compared after the join ({', '.join(diverged)} diverged at a near-tie)")
            continue
        for i, ((ta, la, topa), (tb, lb, topb)) in enumerate(zip(a, b)):
            if ta == tb:
                worst = max(worst, abs(la - lb))
                if abs(la - lb) > agree:
                    fail(f"{name}, token {i} ({ta}): log-probability {la:.4f} vs {lb:.4f}, more than {agree} apart")
                continue
            # Each build must rank the other's token within `tie` of its own choice.
            gap_a = la - topa.get(tb, float("-inf"))
            gap_b = lb - topb.get(ta, float("-inf"))
            if not (gap_a <= tie and gap_b <= tie):
                fail(
                    f"{name}, token {i}: {ta} vs {tb}, not a near-tie (gaps {gap_a:.4f} and {gap_b:.4f} nats, "
                    f"allowed {tie})"
                )
            print(f"{name}: same {i} tokens, then a near-tie flips ({ta} vs {tb}, gaps {gap_a:.4f}/{gap_b:.4f} nats)")
            diverged.append(name)
            break
        else:
            if len(a) != len(b):
                fail(f"{name}: same tokens but {len(a)} vs {len(b)} of them")
            print(f"{name}: the same {len(a)} tokens")
    print(f"compare-greedy: agree (largest log-probability difference on equal tokens: {worst:.4f} nats)")


def self_test():
    """The checks on made-up runs: they pass and fail where they should."""
    import os
    import subprocess
    import tempfile

    def run(events):
        return "".join(json.dumps(e) + "\n" for e in events)

    def tok(branch, token, lp, top):
        return {"kind": "token", "branch": branch, "logprob": {"pos": 0, "token": token, "logprob": lp, "top": top}}

    same = [tok("1", 5, -0.1, [[5, -0.1], [6, -2.5]]), tok("1", 7, -0.2, [[7, -0.2], [8, -0.3]]), tok("", 9, -0.5, [[9, -0.5]])]
    cases = {
        "identical": (same, same, True),
        "near tie flips": (same, [same[0], tok("1", 8, -0.22, [[8, -0.22], [7, -0.25]]), tok("", 4, -1.0, [[4, -1.0]])], True),
        "clear winner flips": (same, [tok("1", 6, -0.1, [[6, -0.1], [5, -2.5]]), same[1], same[2]], False),
        "log-probabilities drift": (same, [tok("1", 5, -0.9, [[5, -0.9], [6, -2.5]]), same[1], same[2]], False),
        "a token fewer": (same, same[:1] + same[2:], False),
    }
    with tempfile.TemporaryDirectory() as d:
        for name, (a, b, ok) in cases.items():
            pa, pb = os.path.join(d, "a.jsonl"), os.path.join(d, "b.jsonl")
            open(pa, "w").write(run(a))
            open(pb, "w").write(run(b))
            r = subprocess.run([sys.executable, __file__, pa, pb], capture_output=True, text=True)
            if (r.returncode == 0) != ok:
                fail(f"self-test {name!r}: expected {'a pass' if ok else 'a failure'}, got:\n{r.stdout}{r.stderr}")
    print(f"compare-greedy: self-test passed ({len(cases)} cases)")


def main(argv):
    if argv == ["--self-test"]:
        return self_test()
    args, agree, tie = [], 0.1, 0.1
    it = iter(argv)
    for arg in it:
        if arg == "--agree":
            agree = float(next(it))
        elif arg == "--tie":
            tie = float(next(it))
        else:
            args.append(arg)
    if len(args) != 2:
        sys.exit(__doc__)
    compare(args[0], args[1], agree, tie)


if __name__ == "__main__":
    main(sys.argv[1:])
