"""The training recipe's smoke test (scripts/test.sh runs it): each check can fail.

1. The trainer's forward equals the engine: per-token log-probabilities from
   `pardec score` and from gguf_llama.py on the same tokens (llama.cpp quantizes activations
   for its Q4_1 products, so close, not equal).
2. The mask is honoured: a path token's log-probability does not change when a sibling path's
   tokens change (layout tensors, float32); negative control: the same tokens under a causal
   mask do change.
3. The round trip: a few training steps on two examples, exported, loaded by pardec
   (`pardec score --lora`): the engine's log-probabilities move the way the trainer's do
   (correlation of the deltas), and the adapter's q/k rows permuted as transformers'
   un-permutation would leave them (the trap gguf_llama.py avoids) move them differently.
4. Token rows: on `titles` examples the trainer trains the rows of the six tags (they share one
   untrained row), `pardec merge` writes them into the model and the engine's log-probabilities
   move as the trainer's; the same LoRA without the rows (control) raises the tags far less;
   the adapter is refused at run time.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import pardec_cli  # noqa: E402
from gguf_llama import GgufLlama, causal_visible, target_log_probs  # noqa: E402
from layout_tensors import example  # noqa: E402
from pardec_cli import default_model  # noqa: E402

CHAT = "<|im_start|>user\nGive me two tips for sleeping better.<|im_end|>\n<|im_start|>assistant\n"


def block(path1: str, path2: str) -> str:
    return (CHAT + "Here are two tips.\n<Parallel>\n<Goal>\n<Outline>1: Keep a schedule</Outline>\n"
            "<Outline>2: Avoid screens</Outline>\n</Goal>\n"
            f"<Path>\n1: {path1}</Path>\n<Path>\n2: {path2}</Path>\n<Conclusion>\n"
            "Both help you rest.</Conclusion>\n</Parallel><|im_end|>")


PATH1 = "Go to bed and wake up at the same time every day, even on weekends."
PATH1_OTHER = "Pick one bedtime and keep it for a month."
PATH2 = "Turn off phones and laptops an hour before sleeping."


def failed(what: str) -> None:
    print(f"smoke test FAILED: {what}")
    sys.exit(1)


def scored_by_engine(context: str, continuation: str, model_path: str):
    """The engine's log-probabilities of `continuation` after `context`, with the token ids of
    both (the context as the engine tokenizes it) and the (row, target) pairs that predict the
    continuation in a causal reading: what the trainer must reproduce."""
    engine = pardec_cli.score(context, continuation, model_path)
    ctx_ids = [t["id"] for t in pardec_cli.layout(context, "multiverse", model_path)["tokens"]]
    ids = torch.tensor(ctx_ids + [i for i, _ in engine])
    pairs = [(len(ctx_ids) - 1 + k, i) for k, (i, _) in enumerate(engine)]
    return np.array([lp for _, lp in engine]), ids, pairs


def check_forward_matches_engine(model: GgufLlama, model_path: str) -> None:
    continuation = "Here are two tips:\n1. Keep the same bedtime every night."
    theirs, ids, pairs = scored_by_engine(CHAT, continuation, model_path)
    n = len(ids)
    with torch.no_grad():
        ours = target_log_probs(model, ids, torch.arange(n), causal_visible(n), pairs).numpy()
    corr = float(np.corrcoef(ours, theirs)[0, 1])
    worst = float(np.abs(ours - theirs).max())
    print(f"forward vs engine: {len(ids)} tokens, correlation {corr:.5f}, max |diff| {worst:.3f} nats")
    if corr < 0.995 or worst > 0.5:
        failed("the trainer's forward does not match pardec's log-probabilities")


def path_log_probs(model: GgufLlama, text: str, model_path: str, label: str, causal: bool) -> np.ndarray:
    lay = pardec_cli.layout(text, "multiverse", model_path)
    ex = example(lay, len(CHAT.encode()))
    chosen = [k for k, e in enumerate(ex.target_entries) if ex.branches[e] == label]
    pairs = [ex.targets[k] for k in chosen]
    n = len(ex.ids)
    visible = causal_visible(n) if causal else ex.visible
    pos = torch.arange(n) if causal else ex.pos
    if causal:  # serial reading: entry order (path 1 is written before path 2)
        pairs = [(ex.target_entries[k] - 1, ex.targets[k][1]) for k in chosen]
    with torch.no_grad():
        return target_log_probs(model, ex.ids, pos, visible, pairs).numpy()


def check_mask_honoured(model: GgufLlama, model_path: str) -> None:
    a = path_log_probs(model, block(PATH1, PATH2), model_path, "2", causal=False)
    b = path_log_probs(model, block(PATH1_OTHER, PATH2), model_path, "2", causal=False)
    ca = path_log_probs(model, block(PATH1, PATH2), model_path, "2", causal=True)
    cb = path_log_probs(model, block(PATH1_OTHER, PATH2), model_path, "2", causal=True)
    same = float(np.abs(a - b).max())
    control = float(np.abs(ca - cb).max())
    print(f"mask: path 2 under the layout moves {same:.2e} when path 1 changes; causal control {control:.3f}")
    if same > 1e-4:
        failed("a path's log-probabilities depend on its sibling under the layout mask")
    if control < 1e-2:
        failed("negative control: the causal mask should let path 1 change path 2")


def permute_rows(b: torch.Tensor, n_head: int) -> torch.Tensor:
    """convert_hf_to_gguf's q/k row permutation (what an adapter trained in transformers'
    un-permuted layout would need); applied here to a llama.cpp-layout adapter it is wrong."""
    rows = b.shape[0]
    return b.reshape(n_head, rows // n_head // 2, 2, *b.shape[1:]).swapaxes(1, 2).reshape(b.shape)


def read_adapter(path: Path) -> dict:
    """An exported adapter's tensors by name, in numpy's (ne1, ne0) order and their own dtype."""
    from gguf import GGUFReader
    return {t.name: np.array(t.data).reshape([int(d) for d in reversed(t.shape.tolist())])
            for t in GGUFReader(str(path)).tensors}


def load_lora(model: GgufLlama, tensors: dict, alpha: float) -> None:
    """The adapter's LoRA pairs (rank 8) as the model's, in float32."""
    model.add_lora(8, alpha, 0)
    for key, pair in model.lora.items():
        layer, name = key.split("_", 1)
        pair.a.data = torch.from_numpy(tensors[f"blk.{layer}.{name}.weight.lora_a"].astype(np.float32))
        pair.b.data = torch.from_numpy(tensors[f"blk.{layer}.{name}.weight.lora_b"].astype(np.float32))


def check_round_trip(model: GgufLlama, model_path: str, tmp: Path) -> None:
    data = tmp / "data.jsonl"
    rows = [dict(id=f"smoke-{k}", text=block(p1, PATH2), response_start=len(CHAT.encode()), protocol="multiverse")
            for k, p1 in enumerate((PATH1, PATH1_OTHER))]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    adapter = tmp / "smoke.gguf"
    subprocess.run([sys.executable, str(HERE / "train_lora.py"), "--data", str(data), "--model", model_path,
                    "--out", str(adapter), "--rank", "8", "--epochs", "3", "--accum", "1", "--lr", "3e-3",
                    "--dtype", "fp32"], check=True, stdout=subprocess.DEVNULL)
    manifest = json.loads(Path(str(adapter) + ".json").read_text())
    if not manifest["final_loss"] < manifest["first_loss"]:
        failed(f"training did not lower the loss ({manifest['first_loss']} -> {manifest['final_loss']})")

    # The trainer's view of the adapter: re-read the exported tensors into the model.
    load_lora(model, read_adapter(adapter), manifest["config"]["alpha"])

    context = CHAT + "Here are two tips.\n<Parallel>\n<Goal>\n"
    continuation = "<Outline>1: Keep a schedule</Outline>\n<Outline>2: Avoid screens</Outline>\n</Goal>\n"
    base_lp, ids, pairs = scored_by_engine(context, continuation, model_path)
    n = len(ids)

    def trainer_delta() -> np.ndarray:
        with torch.no_grad():
            model.lora_scale = 1.0
            tuned = target_log_probs(model, ids, torch.arange(n), causal_visible(n), pairs).numpy()
            model.lora_scale = 0.0
            plain = target_log_probs(model, ids, torch.arange(n), causal_visible(n), pairs).numpy()
        model.lora_scale = 1.0
        return tuned - plain

    def engine_delta(path: Path) -> np.ndarray:
        return np.array([t for _, t in pardec_cli.score(context, continuation, model_path, [str(path)])]) - base_lp

    corr = lambda x, y: float(np.corrcoef(x, y)[0, 1])
    full = engine_delta(adapter)
    full_corr = corr(full, trainer_delta())
    moved = float(np.abs(full).mean())

    # Only attn_q/attn_k (the matrices RoPE's layout concerns), written right and permuted.
    for key, pair in model.lora.items():
        if key.split("_", 1)[1] not in ("attn_q", "attn_k"):
            pair.b.data.zero_()
    qk_right, qk_wrong = tmp / "smoke-qk.gguf", tmp / "smoke-qk-permuted.gguf"
    model.export_lora(str(qk_right))
    ours_qk = trainer_delta()
    hp = model.hp
    for key, pair in model.lora.items():
        name = key.split("_", 1)[1]
        if name in ("attn_q", "attn_k"):
            pair.b.data = permute_rows(pair.b.data, hp.n_head if name == "attn_q" else hp.n_head_kv)
    model.export_lora(str(qk_wrong))
    qk_corr = corr(engine_delta(qk_right), ours_qk)
    wrong_corr = corr(engine_delta(qk_wrong), ours_qk)
    print(f"round trip: loss {manifest['first_loss']} -> {manifest['final_loss']}; engine moved "
          f"{moved:.3f} nats/token; delta correlation {full_corr:.3f}; q/k only {qk_corr:.3f}, "
          f"q/k rows permuted {wrong_corr:.3f}")
    if moved < 0.05:
        failed("the adapter loaded by pardec does not change its log-probabilities")
    if full_corr < 0.9 or qk_corr < 0.9:
        failed("pardec's adapter does not move log-probabilities the way the trainer's does")
    if wrong_corr > qk_corr - 0.2:
        failed("negative control: permuted q/k rows should move log-probabilities differently")


TITLES = ("Here are two tips:\n\n<issue_start>Keep a schedule<issue_comment><issue_start>Avoid screens"
          "<issue_comment><issue_closed><jupyter_start>1. **Keep a schedule**: {p1}<jupyter_text>"
          "<jupyter_start>2. **Avoid screens**: {p2}<jupyter_text><jupyter_code>\n\nBoth help you rest.")



def check_token_rows_round_trip(model_path: str, tmp: Path) -> None:
    """The titles tags share one untrained embedding row: the trainer finds them, trains their
    rows with the LoRA, and `pardec merge` writes both into the model, which then moves the
    engine's log-probabilities the way the trainer's move; the LoRA alone (control) cannot
    raise the tags; and the adapter is refused at run time."""
    data = tmp / "titles.jsonl"
    rows = [dict(id=f"rows-{k}", text=CHAT + TITLES.format(p1=p1, p2=PATH2) + "<|im_end|>",
                 response_start=len(CHAT.encode()), protocol="titles") for k, p1 in enumerate((PATH1, PATH1_OTHER))]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    adapter = tmp / "rows.gguf"
    subprocess.run([sys.executable, str(HERE / "train_lora.py"), "--data", str(data), "--model", model_path,
                    "--out", str(adapter), "--rank", "8", "--epochs", "3", "--accum", "1", "--lr", "3e-3",
                    "--rows-lr", "3e-2", "--dtype", "fp32"], check=True, stdout=subprocess.DEVNULL)
    trained_rows = json.loads(Path(str(adapter) + ".json").read_text())["config"]["token_rows"]
    tags = pardec_cli.layout("<issue_start><issue_comment><issue_closed><jupyter_start><jupyter_text><jupyter_code>",
                             "titles", model_path)["tokens"]
    if sorted(t["id"] for t in tags) != trained_rows:
        failed(f"the trainer should train exactly the six tags' rows, trained {trained_rows}")

    # The trainer's view: the exported LoRA and rows read back into a fresh model.
    tensors = read_adapter(adapter)
    model = GgufLlama(model_path, torch.float32)
    load_lora(model, tensors, 16.0)
    model.add_token_rows(trained_rows)
    model.row_delta.data = torch.from_numpy(tensors["token_embd.weight.row_delta"].astype(np.float32))

    context = CHAT + "Here are two tips:\n\n"
    continuation = "<issue_start>Keep a schedule<issue_comment><issue_start>Avoid screens<issue_comment><issue_closed>"
    base_lp, ids, pairs = scored_by_engine(context, continuation, model_path)
    n = len(ids)
    with torch.no_grad():
        tuned = target_log_probs(model, ids, torch.arange(n), causal_visible(n), pairs).numpy()
        model.lora_scale = 0.0
        saved, model.row_delta = model.row_delta, None
        plain = target_log_probs(model, ids, torch.arange(n), causal_visible(n), pairs).numpy()
        model.lora_scale, model.row_delta = 1.0, saved
    trainer = tuned - plain
    is_tag = np.array([i in trained_rows for _, i in pairs])

    def merged_delta(path: Path, name: str) -> np.ndarray:
        out = tmp / name
        subprocess.run([pardec_cli.binary(), "merge", "--model", model_path, "--lora", str(path), "--to", "f16",
                        "--out", str(out)], check=True, capture_output=True)
        return np.array([lp for _, lp in pardec_cli.score(context, continuation, str(out))]) - base_lp

    engine = merged_delta(adapter, "merged.gguf")
    corr = float(np.corrcoef(engine, trainer)[0, 1])
    # Control: the same LoRA without the rows.
    model.row_delta = None
    lora_only = tmp / "lora-only.gguf"
    model.export_lora(str(lora_only))
    without = merged_delta(lora_only, "merged-lora-only.gguf")
    runtime = subprocess.run([pardec_cli.binary(), "score", "--model", model_path, "--context", context,
                              "--continuation", continuation, "--lora", str(adapter)], capture_output=True)
    said = runtime.stderr.decode(errors="replace")
    print(f"token rows: {trained_rows}; merged engine delta correlation {corr:.3f}; tag tokens gain "
          f"{engine[is_tag].mean():.2f} nats with the rows, {without[is_tag].mean():.2f} without; "
          f"at run time: {'refused' if runtime.returncode else 'loaded'}")
    if corr < 0.9:
        failed("the merged adapter does not move log-probabilities the way the trainer's does")
    if engine[is_tag].mean() < without[is_tag].mean() + 1.0:
        failed("negative control: without its rows the adapter should raise the tags far less")
    if runtime.returncode == 0 or "pardec merge" not in said:
        failed(f"an adapter with token rows should be refused at run time, naming pardec merge: {said}")


def main() -> None:
    model_path = default_model()
    model = GgufLlama(model_path, torch.float32)
    check_forward_matches_engine(model, model_path)
    check_mask_honoured(model, model_path)
    with tempfile.TemporaryDirectory() as tmp:
        check_round_trip(model, model_path, Path(tmp))
        check_token_rows_round_trip(model_path, Path(tmp))
    print("training smoke test: all checks passed")


if __name__ == "__main__":
    main()
