"""Sessions (``pardec_session``): a trunk and its branches in one llama.cpp context, and the
iterator of their events."""

from __future__ import annotations

import contextlib
import ctypes
import json
import sys
from ctypes import byref, c_bool, c_char_p, c_float, c_size_t, c_uint32, c_void_p, sizeof
from typing import (
    TYPE_CHECKING,
    Any,
    Callable,
    Dict,
    Iterable,
    List,
    Mapping,
    Optional,
    Sequence,
    Tuple,
    Union,
)

from . import _lib as _c
from ._handle import ExclusiveHandle
from ._errors import Cancelled, PardecError, Status, _check, _handle, _take_string
from ._params import (
    _JOIN_ALL,
    _JOIN_DISCARD,
    _JOIN_KEEP,
    _JOIN_RULES,
    _Callback,
    _c_int,
    _cut_matched_stop,
    _encode,
    _Limits,
    _SessionParams,
    _stop_strings,
)
from ._types import (
    TRUNK,
    Block,
    Branch,
    Event,
    Result,
    Stats,
    TokenLogprob,
    _JOIN_STATES,
    _STOP_REASONS,
    _completion_logprobs,
    _result_logprobs,
)

if TYPE_CHECKING:
    # Only named in annotations: _model imports this module (Model makes sessions).
    from ._model import Adapter, Model


# ----- session -----------------------------------------------------------------------------


def _free_session(ptr: int) -> None:
    _c.lib().pardec_session_free(ptr)


class Session(ExclusiveHandle):
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

    _what = "session"

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
        self._own(_handle(out), _free_session)
        if adapters is None:
            adapters = model._default_adapters()
        if adapters:
            self.set_adapters(adapters)

    @property
    def n_ctx(self) -> int:
        """The KV cells of the session's context (its ``n_ctx`` parameter)."""
        return self._n_ctx

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
