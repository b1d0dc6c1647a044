#!/usr/bin/env python3
"""`pardec serve` against llama.cpp's llama-server, in one run: throughput and latency at 1, 4,
8 and 16 concurrent clients, on the same model file, prompts and budgets.

Two workloads, both greedy:
- plain: the held-out prompts (training/prompts.json, split "heldout"), `ignore_eos` on both
  servers, so every answer is exactly --max-tokens tokens and tokens/s compare like for like;
- forking: the held-out list prompts; pardec answers under the titles protocol (the model forks
  by itself), llama-server answers them plainly, both ending where the model ends. Tokens
  differ here, so the table also shows content words per answer (tags removed) and content
  words per second: a faster answer that says less does not count.

For each workload and client count the two servers run the same requests one after the other,
--rounds times, the order alternating each time; medians are reported, with the range of the
per-round ratios (these machines are noisy). Both servers stay up all along (idle while the
other works). Each server gets the whole machine's threads and as many slots as the most
clients. Prints a table and, with --json, writes every number with the date, machine and commit.

    scripts/bench-serve.py                       # builds nothing: run scripts/build-llama-server.sh
    scripts/bench-serve.py --clients 1,8 --requests 16 --json docs/serve-bench.json
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "training"))
from build_data import expand_prompts  # noqa: E402  (pure Python: no torch)

TAG = re.compile(r"<[^<>\s]{1,40}>")


def content_words(text):
    """Words of an answer with the protocol's tags removed."""
    return TAG.sub(" ", text).split()


class Server:
    """A running server process and its base URL."""

    def __init__(self, name, cmd, url_from_log, log_path):
        self.name = name
        self.log = open(log_path, "w+")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 180
        while time.time() < deadline:
            self.log.seek(0)
            url = url_from_log(self.log.read())
            if url and self.ready(url):
                self.url = url
                return
            if self.proc.poll() is not None:
                self.log.seek(0)
                sys.exit(f"bench-serve: {name} exited:\n{self.log.read()[-2000:]}")
            time.sleep(0.2)
        sys.exit(f"bench-serve: {name} did not start")

    @staticmethod
    def ready(url):
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def chat(self, prompt, body):
        """(seconds, completion tokens, content) of one chat completion."""
        payload = {"messages": [{"role": "user", "content": prompt}], "temperature": 0, **body}
        req = urllib.request.Request(self.url + "/v1/chat/completions", json.dumps(payload).encode(),
                                     {"Content-Type": "application/json"})
        t = time.perf_counter()
        with urllib.request.urlopen(req, timeout=600) as r:
            reply = json.load(r)
        elapsed = time.perf_counter() - t
        return elapsed, reply["usage"]["completion_tokens"], reply["choices"][0]["message"]["content"]

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def load(server, prompts, body, clients, requests):
    """`requests` requests over `clients` concurrent clients: wall time and per-request rows."""
    jobs = [prompts[i % len(prompts)] for i in range(requests)]
    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        rows = list(pool.map(lambda p: server.chat(p, body), jobs))
    return time.perf_counter() - started, rows


def summary(wall, rows):
    latencies = sorted(r[0] for r in rows)
    tokens = sum(r[1] for r in rows)
    words = sum(len(content_words(r[2])) for r in rows)
    p99 = latencies[min(len(latencies) - 1, round(0.99 * (len(latencies) - 1)))]
    return dict(wall_s=wall, tokens=tokens, tokens_per_s=tokens / wall, words_per_answer=words / len(rows),
                words_per_s=words / wall, p50_s=statistics.median(latencies), p99_s=p99, requests=len(rows))


def median_summary(summaries):
    """Each figure's median over rounds."""
    return {k: statistics.median(s[k] for s in summaries) for k in summaries[0]}


def machine():
    cpu = "unknown"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return dict(cpu=cpu, cores=os.cpu_count())


def main():
    models = Path(os.environ.get("PARDEC_MODEL_DIR", Path.home() / ".cache/pardec/models"))
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="GGUF model both servers load [default: the titles-merged "
                                                  "Q8_0 model scripts/test-serve.sh writes]")
    ap.add_argument("--pardec", default=str(ROOT / "target/release/pardec"))
    ap.add_argument("--llama-server", default=str(Path.home() / ".cache/pardec/llama-server-b11434/llama-server"))
    ap.add_argument("--clients", default="1,4,8,16")
    ap.add_argument("--requests", type=int, default=16, help="requests per row (at least the client count)")
    ap.add_argument("--rounds", type=int, default=3,
                    help="rounds per row, the servers' order alternating; medians are reported")
    ap.add_argument("--max-tokens", type=int, default=64, help="tokens per plain answer")
    ap.add_argument("--fork-max-tokens", type=int, default=200, help="budget of a forking answer")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--workloads", default="plain,forking")
    ap.add_argument("--pardec-args", default="", help="more arguments for pardec serve (e.g. '--cache-prompts 0')")
    ap.add_argument("--llama-args", default="", help="more arguments for llama-server (e.g. '--kv-unified')")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if args.model is None:
        found = sorted(models.glob("SmolLM2-135M-Instruct.titles-*.Q8_0.gguf"))
        if not found:
            sys.exit("bench-serve: no titles-merged model: run scripts/test-serve.sh once, or pass --model")
        args.model = str(found[-1])
    for exe in (args.pardec, args.llama_server):
        if not os.access(exe, os.X_OK):
            sys.exit(f"bench-serve: {exe} missing: cargo build --release / scripts/build-llama-server.sh")
    clients = [int(c) for c in args.clients.split(",")]
    slots = max(clients)
    ctx = slots * 1024
    held_out = expand_prompts(ROOT / "training/prompts.json", "heldout", 0)
    plain_prompts = [p.text for p in held_out]
    list_prompts = [p.text for p in held_out if p.kind == "parallel"]

    logs = ROOT / "target/bench-serve-logs"
    logs.mkdir(parents=True, exist_ok=True)
    threads = str(args.threads)
    pardec = Server("pardec", [args.pardec, "serve", "--model", args.model, "--port", "0", "--parallel", str(slots),
                               "--ctx", str(ctx), "--threads", threads, "--protocol", "titles",
                               *args.pardec_args.split()],
                    lambda log: (m := re.search(r"listening on (http://[\d.]+:\d+)", log)) and m.group(1),
                    logs / "pardec.log")
    port = 18000 + os.getpid() % 1000
    llama = Server("llama-server", [args.llama_server, "-m", args.model, "--host", "127.0.0.1", "--port", str(port),
                                    "-np", str(slots), "-c", str(ctx), "-t", threads, "-tb", threads, "-ngl", "0",
                                    *args.llama_args.split()],
                   lambda log: f"http://127.0.0.1:{port}" if "listening" in log or "server is listening" in log else None,
                   logs / "llama-server.log")
    workloads = [
        ("plain", plain_prompts, {"max_tokens": args.max_tokens, "ignore_eos": True},
         {"max_tokens": args.max_tokens, "ignore_eos": True, "protocol": "none"}),
        ("forking", list_prompts, {"max_tokens": args.fork_max_tokens}, {"max_tokens": args.fork_max_tokens}),
    ]
    workloads = [w for w in workloads if w[0] in args.workloads.split(",")]
    rows = []
    try:
        # Warm both (first requests pay for page faults and graph allocation).
        pardec.chat(plain_prompts[0], {"max_tokens": 8, "protocol": "none"})
        llama.chat(plain_prompts[0], {"max_tokens": 8})
        flip = False
        for name, prompts, llama_body, pardec_body in workloads:
            for c in clients:
                n = max(args.requests, c)
                rounds = []
                for _ in range(args.rounds):
                    order = [(pardec, pardec_body), (llama, llama_body)]
                    if flip:
                        order.reverse()
                    flip = not flip
                    rounds.append({server.name: summary(*load(server, prompts, body, c, n)) for server, body in order})
                result = {side: median_summary([r[side] for r in rounds]) for side in ("pardec", "llama-server")}
                ratios = [r["pardec"]["tokens_per_s"] / r["llama-server"]["tokens_per_s"] for r in rounds]
                rows.append(dict(workload=name, clients=c, rounds=rounds, tokens_per_s_ratio=statistics.median(ratios),
                                 **result))
                p, l = result["pardec"], result["llama-server"]
                print(f"{name:8} {c:3} clients: pardec {p['tokens_per_s']:6.1f} tok/s "
                      f"(p50 {p['p50_s']:5.2f}s p99 {p['p99_s']:5.2f}s, {p['words_per_answer']:5.1f} words) | "
                      f"llama-server {l['tokens_per_s']:6.1f} tok/s (p50 {l['p50_s']:5.2f}s p99 {l['p99_s']:5.2f}s, "
                      f"{l['words_per_answer']:5.1f} words) | tok/s {statistics.median(ratios):.2f}x "
                      f"({min(ratios):.2f}-{max(ratios):.2f}), words/s {p['words_per_s'] / l['words_per_s']:.2f}x",
                      flush=True)
    finally:
        pardec.stop()
        llama.stop()
    if args.json:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        record = dict(date=time.strftime("%Y-%m-%d"), machine=machine(), model=args.model, commit=commit,
                      llama_server=args.llama_server, pardec_args=args.pardec_args, llama_args=args.llama_args, threads=args.threads, slots=slots, ctx=ctx,
                      max_tokens=args.max_tokens, fork_max_tokens=args.fork_max_tokens, rows=rows)
        Path(args.json).write_text(json.dumps(record, indent=1) + "\n")
        print(f"bench-serve: wrote {args.json}")


if __name__ == "__main__":
    main()
