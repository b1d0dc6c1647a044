"""Conversations (``pardec_conversations``): many requests decoding together in one llama.cpp
context, each with its own sampling, limits and protocol; what a server runs."""

from __future__ import annotations

import ctypes
import json
from ctypes import byref, c_bool, c_char_p, c_int32, c_uint32, c_uint64, c_void_p, sizeof
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Mapping, Optional, Sequence, Union

from . import _lib as _c
from ._chat import MessageLike, normalize_messages
from ._errors import Cancelled, PardecError, Status, _as_status, _check, _handle, _take_string
from ._handle import ExclusiveHandle
from ._params import _c_int, _encode, _SessionParams, _set_sampling, _stop_strings
from ._types import Event, TokenLogprob, _STOP_REASONS, _event_from_c

if TYPE_CHECKING:
    from ._model import Model

#: Receives ``(request, event)`` during :meth:`Conversations.step`; returning False cancels
#: that request.
RequestCallback = Callable[[int, Event], Optional[bool]]


@dataclass(frozen=True)
class Outcome:
    """A finished request (``pardec_outcome_info`` with its text and report)."""

    request: int
    #: The answer (under a protocol: its branches flattened in, tags included).
    text: str
    #: "eog", "max_tokens", "stop_string", ... (None if it never decoded).
    stop_reason: Optional[str]
    #: The error that ended it part-way (``text`` holds what was decoded before), else None.
    error: Optional[PardecError]
    prompt_tokens: int
    #: Prompt tokens reused from an earlier answer's cells (not decoded again).
    reused_tokens: int
    #: Tokens sampled for it, branches included.
    generated_tokens: int
    #: Steps in which it decoded a token: its critical path.
    steps: int
    #: Parallel blocks the model opened.
    blocks: int
    queued_seconds: float
    decoding_seconds: float
    #: Under a protocol: ``{"blocks": [...], "warnings": [...]}`` as from
    #: :meth:`Session.generate_auto`; empty lists for a plain answer.
    report: Dict[str, Any] = field(default_factory=dict)
    #: When the request asked (``logprobs=n``): the answer's tokens with their
    #: log-probabilities, up to the end of ``text``.
    logprobs: List[TokenLogprob] = field(default_factory=list)


#: The :class:`Session` keywords that size and shape the shared context (sampling comes with
#: each request; ``max_branches`` follows from the sizes).
_SESSION_KEYWORDS = frozenset({
    "n_ctx", "n_batch", "max_depth", "n_threads", "kv_type", "flash_attn", "device_candidates",
    "repeat_penalty", "frequency_penalty", "presence_penalty", "penalty_last_n", "logit_bias",
})


def _free_conversations(ptr: int) -> None:
    _c.lib().pardec_conversations_free(ptr)


class _RequestCallback:
    """A C request callback around a Python function (see :class:`_params._Callback`): an
    exception in the function cancels the request it was called for and is re-raised after
    the step."""

    def __init__(self, fn: Optional[RequestCallback]):
        self.fn = fn
        self.error: Optional[BaseException] = None
        self.c = _c.pardec_request_callback(self._call) if fn is not None else _c.pardec_request_callback()

    def _call(self, _user_data: Optional[int], request: int, ev_ptr: Any) -> bool:
        if self.fn is None:
            return True
        try:
            verdict = self.fn(request, _event_from_c(ev_ptr.contents))
            return verdict is None or bool(verdict)
        except BaseException as e:  # noqa: BLE001 - must not unwind into C
            if self.error is None:
                self.error = e
            return False

    def check(self, status: int) -> None:
        if self.error is not None:
            err, self.error = self.error, None
            if isinstance(err, (KeyboardInterrupt, SystemExit)):
                raise err
            raise Cancelled(Status.CANCELLED, f"the callback raised {err!r}") from err
        _check(status)


class Conversations(ExclusiveHandle):
    """Many requests decoding together in one context (``pardec_conversations``).

    Every :meth:`step` decodes one token of every running request and of each of its branches
    in one batch (continuous batching: a request joins at the next step and leaves at its
    end). Up to ``max_active`` requests run at once, each with up to ``branches_per_request``
    branches open; a request is admitted only when the KV cells it may fill fit beside the
    running ones (else it waits, in order). ``cached_prompts`` finished plain answers stay in
    the cache: a prompt that starts with one decodes only the rest (a chat turn pays for its
    new text). The other keywords are :class:`Session`'s (``n_ctx``, ``n_threads``,
    penalties...; each request brings its own sampling).

        with pardec.Conversations(llm, n_ctx=4096, max_active=4) as conv:
            ids = [conv.submit([("user", q)], max_tokens=64) for q in questions]
            outcomes = conv.run()                  # {request: Outcome}, when all are done
            print(outcomes[ids[0]].text)

    Threads: one thread at a time (a call while another runs raises BUSY); a server keeps one
    decoding thread that submits, steps and cancels.
    """

    _what = "conversations"

    def __init__(self, model: Model, *, max_active: Optional[int] = None,
                 branches_per_request: Optional[int] = None, cached_prompts: Optional[int] = None,
                 **session_kw: Any):
        """Conversations on ``model``; see the class for the keywords."""
        L = _c.lib()
        params = _c.pardec_conversations_params()
        _check(L.pardec_conversations_params_default(byref(params), sizeof(params)))
        for name, value in (("max_active", max_active), ("branches_per_request", branches_per_request),
                            ("cached_prompts", cached_prompts)):
            if value is not None:
                setattr(params, name, _c_int(value, c_uint32, name))
        unknown = set(session_kw) - _SESSION_KEYWORDS
        if unknown:
            raise TypeError(f"unknown keywords {sorted(unknown)}: Session's are {sorted(_SESSION_KEYWORDS)} "
                            "(max_branches follows from max_active, branches_per_request and cached_prompts)")
        sequences = params.max_active * (1 + params.branches_per_request) + params.cached_prompts
        kw = {**model._session_defaults, **{k: v for k, v in session_kw.items() if v is not None}}
        kw["max_branches"] = sequences
        session = _SessionParams(kw)
        out = c_void_p()
        with model._use() as mp:
            _check(L.pardec_conversations_new(mp, byref(session.c), byref(params), byref(out)))
        self.model = model
        self._own(_handle(out), _free_conversations)

    def submit(self, prompt: Union[str, Sequence[MessageLike]], *, max_tokens: int = 256,
               temperature: Optional[float] = None, top_k: Optional[int] = None,
               top_p: Optional[float] = None, min_p: Optional[float] = None, seed: Optional[int] = None,
               stop: Union[str, Sequence[str]] = (), protocol: Optional[str] = None,
               max_branch_tokens: Optional[int] = None, strip_stop: bool = True,
               ban_eog: bool = False, logprobs: Optional[int] = None) -> int:
        """Queues a request and returns its id. ``prompt`` is the text the model continues
        (special tokens parsed) or chat messages (rendered with the model's template, the
        assistant's turn opened). ``protocol`` None or "none": a plain answer; "sot":
        Skeleton-of-Thought for any instruct model (``prompt`` is the question, or one user
        message; the skeleton takes up to ``max_tokens``, at most 120; the text is the
        assembled answer); else a stream protocol (a built-in name or JSON) under which the
        model forks by itself, each branch up to ``max_branch_tokens``. ``stop`` ends the answer (left out of a plain answer's
        text unless ``strip_stop`` is False). ``logprobs`` n (plain answers, 0 to 100) records
        each answer token's log-probability and its step's n most likely tokens
        (:attr:`Outcome.logprobs`). Sampling not given is greedy. Raises
        PardecError: PROMPT_TOO_LONG when it could never fit the context, INVALID_ARGUMENT
        for an unknown protocol or sampling out of range."""
        if isinstance(prompt, str):
            text = prompt
        elif protocol == "sot":
            pairs = normalize_messages(prompt)
            if len(pairs) != 1 or pairs[0][0] != "user":
                raise ValueError("skeleton-of-thought answers one question: give one user message")
            text = pairs[0][1]
        else:
            text = self.model.chat(prompt)
        L = _c.lib()
        p = _c.pardec_request_params()
        _check(L.pardec_request_params_default(byref(p), sizeof(p)))
        p.max_tokens = _c_int(max_tokens, c_uint32, "max_tokens")
        if max_branch_tokens is not None:
            p.max_branch_tokens = _c_int(max_branch_tokens, c_uint32, "max_branch_tokens")
        _set_sampling(p.sampling, {"temperature": temperature, "top_k": top_k, "top_p": top_p, "min_p": min_p,
                                   "seed": seed})
        protocol_c = _encode(protocol, "protocol") if protocol is not None else None
        p.protocol = protocol_c
        stops = _stop_strings(stop)
        p.stop = ctypes.cast(stops, ctypes.POINTER(c_char_p))
        p.n_stop = len(stops)
        p.strip_stop = bool(strip_stop)
        p.ban_eog = bool(ban_eog)
        if logprobs is not None:
            p.logprobs = _c_int(logprobs, c_int32, "logprobs")
        request = c_uint64(0)
        with self._use() as ptr:
            _check(L.pardec_conversations_submit(ptr, _encode(text, "prompt"), byref(p), byref(request)))
        return request.value

    def cancel(self, request: int) -> bool:
        """Drops a request, queued or decoding; its cells are freed and no outcome comes for
        it. False if it was not there (already finished: its outcome stays to be taken)."""
        found = c_bool(False)
        with self._use() as ptr:
            _check(_c.lib().pardec_conversations_cancel(ptr, _c_int(request, c_uint64, "request"), byref(found)))
        return found.value

    def step(self, on_event: Optional[RequestCallback] = None) -> bool:
        """One step: admits what fits, decodes a token of every running answer and branch,
        lets each request fork, join or end. ``on_event(request, event)`` (optional) gets
        every event; returning False (or raising: re-raised as :class:`Cancelled` after the
        step) cancels that request. False when nothing runs or waits any more. A failed
        shared decode ends every running request with the error (see :meth:`outcomes`) and
        raises it."""
        cb = _RequestCallback(on_event)
        busy = c_bool(False)
        with self._use() as ptr:
            status = _c.lib().pardec_conversations_step(ptr, cb.c, None, byref(busy))
        cb.check(status)
        return busy.value

    def outcomes(self) -> List[Outcome]:
        """Takes the outcomes of the requests finished since the last call, oldest first."""
        L = _c.lib()
        taken: List[Outcome] = []
        with self._use() as ptr:
            while True:
                found = c_bool(False)
                info = _c.pardec_outcome_info()
                text, report = c_void_p(), c_void_p()
                _check(L.pardec_conversations_next_outcome(ptr, byref(found), byref(info), sizeof(info),
                                                           byref(text), byref(report)))
                if not found.value:
                    return taken
                taken.append(_outcome(info, _take_string(text), json.loads(_take_string(report))))

    def run(self, on_event: Optional[RequestCallback] = None) -> Dict[int, Outcome]:
        """Steps until nothing runs or waits; returns every outcome not yet taken, by request."""
        while self.step(on_event):
            pass
        return {o.request: o for o in self.outcomes()}


def _outcome(info: _c.pardec_outcome_info, text: str, report: Mapping[str, Any]) -> Outcome:
    error = None
    if info.status != Status.OK:
        error = PardecError(_as_status(info.status), report.get("error") or "")
    return Outcome(
        request=info.request,
        text=text,
        stop_reason=_STOP_REASONS.get(info.stop_reason),
        error=error,
        prompt_tokens=info.prompt_tokens,
        reused_tokens=info.reused_tokens,
        generated_tokens=info.generated_tokens,
        steps=info.steps,
        blocks=info.blocks,
        queued_seconds=info.queued_seconds,
        decoding_seconds=info.decoding_seconds,
        report={"blocks": report.get("blocks", []), "warnings": report.get("warnings", [])},
        logprobs=[TokenLogprob(pos=e["pos"], token=e["token"], logprob=e["logprob"],
                               top=[(t, lp) for t, lp in e["top"]]) for e in report.get("logprobs", [])],
    )
