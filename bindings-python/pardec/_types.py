"""The value types a session reports (events, statistics, results, log-probabilities), their
copies from the C structs, and the names of the C enums they carry; also the trunk's node id
and the type of path arguments."""

from __future__ import annotations

import codecs
import ctypes
import dataclasses
import os
from ctypes import byref, c_size_t, sizeof
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple, Union

from . import _lib as _c
from ._errors import Status, _as_status, _check

if TYPE_CHECKING:
    # Only named in an annotation; _model imports this module.
    from ._model import Model


#: A path argument: str or os.PathLike.
StrPath = Union[str, "os.PathLike[str]"]

#: The trunk's node id.
TRUNK = 0


_STOP_REASONS = {
    0: None, 1: "eog", 2: "max_tokens", 3: "stop_string", 4: "kv_cache_full", 5: "cancelled", 6: "server_lost",
}
_EVENT_KINDS = {0: "token", 1: "end", 2: "done", 3: "fork", 4: "join", 5: "warning"}
_JOIN_STATES = {0: "open", 1: "all", 2: "keep", 3: "discard"}


# ----- value types -----------------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    """One streamed event (``pardec_event``)."""

    kind: str  # "token", "end", "done"; auto mode also "fork", "join", "warning"
    node: int
    label: str  # "" for the trunk, "1", "2.1", ... for branches
    text: str = ""  # token: whole UTF-8 characters completed by this token
    token: int = -1  # token: the id (-1 for a flush of incomplete bytes)
    stop_reason: Optional[str] = None  # end: "eog", "max_tokens", "stop_string", ...
    stop_string: Optional[str] = None  # end with stop_string: the matched string
    status: Union[Status, int] = Status.OK  # done: the call's status
    #: token, in a session with ``logprobs`` (not for a flush): the token's natural-log
    #: probability under the model (raw logits: before biases, penalties and sampling).
    logprob: Optional[float] = None
    #: Alongside ``logprob``: the step's ``logprobs`` most likely ``(token, logprob)`` pairs,
    #: most likely first.
    top_logprobs: Optional[List[Tuple[int, float]]] = None

    @property
    def is_trunk(self) -> bool:
        """Whether the event is the trunk's (label "")."""
        return self.label == ""


#: ``struct_size`` of a ``pardec_event`` that has the log-probability fields (0.5 on).
_EVENT_SIZE_WITH_LOGPROBS: int = getattr(_c.pardec_event, "n_top").offset + sizeof(c_size_t)


def _top_list(top: Any, n: int) -> List[Tuple[int, float]]:
    """``(token, logprob)`` pairs copied from a ``const pardec_top_logprob *`` of ``n`` entries."""
    return [(top[i].token, top[i].logprob) for i in range(n)] if n and top else []


def _event_from_c(ev: _c.pardec_event) -> Event:
    """Copies a C event (valid only during the callback) into an Event."""
    def s(p: Optional[int]) -> Optional[str]:
        return ctypes.string_at(p).decode("utf-8", "replace") if p else None

    text = ctypes.string_at(ev.text, ev.text_len).decode("utf-8", "replace") if ev.text_len else ""
    status = _as_status(ev.status)
    logprob: Optional[float] = None
    top: Optional[List[Tuple[int, float]]] = None
    if ev.struct_size >= _EVENT_SIZE_WITH_LOGPROBS and ev.has_logprob:
        logprob, top = ev.logprob, _top_list(ev.top, ev.n_top)
    return Event(
        kind=_EVENT_KINDS.get(ev.kind, str(ev.kind)),
        node=ev.node,
        label=s(ev.label) or "",
        text=text,
        token=ev.token,
        stop_reason=_STOP_REASONS.get(ev.stop_reason),
        stop_string=s(ev.stop_string),
        status=status,
        logprob=logprob,
        top_logprobs=top,
    )


@dataclass(frozen=True)
class Stats:
    """Metrics of a generation (``pardec_stats``); see the header for definitions."""

    tokens_total: int
    tokens_branch: int
    tokens_prefill: int
    steps: int
    blocks: int
    branches: int
    serial_seconds: float
    parallel_seconds: float
    prefill_seconds: float
    tps: float
    p_tps: float
    dp: float
    abn: float
    parallel: float
    kv_cells_used: int
    kv_cells_unshared: int
    host_us_per_step: float
    selection_us_per_step: float

    @classmethod
    def _from_c(cls, s: _c.pardec_stats) -> "Stats":
        return cls(**{f[0]: getattr(s, f[0]) for f in _c.pardec_stats._fields_})

    def as_dict(self) -> Dict[str, Union[int, float]]:
        """The statistics as a plain dict (field name to value)."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Branch:
    """One branch of a block, in a :class:`Result`."""

    label: str
    text: str  # prefix + generated text (+ its own joined blocks)
    n_tokens: int
    stop_reason: Optional[str]
    stop_string: Optional[str]
    kept: bool  # whether the parent attends to it
    node: int  # the branch's node id (as in events; a key of Result.logprobs)


@dataclass(frozen=True)
class Block:
    """One block (a fork and its join) of a :class:`Result`."""

    parent_label: str
    fork_pos: int
    join_state: str  # "open", "all", "keep" or "discard"
    branches: List[Branch] = field(default_factory=list)


@dataclass(frozen=True)
class TokenLogprob:
    """A generated token's log-probability (``pardec_token_logprob``), in a session made with
    ``logprobs``: the model's own distribution (log-softmax of the raw logits, before biases,
    penalties, temperature or truncation), as llama-cpp-python reports it."""

    pos: int  # the token's KV position in its node
    token: int  # the token the node committed
    logprob: float  # its natural-log probability (<= 0)
    top: List[Tuple[int, float]]  # the step's most likely (token, logprob), most likely first


@dataclass(frozen=True)
class Result:
    """A snapshot of a session (``pardec_result``), copied into Python objects."""

    text: str
    blocks: List[Block]
    stats: Stats
    #: The log-probabilities of the tokens each node generated, by node id: the trunk
    #: (:data:`TRUNK`) and every branch (``Branch.node``); empty lists in a session without
    #: ``logprobs`` and for nodes that generated nothing.
    logprobs: Dict[int, List[TokenLogprob]] = field(default_factory=dict)


def _result_logprobs(result: Any, node: int) -> List[TokenLogprob]:
    """The log-probabilities ``pardec_result_logprobs`` gives for ``node`` of a result handle,
    copied (the entries are owned by the result)."""
    entries = ctypes.POINTER(_c.pardec_token_logprob)()
    n = c_size_t()
    _check(_c.lib().pardec_result_logprobs(result, node, byref(entries), byref(n)))
    out = []
    for i in range(n.value if entries else 0):
        e = entries[i]
        out.append(TokenLogprob(pos=e.pos, token=e.token, logprob=e.logprob, top=_top_list(e.top, e.n_top)))
    return out


def _completion_logprobs(model: "Model", entries: Sequence[TokenLogprob]) -> Dict[str, Any]:
    """llama-cpp-python's completion ``logprobs`` dict of ``entries`` (see
    :meth:`Session.completion_logprobs`)."""
    def text(token: int) -> str:
        return model.token_to_piece(token).decode("utf-8", "ignore")

    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    offset = 0
    tokens: List[str] = []
    offsets: List[int] = []
    token_logprobs: List[float] = []
    top_logprobs: List[Dict[str, float]] = []
    for e in entries:
        offsets.append(offset)
        offset += len(decoder.decode(model.token_to_piece(e.token)))
        piece = text(e.token)
        tokens.append(piece)
        token_logprobs.append(e.logprob)
        top = {text(t): lp for t, lp in e.top}
        top[piece] = e.logprob
        top_logprobs.append(top)
    return {"tokens": tokens, "text_offset": offsets, "token_logprobs": token_logprobs,
            "top_logprobs": top_logprobs}
