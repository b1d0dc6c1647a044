"""Trains a LoRA adapter of the default model on parallel-block examples, with the inference rule.

    training/venv/python training/train_lora.py --data training/data/multiverse-smollm2.jsonl \\
        --out adapters/multiverse-smollm2.gguf

Every example's positions and attention mask come from `pardec layout --json` (the engine's
rule: a path sees the prefix and itself, paths share their first position, the trunk continues
at max + 1), so what the model learns is what pardec decodes. Loss on the response only (the
tokens after the chat prompt), LoRA on attention and MLP, AdamW, linear decay. Writes the
adapter as a llama.cpp LoRA GGUF (f16) and a manifest beside it (<out>.json).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import random
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import pardec_cli  # noqa: E402
from pardec_cli import default_model  # noqa: E402
from gguf_llama import GgufLlama, target_log_probs  # noqa: E402
from layout_tensors import example  # noqa: E402

RECIPE_VERSION = "2"  # 2: the adapter names its protocol (pardec.protocol)


def load_examples(paths, model: str, limit: int):
    rows = []
    for path in paths:
        with open(path) as f:
            rows += [json.loads(line) for line in f if line.strip()]
    if limit:
        rows = rows[:limit]
    out = []
    for row in rows:
        lay = pardec_cli.layout(row["text"], row.get("protocol", "multiverse"), model)
        if lay.get("warnings"):
            raise SystemExit(f"example {row.get('id')}: layout warns {lay['warnings']}")
        out.append((row, example(lay, row["response_start"])))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", nargs="+", required=True)
    ap.add_argument("--model", default=default_model())
    ap.add_argument("--out", required=True)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--alpha", type=float, default=32.0)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--accum", type=int, default=4, help="examples per optimizer step")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dtype", choices=("bf16", "fp32"), default="fp32",
                    help="bf16 only where the CPU has bf16 units (emulated it was 13x slower here)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--device", default="cpu", help="torch device: cpu, or cuda where a GPU is lent")
    ap.add_argument("--limit", type=int, default=0, help="first N examples only")
    ap.add_argument("--no-token-rows", dest="token_rows", action="store_false",
                    help="do not train the rows of untrained tokens the data uses (the adapter then "
                         "works at run time, but cannot teach such tokens)")
    ap.add_argument("--rows-lr", type=float, default=3e-3, help="learning rate of trained embedding rows")
    ap.add_argument("--max-steps", type=int, default=0, help="stop after N optimizer steps")
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.time()
    examples = load_examples(args.data, args.model, args.limit)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    model = GgufLlama(args.model, dtype, args.device)
    model.add_lora(args.rank, args.alpha, args.seed)
    params = list(model.lora.parameters())
    groups = [dict(params=params, lr=args.lr)]
    # Tokens the data uses whose rows the model cannot tell apart (untrained, shared rows):
    # a LoRA cannot separate them, so their rows are trained too (merge-only; see gguf_llama).
    new_rows = model.untrained_ids(int(i) for _, ex in examples for i in ex.ids.tolist()) if args.token_rows else []
    if new_rows:
        model.add_token_rows(new_rows)
        groups.append(dict(params=[model.row_delta], lr=args.rows_lr))
        params = params + [model.row_delta]
        print(f"training the embedding rows of {len(new_rows)} untrained tokens: {new_rows}", file=sys.stderr)
    opt = torch.optim.AdamW(groups, weight_decay=0.0)
    total_steps = max(1, (len(examples) * args.epochs + args.accum - 1) // args.accum)
    if args.max_steps:
        total_steps = min(total_steps, args.max_steps)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, 1.0 - s / total_steps))
    order_rng = random.Random(args.seed)
    print(f"{len(examples)} examples, {total_steps} steps, rank {args.rank}, {args.dtype}, "
          f"{torch.get_num_threads()} threads", file=sys.stderr)

    step, seen, window, losses = 0, 0, [], []
    done = False
    for epoch in range(args.epochs):
        order = list(range(len(examples)))
        order_rng.shuffle(order)
        for i in order:
            _, ex = examples[i]
            lp = target_log_probs(model, ex.ids, ex.pos, ex.visible, ex.targets)
            loss = -lp.mean()
            (loss / args.accum).backward()
            window.append(loss.item())
            seen += 1
            if seen % args.accum == 0:
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()
                sched.step()
                opt.zero_grad()
                step += 1
                losses.append(sum(window) / len(window))
                window = []
                if step % 10 == 0 or step == total_steps:
                    print(f"  step {step}/{total_steps} epoch {epoch} loss {losses[-1]:.4f} "
                          f"({time.time() - started:.0f} s)", file=sys.stderr, flush=True)
                if step >= total_steps:
                    done = True
                    break
        if done:
            break

    data_hash = hashlib.sha256()
    for path in args.data:
        data_hash.update(Path(path).read_bytes())
    manifest = dict(
        recipe="training/train_lora.py", recipe_version=RECIPE_VERSION,
        base_model=Path(args.model).name,
        base_model_sha256=hashlib.sha256(Path(args.model).read_bytes()).hexdigest(),
        data=[os.path.relpath(p, HERE.parent) for p in args.data], data_sha256=data_hash.hexdigest(),
        examples=len(examples), layout_rule="engine",
        config=dict(rank=args.rank, alpha=args.alpha, epochs=args.epochs, lr=args.lr, accum=args.accum,
                    dtype=args.dtype, device=args.device, targets="attn_q attn_k attn_v attn_output ffn_gate ffn_up ffn_down",
                    steps=step, token_rows=new_rows, rows_lr=args.rows_lr if new_rows else None),
        # Trained rows cannot be applied by llama.cpp at run time: `pardec merge` writes them.
        use="pardec merge" if new_rows else "run time or pardec merge",
        seed=args.seed, first_loss=round(losses[0], 4) if losses else None,
        final_loss=round(losses[-1], 4) if losses else None,
        seconds=round(time.time() - started, 1), threads=torch.get_num_threads(),
        torch=torch.__version__, date=datetime.date.today().isoformat())
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    # The protocol the adapter writes, so a runtime can pick it by itself.
    protocols = sorted({row.get("protocol", "multiverse") for row, _ in examples})
    manifest["protocol"] = ",".join(protocols)
    model.export_lora(args.out, {"general.name": Path(args.out).stem,
                                 "pardec.protocol": manifest["protocol"],
                                 "pardec.recipe": f"train_lora.py v{RECIPE_VERSION}",
                                 "pardec.data_sha256": manifest["data_sha256"]})
    manifest["adapter_sha256"] = hashlib.sha256(Path(args.out).read_bytes()).hexdigest()
    Path(args.out + ".json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(json.dumps(manifest, indent=2))


if __name__ == "__main__":
    main()
