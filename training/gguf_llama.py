"""The default model's forward pass in torch, over the GGUF file's own weights, with LoRA.

Why not transformers: it reads a GGUF by dequantizing and *un-permuting* attn_q/attn_k (llama.cpp
stores them permuted for its RoPE), so an adapter trained there only works in llama.cpp if its
lora_b rows are permuted back (a probe measured logit-delta correlation 0.95 with the permutation,
0.13 without). Working in llama.cpp's own layout removes that trap: the rotation below is
llama.cpp's (adjacent pairs, LLAMA_ROPE_TYPE_NORM), the weights are the file's tensors as they
are, and an adapter's tensors are written exactly as they were trained. `smoke_test.py` checks
this forward against pardec's own log-probabilities and the round trip of an adapter.

Supported: architecture `llama` (SmolLM2 and its kin): RMSNorm, grouped-query attention, SwiGLU,
tied or separate output matrix. Anything else is refused with a message.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F
from gguf import GGUFReader, GGUFWriter, GGMLQuantizationType
from gguf.quants import dequantize

# The matrices an adapter may touch, in GGUF's names (llama.cpp applies lora_a/lora_b to each).
LORA_TARGETS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")


@dataclass
class Hparams:
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    n_ff: int
    rope_base: float
    rms_eps: float
    n_vocab: int

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


def _field(reader: GGUFReader, key: str):
    field = reader.fields.get(key)
    if field is None:
        raise ValueError(f"the GGUF file has no '{key}'")
    return field.contents()


def _tensor(reader_tensor) -> np.ndarray:
    """A tensor as float32 in numpy's (rows = ggml ne1, columns = ggml ne0) order, which is
    torch.nn.Linear's (out, in)."""
    data = dequantize(reader_tensor.data, reader_tensor.tensor_type)
    shape = [int(d) for d in reversed(reader_tensor.shape.tolist())]
    return np.array(data.reshape(shape), dtype=np.float32)  # a writable copy for torch


class LoraPair(torch.nn.Module):
    """B·A of one matrix: A (rank, in) starts random, B (out, rank) at zero, so training starts
    at the base model (the usual LoRA start)."""

    def __init__(self, n_out: int, n_in: int, rank: int, generator: torch.Generator):
        super().__init__()
        self.a = torch.nn.Parameter(torch.randn(rank, n_in, generator=generator) / math.sqrt(n_in))
        self.b = torch.nn.Parameter(torch.zeros(n_out, rank))


class GgufLlama(torch.nn.Module):
    def __init__(self, path: str, dtype: torch.dtype = torch.float32, device: str = "cpu"):
        super().__init__()
        self.device = torch.device(device)
        reader = GGUFReader(path)
        arch = _field(reader, "general.architecture")
        if arch != "llama":
            raise ValueError(f"architecture '{arch}' is not supported by this trainer (llama only)")
        g = lambda k: _field(reader, f"llama.{k}")
        tensors = {t.name: t for t in reader.tensors}
        embd = _tensor(tensors["token_embd.weight"])
        self.hp = Hparams(
            n_layer=int(g("block_count")), n_embd=int(g("embedding_length")),
            n_head=int(g("attention.head_count")), n_head_kv=int(g("attention.head_count_kv")),
            n_ff=int(g("feed_forward_length")), rope_base=float(g("rope.freq_base")),
            rms_eps=float(g("attention.layer_norm_rms_epsilon")), n_vocab=embd.shape[0])
        self.dtype = dtype
        as_t = lambda a: torch.from_numpy(a).to(dtype)
        self.weights: Dict[str, torch.Tensor] = {"token_embd": as_t(embd)}
        self.weights["output_norm"] = torch.from_numpy(_tensor(tensors["output_norm.weight"]))
        out = tensors.get("output.weight")
        self.weights["output"] = as_t(_tensor(out)) if out is not None else self.weights["token_embd"]
        for layer in range(self.hp.n_layer):
            for name in LORA_TARGETS:
                self.weights[f"{layer}.{name}"] = as_t(_tensor(tensors[f"blk.{layer}.{name}.weight"]))
            for name in ("attn_norm", "ffn_norm"):
                self.weights[f"{layer}.{name}"] = torch.from_numpy(_tensor(tensors[f"blk.{layer}.{name}.weight"]))
        self.weights = {k: v.to(self.device) for k, v in self.weights.items()}
        self.lora = torch.nn.ModuleDict()
        self.lora_alpha = 1.0
        self.lora_rank = 0
        self.lora_scale = 1.0
        # Trained embedding rows (see add_token_rows): ids, their deltas, and each vocabulary
        # id's slot among them (-1: none).
        self.row_ids: Optional[torch.Tensor] = None
        self.row_delta: Optional[torch.nn.Parameter] = None
        self.row_slot: Optional[torch.Tensor] = None
        self.tied = out is None

    # --- LoRA ---

    def add_lora(self, rank: int, alpha: float, seed: int, targets=LORA_TARGETS) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.lora_rank, self.lora_alpha = rank, alpha
        for layer in range(self.hp.n_layer):
            for name in targets:
                n_out, n_in = self.weights[f"{layer}.{name}"].shape
                self.lora[f"{layer}_{name}"] = LoraPair(n_out, n_in, rank, gen).to(self.device)

    # --- new token rows ---

    def untrained_ids(self, ids) -> List[int]:
        """Those of `ids` whose embedding row equals another token's: rows the pretraining never
        moved from their shared start (SmolLM2's unused control tokens <issue_start>,
        <jupyter_text>, ... share one row). Since the output projection is that matrix too, the
        model can neither tell these tokens apart nor choose one of them over the others."""
        embd = self.weights["token_embd"].float().cpu().numpy()
        seen: Dict[bytes, int] = {}
        for row in embd:
            key = row.tobytes()
            seen[key] = seen.get(key, 0) + 1
        return sorted(i for i in set(int(i) for i in ids) if seen[embd[i].tobytes()] > 1)

    def add_token_rows(self, ids: List[int]) -> None:
        """Makes the embedding rows of `ids` trainable (as deltas from zero). With a tied output
        they move those tokens' logits too. llama.cpp cannot apply them at run time: they are
        exported beside the LoRA pairs and written into the model by `pardec merge`."""
        self.row_ids = torch.tensor(sorted(ids), dtype=torch.long, device=self.device)
        self.row_delta = torch.nn.Parameter(torch.zeros(len(ids), self.hp.n_embd, device=self.device))
        self.row_slot = torch.full((self.hp.n_vocab,), -1, dtype=torch.long, device=self.device)
        self.row_slot[self.row_ids] = torch.arange(len(ids), device=self.device)


    def _embed(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.weights["token_embd"][ids]
        if self.row_delta is None:
            return x
        slot = self.row_slot[ids]
        hit = (slot >= 0).to(x.dtype)[:, None]
        return x + (self.row_delta[slot.clamp(min=0)] * hit).to(x.dtype)

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        logits = (x @ self.weights["output"].T).float()
        if self.row_delta is not None and self.tied:
            extra = x.float() @ self.row_delta.T  # (n, k)
            logits = logits.index_add(1, self.row_ids, extra)
        return logits

    def _linear(self, x: torch.Tensor, layer: int, name: str) -> torch.Tensor:
        y = x @ self.weights[f"{layer}.{name}"].T
        pair = self.lora[f"{layer}_{name}"] if f"{layer}_{name}" in self.lora else None
        if pair is not None and self.lora_scale != 0.0:
            factor = self.lora_scale * self.lora_alpha / self.lora_rank
            y = y + factor * ((x.float() @ pair.a.T) @ pair.b.T).to(y.dtype)
        return y

    def export_lora(self, path: str, metadata: Optional[Dict[str, str]] = None) -> None:
        """Writes the adapter as llama.cpp reads it: general.type=adapter, adapter.type=lora,
        adapter.lora.alpha, tensors blk.N.<name>.weight.lora_a (ggml [in, rank]) and .lora_b
        (ggml [rank, out]), f16. No permutation: these are the GGUF file's own matrices."""
        w = GGUFWriter(path, "llama")
        w.add_string("general.type", "adapter")
        w.add_string("adapter.type", "lora")
        w.add_float32("adapter.lora.alpha", float(self.lora_alpha))
        for key, value in (metadata or {}).items():
            w.add_string(key, value)
        for key, pair in self.lora.items():
            layer, name = key.split("_", 1)
            for part, t in (("lora_a", pair.a), ("lora_b", pair.b)):
                arr = t.detach().float().cpu().numpy().astype(np.float16)
                w.add_tensor(f"blk.{layer}.{name}.weight.{part}", arr, raw_dtype=GGMLQuantizationType.F16)
        if self.row_delta is not None:
            # pardec's extension (src/merge.rs): T[row_ids[i]] += scale * row_delta[i].
            w.add_tensor("token_embd.weight.row_delta", self.row_delta.detach().float().cpu().numpy(),
                         raw_dtype=GGMLQuantizationType.F32)
            w.add_tensor("token_embd.weight.row_ids", self.row_ids.cpu().numpy().astype(np.int32),
                         raw_dtype=GGMLQuantizationType.I32)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()

    # --- forward ---

    def _rope(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """llama.cpp's NORM rotation: pairs (2i, 2i+1) turned by pos·base^(-2i/d)."""
        d = x.shape[-1]
        inv = self.hp.rope_base ** (-torch.arange(0, d, 2, dtype=torch.float32, device=x.device) / d)
        ang = pos.float()[:, None] * inv[None, :]  # (n, d/2)
        cos, sin = ang.cos()[:, None, :], ang.sin()[:, None, :]
        xf = x.float().reshape(*x.shape[:-1], d // 2, 2)
        x0, x1 = xf[..., 0], xf[..., 1]
        out = torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1)
        return out.reshape(x.shape).to(x.dtype)

    def _rms(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.hp.rms_eps)
        return (xf * weight).to(self.dtype)

    def forward(self, ids: torch.Tensor, pos: torch.Tensor, visible: torch.Tensor,
                rows: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Logits in float32 for one sequence: `ids` and `pos` (n,), `visible` a boolean (n, n)
        matrix, True where row i may attend to column j (pardec layout's rule). `rows`: only
        these rows' logits (the vocabulary projection is most of the memory)."""
        hp = self.hp
        ids, pos, visible = ids.to(self.device), pos.to(self.device), visible.to(self.device)
        n, hd = ids.shape[0], hp.head_dim
        x = self._embed(ids)
        for layer in range(hp.n_layer):
            h = self._rms(x, self.weights[f"{layer}.attn_norm"])
            q = self._rope(self._linear(h, layer, "attn_q").view(n, hp.n_head, hd), pos)
            k = self._rope(self._linear(h, layer, "attn_k").view(n, hp.n_head_kv, hd), pos)
            v = self._linear(h, layer, "attn_v").view(n, hp.n_head_kv, hd)
            rep = hp.n_head // hp.n_head_kv
            k = k.repeat_interleave(rep, dim=1)
            v = v.repeat_interleave(rep, dim=1)
            att = F.scaled_dot_product_attention(
                q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), attn_mask=visible)
            att = att.transpose(0, 1).reshape(n, hp.n_embd)
            x = x + self._linear(att, layer, "attn_output")
            h = self._rms(x, self.weights[f"{layer}.ffn_norm"])
            ff = F.silu(self._linear(h, layer, "ffn_gate")) * self._linear(h, layer, "ffn_up")
            x = x + self._linear(ff, layer, "ffn_down")
        if rows is not None:
            x = x[rows.to(self.device)]
        x = self._rms(x, self.weights["output_norm"])
        return self._logits(x)


def causal_visible(n: int) -> torch.Tensor:
    return torch.ones(n, n, dtype=torch.bool).tril()


def target_log_probs(model: GgufLlama, ids: torch.Tensor, pos: torch.Tensor, visible: torch.Tensor,
                     pairs: List[tuple]) -> torch.Tensor:
    """log p(target | row) for (row, target id) pairs, one forward pass."""
    rows = torch.tensor([r for r, _ in pairs], dtype=torch.long)
    targets = torch.tensor([t for _, t in pairs], dtype=torch.long)
    logits = model(ids, pos, visible, rows=rows)
    return torch.log_softmax(logits, dim=-1).gather(1, targets[:, None].to(logits.device))[:, 0].cpu()
