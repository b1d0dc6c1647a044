"""The llama-cpp-python-style API on the real default model: Model keywords, chat messages as
dicts and tuples, create_chat_completion and its streaming. Token budgets stay small (a 2-core
CI); every comparison is between greedy runs, which are deterministic."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import pardec
from pardec import _chat

REPO = Path(__file__).resolve().parents[2]
ADAPTER = REPO / "adapters" / "multiverse-smollm2-135m.gguf"
QUESTION = [{"role": "user", "content": "Name two fruits."}]
# A response prefix that makes the base model fork at once under the multiverse protocol.
FORCED_BLOCK = "<Parallel>\n<Goal>\n<Outline>1: Apple</Outline>\n<Outline>2: Pear</Outline>\n</Goal>"


@pytest.fixture(scope="module")
def llm(model_file):
    m = pardec.Model(model_path=str(model_file), n_ctx=512, n_threads=1)
    yield m
    m.close()


def content_of(chunks):
    return "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)


def stream_threads():
    return [t for t in threading.enumerate() if t.name.startswith("pardec-stream-")]


# ----- Model keywords ----------------------------------------------------------------------


def test_model_takes_llama_cpp_keywords_and_sessions_inherit_them(model_file):
    with pardec.Model(model_path=model_file, n_ctx=384, n_batch=64, n_threads=1, seed=3,
                      flash_attn=False, max_branches=3) as m:
        assert m.model_path == os.fspath(model_file)
        with pardec.Session(m) as s:
            assert s.n_ctx == 384
            s.prompt("Hello")
            with pytest.raises(pardec.PardecError) as e:  # max_branches=3 reached the session
                s.fork(["a", "b", "c", "d"], max_tokens=1)
            assert e.value.status == pardec.Status.TOO_MANY_BRANCHES
            assert len(s.fork(["a", "b", "c"], max_tokens=1)) == 3
        with pardec.Session(m, n_ctx=256) as s:  # an explicit keyword wins
            assert s.n_ctx == 256
    # The path as the first argument still works, with n_gpu_layers second.
    with pardec.Model(model_file, 0) as m:
        with pardec.Session(m) as s:
            assert s.n_ctx == 4096  # pardec's default: the model had no n_ctx


def test_model_keyword_errors_are_clear(model_file):
    cases = [
        ({"model_path": model_file, "use_mmap": False}, TypeError, "llama_cpp.Llama's keyword 'use_mmap'"),
        ({"model_path": model_file, "type_k": 1}, TypeError, "kv_type"),
        ({"model_path": model_file, "chat_format": "chatml"}, TypeError, "template"),
        ({"model_path": model_file, "n_ctxx": 512}, TypeError, "unexpected keyword argument 'n_ctxx'"),
        ({}, TypeError, "needs the model's path"),
        ({"model_path": model_file, "n_ctx": "512"}, TypeError, "n_ctx must be int"),
        ({"model_path": model_file, "n_ctx": -1}, ValueError, "n_ctx must be >= 0"),
        ({"model_path": model_file, "kv_type": "q8"}, ValueError, "kv_type"),
        ({"model_path": model_file, "verbose": True}, ValueError, "PARDEC_LLAMA_LOG"),
    ]
    for kw, exc, words in cases:
        with pytest.raises(exc) as info:
            pardec.Model(**kw)
        assert words in str(info.value), (kw, str(info.value))
    with pytest.raises(TypeError, match="not both"):
        pardec.Model(model_file, model_path=model_file)
    with pardec.Model(model_path=model_file, verbose=False) as m:  # llama_cpp's usual False is fine
        assert not m.closed


def test_lora_path_applies_the_adapter_and_defaults_to_its_protocol(model_file):
    ctx_text = "<|im_start|>user\nName a fruit.<|im_end|>\n<|im_start|>assistant\n"
    with pardec.Model(model_path=model_file, n_ctx=256, n_threads=1) as base, \
            pardec.Session(base) as s:
        base_scores = s.score(ctx_text, "An apple.")
    with pardec.Model(model_path=model_file, n_ctx=256, n_threads=1, lora_path=ADAPTER) as tuned:
        assert tuned.adapter is not None and tuned.adapter.path == os.fspath(ADAPTER)
        with pardec.Session(tuned) as s:
            tuned_scores = s.score(ctx_text, "An apple.")
        with pardec.Session(tuned, adapters=[]) as s:  # [] opts out of the model's adapter
            assert s.score(ctx_text, "An apple.") == pytest.approx(base_scores, abs=1e-4)
        assert max(abs(a - b) for a, b in zip(base_scores, tuned_scores)) > 1e-2
        out = tuned.create_chat_completion(QUESTION, max_tokens=3, max_branch_tokens=2)
        assert out["pardec"]["protocol"] == pardec.DEFAULT_ADAPTER_PROTOCOL == "multiverse"
        assert isinstance(out["pardec"]["report"], dict) and "blocks" in out["pardec"]["report"]
        out = tuned.create_chat_completion(QUESTION, max_tokens=3, protocol=pardec.PLAIN)
        assert out["pardec"]["protocol"] is None and out["pardec"]["report"] is None
        assert out["usage"]["completion_tokens"] == 3
    assert tuned.adapter.closed  # closed with its model
    with pytest.raises(pardec.PardecError) as e:
        pardec.Model(model_path=model_file, lora_path=REPO / "no-such-adapter.gguf")
    assert e.value.status == pardec.Status.MODEL_NOT_FOUND


# ----- messages ----------------------------------------------------------------------------


def test_dict_and_tuple_messages_give_the_chat_templates_text(llm):
    conversation = [("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello!"), ("user", "A fruit?")]
    # SmolLM2's template (ChatML), written out by hand.
    want = ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
            "<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nA fruit?<|im_end|>\n"
            "<|im_start|>assistant\n")
    as_dicts = [{"role": r, "content": c} for r, c in conversation]
    assert llm.chat(conversation) == want
    assert llm.chat(as_dicts) == want
    assert llm.chat([list(m) for m in conversation]) == want  # pairs decoded from JSON
    assert llm.chat([{"role": "user", "content": "Hi", "name": "ann"}]) == \
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    # The old bug: a dict unpacked as a pair gave the role "role" and the content "content".
    assert "role" not in llm.chat(QUESTION)


def test_bad_message_shapes_raise_naming_the_message(llm):
    good = {"role": "user", "content": "Hi"}
    cases = [
        ("Hi", TypeError, "not a single str"),
        (good, TypeError, "not a single dict"),
        (42, TypeError, "not int"),
        ([good, "Hi"], TypeError, "messages[1] must be a {'role': ..., 'content': ...} dict"),
        ([good, ("user", "a", "b")], TypeError, "messages[1]"),
        ([{"role": "user"}], ValueError, "messages[0] has no 'content' key"),
        ([{"content": "Hi"}], ValueError, "no 'role'"),
        ([{"role": "assistant", "content": "x", "tool_calls": []}], ValueError, "tool_calls"),
        ([{"role": "user", "content": None}], TypeError, "messages[0]'s content must be str, not NoneType"),
        ([{"role": "user", "content": [{"type": "text", "text": "Hi"}]}], TypeError, "content must be str"),
        ([(1, "Hi")], TypeError, "messages[0]'s role must be str, not int"),
    ]
    for messages, exc, words in cases:
        for call in (llm.chat, lambda m: llm.create_chat_completion(m, max_tokens=1),
                     lambda m: llm.create_chat_completion(m, max_tokens=1, stream=True)):
            with pytest.raises(exc) as info:
                call(messages)
            assert words in str(info.value), (messages, str(info.value))
    assert not stream_threads()


def test_stop_strings_are_held_back_until_they_can_no_longer_start():
    t = _chat.ContentTracker(["</end>", "STOP"])
    assert t.feed("Hello <") == "Hello "  # "<" may start "</end>"
    assert t.feed("/e") == ""
    assert t.feed("x") == "</ex"  # it did not
    assert t.feed(" ST") == " "
    assert t.feed("OP and more") == ""  # a stop string: nothing after it
    assert t.emitted == "Hello </ex "
    assert t.finish("Hello </ex ") == ""
    # Without stop strings everything goes out at once; not live, nothing until the end.
    assert _chat.ContentTracker([]).feed("abc") == "abc"
    quiet = _chat.ContentTracker([], live=False)
    assert quiet.feed("abc") == "" and quiet.finish("abcdef") == "abcdef"
    assert _chat.cut_at_stop("a STOP b </end>", ["</end>", "STOP"]) == ("a ", True)
    assert _chat.cut_at_stop("abc", ["x"]) == ("abc", False)
    # A stop of whitespace only counts once something else was written (the library's rule).
    assert _chat.cut_at_stop("\n\nHi\nthere", ["\n"]) == ("\n\nHi", True)
    assert _chat.cut_at_stop("  \n ", ["\n", " "]) == ("  \n ", False)
    assert _chat.ContentTracker(["\n"]).feed("\nHi\nthere") == "\nHi"


# ----- create_chat_completion --------------------------------------------------------------


def test_create_chat_completion_has_the_openai_shape_and_counts(llm):
    out = llm.create_chat_completion(QUESTION, max_tokens=6)
    assert set(out) == {"id", "object", "created", "model", "choices", "usage", "pardec"}
    assert out["object"] == "chat.completion" and out["id"].startswith("chatcmpl-")
    assert isinstance(out["created"], int) and out["created"] > 1_600_000_000
    assert out["model"] == llm.model_path
    [choice] = out["choices"]
    assert set(choice) == {"index", "message", "logprobs", "finish_reason"}
    assert choice["index"] == 0 and choice["message"]["role"] == "assistant"
    assert choice["finish_reason"] == "length"  # 6 tokens cannot finish the answer
    usage = out["usage"]
    prompt = llm.chat(QUESTION)
    with pardec.Session(llm) as s:
        # The prompt's tokens, counted another way (score tokenizes the text on its own).
        assert usage["prompt_tokens"] == len(s.score("x", prompt))
        s.clear()
        s.prompt(prompt)
        want = s.generate_text(max_tokens=6)
    assert choice["message"]["content"] == want and want
    assert usage["completion_tokens"] == 6
    assert usage["total_tokens"] == usage["prompt_tokens"] + 6
    info = out["pardec"]
    assert info["protocol"] is None and info["report"] is None
    assert info["stats"]["tokens_total"] == 6 and info["stats"]["blocks"] == 0
    assert set(info["stats"]) == {f.name for f in dataclasses.fields(pardec.Stats)}
    # Another id per call; the model's name can be given.
    again = llm.create_chat_completion(QUESTION, max_tokens=6, model="smol")
    assert again["id"] != out["id"] and again["model"] == "smol"
    assert again["choices"][0]["message"]["content"] == want


def test_stop_strings_end_the_content_before_them(llm):
    full = llm.create_chat_completion(QUESTION, max_tokens=12)["choices"][0]["message"]["content"]
    words = full.split()
    assert len(words) >= 4, full
    stop = words[3]
    out = llm.create_chat_completion(QUESTION, max_tokens=12, stop=[stop, "never appears"])
    assert out["choices"][0]["message"]["content"] == full[: full.index(stop)]
    assert out["choices"][0]["finish_reason"] == "stop"
    assert out["usage"]["completion_tokens"] < 12  # decoding stopped there
    chunks = list(llm.create_chat_completion(QUESTION, max_tokens=12, stop=stop, stream=True))
    assert content_of(chunks) == full[: full.index(stop)]
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_sampling_keywords_and_unsupported_ones(llm):
    greedy = llm.create_chat_completion(QUESTION, max_tokens=8)
    sampled = [llm.create_chat_completion(QUESTION, max_tokens=8, temperature=1.5, top_k=50, seed=s)
               for s in (1, 1, 2)]
    texts = [o["choices"][0]["message"]["content"] for o in sampled]
    assert texts[0] == texts[1]  # reproducible for a seed
    assert len({greedy["choices"][0]["message"]["content"], *texts}) >= 2  # sampling changed something
    # Keywords pardec does not implement are fine at their "off" values ...
    llm.create_chat_completion(QUESTION, max_tokens=1, tools=None, presence_penalty=0.0,
                               repeat_penalty=1.0, logprobs=False, typical_p=1, grammar=None,
                               response_format=None, mirostat_mode=0)
    # ... and refused otherwise; unknown ones and bad values too.
    for kw, words in (({"tools": [{"type": "function"}]}, "does not support tools="),
                      ({"mirostat_mode": 2}, "mirostat_mode=2"),
                      ({"grammar": 3}, "grammar must be GBNF text"),
                      ({"response_format": "json"}, "response_format must be a dict"),
                      ({"repeat_penalty": "strong"}, "repeat_penalty must be a number"),
                      ({"logprobs": 1}, "logprobs must be a bool"),
                      ({"logit_bias": [(1, 2.0)]}, "logit_bias must be a mapping"),
                      ({"max_tokenz": 3}, "unexpected keyword argument 'max_tokenz'"),
                      ({"temperature": "hot"}, "temperature must be a number"),
                      ({"stream": "yes"}, "stream must be a bool"),
                      ({"protocol": 3}, "protocol must be str")):
        with pytest.raises(TypeError, match=None) as info:
            llm.create_chat_completion(QUESTION, max_tokens=1, **kw)
        assert words in str(info.value), (kw, str(info.value))
    with pytest.raises(ValueError, match="plain generation only"):
        llm.create_chat_completion(QUESTION, max_tokens=1, logprobs=True, protocol="multiverse")
    with pytest.raises(ValueError, match="needs logprobs=True"):
        llm.create_chat_completion(QUESTION, max_tokens=1, top_logprobs=2)
    with pytest.raises(ValueError, match="not a token id"):
        llm.create_chat_completion(QUESTION, max_tokens=1, logit_bias={"seven": 1.0})
    with pytest.raises(ValueError, match="needs a protocol"):
        llm.create_chat_completion(QUESTION, max_tokens=1, response_prefix="<Parallel>")
    with pytest.raises(pardec.PardecError) as e:
        llm.create_chat_completion(QUESTION, max_tokens=1, protocol="no-such-protocol")
    assert e.value.status == pardec.Status.INVALID_ARGUMENT


def test_a_protocol_decodes_in_parallel_and_reports_it(llm):
    out = llm.create_chat_completion(QUESTION, max_tokens=16, protocol="multiverse", max_branch_tokens=6,
                                     response_prefix=FORCED_BLOCK)
    content = out["choices"][0]["message"]["content"]
    assert content.startswith(FORCED_BLOCK) and "<Path>\n1:" in content and "<Path>\n2:" in content
    info = out["pardec"]
    assert info["protocol"] == "multiverse"
    assert [b["labels"] for b in info["report"]["blocks"]] == [["1", "2"]]
    assert info["stats"]["blocks"] == 1 and info["stats"]["branches"] == 2
    assert info["stats"]["tokens_branch"] > 0 and info["stats"]["dp"] > 0
    assert out["usage"]["completion_tokens"] == info["stats"]["tokens_total"]


def test_skeleton_of_thought_needs_no_adapter(llm):
    ask = [{"role": "user", "content": "What are the benefits of regular exercise?"}]
    out = llm.create_chat_completion(ask, protocol=pardec.SOT, max_tokens=120, max_branch_tokens=24)
    content, info = out["choices"][0]["message"]["content"], out["pardec"]
    lines = content.split("\n")
    assert info["protocol"] == "sot" and len(info["report"]["blocks"]) == 1
    titles = info["report"]["blocks"][0]["titles"]
    assert len(lines) == len(titles) >= 2
    assert all(line.startswith(f"{i + 1}.") and t in line for i, (line, t) in enumerate(zip(lines, titles)))
    assert info["stats"]["tokens_branch"] > 0 and out["choices"][0]["finish_reason"] == "stop"
    # Streamed: the assembled answer arrives whole at the end, and is the same.
    chunks = list(llm.create_chat_completion(ask, protocol="sot", max_tokens=120, max_branch_tokens=24,
                                             stream=True))
    assert content_of(chunks) == content
    # One question: other turns would be left out of SoT's request, so they are refused.
    with pytest.raises(ValueError):
        llm.create_chat_completion(ask + [{"role": "assistant", "content": "x"}, ask[0]], protocol="sot")
    with pytest.raises(ValueError):
        llm.create_chat_completion(ask, protocol="sot", stop=["\n"])


# ----- streaming ---------------------------------------------------------------------------


def test_streamed_chunks_concatenate_to_the_completion(llm):
    whole = llm.create_chat_completion(QUESTION, max_tokens=10)
    stream = llm.create_chat_completion(QUESTION, max_tokens=10, stream=True)
    assert isinstance(stream, pardec.ChatCompletionStream)
    assert not stream_threads()  # lazy: nothing runs before the first next()
    chunks = list(stream)
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == stream.id for c in chunks)
    assert all(set(c["choices"][0]) == {"index", "delta", "logprobs", "finish_reason"} for c in chunks)
    first, middle, last = chunks[0], chunks[1:-1], chunks[-1]
    assert first["choices"][0]["delta"] == {"role": "assistant"}
    assert first["choices"][0]["finish_reason"] is None
    assert len(middle) >= 2  # token by token, not all at once
    assert all(set(c["choices"][0]["delta"]) == {"content"} and c["choices"][0]["finish_reason"] is None
               for c in middle)
    assert last["choices"][0]["delta"] == {} and last["choices"][0]["finish_reason"] == "length"
    assert content_of(chunks) == whole["choices"][0]["message"]["content"]
    assert last["usage"] == whole["usage"]
    assert last["pardec"]["stats"]["tokens_total"] == whole["pardec"]["stats"]["tokens_total"]
    assert stream.closed and not stream_threads()
    assert list(stream) == []


def test_streaming_yields_while_decoding(llm):
    with llm.create_chat_completion(QUESTION, max_tokens=64, stream=True) as stream:
        next(stream)  # the role
        first = next(stream)
        assert first["choices"][0]["delta"]["content"]
        # The decoding thread runs at most a few items ahead of the reader, so the first
        # content arrived long before the 64 tokens were decoded.
        assert stream.tokens_decoded <= 2 + _chat.STREAM_QUEUE_SIZE + 2 < 64
        assert stream_threads()


def test_streamed_auto_mode_concatenates_to_the_completion(llm):
    kw = dict(max_tokens=16, protocol="multiverse", max_branch_tokens=6, response_prefix=FORCED_BLOCK)
    whole = llm.create_chat_completion(QUESTION, **kw)
    chunks = list(llm.create_chat_completion(QUESTION, stream=True, **kw))
    assert chunks[1]["choices"][0]["delta"]["content"] == FORCED_BLOCK  # known at once
    assert content_of(chunks) == whole["choices"][0]["message"]["content"]
    assert chunks[-1]["pardec"]["report"] == whole["pardec"]["report"]


def test_closing_a_stream_early_cancels_the_decoding(llm):
    stream = llm.create_chat_completion(QUESTION, max_tokens=64, stream=True)
    got = [next(stream) for _ in range(3)]
    assert content_of(got)
    stream.close()
    assert stream.closed and not stream_threads()
    assert stream.tokens_decoded < 64
    stream.close()  # twice is fine
    with pytest.raises(StopIteration):
        next(stream)
    # The model is as good as before.
    assert llm.create_chat_completion(QUESTION, max_tokens=2)["usage"]["completion_tokens"] == 2


def test_an_abandoned_stream_is_cancelled_when_dropped(llm):
    for i, chunk in enumerate(llm.create_chat_completion(QUESTION, max_tokens=64, stream=True)):
        if i == 2:
            break
    # CPython dropped the stream at the loop's end: its thread was stopped and joined.
    assert not stream_threads()
    # A stream never started has no thread to stop.
    never = llm.create_chat_completion(QUESTION, max_tokens=64, stream=True)
    del never
    assert not stream_threads()


def test_an_error_while_streaming_is_raised_by_next(llm):
    stream = llm.create_chat_completion(QUESTION, max_tokens=4, protocol="no-such-protocol", stream=True)
    assert next(stream)["choices"][0]["delta"] == {"role": "assistant"}
    with pytest.raises(pardec.PardecError) as e:
        next(stream)
    assert e.value.status == pardec.Status.INVALID_ARGUMENT
    assert stream.closed and not stream_threads()


def test_streams_on_threads_and_a_stream_left_open_at_exit(llm, model_file):
    want = llm.create_chat_completion(QUESTION, max_tokens=6)["choices"][0]["message"]["content"]
    got = [None] * 3

    def worker(i):
        got[i] = content_of(llm.create_chat_completion(QUESTION, max_tokens=6, stream=True))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == [want] * 3
    # A half-read stream at interpreter exit: the exit hook stops its thread.
    code = f"""
import pardec
llm = pardec.Model(model_path={str(model_file)!r}, n_ctx=256, n_threads=1)
s = llm.create_chat_completion([("user", "Count to fifty.")], max_tokens=200, stream=True)
next(s); next(s)
print("ok")
"""
    pkg = str(Path(pardec.__file__).resolve().parents[1])
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": pkg})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
    assert "Traceback" not in out.stderr and "Exception ignored" not in out.stderr, out.stderr


# ----- penalties, biases, log-probabilities, stop strings in auto mode -----------------------


def chunk_logprobs(chunks):
    return [e for c in chunks if c["choices"][0]["logprobs"] for e in c["choices"][0]["logprobs"]["content"]]


def test_chat_logprobs_have_the_openai_shape(llm):
    out = llm.create_chat_completion(QUESTION, max_tokens=8, logprobs=True, top_logprobs=3)
    [choice] = out["choices"]
    content = choice["message"]["content"]
    assert content == llm.create_chat_completion(QUESTION, max_tokens=8)["choices"][0]["message"]["content"]
    lp = choice["logprobs"]
    assert set(lp) == {"content", "refusal"} and lp["refusal"] is None
    entries = lp["content"]
    assert len(entries) == 8
    assert "".join(e["token"] for e in entries) == content
    assert bytes(b for e in entries for b in e["bytes"]) == content.encode()
    for e in entries:
        assert set(e) == {"token", "logprob", "bytes", "top_logprobs"}
        assert e["logprob"] <= 0 and len(e["top_logprobs"]) == 3
        assert all(set(t) == {"token", "logprob", "bytes"} for t in e["top_logprobs"])
        assert e["top_logprobs"][0]["bytes"] == e["bytes"]  # greedy: the most likely token
        lps = [t["logprob"] for t in e["top_logprobs"]]
        assert lps == sorted(lps, reverse=True)
    # Without top_logprobs: the tokens alone; without logprobs: None, as before.
    bare = llm.create_chat_completion(QUESTION, max_tokens=8, logprobs=True)["choices"][0]["logprobs"]["content"]
    assert [(e["token"], e["logprob"]) for e in bare] == [(e["token"], e["logprob"]) for e in entries]
    assert all(e["top_logprobs"] == [] for e in bare)
    assert llm.create_chat_completion(QUESTION, max_tokens=2, logprobs=False)["choices"][0]["logprobs"] is None
    # Streamed: each content chunk carries the entries of its tokens.
    chunks = list(llm.create_chat_completion(QUESTION, max_tokens=8, logprobs=True, top_logprobs=3, stream=True))
    assert content_of(chunks) == content
    assert chunk_logprobs(chunks) == entries
    for c in chunks[1:-1]:
        assert "".join(e["token"] for e in c["choices"][0]["logprobs"]["content"]) == c["choices"][0]["delta"]["content"]
    assert chunks[0]["choices"][0]["logprobs"] is None and chunks[-1]["choices"][0]["logprobs"] is None


def test_chat_logprobs_cover_the_content_before_a_stop_string(llm):
    full = llm.create_chat_completion(QUESTION, max_tokens=12, logprobs=True)
    words = full["choices"][0]["message"]["content"].split()
    stop = words[2][1:]  # the middle of a word: the token holding the stop starts before it
    out = llm.create_chat_completion(QUESTION, max_tokens=12, stop=[stop], logprobs=True)
    content = out["choices"][0]["message"]["content"]
    assert stop not in content and out["choices"][0]["finish_reason"] == "stop"
    entries = out["choices"][0]["logprobs"]["content"]
    joined = bytes(b for e in entries for b in e["bytes"])
    # Every token that starts in the content, and only those (the last one may run past it).
    assert joined.startswith(content.encode()) and len(joined) - len(entries[-1]["bytes"]) < len(content.encode())
    assert entries == full["choices"][0]["logprobs"]["content"][: len(entries)]
    chunks = list(llm.create_chat_completion(QUESTION, max_tokens=12, stop=[stop], logprobs=True, stream=True))
    assert content_of(chunks) == content and chunk_logprobs(chunks) == entries


def test_chat_penalties_and_logit_bias(llm):
    desk = [{"role": "user", "content": "Four tips for desk workers"}]
    greedy = llm.create_chat_completion(desk, max_tokens=24, logprobs=True)
    text = greedy["choices"][0]["message"]["content"]
    penalised = llm.create_chat_completion(desk, max_tokens=24, repeat_penalty=1.3)["choices"][0]["message"]["content"]
    assert penalised != text
    assert llm.create_chat_completion(desk, max_tokens=24, frequency_penalty=1.0,
                                      presence_penalty=1.0)["choices"][0]["message"]["content"] != text
    # Ban the greedy first token: by id, or by its decimal string as JSON has it.
    first = bytes(greedy["choices"][0]["logprobs"]["content"][0]["bytes"])
    [token] = llm.tokenize(first, add_bos=False)
    for key in (token, str(token)):
        out = llm.create_chat_completion(desk, max_tokens=4, logit_bias={key: float("-inf")})
        assert not out["choices"][0]["message"]["content"].encode().startswith(first)
    # Out of range: the library refuses it (when the session is made).
    with pytest.raises(pardec.PardecError) as e:
        llm.create_chat_completion(desk, max_tokens=1, repeat_penalty=0.0)
    assert e.value.status == pardec.Status.INVALID_ARGUMENT
    with pytest.raises(pardec.PardecError) as e:
        llm.create_chat_completion(desk, max_tokens=1, logprobs=True, top_logprobs=101)
    assert e.value.status == pardec.Status.INVALID_ARGUMENT
    assert not stream_threads()


def test_stop_strings_in_auto_mode(llm):
    kw = dict(max_tokens=60, protocol="multiverse", max_branch_tokens=10, response_prefix=FORCED_BLOCK)
    # Greedily the trunk writes "<Outline>3: Banana" after the first block.
    out = llm.create_chat_completion(QUESTION, stop=["Banana"], **kw)
    content = out["choices"][0]["message"]["content"]
    assert content.startswith(FORCED_BLOCK) and "<Path>\n1:" in content
    assert "Banana" not in content and content.endswith("3: ")
    assert out["choices"][0]["finish_reason"] == "stop"
    assert out["pardec"]["stats"]["blocks"] == 1
    chunks = list(llm.create_chat_completion(QUESTION, stop="Banana", stream=True, **kw))
    assert content_of(chunks) == content
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
