"""Penalties, logit biases, log-probabilities, the tokenizer and stop-string options (0.5), on
the real default model. Every comparison is between greedy runs, which are deterministic;
generations stay short (a 2-core CI)."""

from __future__ import annotations

import json
import math

import pytest

import pardec
from pardec import PardecError, Status, TRUNK

PROMPT = "The three primary colors are"
DESK = [("user", "Four tips for desk workers")]


def repeated_windows(tokens, k=8):
    """How many k-token windows of ``tokens`` already occurred earlier."""
    windows = [tuple(tokens[i:i + k]) for i in range(len(tokens) - k + 1)]
    return len(windows) - len(set(windows))


def greedy_first_token(model, prompt=PROMPT, **kw):
    with pardec.Session(model, n_ctx=256, n_threads=1, **kw) as s:
        s.prompt(prompt)
        events = []
        text = s.generate_text(max_tokens=4, ban_eog=True, on_event=events.append)
    return [e.token for e in events if e.kind == "token" and e.token >= 0][0], text


# ----- penalties and biases ----------------------------------------------------------------


def test_penalties_break_a_greedy_loop(model):
    # Greedily, this branch repeats its "Use a standing desk" point over and over.
    prompt = model.chat(DESK)
    runs = {}
    for name, kw in (("greedy", {}), ("repeat", {"repeat_penalty": 1.3}),
                     ("frequency", {"frequency_penalty": 0.5, "presence_penalty": 0.5, "penalty_last_n": -1})):
        with pardec.Session(model, n_ctx=512, max_branches=2, n_threads=1, **kw) as s:
            s.prompt(prompt)
            s.fork(["1. Posture:"], max_tokens=56, ban_eog=True)
            events = []
            s.run(on_event=events.append)
            tokens = [e.token for e in events if e.kind == "token" and e.token >= 0]
            runs[name] = (s.result().blocks[0].branches[0].text, repeated_windows(tokens))
    text, loops = runs["greedy"]
    assert loops >= 5, runs
    for name in ("repeat", "frequency"):
        assert runs[name][0] != text and runs[name][1] < loops, runs
    # penalty_last_n=0 turns the penalties off: the greedy text again.
    with pardec.Session(model, n_ctx=512, max_branches=2, n_threads=1, repeat_penalty=1.3, penalty_last_n=0) as s:
        s.prompt(prompt)
        s.fork(["1. Posture:"], max_tokens=56, ban_eog=True)
        s.run()
        assert s.result().blocks[0].branches[0].text == text


def test_a_banned_first_token_changes_the_greedy_text(model):
    first, text = greedy_first_token(model)
    banned_first, banned_text = greedy_first_token(model, logit_bias={first: float("-inf")})
    assert banned_first != first and banned_text != text
    # A large positive bias forces a token; a bias on another token changes nothing.
    forced, _ = greedy_first_token(model, logit_bias={42: 100.0})
    assert forced == 42
    assert greedy_first_token(model, logit_bias={42: -1.0}) == (first, text)


def test_the_models_keywords_are_its_sessions_defaults(model_file):
    with pardec.Model(model_file, logit_bias={42: 100.0}, logprobs=2, repeat_penalty=1.1) as m:
        first, _ = greedy_first_token(m)
        assert first == 42
        with pardec.Session(m, n_ctx=256, n_threads=1) as s:
            s.prompt(PROMPT)
            events = []
            s.generate_text(max_tokens=2, on_event=events.append)
            assert all(len(e.top_logprobs) == 2 for e in events if e.kind == "token" and e.token >= 0)
        # An explicit keyword wins over the model's.
        assert greedy_first_token(m, logit_bias={})[0] != 42


def test_out_of_range_values_raise_invalid_argument(model):
    for kw in ({"repeat_penalty": 0}, {"repeat_penalty": -1.0}, {"repeat_penalty": math.nan},
               {"frequency_penalty": math.inf}, {"penalty_last_n": -2}, {"logprobs": 101},
               {"logprobs": -2}, {"logit_bias": {-1: 1.0}}, {"logit_bias": {model.n_vocab: 1.0}},
               {"logit_bias": {5: math.nan}}, {"logit_bias": {5: math.inf}},
               {"logprobs": 2, "device_candidates": 8}, {"repeat_penalty": 1.2, "device_candidates": 8}):
        with pytest.raises(PardecError) as e:
            pardec.Session(model, n_ctx=256, n_threads=1, **kw)
        assert e.value.status == Status.INVALID_ARGUMENT, kw
        assert e.value.message, kw
    # Wrong types and values a C type cannot hold are refused before the library sees them.
    for kw, exc, words in (({"logit_bias": [(5, 1.0)]}, TypeError, "logit_bias must be a mapping"),
                           ({"logit_bias": {"5": 1.0}}, TypeError, "logit_bias token must be int"),
                           ({"logit_bias": {5: "up"}}, TypeError, "logit_bias value must be a number"),
                           ({"logit_bias": {2**31: 1.0}}, ValueError, "logit_bias token"),
                           ({"repeat_penalty": "1.1"}, TypeError, "repeat_penalty must be a number"),
                           ({"penalty_last_n": 2**31}, ValueError, "penalty_last_n"),
                           ({"logprobs": 1.5}, TypeError, "logprobs must be int"),
                           ({"logprobs": True}, TypeError, "logprobs must be int")):
        with pytest.raises(exc, match=words):
            pardec.Session(model, n_ctx=256, n_threads=1, **kw)
    # The maximum is fine.
    with pardec.Session(model, n_ctx=256, n_threads=1, logprobs=100) as s:
        s.prompt(PROMPT)
        assert s.generate_text(max_tokens=1, ban_eog=True)


# ----- log-probabilities -------------------------------------------------------------------


def test_token_events_and_the_result_carry_log_probabilities(model):
    with pardec.Session(model, n_ctx=512, max_branches=2, n_threads=1, logprobs=3) as s:
        s.prompt(PROMPT)
        events = []
        text = s.generate_text(max_tokens=6, ban_eog=True, on_event=events.append)
        tokens = [e for e in events if e.kind == "token" and e.token >= 0]
        assert len(tokens) == 6
        for e in tokens:
            assert e.logprob <= 0
            assert len(e.top_logprobs) == 3
            assert e.top_logprobs[0][0] == e.token  # greedy picks the most likely token
            assert e.top_logprobs[0][1] == pytest.approx(e.logprob)
            lps = [lp for _, lp in e.top_logprobs]
            assert lps == sorted(lps, reverse=True)
        assert all(e.logprob is None and e.top_logprobs is None for e in events if e.kind != "token")
        r = s.result()
        trunk = r.logprobs[TRUNK]
        assert [(t.token, t.logprob, t.top) for t in trunk] == [(e.token, e.logprob, e.top_logprobs) for e in tokens]
        assert [t.pos for t in trunk] == list(range(trunk[0].pos, trunk[0].pos + 6))
        assert s.logprobs() == trunk
        # Branches have their own, keyed by their node.
        s.append("\n")
        nodes = s.fork(["1."], max_tokens=3, ban_eog=True)
        branch_events = []
        s.run(on_event=branch_events.append)
        r = s.result()
        assert r.blocks[0].branches[0].node == nodes[0]
        branch = r.logprobs[nodes[0]]
        assert [t.token for t in branch] == [e.token for e in branch_events if e.kind == "token" and e.token >= 0]
        assert len(branch) == 3 and all(len(t.top) == 3 for t in branch)
        assert r.logprobs[TRUNK] == trunk  # the prefix and appended text are not generated
        assert s.logprobs(nodes[0]) == branch and s.logprobs(999) == []
        assert text


def test_a_session_without_logprobs_records_none(session):
    session.prompt(PROMPT)
    events = []
    session.generate_text(max_tokens=3, ban_eog=True, on_event=events.append)
    assert all(e.logprob is None and e.top_logprobs is None for e in events)
    assert session.result().logprobs == {TRUNK: []}
    assert session.completion_logprobs() == {"tokens": [], "text_offset": [], "token_logprobs": [],
                                             "top_logprobs": []}
    # logprobs=0: the token's own log-probability, no alternatives.
    with pardec.Session(session.model, n_ctx=256, n_threads=1, logprobs=0) as s:
        s.prompt(PROMPT)
        events = []
        s.generate_text(max_tokens=2, ban_eog=True, on_event=events.append)
        assert all(e.logprob <= 0 and e.top_logprobs == [] for e in events if e.kind == "token")


def test_completion_logprobs_have_llama_cpp_pythons_shape(model):
    with pardec.Session(model, n_ctx=256, n_threads=1, logprobs=2) as s:
        s.prompt(model.chat([("user", "Say 'café' twice.")]))
        text = s.generate_text(max_tokens=12, ban_eog=True)
        lp = s.completion_logprobs()
        entries = s.logprobs()
    assert set(lp) == {"tokens", "text_offset", "token_logprobs", "top_logprobs"}
    assert all(len(lp[k]) == 12 for k in lp)
    assert lp["token_logprobs"] == [e.logprob for e in entries]
    assert lp["tokens"] == [model.token_to_piece(e.token).decode("utf-8", "ignore") for e in entries]
    # Character offsets into the generated text: each token's text starts there.
    assert lp["text_offset"][0] == 0 and lp["text_offset"] == sorted(lp["text_offset"])
    for token, offset in zip(lp["tokens"], lp["text_offset"]):
        assert text[offset:].startswith(token)
    for top, entry in zip(lp["top_logprobs"], entries):
        assert isinstance(top, dict) and 2 <= len(top) <= 3  # the top 2, and the chosen token
        assert top[model.token_to_piece(entry.token).decode("utf-8", "ignore")] == entry.logprob
        assert all(v <= 0 for v in top.values())


# ----- tokenizer -----------------------------------------------------------------------------


def test_tokenize_and_detokenize_round_trip(model):
    for text in ("Hello, world!", "héllo → 日本語 🎉 naïve", " leading space\nand lines\n", "日本語🎉" * 80):
        ids = model.tokenize(text, add_bos=False)
        assert ids and all(isinstance(t, int) and 0 <= t < model.n_vocab for t in ids)
        assert model.detokenize(ids) == text.encode()
        assert model.tokenize(text.encode(), add_bos=False) == ids  # bytes, as llama-cpp-python takes
    # More tokens than bytes / 2: the first guess of the buffer is too small and is grown.
    many = "日本語🎉" * 80
    assert len(model.tokenize(many, add_bos=False)) > len(many.encode()) // 2 + 8
    assert model.tokenize("", add_bos=False) == []
    assert model.detokenize([]) == b""
    # SmolLM2's metadata asks for no start token: add_bos changes nothing here.
    assert model.tokenize("Hello", add_bos=True) == model.tokenize("Hello", add_bos=False)


def test_special_tokens_parse_only_when_asked(model):
    text = "<|im_start|>user"
    special = model.tokenize(text, add_bos=False, special=True)
    plain = model.tokenize(text, add_bos=False)
    assert len(special) == 2 and len(plain) > 3
    assert model.token_to_piece(special[0]) == b"<|im_start|>"
    assert model.detokenize(special) == model.detokenize(plain) == text.encode()


def test_token_pieces_and_special_token_ids(model):
    pieces = [model.token_to_piece(t) for t in model.tokenize("Hello world", add_bos=False)]
    assert b"".join(pieces) == b"Hello world" and all(isinstance(p, bytes) for p in pieces)
    # A character split over tokens: pieces that are not UTF-8 on their own.
    split = [model.token_to_piece(t) for t in model.tokenize("🎉", add_bos=False)]
    assert b"".join(split) == "🎉".encode()
    special = model.special_tokens()
    assert set(special) == {"bos", "eos", "eot", "sep", "nl", "pad"}
    for value in special.values():
        assert isinstance(value, int) and (value == -1 or 0 <= value < model.n_vocab)
    assert (model.token_bos(), model.token_eos(), model.token_eot(), model.token_nl()) == (
        special["bos"], special["eos"], special["eot"], special["nl"])
    assert model.token_to_piece(model.token_nl()) == b"\n"
    assert model.is_eog(model.token_eos()) and not model.is_eog(model.token_nl())
    assert model.token_to_piece(model.token_eos()) == b"<|im_end|>"


def test_tokenizer_misuse_raises(model):
    for call in (lambda: model.token_to_piece(-1), lambda: model.token_to_piece(model.n_vocab),
                 lambda: model.is_eog(-5), lambda: model.is_eog(model.n_vocab),
                 lambda: model.detokenize([1, 2, model.n_vocab + 10])):
        with pytest.raises(PardecError) as e:
            call()
        assert e.value.status == Status.INVALID_ARGUMENT and "vocabulary" in e.value.message
    with pytest.raises(PardecError) as e:
        model.tokenize(b"\xff\xfe", add_bos=False)
    assert e.value.status == Status.INVALID_UTF8
    for call, exc in ((lambda: model.tokenize("a\0b"), ValueError), (lambda: model.tokenize(b"a\0b"), ValueError),
                      (lambda: model.tokenize(42), TypeError), (lambda: model.token_to_piece(2**31), ValueError),
                      (lambda: model.token_to_piece("a"), TypeError), (lambda: model.detokenize("abc"), TypeError)):
        with pytest.raises(exc):
            call()


def test_tokenizer_of_a_closed_model_raises(model_file):
    m = pardec.Model(model_file)
    m.close()
    for call in (lambda: m.tokenize("x"), lambda: m.token_to_piece(5), m.special_tokens, lambda: m.is_eog(2)):
        with pytest.raises(pardec.ClosedError):
            call()


# ----- stop strings ----------------------------------------------------------------------------


def test_strip_stop_returns_the_text_before_the_stop(session):
    prompt = session.model.chat(DESK)
    session.prompt(prompt)
    full = session.generate_text(max_tokens=24, ban_eog=True)
    stop = "Goals"
    assert stop in full
    for strip in (False, True):
        session.clear()
        session.prompt(prompt)
        events = []
        text = session.generate_text(max_tokens=24, stop=[stop], strip_stop=strip, on_event=events.append)
        want = full[: full.index(stop)] + ("" if strip else stop)
        assert text == want
        assert [e.stop_string for e in events if e.kind == "end"] == [stop]
        # The session keeps every token either way.
        assert session.result().text == prompt + full[: full.index(stop) + len(stop)]
        # The iterator's text too.
        session.clear()
        session.prompt(prompt)
        gen = session.generate(max_tokens=24, stop=[stop], strip_stop=strip)
        list(gen)
        assert gen.text == want


def test_strip_stop_cuts_where_the_last_token_completed_the_stop(model):
    # With "\n" banned the model ends the line with a "\n\n" token: the stop "\n" is the
    # first of its two newlines, and the text ends before it.
    with pardec.Session(model, n_ctx=512, n_threads=1, logit_bias={model.token_nl(): float("-inf")}) as s:
        s.prompt(model.chat(DESK))
        gen = s.generate(max_tokens=60, stop=["\n"], strip_stop=True)
        events = list(gen)
        assert [e.text for e in events if e.kind == "token"][-1] == "\n\n"
        assert gen.text and not gen.text.endswith("\n")
        s.clear()
        s.prompt(model.chat(DESK))
        text = s.generate_text(max_tokens=60, stop=["\n"], strip_stop=True)
    assert text == gen.text


def test_generate_auto_ends_at_a_trunk_stop_string(model):
    prompt = model.chat([("user", "Name two fruits.")])
    forced = "<Parallel>\n<Goal>\n<Outline>1: Apple</Outline>\n<Outline>2: Pear</Outline>\n</Goal>"
    with pardec.Session(model, n_ctx=1024, max_branches=4, n_threads=1) as s:
        s.prompt(prompt)
        events = []
        # Greedily the trunk outlines "3: Banana" after the first block (60 tokens without a stop).
        s.generate_auto("multiverse", max_tokens=60, max_branch_tokens=10, response_prefix=forced,
                        on_event=events.append, stop="Banana")  # one str is one stop string
        text = s.result().text
    trunk_ends = [(e.stop_reason, e.stop_string) for e in events if e.kind == "end" and e.is_trunk]
    assert trunk_ends[-1] == ("stop_string", "Banana")
    # It ended at the token that completed the stop (which the session keeps), after the block.
    assert text.index("Banana") > text.index("</Path>") and text.rstrip().endswith("Banana")
    assert [e.kind for e in events].count("fork") == 1  # the second block never opened
    with pardec.Session(model, n_ctx=256, n_threads=1) as s:
        s.prompt(prompt)
        with pytest.raises(ValueError, match="stop string contains a NUL"):
            s.generate_auto("multiverse", max_tokens=4, stop=["a\0"])


def test_json_grammar_branches_write_json_and_bad_grammars_raise(model):
    with pardec.Session(model, n_ctx=1024, n_threads=1, temperature=0.8, seed=2) as s:
        s.prompt(model.chat([("user", "Describe a cat as a JSON object.")]))
        with pytest.raises(pardec.PardecError) as err:
            s.generate_text(max_tokens=4, grammar='root ::= "a')
        assert err.value.status == pardec.Status.INVALID_ARGUMENT
        prefixes = ["Cat:", "Dog:"]
        nodes = s.fork(prefixes, max_tokens=160, grammar=pardec.json_object_grammar())
        s.run()
        result = s.result()
        for branch, prefix in zip(result.blocks[0].branches, prefixes):
            # The grammar constrains the sampled text, after the branch's prefix.
            assert branch.text.startswith(prefix), branch.text
            body = branch.text[len(prefix):]
            if branch.stop_reason == "eog":
                assert isinstance(json.loads(body), dict), body
            else:
                assert body.startswith("{"), body
        assert len(nodes) == 2


PET_SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
              "required": ["name", "age"], "additionalProperties": False}


def test_json_schema_grammars_and_bad_schemas(model):
    gbnf = pardec.json_schema_grammar(PET_SCHEMA)
    assert "root" in gbnf and gbnf == pardec.json_schema_grammar(json.dumps(PET_SCHEMA))
    for bad in ('{"type": "object"', {"type": "no-such-type"}):
        with pytest.raises(pardec.PardecError) as err:
            pardec.json_schema_grammar(bad)
        assert err.value.status == pardec.Status.INVALID_ARGUMENT


def test_chat_completion_response_format_holds_the_answer_to_the_schema(model):
    messages = [{"role": "user", "content": "Describe a pet as JSON with its name and age."}]
    for fmt in ({"type": "json_object", "schema": PET_SCHEMA},
                {"type": "json_schema", "json_schema": {"name": "pet", "schema": PET_SCHEMA}}):
        out = model.create_chat_completion(messages, max_tokens=96, temperature=0.8, seed=3, response_format=fmt)
        content = out["choices"][0]["message"]["content"]
        if out["choices"][0]["finish_reason"] == "stop":
            value = json.loads(content)
            assert sorted(value) == ["age", "name"] and isinstance(value["age"], int), content
        else:
            assert content.startswith("{"), content
    anything = model.create_chat_completion(messages, max_tokens=96, temperature=0.8, seed=3,
                                            response_format={"type": "json_object"})
    assert anything["choices"][0]["message"]["content"].startswith("{")
    plain = model.create_chat_completion(messages, max_tokens=8, response_format={"type": "text"})
    assert plain["choices"][0]["message"]["content"]
    with pytest.raises(ValueError, match="json_object or json_schema"):
        model.create_chat_completion(messages, max_tokens=4, response_format={"type": "yaml"})
    with pytest.raises(ValueError, match="plain generation only"):
        model.create_chat_completion(messages, max_tokens=4, protocol="multiverse", grammar='root ::= "a"')
    with pytest.raises(ValueError, match="not both"):
        model.create_chat_completion(messages, max_tokens=4, grammar='root ::= "a"', response_format={"type": "text"})
