"""A training example as tensors, read from `pardec layout --json` (never re-derived)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch


@dataclass
class Example:
    """One training sequence as the engine lays it out."""
    ids: torch.Tensor       # (n,) token ids of every entry (pieces, then copies)
    pos: torch.Tensor       # (n,) position ids
    visible: torch.Tensor   # (n, n) bool: row i attends to column j
    targets: List[Tuple[int, int]]  # (row whose logits predict, target id), response only
    target_entries: List[int]       # the entry index of each target (same order)
    branches: List[Optional[str]]   # branch label of each entry (None: trunk)


def example(lay: dict, response_start: int) -> Example:
    """Tensors from a layout. Loss goes on response tokens (byte offset >= response_start) that
    have a predecessor; copies (tokens a join reads again) are context only."""
    entries = lay["tokens"] + lay.get("copies", [])
    n = len(entries)
    visible = torch.zeros(n, n, dtype=torch.bool)
    for i, ranges in enumerate(lay["visible"]):
        for a, b in ranges:
            visible[i, a:b] = True
    targets, target_entries = [], []
    for j, tok in enumerate(lay["tokens"]):
        if tok["prev"] is not None and tok["start"] >= response_start:
            targets.append((tok["prev"], tok["id"]))
            target_entries.append(j)
    return Example(
        ids=torch.tensor([e["id"] for e in entries], dtype=torch.long),
        pos=torch.tensor([e["pos"] for e in entries], dtype=torch.long),
        visible=visible, targets=targets, target_entries=target_entries,
        branches=[e.get("branch") for e in entries])
