"""Chat completions in the shape of OpenAI's API (and llama-cpp-python's): message checking,
the response and chunk types, and the streaming iterator.

The decoding itself is :meth:`pardec.Model.create_chat_completion`'s; this module only knows
it as a function that runs a request, reporting events to a callback.
"""

from __future__ import annotations

import atexit
import queue
import sys
import threading
import warnings
import weakref
from dataclasses import dataclass, field
from typing import (
    TYPE_CHECKING,
    Any,
    Callable,
    Dict,
    Iterator,
    List,
    Literal,
    Mapping,
    Optional,
    Sequence,
    Tuple,
    TypedDict,
    Union,
)

if TYPE_CHECKING:
    from ._types import Event

# ----- messages ----------------------------------------------------------------------------


class ChatMessage(TypedDict):
    """An OpenAI-style chat message: ``{"role": "user", "content": "..."}``."""

    role: str
    content: str


#: What :meth:`pardec.Model.chat` and :meth:`pardec.Model.create_chat_completion` take as one
#: message: an OpenAI-style dict, or a ``(role, content)`` pair.
MessageLike = Union[ChatMessage, Mapping[str, Any], Tuple[str, str]]

#: Keys a message dict may have besides role and content; they do not reach the template.
_IGNORED_MESSAGE_KEYS = frozenset({"name"})


def normalize_messages(messages: Sequence[MessageLike]) -> List[Tuple[str, str]]:
    """The messages as ``(role, content)`` pairs. Each message is a dict with str "role" and
    "content" (and optionally "name", which chat templates do not use), or a 2-tuple (or
    2-list) of str. Anything else raises TypeError (a wrong type) or ValueError (a dict with
    missing or unknown keys), naming the message: a dict iterated as a pair would otherwise
    become the role "role" and the content "content"."""
    if isinstance(messages, (str, bytes)) or isinstance(messages, Mapping):
        raise TypeError(
            "messages must be a list of messages ({'role': ..., 'content': ...} dicts or "
            f"(role, content) tuples), not a single {type(messages).__name__}")
    try:
        items = list(messages)
    except TypeError:
        raise TypeError(f"messages must be a list of messages, not {type(messages).__name__}") from None
    pairs: List[Tuple[str, str]] = []
    for i, msg in enumerate(items):
        where = f"messages[{i}]"
        if isinstance(msg, Mapping):
            missing = [k for k in ("role", "content") if k not in msg]
            if missing:
                raise ValueError(f"{where} has no {' and no '.join(repr(k) for k in missing)} key")
            unknown = sorted(str(k) for k in msg if k not in ("role", "content") and k not in _IGNORED_MESSAGE_KEYS)
            if unknown:
                raise ValueError(
                    f"{where} has keys pardec does not support: {', '.join(unknown)} "
                    "(only 'role', 'content' and 'name')")
            role, content = msg["role"], msg["content"]
        elif isinstance(msg, (tuple, list)) and len(msg) == 2:
            role, content = msg[0], msg[1]
        else:
            raise TypeError(
                f"{where} must be a {{'role': ..., 'content': ...}} dict or a (role, content) "
                f"tuple, not {_describe(msg)}")
        for what, value in (("role", role), ("content", content)):
            if not isinstance(value, str):
                raise TypeError(f"{where}'s {what} must be str, not {type(value).__name__}")
        pairs.append((role, content))
    return pairs


def _describe(value: object) -> str:
    """A short description of a value for an error message."""
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of {len(value)} items"
    return f"a {type(value).__name__}"


# ----- responses ---------------------------------------------------------------------------


class CompletionUsage(TypedDict):
    """Token counts: the prompt, every sampled token (trunk and branches), and their sum."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class PardecInfo(TypedDict):
    """pardec's part of a response: the protocol used (None: plain generation), the session's
    statistics (:class:`pardec.Stats` as a dict) and auto mode's report (None in plain mode)."""

    protocol: Optional[str]
    stats: Dict[str, Union[int, float]]
    report: Optional[Dict[str, Any]]


class ChatCompletionTopLogprob(TypedDict):
    """One of a step's most likely tokens (OpenAI's ``top_logprobs`` item): its text, its
    natural-log probability and its exact UTF-8 bytes."""

    token: str
    logprob: float
    bytes: Optional[List[int]]


class ChatCompletionTokenLogprob(TypedDict):
    """A generated token of the answer (OpenAI's ``logprobs.content`` item). ``token`` is its
    text with the bytes of a character split over tokens dropped (llama-cpp-python's rule);
    ``bytes`` are exact: they concatenate to the UTF-8 of the content."""

    token: str
    logprob: float
    bytes: Optional[List[int]]
    top_logprobs: List[ChatCompletionTopLogprob]


class ChatCompletionLogprobs(TypedDict):
    """A choice's ``logprobs`` (with ``logprobs=True``): one entry per generated token of the
    content; ``refusal`` is always None."""

    content: Optional[List[ChatCompletionTokenLogprob]]
    refusal: Optional[List[ChatCompletionTokenLogprob]]


def logprob_entry(piece: Callable[[int], bytes], token: int, logprob: float,
                  top: Sequence[Tuple[int, float]]) -> ChatCompletionTokenLogprob:
    """The OpenAI entry of a generated token; ``piece`` gives a token's bytes."""
    def one(t: int, lp: float) -> ChatCompletionTopLogprob:
        b = piece(t)
        return {"token": b.decode("utf-8", "ignore"), "logprob": lp, "bytes": list(b)}

    own = one(token, logprob)
    return {"token": own["token"], "logprob": logprob, "bytes": own["bytes"],
            "top_logprobs": [one(t, lp) for t, lp in top]}


def _n_bytes(entry: ChatCompletionTokenLogprob) -> int:
    return len(entry["bytes"] or ())


def content_logprobs(entries: Sequence[ChatCompletionTokenLogprob], n_bytes: int) -> List[ChatCompletionTokenLogprob]:
    """The entries of the tokens that start within the first ``n_bytes`` bytes of the
    generated text: those of the content, when the generation went on past it (a stop
    string; the end-of-generation token has no entry)."""
    out = []
    start = 0
    for e in entries:
        if start >= n_bytes:
            break
        out.append(e)
        start += _n_bytes(e)
    return out


class ChatCompletionChoice(TypedDict):
    """The one choice of a chat completion."""

    index: int
    message: ChatMessage
    logprobs: Optional[ChatCompletionLogprobs]
    finish_reason: str


#: The ``chat.completion`` object; ``pardec`` is pardec's addition.
ChatCompletion = TypedDict(
    "ChatCompletion",
    {
        "id": str,
        "object": Literal["chat.completion"],
        "created": int,
        "model": str,
        "choices": List[ChatCompletionChoice],
        "usage": CompletionUsage,
        "pardec": PardecInfo,
    },
)
ChatCompletion.__doc__ = """A ``chat.completion`` object (OpenAI's shape) plus ``pardec``: pardec's
protocol, statistics and report."""


class ChatCompletionDelta(TypedDict, total=False):
    """What a chunk adds: the role (first chunk), then content; empty in the last chunk."""

    role: str
    content: str


class ChatCompletionChunkChoice(TypedDict):
    """The one choice of a chunk; ``finish_reason`` is set in the last chunk only. With
    ``logprobs=True`` the content chunks' ``logprobs`` hold the entries of the tokens whose
    text starts in their delta."""

    index: int
    delta: ChatCompletionDelta
    logprobs: Optional[ChatCompletionLogprobs]
    finish_reason: Optional[str]


class _ChunkBase(TypedDict):
    id: str
    object: Literal["chat.completion.chunk"]
    created: int
    model: str
    choices: List[ChatCompletionChunkChoice]


class ChatCompletionChunk(_ChunkBase, total=False):
    """A ``chat.completion.chunk`` object. The last chunk (the one with ``finish_reason``) also
    has ``usage`` and ``pardec``, as the full response has."""

    usage: CompletionUsage
    pardec: PardecInfo


# ----- running a request -------------------------------------------------------------------


@dataclass
class ChatOutcome:
    """What a finished request produced."""

    content: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    protocol: Optional[str]
    stats: Dict[str, Union[int, float]]
    report: Optional[Dict[str, Any]]
    #: The content's token log-probabilities (None: not asked for).
    logprobs: Optional[List[ChatCompletionTokenLogprob]] = None

    def usage(self) -> CompletionUsage:
        """The OpenAI usage dict."""
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens}

    def pardec(self) -> PardecInfo:
        """The ``pardec`` key of the response."""
        return {"protocol": self.protocol, "stats": self.stats, "report": self.report}


@dataclass
class ChatRequest:
    """Everything create_chat_completion decided before decoding. ``run`` decodes it,
    reporting every event to its argument (which returns False to cancel)."""

    id: str
    created: int
    model: str
    run: Callable[[Callable[["Event"], bool]], ChatOutcome]
    stop: List[str] = field(default_factory=list)
    response_prefix: str = ""
    #: Whether trunk tokens are the response's text as they come (plain generation and auto
    #: mode); after a fork the text comes with the outcome.
    live: bool = True
    #: With ``logprobs=True``: the OpenAI entry of a trunk token event (None for one without
    #: a log-probability).
    logprob_entry: Optional[Callable[["Event"], Optional[ChatCompletionTokenLogprob]]] = None

    def completion(self, outcome: ChatOutcome) -> ChatCompletion:
        """The ``chat.completion`` dict of an outcome."""
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": outcome.content},
                "logprobs": _logprobs(outcome.logprobs),
                "finish_reason": outcome.finish_reason,
            }],
            "usage": outcome.usage(),
            "pardec": outcome.pardec(),
        }

    def chunk(self, delta: ChatCompletionDelta, finish_reason: Optional[str] = None,
              logprobs: Optional[List[ChatCompletionTokenLogprob]] = None) -> ChatCompletionChunk:
        """A ``chat.completion.chunk`` dict (``logprobs``: the entries of its tokens)."""
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": _logprobs(logprobs),
                         "finish_reason": finish_reason}],
        }


def _logprobs(content: Optional[List[ChatCompletionTokenLogprob]]) -> Optional[ChatCompletionLogprobs]:
    """A choice's ``logprobs`` value: None when not asked for."""
    return None if content is None else {"content": content, "refusal": None}


def _find_stop(text: str, stop: str) -> int:
    """Where ``stop`` first matches in a run's ``text`` (-1: nowhere), by the library's rule:
    a stop of whitespace only matches only after the run has written something else."""
    if not stop:
        return -1
    start = len(text) - len(text.lstrip()) if stop.isspace() else 0
    return text.find(stop, start) if start < len(text) else -1


def cut_at_stop(text: str, stop: Sequence[str]) -> Tuple[str, bool]:
    """``text`` up to the first occurrence of any stop string (OpenAI's rule: the stop string
    is not part of the content), and whether one occurred. A stop of whitespace only counts
    after the first other character, as the library matches it."""
    hits = [i for i in (_find_stop(text, s) for s in stop) if i >= 0]
    return (text[: min(hits)], True) if hits else (text, False)


class ContentTracker:
    """Turns streamed trunk text into content deltas that are certain to be a prefix of the
    final content: text that could be the start of a stop string is held back, and nothing
    after a stop string (or, once ``live`` is False, after a fork) is emitted until the end."""

    def __init__(self, stop: Sequence[str], live: bool = True):
        """Tracks text that will be cut at ``stop``; ``live`` False emits everything at the end."""
        self.stop = [s for s in stop if s]
        self.live = live
        self.raw = ""
        self.emitted = ""

    def feed(self, text: str) -> str:
        """Adds streamed text; returns what can be emitted now (possibly "")."""
        if not self.live:
            return ""
        self.raw += text
        safe, stopped = cut_at_stop(self.raw, self.stop)
        if stopped:
            self.live = False
        else:
            safe = safe[: len(safe) - self._held_back(safe)]
        if not safe.startswith(self.emitted):  # cannot happen: the safe text only grows
            self.live = False
            return ""
        delta = safe[len(self.emitted):]
        self.emitted = safe
        return delta

    def _held_back(self, text: str) -> int:
        """The length of the longest suffix of ``text`` that a stop string starts with."""
        longest = 0
        for s in self.stop:
            for n in range(min(len(s) - 1, len(text)), longest, -1):
                if text.endswith(s[:n]):
                    longest = n
                    break
        return longest

    def finish(self, content: str) -> str:
        """The rest of the final ``content`` after what was emitted."""
        if content.startswith(self.emitted):
            rest = content[len(self.emitted):]
        else:
            common = 0
            for a, b in zip(content, self.emitted):
                if a != b:
                    break
                common += 1
            warnings.warn(
                "pardec: the streamed text differs from the final text after "
                f"{common} characters; the rest is sent as it is in the final text",
                RuntimeWarning, stacklevel=3)
            rest = content[common:]
        self.emitted = content
        self.live = False
        return rest


# ----- streaming ---------------------------------------------------------------------------

#: Items a stream's decoding thread may be ahead of its reader: beyond that it waits, so a
#: paused reader pauses decoding and a closed stream stops within a few tokens.
STREAM_QUEUE_SIZE = 8
_POLL_SECONDS = 0.05


class _StreamJob:
    """The state a stream shares with its decoding thread (which holds no reference to the
    stream itself, so an abandoned stream can be collected and close the job)."""

    def __init__(self, request: ChatRequest):
        self.request = request
        self.queue: "queue.Queue[Tuple[str, Any]]" = queue.Queue(maxsize=STREAM_QUEUE_SIZE)
        self.cancel = threading.Event()
        self.tokens_decoded = 0
        self.thread: Optional[threading.Thread] = None
        # Log-probability entries of trunk tokens not yet sent, with the byte offset in the
        # generated text where each token starts; bytes generated and bytes of content sent.
        self.logprobs: List[Tuple[int, ChatCompletionTokenLogprob]] = []
        self.generated_bytes = 0
        self.sent_bytes = 0
        self.sent_logprobs = 0

    def put(self, item: Tuple[str, Any]) -> bool:
        """Queues an item, waiting while the queue is full; False (nothing queued) once the
        job is cancelled."""
        while not self.cancel.is_set():
            try:
                self.queue.put(item, timeout=_POLL_SECONDS)
                return True
            except queue.Full:
                continue
        return False

    def on_event(self, tracker: ContentTracker, ev: "Event") -> bool:
        """The decoding callback: counts tokens, queues content deltas; False cancels."""
        if self.cancel.is_set():
            return False
        if ev.kind == "token":
            if ev.token >= 0:
                self.tokens_decoded += 1
            if ev.is_trunk:
                entry = self.request.logprob_entry(ev) if self.request.logprob_entry is not None else None
                if entry is not None:
                    self.logprobs.append((self.generated_bytes, entry))
                    self.generated_bytes += _n_bytes(entry)
                delta = tracker.feed(ev.text)
                if delta and not self.put(("content", (delta, self.take_logprobs(delta)))):
                    return False
        elif ev.kind == "fork":
            tracker.live = False
        return not self.cancel.is_set()

    def take_logprobs(self, delta: str) -> Optional[List[ChatCompletionTokenLogprob]]:
        """The entries of the tokens that start in ``delta``, the content sent next (None
        without ``logprobs``)."""
        self.sent_bytes += len(delta.encode("utf-8", "surrogatepass"))
        if self.request.logprob_entry is None:
            return None
        n = 0
        while n < len(self.logprobs) and self.logprobs[n][0] < self.sent_bytes:
            n += 1
        ready = [e for _, e in self.logprobs[:n]]
        del self.logprobs[:n]
        self.sent_logprobs += n
        return ready

    def work(self) -> None:
        """The decoding thread's body: runs the request, queues the deltas, then the outcome
        (or the exception) with the rest of the content."""
        tracker = ContentTracker(self.request.stop, live=self.request.live)
        try:
            if self.request.response_prefix:
                first = tracker.feed(self.request.response_prefix)
                # Forced text: no token of it was generated (logprobs start after it).
                if first and not self.put(("content", (first, [] if self.request.logprob_entry else None))):
                    return
            outcome = self.request.run(lambda ev: self.on_event(tracker, ev))
            self.put(("done", (outcome, tracker.finish(outcome.content))))
        except BaseException as e:  # noqa: BLE001 - handed to the reader, never lost
            self.put(("error", e))

    def stop(self) -> None:
        """Cancels the decoding and waits for the thread to end (it stops at its next event,
        at most one decode step later)."""
        self.cancel.set()
        thread = self.thread
        if thread is None or thread is threading.current_thread():
            return
        while thread.is_alive():
            try:
                self.queue.get_nowait()  # room for a put in progress
            except queue.Empty:
                pass
            thread.join(_POLL_SECONDS)


_live_jobs: "weakref.WeakSet[_StreamJob]" = weakref.WeakSet()
_live_lock = threading.Lock()


@atexit.register
def _stop_live_jobs() -> None:
    """At exit, stops the decoding threads of streams still open, so that none is inside the
    library while the interpreter shuts down (they are daemon threads: nothing else waits for
    them)."""
    with _live_lock:
        jobs = list(_live_jobs)
    for job in jobs:
        job.stop()


class ChatCompletionStream(Iterator[ChatCompletionChunk]):
    """The chunks of a streamed chat completion (``create_chat_completion(stream=True)``).

    Lazy: nothing is decoded before the first ``next()``; then a thread decodes while the
    chunks are read, at most a few items ahead of the reader. The first chunk has the role,
    then come content deltas (the trunk's text as it is decoded; in auto mode, what follows a
    fork comes when the generation ends), then a chunk with ``finish_reason``, ``usage`` and
    ``pardec``. Errors are raised by ``next()``.

    Closing it (``close()``, leaving a ``with`` block, or dropping the last reference) before
    the end cancels the decoding and waits for the thread to end; streams still open at
    interpreter exit are closed then.
    """

    def __init__(self, request: ChatRequest):
        """A stream of ``request`` (use :meth:`pardec.Model.create_chat_completion`)."""
        self._job = _StreamJob(request)
        self._pending: List[ChatCompletionChunk] = []
        self._finished = False

    @property
    def id(self) -> str:
        """The completion's id (the same in every chunk)."""
        return self._job.request.id

    @property
    def tokens_decoded(self) -> int:
        """Tokens sampled so far (trunk and branches)."""
        return self._job.tokens_decoded

    @property
    def closed(self) -> bool:
        """Whether the stream is over: read to the end, failed, or closed."""
        return self._finished

    def __iter__(self) -> "ChatCompletionStream":
        """The stream itself."""
        return self

    def __next__(self) -> ChatCompletionChunk:
        """The next chunk; StopIteration after the last one."""
        if self._pending:
            return self._pending.pop(0)
        if self._finished:
            raise StopIteration
        job = self._job
        if job.thread is None:
            thread = threading.Thread(target=job.work, name=f"pardec-stream-{job.request.id}", daemon=True)
            job.thread = thread
            with _live_lock:
                _live_jobs.add(job)
            thread.start()
            return job.request.chunk({"role": "assistant"})
        kind, value = self._get()
        if kind == "content":
            delta, logprobs = value
            return job.request.chunk({"content": delta}, logprobs=logprobs)
        self._end()
        if kind == "error":
            raise value
        outcome, rest = value
        rest_logprobs = None if outcome.logprobs is None else outcome.logprobs[job.sent_logprobs:]
        if rest or rest_logprobs:
            self._pending.append(job.request.chunk({"content": rest}, logprobs=rest_logprobs))
        last = job.request.chunk({}, outcome.finish_reason)
        last["usage"] = outcome.usage()
        last["pardec"] = outcome.pardec()
        self._pending.append(last)
        return self._pending.pop(0)

    def _get(self) -> Tuple[str, Any]:
        """The next item from the decoding thread."""
        job = self._job
        while True:
            try:
                return job.queue.get(timeout=_POLL_SECONDS)
            except queue.Empty:
                thread = job.thread
                if thread is not None and not thread.is_alive() and job.queue.empty():
                    return ("error", RuntimeError("pardec: the decoding thread ended without a result"))

    def _end(self) -> None:
        """Marks the stream over and waits for the thread (which has nothing left to do)."""
        self._finished = True
        self._job.stop()
        with _live_lock:
            _live_jobs.discard(self._job)

    def close(self) -> None:
        """Stops the stream: cancels the decoding if it is still going, and waits for the
        thread to end. Closing twice is allowed."""
        self._pending.clear()
        if not self._finished:
            self._end()

    def __enter__(self) -> "ChatCompletionStream":
        """The stream itself; leaving the block closes it."""
        return self

    def __exit__(self, *exc: object) -> None:
        """Closes the stream."""
        self.close()

    def __del__(self) -> None:
        """Closes an abandoned stream (not at interpreter exit, where an atexit hook did)."""
        if not sys.is_finalizing():
            try:
                self.close()
            except Exception:
                pass
