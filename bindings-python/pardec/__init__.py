"""pardec: parallel decoding of independent branches on llama.cpp, from Python.

A pure-ctypes wrapper of pardec's C API (include/pardec.h); the wheel bundles libpardec
(``pip install ./bindings-python`` builds it with cargo). The library is loaded from
``$PARDEC_LIB`` if set, else from this package's folder, else (in a source checkout) from the
cargo target dir.

    import pardec

    llm = pardec.Model(model_path="SmolLM2-135M-Instruct.Q4_1.gguf", n_ctx=2048)
    out = llm.create_chat_completion([{"role": "user", "content": "Name three fruits."}],
                                     max_tokens=64)
    print(out["choices"][0]["message"]["content"], out["pardec"]["stats"]["dp"])
    for chunk in llm.create_chat_completion([("user", "Hi!")], max_tokens=16, stream=True):
        print(chunk["choices"][0]["delta"].get("content", ""), end="")

    # The engine itself: fork branches, stream their tokens, join them.
    with pardec.Session(llm, n_ctx=1024) as s:
        s.prompt(llm.chat([("user", "Name three fruits.")]))
        s.fork(["1.", "2.", "3."], max_tokens=24, stop=["\\n"])
        for ev in s.run_iter():            # tokens of all branches, interleaved, as decoded
            print(ev.label, ev.text)
        s.join(text="\\nIn short,")
        print("".join(ev.text for ev in s.generate(max_tokens=24)))
        print(s.result().text, s.stats())

Threads: a Model may be shared by sessions on any number of threads; a Session is used by one
thread at a time (a call while it is busy raises PardecError with status BUSY). Callbacks run
on the calling thread, before the call returns (a streamed chat completion decodes on a thread
of its own).
"""

from __future__ import annotations

import codecs
import contextlib
import ctypes
import dataclasses
import enum
import json
import os
import sys
import threading
import time
import uuid
import weakref
from contextlib import contextmanager
from ctypes import byref, c_bool, c_char_p, c_float, c_int32, c_size_t, c_uint32, c_uint64, c_void_p, sizeof
from dataclasses import dataclass, field
from typing import (
    Any,
    Callable,
    Dict,
    Iterable,
    Iterator,
    List,
    Literal,
    Mapping,
    Optional,
    Sequence,
    Tuple,
    Union,
    overload,
)

from . import _lib as _c
from ._chat import (
    ChatCompletion,
    ChatCompletionChoice,
    ChatCompletionChunk,
    ChatCompletionChunkChoice,
    ChatCompletionDelta,
    ChatCompletionLogprobs,
    ChatCompletionStream,
    ChatCompletionTokenLogprob,
    ChatCompletionTopLogprob,
    ChatMessage,
    ChatOutcome,
    ChatRequest,
    CompletionUsage,
    MessageLike,
    PardecInfo,
    content_logprobs,
    cut_at_stop,
    logprob_entry,
    normalize_messages,
)
from ._lib import LibraryNotFoundError, LibraryVersionWarning, candidate_paths

__all__ = [
    "TRUNK", "Status", "PardecError", "Cancelled", "ClosedError", "LibraryNotFoundError",
    "LibraryVersionWarning", "Event", "Stats", "Branch", "Block", "Result", "TokenLogprob",
    "Model", "Adapter", "Session", "Generation", "version", "library_path", "candidate_paths",
    "json_object_grammar", "json_schema_grammar",
    "ChatCompletionStream", "ChatCompletion", "ChatCompletionChunk", "ChatCompletionChoice",
    "ChatCompletionChunkChoice", "ChatCompletionDelta", "ChatCompletionLogprobs",
    "ChatCompletionTokenLogprob", "ChatCompletionTopLogprob", "ChatMessage", "CompletionUsage",
    "PardecInfo", "MessageLike", "DEFAULT_ADAPTER_PROTOCOL", "PLAIN",
]

#: The package's version; the loaded library's ``pardec_version()`` has the same major.minor
#: (checked when it is loaded).
__version__ = _c.PACKAGE_VERSION

#: A path argument: str or os.PathLike.
StrPath = Union[str, "os.PathLike[str]"]

#: The trunk's node id.
TRUNK = 0


class Status(enum.IntEnum):
    """``enum pardec_status`` (values are part of the C ABI)."""

    OK = 0
    NULL_ARGUMENT = 1
    INVALID_UTF8 = 2
    INVALID_ARGUMENT = 3
    STRUCT_SIZE = 4
    OUT_OF_RANGE = 5
    BUSY = 6
    BACKEND = 7
    MODEL_NOT_FOUND = 8
    NOT_GGUF = 9
    MODEL_LOAD = 10
    UNSUPPORTED_MODEL = 11
    CONTEXT = 12
    EMPTY_PROMPT = 13
    PROMPT_TOO_LONG = 14
    EMPTY_BRANCH_PREFIX = 15
    TOO_MANY_BRANCHES = 16
    DEPTH_LIMIT = 17
    INVALID_STATE = 18
    KV_CACHE_FULL = 19
    CANCELLED = 20
    DECODE = 21
    INTERNAL = 22
    PANIC = 23
    NOT_ADAPTER = 24
    ADAPTER_MISMATCH = 25
    RPC = 26


_STOP_REASONS = {
    0: None, 1: "eog", 2: "max_tokens", 3: "stop_string", 4: "kv_cache_full", 5: "cancelled", 6: "server_lost",
}
_EVENT_KINDS = {0: "token", 1: "end", 2: "done", 3: "fork", 4: "join", 5: "warning"}
_JOIN_STATES = {0: "open", 1: "all", 2: "keep", 3: "discard"}
_JOIN_ALL, _JOIN_KEEP, _JOIN_DISCARD = 0, 1, 2
#: pardec_join_rule values by the names the CLI and protocol JSON use.
_JOIN_RULES = {"same-max": 0, "same-seq": 1, "reprefill": 2}
_KV_TYPES = {"f16": 0, "f32": 1}


class PardecError(Exception):
    """A pardec call failed: ``status`` is a :class:`Status`, ``message`` the library's detail."""

    def __init__(self, status: Union[Status, int], message: str = ""):
        """An error of ``status`` (a Status when the value is known) with the library's detail."""
        self.status: Union[Status, int] = _as_status(status)
        self.message = message
        # generate_auto: what the generation did before it stopped midway (else None).
        self.report: Optional[Dict[str, Any]] = None
        name = self.status.name if isinstance(self.status, Status) else str(self.status)
        super().__init__(f"{name}: {message}" if message else name)


def _as_status(value: int) -> Union[Status, int]:
    """``value`` as a Status, or the int itself when no Status has it."""
    try:
        return Status(value)
    except ValueError:
        return value


class Cancelled(PardecError):
    """A callback returned False (or raised: the exception is chained as ``__cause__``). The
    session stays usable."""


class ClosedError(PardecError, ValueError):
    """The object was closed."""

    def __init__(self, what: str):
        """``what`` (e.g. "session") was used after ``close()``."""
        super().__init__(Status.INVALID_STATE, f"{what} is closed")


def _check(status: int) -> None:
    """Raises the PardecError of a failed call's status (with pardec_last_error())."""
    if status != Status.OK:
        raw: Optional[bytes] = _c.lib().pardec_last_error()
        message = (raw or b"").decode("utf-8", "replace")
        cls = Cancelled if status == Status.CANCELLED else PardecError
        raise cls(status, message)


def version() -> str:
    """The loaded library's version (``pardec_version()``); the package's is ``__version__``."""
    raw: bytes = _c.lib().pardec_version()
    return raw.decode()


def json_object_grammar() -> str:
    """A GBNF grammar for exactly one JSON object (``pardec_grammar_json_object()``), for the
    ``grammar`` keyword of :meth:`Session.generate` and :meth:`Session.fork`."""
    raw: bytes = _c.lib().pardec_grammar_json_object()
    return raw.decode()


def json_schema_grammar(schema: Union[str, Mapping[str, Any]]) -> str:
    """A GBNF grammar for the JSON values a JSON Schema describes, as llama.cpp converts a
    schema (``pardec_grammar_from_json_schema``; llama-server's ``json_schema``), for the
    ``grammar`` keyword. ``schema``: the schema as JSON text or as a dict. Raises
    :class:`PardecError` (INVALID_ARGUMENT) for text that is not JSON or a schema llama.cpp
    cannot convert."""
    text = schema if isinstance(schema, str) else json.dumps(schema)
    out = c_void_p()
    _check(_c.lib().pardec_grammar_from_json_schema(_encode(text, "schema"), byref(out)))
    return _take_string(out)


def library_path() -> str:
    """The path libpardec is loaded from (loading it if it is not yet)."""
    _c.lib()
    path = _c.loaded_path()
    assert path is not None
    return str(path)


def _take_string(ptr: c_void_p) -> str:
    """Copies a ``char *`` returned by pardec and releases it with pardec_string_free."""
    try:
        return ctypes.string_at(ptr.value).decode("utf-8", "replace") if ptr.value else ""
    finally:
        _c.lib().pardec_string_free(ptr)


def _handle(out: c_void_p) -> int:
    """The handle a successful ``*_load``/``*_new`` call wrote (never NULL then)."""
    if out.value is None:
        raise PardecError(Status.INTERNAL, "the library returned a NULL handle with status OK")
    return out.value


def _encode(text: str, what: str) -> bytes:
    """``text`` as the UTF-8 of a C string; TypeError/ValueError naming ``what`` otherwise."""
    if not isinstance(text, str):
        raise TypeError(f"{what} must be str, not {type(text).__name__}")
    # A C string ends at its first NUL: the rest would be dropped without a word (a stop
    # string "\0" would silently never stop).
    if "\0" in text:
        raise ValueError(f"{what} contains a NUL character, which a C string cannot hold")
    # Surrogates (e.g. from os.fsdecode) cannot be UTF-8: the library would refuse them anyway.
    return text.encode("utf-8", "surrogatepass")


def _c_int(value: int, ctype: Any, what: str) -> int:
    """``value`` checked against the range of the C integer type it is passed as: ctypes
    would wrap it silently (``n_ctx=2**32 + 12`` would become 12)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be int, not {type(value).__name__}")
    bits = 8 * ctypes.sizeof(ctype)
    signed = ctype(-1).value == -1
    low, high = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    if not low <= value <= high:
        raise ValueError(f"{what} must be in {low}..{high}, got {value}")
    return value


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


# ----- run limits ----------------------------------------------------------------------------


class _Limits:
    """A ``pardec_run_limits`` plus the arrays it points to, alive as long as this object."""

    def __init__(self, max_tokens: int, stop: Union[str, Sequence[str]], ban_eog: bool,
                 banned_tokens: Iterable[int], strip_stop: bool = False, grammar: Optional[str] = None,
                 grammar_root: Optional[str] = None):
        L = _c.lib()
        self.c = _c.pardec_run_limits()
        _check(L.pardec_run_limits_default(byref(self.c), sizeof(self.c)))
        if isinstance(max_tokens, int) and max_tokens < 0:
            raise ValueError("max_tokens must be >= 0")
        self.c.max_tokens = _c_int(max_tokens, c_uint32, "max_tokens")
        if isinstance(stop, str):
            stop = [stop]
        self._stop = (c_char_p * len(stop))(*[_encode(s, "stop string") for s in stop])
        self.c.stop = ctypes.cast(self._stop, ctypes.POINTER(c_char_p))
        self.c.n_stop = len(stop)
        self.c.ban_eog = bool(ban_eog)
        banned = [_c_int(t, c_int32, "banned token") for t in banned_tokens]
        self._banned = (c_int32 * len(banned))(*banned)
        self.c.banned_tokens = ctypes.cast(self._banned, ctypes.POINTER(c_int32))
        self.c.n_banned_tokens = len(banned)
        self.c.strip_stop = bool(strip_stop)
        # Kept referenced: the C struct only points to them.
        self._grammar = _encode(grammar, "grammar") if grammar is not None else None
        self._grammar_root = _encode(grammar_root, "grammar_root") if grammar_root is not None else None
        self.c.grammar = self._grammar
        self.c.grammar_root = self._grammar_root


def _stop_strings(stop: Union[str, Sequence[str]]) -> Any:
    """A ``const char *const *`` array of the stop strings (one str is one stop string)."""
    items = [stop] if isinstance(stop, str) else list(stop)
    return (c_char_p * len(items))(*[_encode(s, "stop string") for s in items])


def _cut_matched_stop(text: str, stop: str, last_piece: str) -> Optional[str]:
    """``text`` without the stop string that ended its run and what followed it: cut at the
    first occurrence of ``stop`` that ends inside ``last_piece``, the text of the run's last
    token (the one that completed it), which ``text`` ends with. None if there is none (the
    stop began in text forced before the run)."""
    start = max(0, len(text) - len(last_piece) - len(stop) + 1)
    at = text.find(stop, start) if stop else -1
    return text[:at] if at >= 0 else None


# ----- callbacks -----------------------------------------------------------------------------


class _Callback:
    """A C callback around a Python function. The ctypes function object lives as long as this
    object, which each call keeps referenced until the C function returns. An exception in the
    Python function cancels the call and is re-raised afterwards."""

    def __init__(self, fn: Optional[Callable[[Event], Optional[bool]]]):
        self.fn = fn
        self.error: Optional[BaseException] = None
        self.c = _c.pardec_callback(self._call) if fn is not None else _c.pardec_callback()

    def _call(self, _user_data: Optional[int], ev_ptr: Any) -> bool:
        if self.error is not None or self.fn is None:
            return False
        try:
            verdict = self.fn(_event_from_c(ev_ptr.contents))
            return verdict is None or bool(verdict)
        except BaseException as e:  # noqa: BLE001 - must not unwind into C
            self.error = e
            return False

    def check(self, status: int) -> None:
        """Raises the callback's own exception first, else the status's."""
        if self.error is not None:
            err = self.error
            self.error = None
            if isinstance(err, (KeyboardInterrupt, SystemExit)):
                raise err
            raise Cancelled(Status.CANCELLED, f"the callback raised {err!r}") from err
        _check(status)


# ----- session parameters ------------------------------------------------------------------


def _number(value: Any, what: str) -> float:
    """``value`` as a float; TypeError naming ``what`` if it is not an int or float (a bool is not)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{what} must be a number, not {type(value).__name__}")
    return float(value)


def _logit_bias_items(bias: Any) -> List[Tuple[int, float]]:
    """A ``logit_bias`` mapping (token id to the bias added to its logit; ``float("-inf")``
    bans the token) as checked ``(token, bias)`` pairs; the library checks the ranges."""
    if not isinstance(bias, Mapping):
        raise TypeError(f"logit_bias must be a mapping of token ids to biases, not {type(bias).__name__}")
    return [(_c_int(token, c_int32, "logit_bias token"), _number(value, "logit_bias value"))
            for token, value in bias.items()]


class _SessionParams:
    """A ``pardec_session_params`` plus the logit-bias array it points to, alive as long as
    this object (the library copies it during ``pardec_session_new``)."""

    def __init__(self, kw: Mapping[str, Any]):
        """``pardec_session_params_default()`` with the values of ``kw`` that are not None
        applied (the keywords of :class:`Session`), each checked against its C type."""
        self.c = _session_params(kw)
        items = _logit_bias_items(kw["logit_bias"]) if kw.get("logit_bias") is not None else []
        self._bias = (_c.pardec_logit_bias * len(items))(*[_c.pardec_logit_bias(t, b) for t, b in items])
        self.c.logit_bias = ctypes.cast(self._bias, ctypes.POINTER(_c.pardec_logit_bias))
        self.c.n_logit_bias = len(items)


def _session_params(kw: Mapping[str, Any]) -> _c.pardec_session_params:
    """``pardec_session_params_default()`` with the scalar values of ``kw`` that are not None
    applied, each checked against its C type (``logit_bias`` is :class:`_SessionParams`')."""
    L = _c.lib()
    p = _c.pardec_session_params()
    _check(L.pardec_session_params_default(byref(p), sizeof(p)))
    for name in ("n_ctx", "n_batch", "max_branches", "max_depth", "n_threads", "device_candidates"):
        value = kw.get(name)
        if value is not None:
            if isinstance(value, int) and not isinstance(value, bool) and value < 0:
                raise ValueError(f"{name} must be >= 0")
            setattr(p, name, _c_int(value, c_uint32, name))
    kv_type = kw.get("kv_type")
    if kv_type is not None:
        if kv_type not in _KV_TYPES:
            raise ValueError(f"kv_type must be one of {sorted(_KV_TYPES)}")
        p.kv_type = _KV_TYPES[kv_type]
    flash_attn = kw.get("flash_attn")
    if flash_attn is not None:
        p.flash_attn = 1 if flash_attn else 0
    for name in ("temperature", "top_p", "min_p"):
        value = kw.get(name)
        if value is not None:
            setattr(p.sampling, name, _number(value, name))
    for name in ("repeat_penalty", "frequency_penalty", "presence_penalty"):
        value = kw.get(name)
        if value is not None:
            setattr(p, name, _number(value, name))
    penalty_last_n = kw.get("penalty_last_n")
    if penalty_last_n is not None:
        p.penalty_last_n = _c_int(penalty_last_n, c_int32, "penalty_last_n")
    logprobs = kw.get("logprobs")
    if logprobs is not None:
        p.logprobs = _c_int(logprobs, c_int32, "logprobs")
    top_k = kw.get("top_k")
    if top_k is not None:
        p.sampling.top_k = _c_int(top_k, c_uint32, "top_k")
    seed = kw.get("seed")
    if seed is not None:
        p.sampling.seed = _c_int(seed, c_uint64, "seed")
    return p


# ----- model -------------------------------------------------------------------------------


def _rpc_server_list(servers: Union[None, str, Sequence[str]]) -> Optional[bytes]:
    """``rpc_servers`` as the C list ``b"host:port,host:port"`` (the library checks each)."""
    if servers is None:
        return None
    if isinstance(servers, str):
        return servers.encode()
    if isinstance(servers, (bytes, bytearray)) or not all(isinstance(s, str) for s in servers):
        raise TypeError("rpc_servers must be a str 'host:port,...' or a sequence of str")
    if any("," in s for s in servers):
        raise ValueError("an entry of rpc_servers holds a comma: give one host:port each")
    return ",".join(servers).encode()


def _free_model(ptr: int) -> None:
    _c.lib().pardec_model_free(ptr)


#: ``llama_cpp.Llama`` keywords pardec has no counterpart for, and what to do instead.
_LLAMA_CPP_MODEL_KWARGS: Dict[str, str] = {
    **{k: "" for k in (
        "split_mode", "main_gpu", "tensor_split", "vocab_only", "use_mmap",
        "use_mlock", "kv_overrides", "n_ubatch", "rope_scaling_type", "pooling_type",
        "rope_freq_base", "rope_freq_scale", "yarn_ext_factor", "yarn_attn_factor",
        "yarn_beta_fast", "yarn_beta_slow", "yarn_orig_ctx", "logits_all", "embedding",
        "offload_kqv", "op_offload", "swa_full", "no_perf", "last_n_tokens_size", "numa",
        "draft_model", "tokenizer", "spm_infill",
    )},
    "n_threads_batch": "n_threads sets the threads of every decode step",
    "type_k": "the KV cache's type is kv_type='f16' or 'f32' (keys and values alike)",
    "type_v": "the KV cache's type is kv_type='f16' or 'f32' (keys and values alike)",
    "chat_format": "chats are formatted with the GGUF's own template (Model.chat)",
    "chat_handler": "chats are formatted with the GGUF's own template (Model.chat)",
    "lora_base": "the adapter of lora_path applies to the model loaded",
}

#: The built-in protocol of the adapter pardec ships (``adapters/multiverse-smollm2-135m.gguf``),
#: which :meth:`Model.create_chat_completion` uses when the model has a LoRA adapter.
DEFAULT_ADAPTER_PROTOCOL = "multiverse"

#: ``protocol=PLAIN``: plain generation (no auto mode), even with an adapter.
PLAIN = "plain"

#: ``create_chat_completion`` keywords of llama_cpp and OpenAI that pardec does not implement,
#: with the values that mean "off" (accepted, so code that passes the defaults keeps working).
_NEUTRAL_COMPLETION_KWARGS: Dict[str, Tuple[Any, ...]] = {
    "functions": (None,), "function_call": (None,), "tools": (None,), "tool_choice": (None,),
    "logits_processor": (None,),
    "stopping_criteria": (None,), "typical_p": (None, 1.0), "tfs_z": (None, 1.0),
    "mirostat_mode": (None, 0), "mirostat_tau": (None, 5.0),
    "mirostat_eta": (None, 0.1), "n": (None, 1), "user": (None,), "stream_options": (None,),
}


def _chat_grammar(response_format: Optional[Mapping[str, Any]], grammar: Optional[str]) -> Optional[str]:
    """The GBNF grammar a chat completion's ``response_format`` or ``grammar`` asks for."""
    if grammar is not None and not isinstance(grammar, str):
        raise TypeError(f"grammar must be GBNF text (str), not {type(grammar).__name__}")
    if response_format is None:
        return grammar
    if grammar is not None:
        raise ValueError("pass response_format or grammar, not both")
    if not isinstance(response_format, Mapping):
        raise TypeError(f"response_format must be a dict, not {type(response_format).__name__}")
    kind = response_format.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        schema = response_format.get("schema")
        return json_object_grammar() if schema is None else json_schema_grammar(schema)
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        if not isinstance(spec, Mapping) or "schema" not in spec:
            raise ValueError('response_format {"type": "json_schema"} needs "json_schema": {"schema": {...}}')
        return json_schema_grammar(spec["schema"])
    raise ValueError(f"response_format type must be text, json_object or json_schema, not {kind!r}")


class Model:
    """A loaded GGUF model (``pardec_model``). Thread-safe; close it when done (sessions keep
    working after their model is closed: they hold their own reference).

    Takes the keywords of ``llama_cpp.Llama`` that pardec has: ``model_path`` (or the path as
    the first argument), ``n_gpu_layers``, ``rpc_servers`` (``"host:port,host:port"`` or a
    list: servers running ``pardec rpc-server`` to put the layers on; needs a library built
    with the RPC backend, else :class:`PardecError` with ``Status.RPC``), and for the sessions
    made from it — by
    :meth:`create_chat_completion`, or ``Session(model)`` for what a Session is not given —
    ``n_ctx``, ``n_batch``, ``n_threads``, ``seed``, ``flash_attn``, ``lora_path`` and
    ``lora_scale`` (the LoRA adapter every session decodes with), plus pardec's own session
    keywords (``max_branches``, ``max_depth``, ``kv_type``, ``temperature``, ``top_k``,
    ``top_p``, ``min_p``, ``device_candidates``, ``repeat_penalty``, ``frequency_penalty``,
    ``presence_penalty``, ``penalty_last_n``, ``logit_bias``, ``logprobs``; see
    :class:`Session`). ``verbose`` must be
    False: llama.cpp's log is shown with ``PARDEC_LLAMA_LOG=1`` instead. Any other keyword
    raises TypeError (saying so for llama_cpp keywords pardec has no counterpart for).
    """

    def __init__(
        self,
        path: Optional[StrPath] = None,
        n_gpu_layers: Optional[int] = None,
        *,
        model_path: Optional[StrPath] = None,
        rpc_servers: Optional[Union[str, Sequence[str]]] = None,
        n_ctx: Optional[int] = None,
        n_batch: Optional[int] = None,
        n_threads: Optional[int] = None,
        seed: Optional[int] = None,
        flash_attn: Optional[bool] = None,
        lora_path: Optional[StrPath] = None,
        lora_scale: float = 1.0,
        verbose: bool = False,
        max_branches: Optional[int] = None,
        max_depth: Optional[int] = None,
        kv_type: Optional[str] = None,
        temperature: Optional[float] = None,
        top_k: Optional[int] = None,
        top_p: Optional[float] = None,
        min_p: Optional[float] = None,
        device_candidates: Optional[int] = None,
        repeat_penalty: Optional[float] = None,
        frequency_penalty: Optional[float] = None,
        presence_penalty: Optional[float] = None,
        penalty_last_n: Optional[int] = None,
        logit_bias: Optional[Mapping[int, float]] = None,
        logprobs: Optional[int] = None,
        **kwargs: Any,
    ):
        """Loads the model at ``path`` (or ``model_path``); see the class for the keywords."""
        for name in kwargs:
            hint = _LLAMA_CPP_MODEL_KWARGS.get(name)
            if hint is None:
                raise TypeError(f"Model() got an unexpected keyword argument {name!r}")
            raise TypeError(f"Model() does not support llama_cpp.Llama's keyword {name!r}"
                            + (f": {hint}" if hint else ""))
        if path is not None and model_path is not None:
            raise TypeError("Model() takes the path once: as the first argument or as model_path, not both")
        path = path if path is not None else model_path
        if path is None:
            raise TypeError("Model() needs the model's path (the first argument or model_path=)")
        if verbose:
            raise ValueError("Model(verbose=True) is not supported: pardec keeps llama.cpp quiet; "
                             "set PARDEC_LLAMA_LOG=1 before the first model loads to see its log")
        if isinstance(lora_scale, bool) or not isinstance(lora_scale, (int, float)):
            raise TypeError(f"lora_scale must be a number, not {type(lora_scale).__name__}")
        defaults = {
            "n_ctx": n_ctx, "n_batch": n_batch, "n_threads": n_threads, "seed": seed,
            "flash_attn": flash_attn, "max_branches": max_branches, "max_depth": max_depth,
            "kv_type": kv_type, "temperature": temperature, "top_k": top_k, "top_p": top_p,
            "min_p": min_p, "device_candidates": device_candidates, "repeat_penalty": repeat_penalty,
            "frequency_penalty": frequency_penalty, "presence_penalty": presence_penalty,
            "penalty_last_n": penalty_last_n, "logprobs": logprobs,
            # A copy: changing the caller's dict later does not change the model's sessions.
            "logit_bias": dict(logit_bias) if isinstance(logit_bias, Mapping) else logit_bias,
        }
        self._session_defaults: Dict[str, Any] = {k: v for k, v in defaults.items() if v is not None}
        _SessionParams(self._session_defaults)  # a bad value fails now, not at the first session
        # Token pieces already asked for (the vocabulary never changes).
        self._pieces: Dict[int, bytes] = {}
        L = _c.lib()
        params = _c.pardec_model_params()
        _check(L.pardec_model_params_default(byref(params), sizeof(params)))
        if n_gpu_layers is not None:
            params.n_gpu_layers = _c_int(n_gpu_layers, c_int32, "n_gpu_layers")
        # Kept referenced until the load returns: the struct only points at it.
        servers = _rpc_server_list(rpc_servers)
        if servers is not None:
            params.rpc_servers = servers
        out = c_void_p()
        _check(L.pardec_model_load(os.fsencode(path), byref(params), byref(out)))
        #: The file the model was loaded from (also the ``model`` of chat completions).
        self.model_path: str = os.fspath(path)
        self._ptr: Optional[int] = out.value
        self._lock = threading.Lock()
        # Frees the model if it is garbage-collected unclosed; never at interpreter exit,
        # where freeing buys nothing and C code must not run during teardown.
        self._finalizer = weakref.finalize(self, _free_model, _handle(out))
        self._finalizer.atexit = False
        #: The LoRA adapter of ``lora_path`` (None without one), at ``lora_scale`` in sessions.
        self.adapter: Optional[Adapter] = None
        self.lora_scale = float(lora_scale)
        if lora_path is not None:
            try:
                self.adapter = Adapter(self, lora_path)
            except BaseException:
                self.close()
                raise

    @contextmanager
    def _use(self) -> Iterator[int]:
        with self._lock:
            if self._ptr is None:
                raise ClosedError("model")
            yield self._ptr

    def close(self) -> None:
        """Releases the model (and the adapter of ``lora_path``). Closing twice is allowed."""
        with self._lock:
            if self._ptr is not None:
                self._ptr = None
                self._finalizer()
        if self.adapter is not None:
            self.adapter.close()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._ptr is None

    def __enter__(self) -> "Model":
        """The model itself; leaving the block closes it."""
        return self

    def __exit__(self, *exc: object) -> None:
        """Closes the model."""
        self.close()

    @property
    def n_vocab(self) -> int:
        """The number of tokens in the vocabulary."""
        n = c_size_t()
        with self._use() as p:
            _check(_c.lib().pardec_model_n_vocab(p, byref(n)))
        return n.value

    @property
    def architecture(self) -> str:
        """The GGUF's ``general.architecture`` (e.g. "llama")."""
        out = c_void_p()
        with self._use() as p:
            _check(_c.lib().pardec_model_architecture(p, byref(out)))
        return _take_string(out)

    # --- tokenizer (llama-cpp-python's names) ---

    def tokenize(self, text: Union[str, bytes], add_bos: bool = True, special: bool = False) -> List[int]:
        """The token ids of ``text`` (str, or UTF-8 bytes as llama-cpp-python takes).
        ``add_bos`` adds the model's start token where its metadata asks for one; ``special``
        reads special-token text (``"<|im_start|>"``) as those tokens: leave it False for text
        from users. (:meth:`Session.prompt` parses special tokens.)"""
        if isinstance(text, bytes):
            if b"\0" in text:
                raise ValueError("text contains a NUL byte, which a C string cannot hold")
            data = text
        else:
            data = _encode(text, "text")
        L = _c.lib()
        capacity = len(data) // 2 + 8  # a guess; strlen + 2 always suffices
        n = c_size_t()
        with self._use() as p:
            while True:
                out = (c_int32 * capacity)()
                status = L.pardec_model_tokenize(p, data, bool(add_bos), bool(special), out, capacity, byref(n))
                if status != Status.OUT_OF_RANGE or n.value <= capacity:
                    break
                capacity = n.value  # too small: the library wrote the count needed
        _check(status)
        return list(out[: n.value])

    def token_to_piece(self, token: int) -> bytes:
        """The bytes ``token`` renders to (special tokens as their text). A piece need not be
        valid UTF-8 on its own: a character may span tokens."""
        token = _c_int(token, c_int32, "token")
        piece = self._pieces.get(token)
        if piece is not None:
            return piece
        L = _c.lib()
        capacity = 32
        n = c_size_t()
        with self._use() as p:
            while True:
                out = ctypes.create_string_buffer(capacity)
                status = L.pardec_model_token_piece(p, token, out, capacity, byref(n))
                if status != Status.OUT_OF_RANGE or n.value <= capacity:
                    break
                capacity = n.value
        _check(status)
        piece = out.raw[: n.value]
        self._pieces[token] = piece
        return piece

    def detokenize(self, tokens: Sequence[int]) -> bytes:
        """The bytes of ``tokens``, exactly: their pieces (:meth:`token_to_piece`) joined, so
        ``detokenize(tokenize(s, add_bos=False)) == s.encode()``. Special tokens render as
        their text (llama-cpp-python's ``special=True``); decode with ``errors="replace"`` or
        ``"ignore"`` if the ids may end inside a character."""
        if isinstance(tokens, (str, bytes)):
            raise TypeError(f"tokens must be a sequence of token ids, not {type(tokens).__name__}")
        return b"".join(self.token_to_piece(t) for t in tokens)

    def special_tokens(self) -> Dict[str, int]:
        """The vocabulary's special tokens: ``{"bos", "eos", "eot", "sep", "nl", "pad"}`` to
        their ids, -1 where the model has none."""
        st = _c.pardec_special_tokens()
        with self._use() as p:
            _check(_c.lib().pardec_model_special_tokens(p, byref(st), sizeof(st)))
        return {f[0]: getattr(st, f[0]) for f in _c.pardec_special_tokens._fields_}

    def token_bos(self) -> int:
        """The beginning-of-sequence token (-1: none)."""
        return self.special_tokens()["bos"]

    def token_eos(self) -> int:
        """The end-of-sequence token (-1: none)."""
        return self.special_tokens()["eos"]

    def token_eot(self) -> int:
        """The end-of-turn token of chat models (-1: none)."""
        return self.special_tokens()["eot"]

    def token_nl(self) -> int:
        """The newline token (-1: none)."""
        return self.special_tokens()["nl"]

    def is_eog(self, token: int) -> bool:
        """Whether ``token`` ends a generation (EOS, EOT, ...)."""
        out = c_bool(False)
        with self._use() as p:
            _check(_c.lib().pardec_model_token_is_eog(p, _c_int(token, c_int32, "token"), byref(out)))
        return out.value

    def chat(self, messages: Sequence[MessageLike]) -> str:
        """Formats messages with the model's chat template, the assistant's turn opened. Each
        message is an OpenAI-style dict ``{"role": ..., "content": ...}`` or a ``(role,
        content)`` tuple; anything else raises TypeError or ValueError naming the message."""
        pairs = normalize_messages(messages)
        encoded = [(_encode(r, "role"), _encode(c, "content")) for r, c in pairs]
        arr = (_c.pardec_chat_message * len(encoded))(*[_c.pardec_chat_message(r, c) for r, c in encoded])
        out = c_void_p()
        with self._use() as p:
            _check(_c.lib().pardec_model_apply_chat_template(p, arr, len(encoded), byref(out)))
        return _take_string(out)

    def _default_adapters(self) -> List[Tuple["Adapter", float]]:
        """The adapters a session of this model gets when it is not given any."""
        if self.adapter is None or self.adapter.closed:
            return []
        return [(self.adapter, self.lora_scale)]

    # --- chat completions (OpenAI / llama-cpp-python shape) ---

    @overload
    def create_chat_completion(
        self, messages: Sequence[MessageLike], *, max_tokens: Optional[int] = ...,
        temperature: Optional[float] = ..., top_p: Optional[float] = ..., top_k: Optional[int] = ...,
        min_p: Optional[float] = ..., seed: Optional[int] = ...,
        stop: Union[None, str, Sequence[str]] = ..., stream: Literal[False] = ...,
        model: Optional[str] = ..., protocol: Optional[str] = ...,
        max_branch_tokens: Optional[int] = ..., response_prefix: Optional[str] = ...,
        repeat_penalty: Optional[float] = ..., frequency_penalty: Optional[float] = ...,
        presence_penalty: Optional[float] = ..., logit_bias: Optional[Mapping[Union[int, str], float]] = ...,
        logprobs: Optional[bool] = ..., top_logprobs: Optional[int] = ...,
        **kwargs: Any,
    ) -> ChatCompletion: ...

    @overload
    def create_chat_completion(
        self, messages: Sequence[MessageLike], *, max_tokens: Optional[int] = ...,
        temperature: Optional[float] = ..., top_p: Optional[float] = ..., top_k: Optional[int] = ...,
        min_p: Optional[float] = ..., seed: Optional[int] = ...,
        stop: Union[None, str, Sequence[str]] = ..., stream: Literal[True],
        model: Optional[str] = ..., protocol: Optional[str] = ...,
        max_branch_tokens: Optional[int] = ..., response_prefix: Optional[str] = ...,
        repeat_penalty: Optional[float] = ..., frequency_penalty: Optional[float] = ...,
        presence_penalty: Optional[float] = ..., logit_bias: Optional[Mapping[Union[int, str], float]] = ...,
        logprobs: Optional[bool] = ..., top_logprobs: Optional[int] = ...,
        **kwargs: Any,
    ) -> ChatCompletionStream: ...

    @overload
    def create_chat_completion(
        self, messages: Sequence[MessageLike], *, max_tokens: Optional[int] = ...,
        temperature: Optional[float] = ..., top_p: Optional[float] = ..., top_k: Optional[int] = ...,
        min_p: Optional[float] = ..., seed: Optional[int] = ...,
        stop: Union[None, str, Sequence[str]] = ..., stream: bool = ...,
        model: Optional[str] = ..., protocol: Optional[str] = ...,
        max_branch_tokens: Optional[int] = ..., response_prefix: Optional[str] = ...,
        repeat_penalty: Optional[float] = ..., frequency_penalty: Optional[float] = ...,
        presence_penalty: Optional[float] = ..., logit_bias: Optional[Mapping[Union[int, str], float]] = ...,
        logprobs: Optional[bool] = ..., top_logprobs: Optional[int] = ...,
        **kwargs: Any,
    ) -> Union[ChatCompletion, ChatCompletionStream]: ...

    def create_chat_completion(
        self,
        messages: Sequence[MessageLike],
        *,
        max_tokens: Optional[int] = None,
        temperature: Optional[float] = None,
        top_p: Optional[float] = None,
        top_k: Optional[int] = None,
        min_p: Optional[float] = None,
        seed: Optional[int] = None,
        stop: Union[None, str, Sequence[str]] = None,
        stream: bool = False,
        model: Optional[str] = None,
        protocol: Optional[str] = None,
        max_branch_tokens: Optional[int] = None,
        response_prefix: Optional[str] = None,
        repeat_penalty: Optional[float] = None,
        frequency_penalty: Optional[float] = None,
        presence_penalty: Optional[float] = None,
        logit_bias: Optional[Mapping[Union[int, str], float]] = None,
        logprobs: Optional[bool] = None,
        top_logprobs: Optional[int] = None,
        response_format: Optional[Mapping[str, Any]] = None,
        grammar: Optional[str] = None,
        **kwargs: Any,
    ) -> Union[ChatCompletion, ChatCompletionStream]:
        """Answers a chat, as ``llama_cpp.Llama.create_chat_completion`` and OpenAI's API do.

        ``messages``: OpenAI-style dicts ``{"role": ..., "content": ...}`` or ``(role,
        content)`` tuples (see :meth:`chat`). Returns the ``chat.completion`` dict (``id``,
        ``object``, ``created``, ``model``, ``choices[0]`` with ``message``, ``logprobs`` and
        ``finish_reason`` "stop" or "length", ``usage``), plus ``"pardec"``: the protocol used,
        the session's statistics (:class:`Stats` as a dict: ``dp``, ``abn``, ``parallel``, ...)
        and auto mode's report. With ``stream=True`` it returns a lazy
        :class:`ChatCompletionStream` of ``chat.completion.chunk`` dicts instead.

        Each call decodes in a new session of this model (its keywords as defaults);
        ``temperature``, ``top_p``, ``top_k``, ``min_p``, ``seed``, ``repeat_penalty``,
        ``frequency_penalty``, ``presence_penalty`` and ``logit_bias`` override them (None:
        the model's, else pardec's defaults: greedy, no penalties; see :class:`Session`).
        ``logit_bias`` maps token ids (ints, or their decimal strings as JSON has them) to
        biases; ``float("-inf")`` bans a token. ``max_tokens`` None or <= 0: up to the
        context's end. ``stop``: strings that end the answer (not included in the content;
        in auto mode they end it when the trunk writes one outside the branches).

        ``logprobs=True`` fills ``choices[0]["logprobs"]`` in OpenAI's shape: ``{"content":
        [{"token", "logprob", "bytes", "top_logprobs": [{"token", "logprob", "bytes"}]}],
        "refusal": None}``, one entry per generated token of the content, with
        ``top_logprobs`` (0 to 100, default 0) alternatives each; streamed chunks carry the
        entries of their tokens. Plain generation only (in auto mode the content interleaves
        branches and forced text).

        ``protocol`` picks the parallel part: None (the default) is
        :data:`DEFAULT_ADAPTER_PROTOCOL` when the model has a LoRA adapter (``lora_path``),
        else plain generation; :data:`PLAIN` is plain generation; any other value is a
        protocol of :meth:`Session.generate_auto` (a built-in name such as "multiverse" or a
        JSON description), whose ``max_branch_tokens`` (default 96) bounds each branch and
        ``response_prefix`` starts the answer. ``completion_tokens`` counts every sampled
        token, the branches' too.

        ``response_format`` holds the answer to JSON, as llama-cpp-python and OpenAI take it:
        ``{"type": "json_object"}`` (any one object), ``{"type": "json_object", "schema":
        {...}}`` or OpenAI's ``{"type": "json_schema", "json_schema": {"schema": {...}}}``
        (values the schema describes, converted by :func:`json_schema_grammar`), ``{"type":
        "text"}`` (no constraint); ``grammar`` is GBNF text instead. Plain generation only.

        Keywords of llama_cpp/OpenAI that pardec does not implement (``tools``,
        ``mirostat_mode``, ...) are accepted at their "off" values and raise TypeError
        otherwise; unknown keywords raise TypeError.
        """
        for name, value in kwargs.items():
            neutral = _NEUTRAL_COMPLETION_KWARGS.get(name)
            if neutral is None:
                raise TypeError(f"create_chat_completion() got an unexpected keyword argument {name!r}")
            if not any(value is n or (n is not None and type(value) in (int, float) and value == n)
                       for n in neutral):
                raise TypeError(f"create_chat_completion(): pardec does not support {name}={value!r} "
                                f"(only {' or '.join(repr(n) for n in neutral)})")
        if not isinstance(stream, bool):
            raise TypeError(f"stream must be a bool, not {type(stream).__name__}")
        if model is not None and not isinstance(model, str):
            raise TypeError(f"model must be str, not {type(model).__name__}")
        if logprobs is not None and not isinstance(logprobs, bool):
            raise TypeError(f"logprobs must be a bool, not {type(logprobs).__name__}")
        if top_logprobs is not None:
            if _c_int(top_logprobs, c_int32, "top_logprobs") < 0:
                raise ValueError(f"top_logprobs must be >= 0, not {top_logprobs}")
            if top_logprobs > 0 and not logprobs:
                raise ValueError("top_logprobs needs logprobs=True")
        prompt = self.chat(messages)
        stops = [stop] if isinstance(stop, str) else list(stop or ())
        for s in stops:
            _encode(s, "stop string")
        chosen = self._choose_protocol(protocol)
        if chosen is not None and logprobs:
            raise ValueError("logprobs apply to plain generation only (protocol=pardec.PLAIN): in auto "
                             "mode the content interleaves branches and text the protocol forces")
        gbnf = _chat_grammar(response_format, grammar)
        if chosen is not None and gbnf is not None:
            raise ValueError("response_format and grammar apply to plain generation only (protocol=pardec.PLAIN): "
                             "in auto mode the model writes the protocol's tags")
        if response_prefix is not None:
            if chosen is None:
                raise ValueError("response_prefix needs a protocol (auto mode)")
            _encode(response_prefix, "response_prefix")
        if max_tokens is not None:
            _c_int(max_tokens, ctypes.c_int64, "max_tokens")
            if max_tokens <= 0:
                max_tokens = None
        branch_tokens = 96 if max_branch_tokens is None else max_branch_tokens
        if isinstance(branch_tokens, bool) or not isinstance(branch_tokens, int) or branch_tokens < 0:
            raise ValueError(f"max_branch_tokens must be an int >= 0, not {max_branch_tokens!r}")
        session_kw = {k: v for k, v in (
            ("temperature", temperature), ("top_p", top_p), ("top_k", top_k), ("min_p", min_p),
            ("seed", seed), ("repeat_penalty", repeat_penalty), ("frequency_penalty", frequency_penalty),
            ("presence_penalty", presence_penalty),
            ("logit_bias", _chat_logit_bias(logit_bias) if logit_bias is not None else None),
            ("logprobs", (top_logprobs or 0) if logprobs else None),
        ) if v is not None}
        _SessionParams({**self._session_defaults, **session_kw})  # bad values fail now

        def entry(ev: Event) -> Optional[ChatCompletionTokenLogprob]:
            if ev.logprob is None:
                return None
            return logprob_entry(self.token_to_piece, ev.token, ev.logprob, ev.top_logprobs or ())

        entry_fn = entry if logprobs else None

        def run(on_event: Callable[[Event], bool]) -> ChatOutcome:
            return self._run_chat(prompt, session_kw, chosen, max_tokens, branch_tokens,
                                  response_prefix, stops, on_event, entry_fn, gbnf)

        request = ChatRequest(
            id=f"chatcmpl-{uuid.uuid4().hex}", created=int(time.time()),
            model=model if model is not None else self.model_path, run=run, stop=stops,
            response_prefix=response_prefix or "", logprob_entry=entry_fn)
        if stream:
            return ChatCompletionStream(request)
        return request.completion(run(lambda ev: True))

    def _choose_protocol(self, protocol: Optional[str]) -> Optional[str]:
        """The auto-mode protocol a chat completion uses (None: plain generation)."""
        if protocol is None:
            return DEFAULT_ADAPTER_PROTOCOL if self._default_adapters() else None
        if not isinstance(protocol, str):
            raise TypeError(f"protocol must be str or None, not {type(protocol).__name__}")
        if protocol == PLAIN:
            return None
        _encode(protocol, "protocol")
        return protocol

    def _run_chat(self, prompt: str, session_kw: Mapping[str, Any], protocol: Optional[str],
                  max_tokens: Optional[int], max_branch_tokens: int, response_prefix: Optional[str],
                  stops: Sequence[str], on_event: Callable[[Event], bool],
                  logprob_entry: Optional[Callable[[Event], Optional[ChatCompletionTokenLogprob]]],
                  grammar: Optional[str] = None,
                  ) -> ChatOutcome:
        """Decodes one chat completion in a new session; events go to ``on_event``;
        ``logprob_entry`` (with ``logprobs=True``) makes the trunk tokens' entries; ``grammar``
        (GBNF) constrains plain generation."""
        last_end: List[Optional[str]] = [None]
        last_stop: List[Optional[str]] = [None]
        last_piece: List[str] = [""]
        trunk_text: List[str] = []
        entries: List[ChatCompletionTokenLogprob] = []

        def watch(ev: Event) -> bool:
            if ev.is_trunk:
                if ev.kind == "end":
                    last_end[0], last_stop[0] = ev.stop_reason, ev.stop_string
                elif ev.kind == "token":
                    trunk_text.append(ev.text)
                    if ev.text:
                        last_piece[0] = ev.text
                    made = logprob_entry(ev) if logprob_entry is not None else None
                    if made is not None:
                        entries.append(made)
            return on_event(ev)

        report: Optional[Dict[str, Any]] = None
        full = False
        with Session(self, **session_kw) as s:
            s.prompt(prompt)
            prompt_tokens = s.stats().tokens_prefill
            budget = max_tokens if max_tokens is not None else max(s.n_ctx - prompt_tokens, 1)
            try:
                if protocol is None:
                    s.generate_text(max_tokens=min(budget, 2**32 - 1), stop=stops, on_event=watch,
                                    grammar=grammar)
                else:
                    report = s.generate_auto(protocol, max_tokens=budget, max_branch_tokens=max_branch_tokens,
                                             response_prefix=response_prefix, on_event=watch, stop=stops)
            except PardecError as e:
                if e.status != Status.KV_CACHE_FULL:
                    raise
                full, report = True, e.report
            text = s.result().text
            stats = s.stats()
        if text.startswith(prompt):
            content = text[len(prompt):]
        else:  # a template whose special tokens do not read back as written
            content = (response_prefix or "") + "".join(trunk_text)
        hit = False
        if last_end[0] == "stop_string" and last_stop[0] in stops:
            # The trunk's last token completed one of the stop strings (not a protocol
            # marker): the content ends before it.
            matched = last_stop[0]
            cut = _cut_matched_stop(content, matched, last_piece[0]) if matched else None
            content, hit = (cut if cut is not None else cut_at_stop(content, stops)[0]), True
        if full or (not hit and last_end[0] in ("max_tokens", "kv_cache_full")):
            finish_reason = "length"
        else:
            finish_reason = "stop"
        return ChatOutcome(content=content, finish_reason=finish_reason, prompt_tokens=prompt_tokens,
                           completion_tokens=stats.tokens_total, protocol=protocol,
                           stats=stats.as_dict(), report=report,
                           logprobs=content_logprobs(entries, len(content.encode("utf-8", "surrogatepass")))
                           if logprob_entry is not None else None)


def _chat_logit_bias(bias: Any) -> Dict[int, float]:
    """A chat completion's ``logit_bias`` with its keys as token ids: ints, or decimal strings
    (JSON object keys are strings; llama-cpp-python's server accepts them)."""
    if not isinstance(bias, Mapping):
        raise TypeError(f"logit_bias must be a mapping of token ids to biases, not {type(bias).__name__}")
    out: Dict[int, float] = {}
    for key, value in bias.items():
        if isinstance(key, str):
            try:
                token = int(key.strip())
            except ValueError:
                raise ValueError(f"logit_bias key {key!r} is not a token id") from None
        elif isinstance(key, int) and not isinstance(key, bool):
            token = key
        else:
            raise TypeError(f"logit_bias keys must be token ids (int or str), not {type(key).__name__}")
        out[token] = value
    return out


def _free_adapter(ptr: int) -> None:
    _c.lib().pardec_adapter_free(ptr)


class Adapter:
    """A GGUF LoRA adapter loaded for one model (``pardec_adapter``); apply it to sessions of
    that model with a scale. Thread-safe; sessions keep using it after it is closed."""

    def __init__(self, model: Model, path: StrPath):
        """Loads the adapter at ``path`` for ``model``."""
        out = c_void_p()
        with model._use() as mp:
            _check(_c.lib().pardec_adapter_load(mp, os.fsencode(path), byref(out)))
        self.model = model
        self.path = os.fspath(path)
        self._ptr: Optional[int] = out.value
        self._lock = threading.Lock()
        self._finalizer = weakref.finalize(self, _free_adapter, _handle(out))
        self._finalizer.atexit = False

    @contextmanager
    def _use(self) -> Iterator[int]:
        with self._lock:
            if self._ptr is None:
                raise ClosedError("adapter")
            yield self._ptr

    def close(self) -> None:
        """Releases the handle. Closing twice is allowed."""
        with self._lock:
            if self._ptr is not None:
                self._ptr = None
                self._finalizer()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._ptr is None

    def __enter__(self) -> "Adapter":
        """The adapter itself; leaving the block closes it."""
        return self

    def __exit__(self, *exc: object) -> None:
        """Closes the adapter."""
        self.close()


# ----- session -----------------------------------------------------------------------------


def _free_session(ptr: int) -> None:
    _c.lib().pardec_session_free(ptr)


class Session:
    """A decoding session (``pardec_session``): a trunk and its branches in one llama.cpp context.

    Keyword arguments override ``pardec_session_params_default()``; those not given come from
    the model's keywords (``Model(..., n_ctx=2048)``), if any. ``temperature`` <= 0 is
    greedy; sampling is reproducible for a given ``seed``. ``adapters`` None (the default):
    the model's adapter (``Model(lora_path=...)``), if any; ``[]``: none.

    Penalties and biases, as llama.cpp (and llama-cpp-python) apply them, before sampling:
    ``repeat_penalty`` (1.0: off; > 0) divides a positive logit of each token in the node's
    penalty window (multiplies a negative one), ``frequency_penalty`` is subtracted per
    occurrence in it and ``presence_penalty`` once (0: off); the window is the last
    ``penalty_last_n`` tokens the node sees (default 64; 0: no penalties; -1: the whole
    context). ``logit_bias`` maps token ids to a bias added to their logits (``float("-inf")``
    bans the token). ``logprobs`` n (0 to 100) records each generated token's
    log-probability and its step's n most likely tokens (:attr:`Event.logprob`,
    :attr:`Result.logprobs`, :meth:`completion_logprobs`); None: the model's, else off.
    These need host selection (``device_candidates`` 0); values out of range raise
    :class:`PardecError` with status INVALID_ARGUMENT.
    """

    def __init__(
        self,
        model: Model,
        *,
        n_ctx: Optional[int] = None,
        n_batch: Optional[int] = None,
        max_branches: Optional[int] = None,
        max_depth: Optional[int] = None,
        n_threads: Optional[int] = None,
        kv_type: Optional[str] = None,
        flash_attn: Optional[bool] = None,
        temperature: Optional[float] = None,
        top_k: Optional[int] = None,
        top_p: Optional[float] = None,
        min_p: Optional[float] = None,
        seed: Optional[int] = None,
        device_candidates: Optional[int] = None,
        repeat_penalty: Optional[float] = None,
        frequency_penalty: Optional[float] = None,
        presence_penalty: Optional[float] = None,
        penalty_last_n: Optional[int] = None,
        logit_bias: Optional[Mapping[int, float]] = None,
        logprobs: Optional[int] = None,
        adapters: Optional[Sequence[Tuple[Adapter, float]]] = None,
    ):
        """A new session of ``model``; see the class for the keywords."""
        explicit = {
            "n_ctx": n_ctx, "n_batch": n_batch, "max_branches": max_branches, "max_depth": max_depth,
            "n_threads": n_threads, "kv_type": kv_type, "flash_attn": flash_attn,
            "temperature": temperature, "top_k": top_k, "top_p": top_p, "min_p": min_p,
            "seed": seed, "device_candidates": device_candidates, "repeat_penalty": repeat_penalty,
            "frequency_penalty": frequency_penalty, "presence_penalty": presence_penalty,
            "penalty_last_n": penalty_last_n, "logit_bias": logit_bias, "logprobs": logprobs,
        }
        # The bias array lives in `params` until pardec_session_new has copied it.
        params = _SessionParams({**model._session_defaults, **{k: v for k, v in explicit.items() if v is not None}})
        L = _c.lib()
        out = c_void_p()
        with model._use() as mp:
            _check(L.pardec_session_new(mp, byref(params.c), byref(out)))
        self.model = model
        self._n_ctx: int = params.c.n_ctx
        self._ptr: Optional[int] = out.value
        # Held for the duration of every call. Never waited on: a second caller (another
        # thread, or a callback re-entering) gets BUSY, as from the C API.
        self._lock = threading.Lock()
        self._finalizer = weakref.finalize(self, _free_session, _handle(out))
        self._finalizer.atexit = False
        if adapters is None:
            adapters = model._default_adapters()
        if adapters:
            self.set_adapters(adapters)

    @property
    def n_ctx(self) -> int:
        """The KV cells of the session's context (its ``n_ctx`` parameter)."""
        return self._n_ctx

    @contextmanager
    def _use(self) -> Iterator[int]:
        if not self._lock.acquire(blocking=False):
            raise PardecError(Status.BUSY, "the session is in use (a call from its own callback, or another thread)")
        try:
            if self._ptr is None:
                raise ClosedError("session")
            yield self._ptr
        finally:
            self._lock.release()

    def close(self) -> None:
        """Releases the session and its context. Closing twice is allowed; closing while a
        call is running (from a callback or another thread) raises BUSY."""
        if not self._lock.acquire(blocking=False):
            raise PardecError(Status.BUSY, "cannot close the session while a call is running")
        try:
            if self._ptr is not None:
                self._ptr = None
                self._finalizer()
        finally:
            self._lock.release()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._ptr is None

    def __enter__(self) -> "Session":
        """The session itself; leaving the block closes it."""
        return self

    def __exit__(self, *exc: object) -> None:
        """Closes the session."""
        self.close()

    # --- text in ---

    def prompt(self, text: str) -> None:
        """Appends text to the trunk (special tokens in it are parsed)."""
        data = _encode(text, "text")
        with self._use() as p:
            _check(_c.lib().pardec_session_prompt(p, data))

    def append(self, text: str, node: int = TRUNK) -> None:
        """Appends text to an idle node, as if the model had written it."""
        data = _encode(text, "text")
        with self._use() as p:
            _check(_c.lib().pardec_session_append(p, _c_int(node, c_uint32, "node"), data))

    def score(self, context: Optional[str], continuation: str, node: int = TRUNK) -> List[float]:
        """The natural-log probability the model gives each token of ``continuation``, which is
        appended to ``node`` (raw logits; sampling parameters do not apply). With ``context``
        the session is cleared first and ``context`` becomes the prompt; with None the
        continuation follows what the node already holds. The continuation is tokenized on
        its own (special tokens parsed)."""
        data = _encode(continuation, "continuation")
        node = _c_int(node, c_uint32, "node")
        if context is not None:
            _encode(context, "context")  # refused before the session is cleared, not after
            self.clear()
            self.prompt(context)
        capacity = max(len(data), 1)  # every token covers at least one byte
        out = (c_float * capacity)()
        n = c_size_t()
        with self._use() as p:
            _check(_c.lib().pardec_session_score(p, node, data, out, capacity, byref(n)))
        return list(out[: n.value])

    def set_adapters(self, adapters: Sequence[Tuple[Adapter, float]]) -> None:
        """Decodes from now on with these LoRA adapters of the session's model, each at its
        scale (empty: the base model). Cells already computed keep their values: ``clear()``
        first for a clean switch."""
        items = list(adapters)
        with contextlib.ExitStack() as stack:
            ptrs = (c_void_p * max(len(items), 1))()
            scales = (c_float * max(len(items), 1))()
            for i, (adapter, scale) in enumerate(items):
                ptrs[i] = stack.enter_context(adapter._use())
                scales[i] = float(scale)
            with self._use() as p:
                _check(_c.lib().pardec_session_set_adapters(p, ptrs, scales, len(items)))

    # --- generation ---

    def generate(self, max_tokens: int = 256, stop: Sequence[str] = (), ban_eog: bool = False,
                 banned_tokens: Iterable[int] = (), strip_stop: bool = False,
                 grammar: Optional[str] = None) -> "Generation":
        """Generates on the trunk, as an iterator of :class:`Event` (token and end events),
        one decode step per batch of events. The generated text is ``.text`` once the
        iteration is over; with ``strip_stop`` it ends before the stop string that ended the
        run (the events and the session keep every token). To stop early, ``close()`` it (or
        use it as a context manager); an abandoned iterator is closed when garbage-collected.
        Closing cancels: what was decoded stays in the session, and the trunk needs appended
        text before it generates again. ``grammar``: GBNF text (root rule "root") the sampled
        tokens must follow, e.g. :func:`json_object_grammar`."""
        limits = _Limits(max_tokens, stop, ban_eog, banned_tokens, strip_stop, grammar)
        with self._use() as p:
            _check(_c.lib().pardec_session_resume(p, TRUNK, byref(limits.c)))
        return Generation(self, strip_stop=bool(strip_stop))

    def generate_text(self, max_tokens: int = 256, stop: Sequence[str] = (), ban_eog: bool = False,
                      banned_tokens: Iterable[int] = (),
                      on_event: Optional[Callable[[Event], Optional[bool]]] = None,
                      strip_stop: bool = False, grammar: Optional[str] = None) -> str:
        """Generates on the trunk in one call and returns the text. ``on_event`` (optional)
        receives every event; returning False cancels (raises :class:`Cancelled`).
        ``strip_stop``: the text ends before the stop string that ended the run, as
        llama-cpp-python returns it (the session keeps every token). ``grammar``: as in
        :meth:`generate`."""
        limits = _Limits(max_tokens, stop, ban_eog, banned_tokens, strip_stop, grammar)
        cb = _Callback(on_event)
        out = c_void_p()
        with self._use() as p:
            status = _c.lib().pardec_session_generate(p, byref(limits.c), cb.c, None, byref(out))
        cb.check(status)
        return _take_string(out)

    def generate_auto(self, protocol: str, max_tokens: int = 256, max_branch_tokens: int = 96,
                      response_prefix: Optional[str] = None,
                      on_event: Optional[Callable[[Event], Optional[bool]]] = None,
                      stop: Union[str, Sequence[str]] = ()) -> Dict[str, Any]:
        """Auto mode: the model decides when to fork, under ``protocol`` (a built-in name such
        as "multiverse", "aspd" or "apr", or a protocol description as a JSON string). Returns
        the report ``{"blocks": [...], "warnings": [...]}``; the text is in :meth:`result`.
        ``stop``: strings that end the answer when the trunk writes one itself, outside the
        branches (the trunk's end event then has stop reason "stop_string"; a string that is
        one of the protocol's own markers stays the protocol's). The session keeps the stop
        string, as :meth:`generate` does.
        When the generation stops midway (a full KV cache, a cancel, a failed decode) the
        exception's ``report`` attribute holds the report of what was done before, and the
        text so far is in :meth:`result`."""
        cb = _Callback(on_event)
        out = c_void_p()
        prefix = _encode(response_prefix, "response_prefix") if response_prefix is not None else None
        stops = _stop_strings(stop)
        with self._use() as p:
            status = _c.lib().pardec_session_generate_auto_stop(
                p, _encode(protocol, "protocol"), _c_int(max_tokens, c_size_t, "max_tokens"),
                _c_int(max_branch_tokens, c_size_t, "max_branch_tokens"), prefix,
                ctypes.cast(stops, ctypes.POINTER(c_char_p)), len(stops), cb.c, None, byref(out))
        report: Optional[Dict[str, Any]] = json.loads(_take_string(out)) if out.value else None
        try:
            cb.check(status)
        except PardecError as e:
            e.report = report
            raise
        assert report is not None  # written on success
        return report

    def generate_sot(self, question: str, skeleton_tokens: int = 0, point_tokens: int = 0,
                     on_event: Optional[Callable[[Event], Optional[bool]]] = None) -> Dict[str, Any]:
        """Skeleton-of-Thought on an empty session: the model writes a skeleton of points for
        ``question``, the points are expanded in parallel and joined. Returns
        ``{"points", "answer", "serial_fallback", "report"}`` (0 token limits: the defaults)."""
        if skeleton_tokens < 0 or point_tokens < 0:
            raise ValueError("token limits must be >= 0")
        cb = _Callback(on_event)
        out = c_void_p()
        with self._use() as p:
            status = _c.lib().pardec_session_generate_sot(
                p, _encode(question, "question"), _c_int(skeleton_tokens, c_size_t, "skeleton_tokens"),
                _c_int(point_tokens, c_size_t, "point_tokens"), cb.c, None, byref(out))
        cb.check(status)
        answer: Dict[str, Any] = json.loads(_take_string(out))
        return answer

    def fork(self, prefixes: Sequence[str], max_tokens: int = 256, stop: Sequence[str] = (),
             ban_eog: bool = False, banned_tokens: Iterable[int] = (), parent: int = TRUNK,
             grammar: Optional[str] = None) -> List[int]:
        """Forks ``parent`` into one branch per prefix; returns the branches' node ids.
        ``grammar``: GBNF text every branch's sampled tokens must follow (each branch with its
        own state; prefixes are not read by it). Without one, a branch continues a copy of the
        parent's grammar state if the parent's last run had a grammar."""
        if isinstance(prefixes, str):
            raise TypeError("prefixes must be a sequence of str, not a str")
        encoded = [_encode(s, "prefix") for s in prefixes]
        arr = (c_char_p * len(encoded))(*encoded)
        nodes = (_c.pardec_node * len(encoded))()
        limits = _Limits(max_tokens, stop, ban_eog, banned_tokens, grammar=grammar)
        with self._use() as p:
            _check(_c.lib().pardec_session_fork(p, _c_int(parent, c_uint32, "parent"), arr, len(encoded), byref(limits.c), nodes))
        return list(nodes)

    def run(self, on_event: Optional[Callable[[Event], Optional[bool]]] = None) -> None:
        """Runs every running node to its end, one batch per step. ``on_event`` (optional)
        receives every event, then a "done" event; returning False cancels (raises
        :class:`Cancelled`, the branches stop with reason "cancelled" and can be joined)."""
        cb = _Callback(on_event)
        with self._use() as p:
            status = _c.lib().pardec_session_run(p, cb.c, None)
        cb.check(status)

    def run_iter(self) -> "Generation":
        """Like :meth:`run`, as an iterator of events (no "done" event)."""
        return Generation(self)

    def resume(self, node: int = TRUNK, max_tokens: int = 256, stop: Sequence[str] = (),
               ban_eog: bool = False, banned_tokens: Iterable[int] = ()) -> None:
        """Starts generation on an idle node without decoding; :meth:`step`/:meth:`run` advance it."""
        limits = _Limits(max_tokens, stop, ban_eog, banned_tokens)
        with self._use() as p:
            _check(_c.lib().pardec_session_resume(p, _c_int(node, c_uint32, "node"), byref(limits.c)))

    def step(self, on_event: Optional[Callable[[Event], Optional[bool]]] = None) -> bool:
        """Decodes one step of every running node; False when nothing was running."""
        cb = _Callback(on_event)
        running = c_bool(False)
        with self._use() as p:
            status = _c.lib().pardec_session_step(p, cb.c, None, byref(running))
        cb.check(status)
        return running.value

    def join(self, keep: Union[None, str, Sequence[int]] = None, text: Optional[str] = None,
             parent: int = TRUNK, rule: str = "same-max") -> None:
        """Joins ``parent``'s open block. ``keep``: None or "all" keeps every branch,
        "discard" none, a sequence of indices those branches. ``text`` is appended after.
        ``rule``: how the parent reads the kept branches back: "same-max" (continue at the
        longest branch's end + 1), "same-seq" (at the fork position + every branch's length;
        needs ``text``) or "reprefill" (read them again as one serial text)."""
        if rule not in _JOIN_RULES:
            raise ValueError(f"rule must be one of {', '.join(_JOIN_RULES)}")
        indices: Sequence[int] = ()
        if keep is None or keep == "all":
            mode = _JOIN_ALL
        elif keep == "discard":
            mode = _JOIN_DISCARD
        elif isinstance(keep, str):
            raise ValueError('keep must be None, "all", "discard" or a sequence of indices')
        else:
            mode, indices = _JOIN_KEEP, list(keep)
            if any(i < 0 for i in indices):
                raise ValueError("branch indices must be >= 0")
        arr = (c_size_t * len(indices))(*[_c_int(i, c_size_t, "branch index") for i in indices])
        data = _encode(text, "text") if text is not None else None
        with self._use() as p:
            _check(_c.lib().pardec_session_join_rule(p, _c_int(parent, c_uint32, "parent"), mode, arr, len(indices), _JOIN_RULES[rule], data))

    # --- results ---

    def result(self) -> Result:
        """A snapshot of the text, every block's branches, and the statistics."""
        L = _c.lib()
        r = c_void_p()
        with self._use() as p:
            _check(L.pardec_session_result(p, byref(r)))
        try:
            text = c_char_p()
            _check(L.pardec_result_text(r, byref(text)))
            n = c_size_t()
            _check(L.pardec_result_n_blocks(r, byref(n)))
            blocks = []
            for b in range(n.value):
                bi = _c.pardec_block_info()
                _check(L.pardec_result_block(r, b, byref(bi), sizeof(bi)))
                branches = []
                for i in range(bi.n_branches):
                    br = _c.pardec_branch_info()
                    _check(L.pardec_result_branch(r, b, i, byref(br), sizeof(br)))
                    branches.append(Branch(
                        label=br.label.decode(), text=br.text.decode("utf-8", "replace"),
                        n_tokens=br.n_tokens, stop_reason=_STOP_REASONS.get(br.stop_reason),
                        stop_string=br.stop_string.decode("utf-8", "replace") if br.stop_string else None,
                        kept=bool(br.kept), node=br.node))
                blocks.append(Block(parent_label=bi.parent_label.decode(), fork_pos=bi.fork_pos,
                                    join_state=_JOIN_STATES.get(bi.join_state, str(bi.join_state)),
                                    branches=branches))
            st = _c.pardec_stats()
            _check(L.pardec_result_stats(r, byref(st), sizeof(st)))
            nodes = [TRUNK] + [br.node for bl in blocks for br in bl.branches]
            return Result(text=(text.value or b"").decode("utf-8", "replace"), blocks=blocks,
                          stats=Stats._from_c(st), logprobs={n: _result_logprobs(r, n) for n in nodes})
        finally:
            L.pardec_result_free(r)

    def logprobs(self, node: int = TRUNK) -> List[TokenLogprob]:
        """The log-probabilities of the tokens ``node`` generated so far, in order (empty in a
        session without ``logprobs``, or for a node that generated nothing or is unknown)."""
        node = _c_int(node, c_uint32, "node")
        L = _c.lib()
        r = c_void_p()
        with self._use() as p:
            _check(L.pardec_session_result(p, byref(r)))
        try:
            return _result_logprobs(r, node)
        finally:
            L.pardec_result_free(r)

    def completion_logprobs(self, node: int = TRUNK) -> Dict[str, Any]:
        """The log-probabilities of the tokens ``node`` generated, in the shape of the
        ``logprobs`` of llama-cpp-python's ``create_completion``: ``{"tokens": [piece],
        "text_offset": [int], "token_logprobs": [float], "top_logprobs": [{piece: logprob}]}``.

        A piece is the token's text (:meth:`Model.token_to_piece` decoded as UTF-8, bytes of a
        split character dropped, as llama-cpp-python does). ``text_offset`` counts characters,
        but from the start of the node's generated text (its generated tokens' pieces joined),
        not of the prompt as llama-cpp-python's does: for the trunk after one generation, an
        index into what :meth:`generate_text` returned. Each ``top_logprobs`` dict holds the
        step's most likely tokens and, as llama-cpp-python's, the chosen token itself. Needs a
        session made with ``logprobs`` (else every list is empty) and its model open."""
        return _completion_logprobs(self.model, self.logprobs(node))

    def stats(self) -> Stats:
        """The statistics since creation, :meth:`clear` or :meth:`reset_stats`."""
        st = _c.pardec_stats()
        with self._use() as p:
            _check(_c.lib().pardec_session_stats(p, byref(st), sizeof(st)))
        return Stats._from_c(st)

    def clear(self) -> None:
        """Forgets everything (KV cache, branches, statistics)."""
        with self._use() as p:
            _check(_c.lib().pardec_session_clear(p))

    def reset_stats(self) -> None:
        """Starts the statistics afresh (the KV cache and the branches stay)."""
        with self._use() as p:
            _check(_c.lib().pardec_session_reset_stats(p))


class Generation:
    """Iterator over the events of running nodes, one decode step at a time (see
    :meth:`Session.generate` and :meth:`Session.run_iter`). ``text`` accumulates the trunk's
    generated text. ``close()`` before the end cancels the running nodes; until then a
    half-consumed iterator just pauses them (another ``run()`` would finish them)."""

    def __init__(self, session: Session, strip_stop: bool = False):
        """Iterates the running nodes of ``session`` (use Session.generate or run_iter);
        ``strip_stop``: ``text`` loses the stop string that ends the trunk's run."""
        self._session = session
        self._pending: List[Event] = []
        self._finished = False
        self._strip_stop = strip_stop
        self._last_piece = ""
        self.text = ""

    def __iter__(self) -> "Generation":
        """The generation itself."""
        return self

    def __next__(self) -> Event:
        """The next event, decoding a step when none is pending."""
        while not self._pending:
            if self._finished:
                raise StopIteration
            try:
                running = self._session.step(self._pending.append)
            except BaseException:
                # The nodes stopped (cancelled, KV cache full, ...): nothing left to close.
                self._finished = True
                raise
            if not running:
                self._finished = True
        ev = self._pending.pop(0)
        if ev.kind == "token" and ev.is_trunk:
            self.text += ev.text
            if ev.text:
                self._last_piece = ev.text
        elif ev.kind == "end" and ev.is_trunk and self._strip_stop and ev.stop_string:
            # None: the stop began before the run, so none of the run's text comes before it.
            self.text = _cut_matched_stop(self.text, ev.stop_string, self._last_piece) or ""
        return ev

    def close(self) -> None:
        """Cancels what is still running (one more step is decoded and dropped)."""
        if self._finished:
            return
        self._finished = True
        self._pending.clear()
        if self._session.closed:
            return
        try:
            self._session.step(lambda ev: False)
        except Cancelled:
            pass

    def __enter__(self) -> "Generation":
        """The generation itself; leaving the block closes it."""
        return self

    def __exit__(self, *exc: object) -> None:
        """Closes the generation."""
        self.close()

    def __del__(self) -> None:
        """Stops the nodes of an abandoned iterator (not at interpreter exit)."""
        if not sys.is_finalizing() and not self._finished:
            try:
                self.close()
            except Exception:
                pass
