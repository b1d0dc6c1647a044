"""pardec: parallel decoding of independent branches on llama.cpp, from Python.

A pure-ctypes wrapper of pardec's C API (include/pardec.h); no compiled code of its own. It
finds libpardec next to this package, in the cargo target dir of a source checkout, or at
``$PARDEC_LIB``.

    from pardec import Model, Session

    with Model("SmolLM2-135M-Instruct.Q4_1.gguf") as model, Session(model, n_ctx=1024) as s:
        s.prompt(model.chat([("user", "Name three fruits.")]))
        s.fork(["1.", "2.", "3."], max_tokens=24, stop=["\\n"])
        for ev in s.run_iter():            # tokens of all branches, interleaved, as decoded
            print(ev.label, ev.text)
        s.join(text="\\nIn short,")
        print("".join(ev.text for ev in s.generate(max_tokens=24)))
        print(s.result().text, s.stats())

Threads: a Model may be shared by sessions on any number of threads; a Session is used by one
thread at a time (a call while it is busy raises PardecError with status BUSY). Callbacks run
on the calling thread, before the call returns.
"""

from __future__ import annotations

import ctypes
import enum
import os
import sys
import threading
import weakref
import contextlib
from contextlib import contextmanager
from ctypes import byref, c_bool, c_char_p, c_float, c_int32, c_size_t, c_uint32, c_uint64, c_void_p, sizeof
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

from . import _lib as _c
from ._lib import LibraryNotFoundError, candidate_paths

__all__ = [
    "TRUNK", "Status", "PardecError", "Cancelled", "ClosedError", "LibraryNotFoundError",
    "Event", "Stats", "Branch", "Block", "Result", "Model", "Adapter", "Session", "Generation",
    "version", "candidate_paths",
]

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


_STOP_REASONS = {0: None, 1: "eog", 2: "max_tokens", 3: "stop_string", 4: "kv_cache_full", 5: "cancelled"}
_EVENT_KINDS = {0: "token", 1: "end", 2: "done", 3: "fork", 4: "join", 5: "warning"}
_JOIN_STATES = {0: "open", 1: "all", 2: "keep", 3: "discard"}
_JOIN_ALL, _JOIN_KEEP, _JOIN_DISCARD = 0, 1, 2
#: pardec_join_rule values by the names the CLI and protocol JSON use.
_JOIN_RULES = {"same-max": 0, "same-seq": 1, "reprefill": 2}
_KV_TYPES = {"f16": 0, "f32": 1}


class PardecError(Exception):
    """A pardec call failed: ``status`` is a :class:`Status`, ``message`` the library's detail."""

    def __init__(self, status: Union[Status, int], message: str = ""):
        try:
            status = Status(status)
        except ValueError:
            pass
        self.status = status
        self.message = message
        # generate_auto: what the generation did before it stopped midway (else None).
        self.report: Optional[dict] = None
        name = status.name if isinstance(status, Status) else str(status)
        super().__init__(f"{name}: {message}" if message else name)


class Cancelled(PardecError):
    """A callback returned False (or raised: the exception is chained as ``__cause__``). The
    session stays usable."""


class ClosedError(PardecError, ValueError):
    """The object was closed."""

    def __init__(self, what: str):
        super().__init__(Status.INVALID_STATE, f"{what} is closed")


def _check(status: int) -> None:
    if status != Status.OK:
        message = (_c.lib().pardec_last_error() or b"").decode("utf-8", "replace")
        cls = Cancelled if status == Status.CANCELLED else PardecError
        raise cls(status, message)


def version() -> str:
    """The loaded library's version (``pardec_version()``)."""
    return _c.lib().pardec_version().decode()


def _take_string(ptr: c_void_p) -> str:
    """Copies a ``char *`` returned by pardec and releases it with pardec_string_free."""
    try:
        return ctypes.string_at(ptr.value).decode("utf-8", "replace") if ptr.value else ""
    finally:
        _c.lib().pardec_string_free(ptr)


def _encode(text: str, what: str) -> bytes:
    if not isinstance(text, str):
        raise TypeError(f"{what} must be str, not {type(text).__name__}")
    # A C string ends at its first NUL: the rest would be dropped without a word (a stop
    # string "\0" would silently never stop).
    if "\0" in text:
        raise ValueError(f"{what} contains a NUL character, which a C string cannot hold")
    # Surrogates (e.g. from os.fsdecode) cannot be UTF-8: the library would refuse them anyway.
    return text.encode("utf-8", "surrogatepass")


def _c_int(value: int, ctype, what: str) -> int:
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
    status: Status = Status.OK  # done: the call's status

    @property
    def is_trunk(self) -> bool:
        return self.label == ""


def _event_from_c(ev: _c.pardec_event) -> Event:
    def s(p: Optional[int]) -> Optional[str]:
        return ctypes.string_at(p).decode("utf-8", "replace") if p else None

    text = ctypes.string_at(ev.text, ev.text_len).decode("utf-8", "replace") if ev.text_len else ""
    try:
        status = Status(ev.status)
    except ValueError:
        status = ev.status
    return Event(
        kind=_EVENT_KINDS.get(ev.kind, str(ev.kind)),
        node=ev.node,
        label=s(ev.label) or "",
        text=text,
        token=ev.token,
        stop_reason=_STOP_REASONS.get(ev.stop_reason),
        stop_string=s(ev.stop_string),
        status=status,
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
        return cls(**{name: getattr(s, name) for name, _ in _c.pardec_stats._fields_})


@dataclass(frozen=True)
class Branch:
    label: str
    text: str  # prefix + generated text (+ its own joined blocks)
    n_tokens: int
    stop_reason: Optional[str]
    stop_string: Optional[str]
    kept: bool  # whether the parent attends to it


@dataclass(frozen=True)
class Block:
    parent_label: str
    fork_pos: int
    join_state: str  # "open", "all", "keep" or "discard"
    branches: List[Branch] = field(default_factory=list)


@dataclass(frozen=True)
class Result:
    """A snapshot of a session (``pardec_result``), copied into Python objects."""

    text: str
    blocks: List[Block]
    stats: Stats


# ----- run limits ----------------------------------------------------------------------------


class _Limits:
    """A ``pardec_run_limits`` plus the arrays it points to, alive as long as this object."""

    def __init__(self, max_tokens: int, stop: Sequence[str], ban_eog: bool, banned_tokens: Sequence[int]):
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


# ----- callbacks -----------------------------------------------------------------------------


class _Callback:
    """A C callback around a Python function. The ctypes function object lives as long as this
    object, which each call keeps referenced until the C function returns. An exception in the
    Python function cancels the call and is re-raised afterwards."""

    def __init__(self, fn: Optional[Callable[[Event], Optional[bool]]]):
        self.fn = fn
        self.error: Optional[BaseException] = None
        self.c = _c.pardec_callback(self._call) if fn is not None else _c.pardec_callback()

    def _call(self, _user_data, ev_ptr) -> bool:
        if self.error is not None:
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


# ----- model -------------------------------------------------------------------------------


def _free_model(ptr: int) -> None:
    _c.lib().pardec_model_free(ptr)


class Model:
    """A loaded GGUF model (``pardec_model``). Thread-safe; close it when done (sessions keep
    working after their model is closed: they hold their own reference)."""

    def __init__(self, path: Union[str, "os.PathLike[str]"], n_gpu_layers: Optional[int] = None):
        L = _c.lib()
        params = _c.pardec_model_params()
        _check(L.pardec_model_params_default(byref(params), sizeof(params)))
        if n_gpu_layers is not None:
            params.n_gpu_layers = _c_int(n_gpu_layers, c_int32, "n_gpu_layers")
        out = c_void_p()
        _check(L.pardec_model_load(os.fsencode(path), byref(params), byref(out)))
        self._ptr: Optional[int] = out.value
        self._lock = threading.Lock()
        # Frees the model if it is garbage-collected unclosed; never at interpreter exit,
        # where freeing buys nothing and C code must not run during teardown.
        self._finalizer = weakref.finalize(self, _free_model, out.value)
        self._finalizer.atexit = False

    @contextmanager
    def _use(self) -> Iterator[int]:
        with self._lock:
            if self._ptr is None:
                raise ClosedError("model")
            yield self._ptr

    def close(self) -> None:
        """Releases the model. Closing twice is allowed."""
        with self._lock:
            if self._ptr is not None:
                self._ptr = None
                self._finalizer()

    @property
    def closed(self) -> bool:
        return self._ptr is None

    def __enter__(self) -> "Model":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def n_vocab(self) -> int:
        n = c_size_t()
        with self._use() as p:
            _check(_c.lib().pardec_model_n_vocab(p, byref(n)))
        return n.value

    @property
    def architecture(self) -> str:
        out = c_void_p()
        with self._use() as p:
            _check(_c.lib().pardec_model_architecture(p, byref(out)))
        return _take_string(out)

    def chat(self, messages: Sequence[Tuple[str, str]]) -> str:
        """Formats (role, content) pairs with the model's chat template, assistant turn opened."""
        encoded = [(_encode(r, "role"), _encode(c, "content")) for r, c in messages]
        arr = (_c.pardec_chat_message * len(encoded))(*[_c.pardec_chat_message(r, c) for r, c in encoded])
        out = c_void_p()
        with self._use() as p:
            _check(_c.lib().pardec_model_apply_chat_template(p, arr, len(encoded), byref(out)))
        return _take_string(out)


def _free_adapter(ptr: int) -> None:
    _c.lib().pardec_adapter_free(ptr)


class Adapter:
    """A GGUF LoRA adapter loaded for one model (``pardec_adapter``); apply it to sessions of
    that model with a scale. Thread-safe; sessions keep using it after it is closed."""

    def __init__(self, model: Model, path: Union[str, "os.PathLike[str]"]):
        out = c_void_p()
        with model._use() as mp:
            _check(_c.lib().pardec_adapter_load(mp, os.fsencode(path), byref(out)))
        self.model = model
        self.path = os.fspath(path)
        self._ptr: Optional[int] = out.value
        self._lock = threading.Lock()
        self._finalizer = weakref.finalize(self, _free_adapter, out.value)
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
        return self._ptr is None

    def __enter__(self) -> "Adapter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ----- session -----------------------------------------------------------------------------


def _free_session(ptr: int) -> None:
    _c.lib().pardec_session_free(ptr)


class Session:
    """A decoding session (``pardec_session``): a trunk and its branches in one llama.cpp context.

    Keyword arguments override ``pardec_session_params_default()``. ``temperature`` <= 0 is
    greedy; sampling is reproducible for a given ``seed``.
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
        adapters: Sequence[Tuple[Adapter, float]] = (),
    ):
        L = _c.lib()
        p = _c.pardec_session_params()
        _check(L.pardec_session_params_default(byref(p), sizeof(p)))
        for name, value in (("n_ctx", n_ctx), ("n_batch", n_batch), ("max_branches", max_branches),
                            ("max_depth", max_depth), ("n_threads", n_threads),
                ("device_candidates", device_candidates)):
            if value is not None:
                if isinstance(value, int) and not isinstance(value, bool) and value < 0:
                    raise ValueError(f"{name} must be >= 0")
                setattr(p, name, _c_int(value, c_uint32, name))
        if kv_type is not None:
            if kv_type not in _KV_TYPES:
                raise ValueError(f"kv_type must be one of {sorted(_KV_TYPES)}")
            p.kv_type = _KV_TYPES[kv_type]
        if flash_attn is not None:
            p.flash_attn = 1 if flash_attn else 0
        for name, value in (("temperature", temperature), ("top_p", top_p), ("min_p", min_p)):
            if value is not None:
                setattr(p.sampling, name, value)
        if top_k is not None:
            p.sampling.top_k = _c_int(top_k, c_uint32, "top_k")
        if seed is not None:
            p.sampling.seed = _c_int(seed, c_uint64, "seed")
        out = c_void_p()
        with model._use() as mp:
            _check(L.pardec_session_new(mp, byref(p), byref(out)))
        self.model = model
        self._ptr: Optional[int] = out.value
        # Held for the duration of every call. Never waited on: a second caller (another
        # thread, or a callback re-entering) gets BUSY, as from the C API.
        self._lock = threading.Lock()
        self._finalizer = weakref.finalize(self, _free_session, out.value)
        self._finalizer.atexit = False
        if adapters:
            self.set_adapters(adapters)

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
        return self._ptr is None

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc) -> None:
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
                 banned_tokens: Iterable[int] = ()) -> "Generation":
        """Generates on the trunk, as an iterator of :class:`Event` (token and end events),
        one decode step per batch of events. The generated text is ``.text`` once the
        iteration is over. To stop early, ``close()`` it (or use it as a context manager); an
        abandoned iterator is closed when garbage-collected. Closing cancels: what was decoded
        stays in the session, and the trunk needs appended text before it generates again."""
        limits = _Limits(max_tokens, stop, ban_eog, banned_tokens)
        with self._use() as p:
            _check(_c.lib().pardec_session_resume(p, TRUNK, byref(limits.c)))
        return Generation(self)

    def generate_text(self, max_tokens: int = 256, stop: Sequence[str] = (), ban_eog: bool = False,
                      banned_tokens: Iterable[int] = (),
                      on_event: Optional[Callable[[Event], Optional[bool]]] = None) -> str:
        """Generates on the trunk in one call and returns the text. ``on_event`` (optional)
        receives every event; returning False cancels (raises :class:`Cancelled`)."""
        limits = _Limits(max_tokens, stop, ban_eog, banned_tokens)
        cb = _Callback(on_event)
        out = c_void_p()
        with self._use() as p:
            status = _c.lib().pardec_session_generate(p, byref(limits.c), cb.c, None, byref(out))
        cb.check(status)
        return _take_string(out)

    def generate_auto(self, protocol: str, max_tokens: int = 256, max_branch_tokens: int = 96,
                      response_prefix: Optional[str] = None,
                      on_event: Optional[Callable[[Event], Optional[bool]]] = None) -> dict:
        """Auto mode: the model decides when to fork, under ``protocol`` (a built-in name such
        as "multiverse", "aspd" or "apr", or a protocol description as a JSON string). Returns
        the report ``{"blocks": [...], "warnings": [...]}``; the text is in :meth:`result`.
        When the generation stops midway (a full KV cache, a cancel, a failed decode) the
        exception's ``report`` attribute holds the report of what was done before, and the
        text so far is in :meth:`result`."""
        import json
        cb = _Callback(on_event)
        out = c_void_p()
        prefix = _encode(response_prefix, "response_prefix") if response_prefix is not None else None
        with self._use() as p:
            status = _c.lib().pardec_session_generate_auto(
                p, _encode(protocol, "protocol"), _c_int(max_tokens, c_size_t, "max_tokens"),
                _c_int(max_branch_tokens, c_size_t, "max_branch_tokens"), prefix, cb.c, None, byref(out))
        report = json.loads(_take_string(out)) if out.value else None
        try:
            cb.check(status)
        except PardecError as e:
            e.report = report
            raise
        return report

    def generate_sot(self, question: str, skeleton_tokens: int = 0, point_tokens: int = 0,
                     on_event: Optional[Callable[[Event], Optional[bool]]] = None) -> dict:
        """Skeleton-of-Thought on an empty session: the model writes a skeleton of points for
        ``question``, the points are expanded in parallel and joined. Returns
        ``{"points", "answer", "serial_fallback", "report"}`` (0 token limits: the defaults)."""
        import json
        if skeleton_tokens < 0 or point_tokens < 0:
            raise ValueError("token limits must be >= 0")
        cb = _Callback(on_event)
        out = c_void_p()
        with self._use() as p:
            status = _c.lib().pardec_session_generate_sot(
                p, _encode(question, "question"), _c_int(skeleton_tokens, c_size_t, "skeleton_tokens"),
                _c_int(point_tokens, c_size_t, "point_tokens"), cb.c, None, byref(out))
        cb.check(status)
        return json.loads(_take_string(out))

    def fork(self, prefixes: Sequence[str], max_tokens: int = 256, stop: Sequence[str] = (),
             ban_eog: bool = False, banned_tokens: Iterable[int] = (), parent: int = TRUNK) -> List[int]:
        """Forks ``parent`` into one branch per prefix; returns the branches' node ids."""
        if isinstance(prefixes, str):
            raise TypeError("prefixes must be a sequence of str, not a str")
        encoded = [_encode(s, "prefix") for s in prefixes]
        arr = (c_char_p * len(encoded))(*encoded)
        nodes = (_c.pardec_node * len(encoded))()
        limits = _Limits(max_tokens, stop, ban_eog, banned_tokens)
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
                        kept=bool(br.kept)))
                blocks.append(Block(parent_label=bi.parent_label.decode(), fork_pos=bi.fork_pos,
                                    join_state=_JOIN_STATES.get(bi.join_state, str(bi.join_state)),
                                    branches=branches))
            st = _c.pardec_stats()
            _check(L.pardec_result_stats(r, byref(st), sizeof(st)))
            return Result(text=(text.value or b"").decode("utf-8", "replace"), blocks=blocks,
                          stats=Stats._from_c(st))
        finally:
            L.pardec_result_free(r)

    def stats(self) -> Stats:
        st = _c.pardec_stats()
        with self._use() as p:
            _check(_c.lib().pardec_session_stats(p, byref(st), sizeof(st)))
        return Stats._from_c(st)

    def clear(self) -> None:
        """Forgets everything (KV cache, branches, statistics)."""
        with self._use() as p:
            _check(_c.lib().pardec_session_clear(p))

    def reset_stats(self) -> None:
        with self._use() as p:
            _check(_c.lib().pardec_session_reset_stats(p))

    # Reserved: auto mode (the model decides when to fork, e.g. Multiverse's protocol) will
    # wrap pardec_session_generate_auto once the C API has it.


class Generation:
    """Iterator over the events of running nodes, one decode step at a time (see
    :meth:`Session.generate` and :meth:`Session.run_iter`). ``text`` accumulates the trunk's
    generated text. ``close()`` before the end cancels the running nodes; until then a
    half-consumed iterator just pauses them (another ``run()`` would finish them)."""

    def __init__(self, session: Session):
        self._session = session
        self._pending: List[Event] = []
        self._finished = False
        self.text = ""

    def __iter__(self) -> "Generation":
        return self

    def __next__(self) -> Event:
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
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        # Not at interpreter exit; otherwise an abandoned iterator stops its nodes.
        if not sys.is_finalizing() and not self._finished:
            try:
                self.close()
            except Exception:
                pass
