"""Parameters in, checked and converted to their C form: strings and integers, a run's limits
(``pardec_run_limits``), the event callback, a session's and a model's parameters."""

from __future__ import annotations

import ctypes
from ctypes import byref, c_char_p, c_int32, c_uint32, c_uint64, sizeof
from typing import Any, Callable, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

from . import _lib as _c
from ._errors import Cancelled, Status, _check
from ._types import Event, _event_from_c


_JOIN_ALL, _JOIN_KEEP, _JOIN_DISCARD = 0, 1, 2
#: pardec_join_rule values by the names the CLI and protocol JSON use.
_JOIN_RULES = {"same-max": 0, "same-seq": 1, "reprefill": 2}
_KV_TYPES = {"f16": 0, "f32": 1}


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
    _set_sampling(p.sampling, kw)
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
    return p


def _set_sampling(sampling: _c.pardec_sampling_params, kw: Mapping[str, Any]) -> None:
    """Sets the values of ``kw`` that are not None (``temperature``, ``top_k``, ``top_p``,
    ``min_p``, ``seed``) on a ``pardec_sampling_params``, each checked against its C type."""
    for name in ("temperature", "top_p", "min_p"):
        value = kw.get(name)
        if value is not None:
            setattr(sampling, name, _number(value, name))
    top_k = kw.get("top_k")
    if top_k is not None:
        sampling.top_k = _c_int(top_k, c_uint32, "top_k")
    seed = kw.get("seed")
    if seed is not None:
        sampling.seed = _c_int(seed, c_uint64, "seed")


# ----- model parameters --------------------------------------------------------------------


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
