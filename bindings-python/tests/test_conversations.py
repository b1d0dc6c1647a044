"""Conversations: many requests decoding together in one context (``pardec_conversations``)."""

from __future__ import annotations

import pytest

import pardec
from pardec import PardecError, Status


@pytest.fixture
def conv(model):
    c = pardec.Conversations(model, n_ctx=2048, max_active=3, branches_per_request=2, cached_prompts=2,
                             n_threads=1)
    yield c
    c.close()


def test_a_request_alone_answers_as_a_session_does(model, conv):
    ask = [("user", "Name three fruits.")]
    rid = conv.submit(ask, max_tokens=16)
    out = conv.run()
    assert list(out) == [rid]
    with pardec.Session(model, n_ctx=512, n_threads=1) as s:
        s.prompt(model.chat(ask))
        alone = s.generate_text(max_tokens=16)
    assert out[rid].text == alone and alone
    assert out[rid].error is None and out[rid].generated_tokens <= 16
    assert out[rid].prompt_tokens == len(model.tokenize(model.chat(ask), special=True))


def test_requests_share_steps_stream_apart_and_wait_for_a_place(conv):
    questions = ["Name a color.", "Name a fruit.", "Name a color.", "Name a city."]
    ids = [conv.submit([("user", q)], max_tokens=10, ban_eog=True) for q in questions]
    streamed = {i: "" for i in ids}
    steps = 0

    def on_event(request, ev):
        if ev.kind == "token" and ev.is_trunk:
            streamed[request] += ev.text

    while conv.step(on_event):
        steps += 1
    out = {o.request: o for o in conv.outcomes()}
    assert sorted(out) == ids
    # Three at once, the fourth after them: about two answers' worth of steps, not four.
    assert steps <= 2 * 10 + 4
    assert all(o.generated_tokens == 10 and o.stop_reason == "max_tokens" for o in out.values())
    # The same question side by side answers the same; what streamed is the answer.
    assert out[ids[0]].text == out[ids[2]].text
    assert out[ids[1]].text != out[ids[0]].text
    assert all(streamed[i] == out[i].text for i in ids)
    assert out[ids[3]].queued_seconds > 0 and out[ids[0]].queued_seconds < out[ids[3]].queued_seconds
    assert conv.outcomes() == []


def test_a_chat_turn_reuses_the_cells_of_the_last_answer(model, conv):
    first = [("user", "Name a color.")]
    rid = conv.submit(first, max_tokens=8)
    answer = conv.run()[rid]
    assert answer.reused_tokens == 0
    second = first + [("assistant", answer.text), ("user", "Another one?")]
    rid2 = conv.submit(second, max_tokens=8)
    turn = conv.run()[rid2]
    assert turn.reused_tokens > answer.prompt_tokens
    assert turn.prompt_tokens == len(model.tokenize(model.chat(second), special=True))


def test_cancel_from_the_callback_and_by_id(conv):
    keep = conv.submit("The sky is", max_tokens=8, ban_eog=True)
    dropped = conv.submit("Grass is", max_tokens=8, ban_eog=True)
    queued = conv.submit("Snow is", max_tokens=8)
    assert conv.cancel(queued) and not conv.cancel(queued)
    seen = []

    def on_event(request, ev):
        seen.append(request)
        return request != dropped

    out = conv.run(on_event)
    assert list(out) == [keep]
    assert seen.count(dropped) == 1  # cancelled at its first event
    assert not conv.cancel(keep)  # finished


def test_a_protocol_request_beside_plain_ones(conv):
    forked = conv.submit([("user", "Name two colors.")], protocol="multiverse", max_tokens=12, max_branch_tokens=6)
    plain = conv.submit([("user", "Name two colors.")], max_tokens=12)
    out = conv.run()
    assert out[forked].error is None and out[forked].report.keys() == {"blocks", "warnings"}
    assert out[plain].report == {"blocks": [], "warnings": []}


def test_bad_requests_are_refused_by_name(model, conv):
    with pytest.raises(PardecError) as e:
        conv.submit("hi", protocol="no-such-protocol")
    assert e.value.status == Status.INVALID_ARGUMENT and "no-such-protocol" in e.value.message
    with pytest.raises(PardecError) as e:
        conv.submit("hi", protocol="apr")
    assert e.value.status == Status.INVALID_ARGUMENT
    with pytest.raises(PardecError) as e:
        conv.submit("hi", max_tokens=10**6)
    assert e.value.status == Status.PROMPT_TOO_LONG
    with pytest.raises(PardecError) as e:
        conv.submit("")
    assert e.value.status == Status.EMPTY_PROMPT
    with pytest.raises(PardecError) as e:
        conv.submit("hi", top_p=2.0)
    assert e.value.status == Status.INVALID_ARGUMENT
    with pytest.raises(ValueError):
        conv.submit("hi", max_tokens=-1)
    with pytest.raises(TypeError):
        pardec.Conversations(model, max_branches=3)
    with pytest.raises(PardecError) as e:
        pardec.Conversations(model, max_active=0)
    assert e.value.status == Status.INVALID_ARGUMENT
    assert conv.run() == {}  # nothing was queued by the refusals


def test_reentrant_calls_are_busy_and_a_raising_callback_cancels(conv):
    rid = conv.submit("Once upon a time", max_tokens=6)
    statuses = []

    def on_event(request, ev):
        try:
            conv.submit("again")
        except PardecError as e:
            statuses.append(e.status)
        raise RuntimeError("reader gone")

    with pytest.raises(pardec.Cancelled):
        while conv.step(on_event):  # the first step decodes the prompt: no event yet
            pass
    assert statuses and set(statuses) == {Status.BUSY}
    assert not conv.cancel(rid)  # the exception cancelled it
    assert conv.run() == {}


def test_close_twice_and_use_after_close(model):
    c = pardec.Conversations(model, n_ctx=512, max_active=1, branches_per_request=1, cached_prompts=0)
    c.close()
    c.close()
    assert c.closed
    with pytest.raises(pardec.ClosedError):
        c.submit("hi")


def test_log_probabilities_of_a_request_match_a_session_s(model, conv):
    ask = model.chat([("user", "Name three fruits.")])
    asked = conv.submit(ask, max_tokens=8, ban_eog=True, logprobs=2)
    beside = conv.submit([("user", "Name a city.")], max_tokens=8)
    out = conv.run()
    with pardec.Session(model, n_ctx=512, n_threads=1, logprobs=2) as s:
        s.prompt(ask)
        s.generate_text(max_tokens=8, ban_eog=True)
        want = s.logprobs()
    got = out[asked].logprobs
    assert [e.token for e in got] == [e.token for e in want] and len(got) == 8
    assert all(abs(g.logprob - w.logprob) < 1e-4 and len(g.top) == 2 for g, w in zip(got, want))
    assert out[beside].logprobs == []  # control: not asked, none recorded
    with pytest.raises(PardecError) as e:
        conv.submit(ask, protocol="multiverse", logprobs=1)
    assert e.value.status == Status.INVALID_ARGUMENT


def test_skeleton_of_thought_expands_its_points_as_branches(model, conv):
    question = "What are the benefits of regular exercise?"
    sot = conv.submit(question, protocol="sot", max_tokens=120, max_branch_tokens=24)
    plain = conv.submit([("user", "Name a city.")], max_tokens=8)
    events = []
    while conv.step(lambda request, ev: events.append((request, ev.kind, ev.label))):
        pass
    out = {o.request: o for o in conv.outcomes()}
    got = out[sot]
    assert got.error is None and out[plain].error is None
    # One block, one branch per point, and the answer is the points with their expansions, in
    # order (the prompt's batch shapes differ from a session's, so the text may differ from
    # Session.generate_sot's by a rounding flip: its structure may not).
    assert got.blocks == 1 and len(got.report["blocks"]) == 1
    titles = got.report["blocks"][0]["titles"]
    lines = got.text.split("\n")
    # At most branches_per_request (2) points are expanded.
    assert len(titles) == 2 and len(lines) == len(titles)
    assert all(line.startswith(f"{i + 1}.") and t in line for i, (line, t) in enumerate(zip(lines, titles)))
    assert all(len(line) > len(t) + 20 for line, t in zip(lines, titles))  # expanded
    assert got.stop_reason is None
    branch_tokens = [label for request, kind, label in events if request == sot and kind == "token" and label]
    assert set(branch_tokens) == {str(i + 1) for i in range(len(titles))}
    assert ("fork" in {k for r, k, _ in events if r == sot}) and not any(r == plain and k == "fork" for r, k, _ in events)
    with pytest.raises(ValueError):
        conv.submit([("user", "a"), ("assistant", "b"), ("user", "c")], protocol="sot")
