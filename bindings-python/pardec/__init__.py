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

    # Many requests in one context, each decoded a token per step in one shared batch.
    with pardec.Conversations(llm, n_ctx=4096, max_active=4) as conv:
        ids = [conv.submit([("user", q)], max_tokens=64) for q in ("Hi!", "Name a color.")]
        print({i: o.text for i, o in conv.run().items()})

Threads: a Model may be shared by sessions on any number of threads; a Session is used by one
thread at a time (a call while it is busy raises PardecError with status BUSY). Callbacks run
on the calling thread, before the call returns (a streamed chat completion decodes on a thread
of its own).
"""

from __future__ import annotations

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
from ._conversations import Conversations, Outcome
from ._errors import Cancelled, ClosedError, PardecError, Status
from ._lib import LibraryNotFoundError, LibraryVersionWarning, candidate_paths
from ._library import json_object_grammar, json_schema_grammar, library_path, version
from ._model import DEFAULT_ADAPTER_PROTOCOL, PLAIN, SOT, Adapter, Model
from ._session import Generation, Session
from ._types import TRUNK, Block, Branch, Event, Result, Stats, TokenLogprob
from ._types import StrPath as StrPath

# The C enums' value tables, which tests/test_header_sync.py checks against include/pardec.h.
from ._params import _JOIN_ALL as _JOIN_ALL
from ._params import _JOIN_DISCARD as _JOIN_DISCARD
from ._params import _JOIN_KEEP as _JOIN_KEEP
from ._params import _KV_TYPES as _KV_TYPES
from ._types import _EVENT_KINDS as _EVENT_KINDS
from ._types import _JOIN_STATES as _JOIN_STATES
from ._types import _STOP_REASONS as _STOP_REASONS

__all__ = [
    "TRUNK", "Status", "PardecError", "Cancelled", "ClosedError", "LibraryNotFoundError",
    "LibraryVersionWarning", "Event", "Stats", "Branch", "Block", "Result", "TokenLogprob",
    "Model", "Adapter", "Session", "Generation", "Conversations", "Outcome", "version", "library_path", "candidate_paths",
    "json_object_grammar", "json_schema_grammar",
    "ChatCompletionStream", "ChatCompletion", "ChatCompletionChunk", "ChatCompletionChoice",
    "ChatCompletionChunkChoice", "ChatCompletionDelta", "ChatCompletionLogprobs",
    "ChatCompletionTokenLogprob", "ChatCompletionTopLogprob", "ChatMessage", "CompletionUsage",
    "PardecInfo", "MessageLike", "DEFAULT_ADAPTER_PROTOCOL", "PLAIN", "SOT",
]

#: The package's version; the loaded library's ``pardec_version()`` has the same major.minor
#: (checked when it is loaded).
__version__ = _c.PACKAGE_VERSION
