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
    ChatCompletionStream,
    ChatMessage,
    ChatOutcome,
    ChatRequest,
    CompletionUsage,
    MessageLike,
    PardecInfo,
    cut_at_stop,
    normalize_messages,
)
from ._lib import LibraryNotFoundError, LibraryVersionWarning, candidate_paths

__all__ = [
    "TRUNK", "Status", "PardecError", "Cancelled", "ClosedError", "LibraryNotFoundError",
    "LibraryVersionWarning", "Event", "Stats", "Branch", "Block", "Result", "Model", "Adapter",
    "Session", "Generation", "version", "library_path", "candidate_paths",
    "ChatCompletionStream", "ChatCompletion", "ChatCompletionChunk", "ChatCompletionChoice",
    "ChatCompletionChunkChoice", "ChatCompletionDelta", "ChatMessage", "CompletionUsage",
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

    @property
    def is_trunk(self) -> bool:
        """Whether the event is the trunk's (label "")."""
        return self.label == ""


def _event_from_c(ev: _c.pardec_event) -> Event:
    """Copies a C event (valid only during the callback) into an Event."""
    def s(p: Optional[int]) -> Optional[str]:
        return ctypes.string_at(p).decode("utf-8", "replace") if p else None

    text = ctypes.string_at(ev.text, ev.text_len).decode("utf-8", "replace") if ev.text_len else ""
    status = _as_status(ev.status)
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


@dataclass(frozen=True)
class Block:
    """One block (a fork and its join) of a :class:`Result`."""

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

    def __init__(self, max_tokens: int, stop: Union[str, Sequence[str]], ban_eog: bool,
                 banned_tokens: Iterable[int]):
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


def _session_params(kw: Mapping[str, Any]) -> _c.pardec_session_params:
    """``pardec_session_params_default()`` with the values of ``kw`` that are not None applied
    (the keywords of :class:`Session`), each checked against its C type."""
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
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"{name} must be a number, not {type(value).__name__}")
            setattr(p.sampling, name, value)
    top_k = kw.get("top_k")
    if top_k is not None:
        p.sampling.top_k = _c_int(top_k, c_uint32, "top_k")
    seed = kw.get("seed")
    if seed is not None:
        p.sampling.seed = _c_int(seed, c_uint64, "seed")
    return p


# ----- model -------------------------------------------------------------------------------


def _free_model(ptr: int) -> None:
    _c.lib().pardec_model_free(ptr)


#: ``llama_cpp.Llama`` keywords pardec has no counterpart for, and what to do instead.
_LLAMA_CPP_MODEL_KWARGS: Dict[str, str] = {
    **{k: "" for k in (
        "split_mode", "main_gpu", "tensor_split", "rpc_servers", "vocab_only", "use_mmap",
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
    "response_format": (None,), "grammar": (None,), "logits_processor": (None,),
    "stopping_criteria": (None,), "logit_bias": (None,), "logprobs": (None, False),
    "top_logprobs": (None, 0), "typical_p": (None, 1.0), "tfs_z": (None, 1.0),
    "presence_penalty": (None, 0.0), "frequency_penalty": (None, 0.0),
    "repeat_penalty": (None, 1.0), "mirostat_mode": (None, 0), "mirostat_tau": (None, 5.0),
    "mirostat_eta": (None, 0.1), "n": (None, 1), "user": (None,), "stream_options": (None,),
}


class Model:
    """A loaded GGUF model (``pardec_model``). Thread-safe; close it when done (sessions keep
    working after their model is closed: they hold their own reference).

    Takes the keywords of ``llama_cpp.Llama`` that pardec has: ``model_path`` (or the path as
    the first argument), ``n_gpu_layers``, and for the sessions made from it — by
    :meth:`create_chat_completion`, or ``Session(model)`` for what a Session is not given —
    ``n_ctx``, ``n_batch``, ``n_threads``, ``seed``, ``flash_attn``, ``lora_path`` and
    ``lora_scale`` (the LoRA adapter every session decodes with), plus pardec's own session
    keywords (``max_branches``, ``max_depth``, ``kv_type``, ``temperature``, ``top_k``,
    ``top_p``, ``min_p``, ``device_candidates``; see :class:`Session`). ``verbose`` must be
    False: llama.cpp's log is shown with ``PARDEC_LLAMA_LOG=1`` instead. Any other keyword
    raises TypeError (saying so for llama_cpp keywords pardec has no counterpart for).
    """

    def __init__(
        self,
        path: Optional[StrPath] = None,
        n_gpu_layers: Optional[int] = None,
        *,
        model_path: Optional[StrPath] = None,
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
            "min_p": min_p, "device_candidates": device_candidates,
        }
        self._session_defaults: Dict[str, Any] = {k: v for k, v in defaults.items() if v is not None}
        _session_params(self._session_defaults)  # a bad value fails now, not at the first session
        L = _c.lib()
        params = _c.pardec_model_params()
        _check(L.pardec_model_params_default(byref(params), sizeof(params)))
        if n_gpu_layers is not None:
            params.n_gpu_layers = _c_int(n_gpu_layers, c_int32, "n_gpu_layers")
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
        **kwargs: Any,
    ) -> Union[ChatCompletion, ChatCompletionStream]:
        """Answers a chat, as ``llama_cpp.Llama.create_chat_completion`` and OpenAI's API do.

        ``messages``: OpenAI-style dicts ``{"role": ..., "content": ...}`` or ``(role,
        content)`` tuples (see :meth:`chat`). Returns the ``chat.completion`` dict (``id``,
        ``object``, ``created``, ``model``, ``choices[0]`` with ``message`` and
        ``finish_reason`` "stop" or "length", ``usage``), plus ``"pardec"``: the protocol used,
        the session's statistics (:class:`Stats` as a dict: ``dp``, ``abn``, ``parallel``, ...)
        and auto mode's report. With ``stream=True`` it returns a lazy
        :class:`ChatCompletionStream` of ``chat.completion.chunk`` dicts instead.

        Each call decodes in a new session of this model (its keywords as defaults);
        ``temperature``, ``top_p``, ``top_k``, ``min_p`` and ``seed`` override them (None: the
        model's, else pardec's defaults: greedy). ``max_tokens`` None or <= 0: up to the
        context's end. ``stop``: strings that end the answer (not included in the content;
        plain generation only).

        ``protocol`` picks the parallel part: None (the default) is
        :data:`DEFAULT_ADAPTER_PROTOCOL` when the model has a LoRA adapter (``lora_path``),
        else plain generation; :data:`PLAIN` is plain generation; any other value is a
        protocol of :meth:`Session.generate_auto` (a built-in name such as "multiverse" or a
        JSON description), whose ``max_branch_tokens`` (default 96) bounds each branch and
        ``response_prefix`` starts the answer. ``completion_tokens`` counts every sampled
        token, the branches' too.

        Keywords of llama_cpp/OpenAI that pardec does not implement (``tools``,
        ``presence_penalty``, ``logprobs``, ...) are accepted at their "off" values and raise
        TypeError otherwise; unknown keywords raise TypeError.
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
        prompt = self.chat(messages)
        stops = [stop] if isinstance(stop, str) else list(stop or ())
        for s in stops:
            _encode(s, "stop string")
        chosen = self._choose_protocol(protocol)
        if chosen is not None and stops:
            raise ValueError("stop strings apply to plain generation only (protocol=pardec.PLAIN): "
                             "in auto mode the protocol decides where the answer ends")
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
        sampling = {k: v for k, v in (("temperature", temperature), ("top_p", top_p), ("top_k", top_k),
                                      ("min_p", min_p), ("seed", seed)) if v is not None}
        _session_params({**self._session_defaults, **sampling})  # bad values fail now

        def run(on_event: Callable[[Event], bool]) -> ChatOutcome:
            return self._run_chat(prompt, sampling, chosen, max_tokens, branch_tokens,
                                  response_prefix, stops, on_event)

        request = ChatRequest(
            id=f"chatcmpl-{uuid.uuid4().hex}", created=int(time.time()),
            model=model if model is not None else self.model_path, run=run, stop=stops,
            response_prefix=response_prefix or "")
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

    def _run_chat(self, prompt: str, sampling: Mapping[str, Any], protocol: Optional[str],
                  max_tokens: Optional[int], max_branch_tokens: int, response_prefix: Optional[str],
                  stops: Sequence[str], on_event: Callable[[Event], bool]) -> ChatOutcome:
        """Decodes one chat completion in a new session; events go to ``on_event``."""
        last_end: List[Optional[str]] = [None]
        trunk_text: List[str] = []

        def watch(ev: Event) -> bool:
            if ev.is_trunk:
                if ev.kind == "end":
                    last_end[0] = ev.stop_reason
                elif ev.kind == "token":
                    trunk_text.append(ev.text)
            return on_event(ev)

        report: Optional[Dict[str, Any]] = None
        full = False
        with Session(self, **sampling) as s:
            s.prompt(prompt)
            prompt_tokens = s.stats().tokens_prefill
            budget = max_tokens if max_tokens is not None else max(s.n_ctx - prompt_tokens, 1)
            try:
                if protocol is None:
                    s.generate_text(max_tokens=min(budget, 2**32 - 1), stop=stops, on_event=watch)
                else:
                    report = s.generate_auto(protocol, max_tokens=budget, max_branch_tokens=max_branch_tokens,
                                             response_prefix=response_prefix, on_event=watch)
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
        content, hit = cut_at_stop(content, stops)
        if full or (not hit and last_end[0] in ("max_tokens", "kv_cache_full")):
            finish_reason = "length"
        else:
            finish_reason = "stop"
        return ChatOutcome(content=content, finish_reason=finish_reason, prompt_tokens=prompt_tokens,
                           completion_tokens=stats.tokens_total, protocol=protocol,
                           stats=stats.as_dict(), report=report)


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
        adapters: Optional[Sequence[Tuple[Adapter, float]]] = None,
    ):
        """A new session of ``model``; see the class for the keywords."""
        explicit = {
            "n_ctx": n_ctx, "n_batch": n_batch, "max_branches": max_branches, "max_depth": max_depth,
            "n_threads": n_threads, "kv_type": kv_type, "flash_attn": flash_attn,
            "temperature": temperature, "top_k": top_k, "top_p": top_p, "min_p": min_p,
            "seed": seed, "device_candidates": device_candidates,
        }
        p = _session_params({**model._session_defaults, **{k: v for k, v in explicit.items() if v is not None}})
        L = _c.lib()
        out = c_void_p()
        with model._use() as mp:
            _check(L.pardec_session_new(mp, byref(p), byref(out)))
        self.model = model
        self._n_ctx: int = p.n_ctx
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
                      on_event: Optional[Callable[[Event], Optional[bool]]] = None) -> Dict[str, Any]:
        """Auto mode: the model decides when to fork, under ``protocol`` (a built-in name such
        as "multiverse", "aspd" or "apr", or a protocol description as a JSON string). Returns
        the report ``{"blocks": [...], "warnings": [...]}``; the text is in :meth:`result`.
        When the generation stops midway (a full KV cache, a cancel, a failed decode) the
        exception's ``report`` attribute holds the report of what was done before, and the
        text so far is in :meth:`result`."""
        cb = _Callback(on_event)
        out = c_void_p()
        prefix = _encode(response_prefix, "response_prefix") if response_prefix is not None else None
        with self._use() as p:
            status = _c.lib().pardec_session_generate_auto(
                p, _encode(protocol, "protocol"), _c_int(max_tokens, c_size_t, "max_tokens"),
                _c_int(max_branch_tokens, c_size_t, "max_branch_tokens"), prefix, cb.c, None, byref(out))
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

    def __init__(self, session: Session):
        """Iterates the running nodes of ``session`` (use Session.generate or run_iter)."""
        self._session = session
        self._pending: List[Event] = []
        self._finished = False
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
