"""Models (``pardec_model``) and their LoRA adapters (``pardec_adapter``): loading, the
tokenizer, chat templates and chat completions."""

from __future__ import annotations

import ctypes
import os
import threading
import time
import uuid
import weakref
from contextlib import contextmanager
from ctypes import byref, c_bool, c_int32, c_size_t, c_void_p, sizeof
from typing import (
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
    Union,
    overload,
)

from . import _lib as _c
from ._chat import (
    ChatCompletion,
    ChatCompletionStream,
    ChatCompletionTokenLogprob,
    ChatOutcome,
    ChatRequest,
    MessageLike,
    content_logprobs,
    cut_at_stop,
    logprob_entry,
    normalize_messages,
)
from ._errors import ClosedError, PardecError, Status, _check, _handle, _take_string
from ._library import json_object_grammar, json_schema_grammar
from ._params import _c_int, _cut_matched_stop, _encode, _rpc_server_list, _SessionParams
from ._session import Session
from ._types import Event, StrPath


# ----- model -------------------------------------------------------------------------------


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

#: ``protocol=SOT``: Skeleton-of-Thought, for any instruct model (no adapter needed).
SOT = "sot"

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
        else plain generation; :data:`PLAIN` is plain generation; :data:`SOT` ("sot") is
        Skeleton-of-Thought for one user message (a skeleton of up to ``max_tokens``, at most
        120, its points expanded as branches of ``max_branch_tokens``; a stream sends the
        assembled answer at its end); any other value is a protocol of
        :meth:`Session.generate_auto` (a built-in name such as "multiverse" or a
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
        stops = [stop] if isinstance(stop, str) else list(stop or ())
        for s in stops:
            _encode(s, "stop string")
        chosen = self._choose_protocol(protocol)
        if chosen == SOT:
            # Skeleton-of-Thought writes its own request for the question: the prompt is it.
            prompt = _sot_question(messages)
            if stops or response_prefix is not None:
                raise ValueError("protocol='sot' takes no stop strings and no response_prefix")
        else:
            prompt = self.chat(messages)
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
            response_prefix=response_prefix or "", logprob_entry=entry_fn,
            # A SoT answer is assembled at its end: a stream gets it then, whole.
            live=chosen != SOT)
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

        if protocol == SOT:
            return self._run_sot(prompt, session_kw, max_tokens, max_branch_tokens, watch)
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


    def _run_sot(self, question: str, session_kw: Mapping[str, Any], max_tokens: Optional[int],
                 point_tokens: int, on_event: Callable[[Event], bool]) -> ChatOutcome:
        """A chat completion by Skeleton-of-Thought: a skeleton of points for ``question`` (up
        to ``max_tokens``, at most 120), each point expanded as a branch of ``point_tokens``;
        the content is the assembled answer. ``prompt_tokens`` counts every forced token (the
        request, the expansion instruction, the point prefixes)."""
        skeleton = min(max_tokens, 120) if max_tokens is not None else 0  # 0: the default (120)
        with Session(self, **session_kw) as s:
            answer = s.generate_sot(question, skeleton_tokens=skeleton, point_tokens=point_tokens,
                                    on_event=on_event)
            stats = s.stats()
        return ChatOutcome(content=answer["answer"], finish_reason="stop", prompt_tokens=stats.tokens_prefill,
                           completion_tokens=stats.tokens_total, protocol=SOT, stats=stats.as_dict(),
                           report=answer["report"], logprobs=None)


def _sot_question(messages: Sequence[MessageLike]) -> str:
    """The one question a Skeleton-of-Thought answer is for: a chat of one user message
    (other turns would be left out of its request, so they are refused)."""
    pairs = normalize_messages(messages)
    if len(pairs) != 1 or pairs[0][0] != "user":
        raise ValueError("protocol='sot' answers one question: give one user message")
    return pairs[0][1]


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
