"""The Python package against the real default model: generation, fork/run/join, streaming,
cancellation, errors, closing, threads, interpreter exit. Generations stay short (a 2-core CI)."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest

import pardec
from pardec import Cancelled, ClosedError, PardecError, Status

PROMPT = "The three primary colors are"
PREFIXES = [" 1. Red:", " 2. Green:", " 3. Blue:"]


def test_model_queries(model):
    assert model.n_vocab > 1000
    assert model.architecture == "llama"
    chat = model.chat([("user", "hello")])
    assert "hello" in chat and "<|im_start|>" in chat


def test_generate_iterates_events_and_collects_text(session):
    session.prompt(PROMPT)
    gen = session.generate(max_tokens=8, ban_eog=True)
    events = list(gen)
    tokens = [e for e in events if e.kind == "token"]
    assert all(e.is_trunk and e.node == pardec.TRUNK for e in events)
    assert len([e for e in tokens if e.token >= 0]) == 8
    assert events[-1].kind == "end" and events[-1].stop_reason == "max_tokens"
    assert gen.text == "".join(e.text for e in tokens) and gen.text
    assert session.result().text == PROMPT + gen.text
    # Exhausted: iterating again yields nothing.
    assert list(gen) == []


def test_iterator_and_one_call_generation_agree(model):
    # The step-by-step iterator and the single C call decode the same greedy tokens.
    texts = []
    for one_call in (False, True):
        with pardec.Session(model, n_ctx=256, n_threads=1) as s:
            s.prompt(PROMPT)
            if one_call:
                texts.append(s.generate_text(max_tokens=10, ban_eog=True))
            else:
                gen = s.generate(max_tokens=10, ban_eog=True)
                for _ in gen:
                    pass
                texts.append(gen.text)
    assert texts[0] == texts[1] and texts[0]


def test_device_selection_gives_the_host_text_and_reports_host_time(model):
    # Candidates chosen on the backend (llama.cpp's top-k chain) pick the host's greedy tokens.
    texts = []
    for device_candidates in (0, 16):
        with pardec.Session(model, n_ctx=256, n_threads=1, device_candidates=device_candidates) as s:
            s.prompt(PROMPT)
            texts.append(s.generate_text(max_tokens=12, ban_eog=True))
            assert s.stats().host_us_per_step > 0
    assert texts[0] == texts[1] and texts[0]
    with pytest.raises(pardec.PardecError) as e:
        pardec.Session(model, n_ctx=256, device_candidates=10**9)
    assert "candidates" in str(e.value)


def test_fork_run_join_streams_every_branch(session):
    session.prompt(PROMPT)
    nodes = session.fork(PREFIXES, max_tokens=6, ban_eog=True)
    assert len(nodes) == 3 and pardec.TRUNK not in nodes and len(set(nodes)) == 3
    events = []
    session.run(on_event=events.append)  # None return value means "go on"
    assert events[-1].kind == "done" and events[-1].status == Status.OK
    token_labels = [e.label for e in events if e.kind == "token"]
    assert token_labels[:3] == ["1", "2", "3"]  # one batch per step: every branch per step
    ends = {e.label: e.stop_reason for e in events if e.kind == "end"}
    assert ends == {"1": "max_tokens", "2": "max_tokens", "3": "max_tokens"}
    by_node = {n: "".join(e.text for e in events if e.kind == "token" and e.node == n) for n in nodes}

    session.join(keep=[0, 2], text="\nSo")
    tail = session.generate_text(max_tokens=4, ban_eog=True)
    r = session.result()
    assert len(r.blocks) == 1
    block = r.blocks[0]
    assert block.join_state == "keep" and block.parent_label == ""
    assert [b.label for b in block.branches] == ["1", "2", "3"]
    assert [b.kept for b in block.branches] == [True, False, True]
    for b, prefix, node in zip(block.branches, PREFIXES, nodes):
        assert b.text == prefix + by_node[node]
        assert b.stop_reason == "max_tokens"
    assert r.text == PROMPT + block.branches[0].text + block.branches[2].text + "\nSo" + tail
    s = r.stats
    assert (s.blocks, s.branches, s.tokens_branch) == (1, 3, 18)
    assert s.tokens_total == 18 + 4 and s.abn == 3.0 and 0 < s.dp < 1
    assert s.kv_cells_unshared > s.kv_cells_used > 0
    assert session.stats() == s


def test_run_iter_streams_and_join_discard(session):
    session.prompt(PROMPT)
    session.fork(PREFIXES[:2], max_tokens=4, ban_eog=True)
    events = list(session.run_iter())
    assert {e.label for e in events} == {"1", "2"}
    assert all(e.kind in ("token", "end") for e in events)
    session.join(keep="discard")
    assert session.result().text == PROMPT
    # After a discard the trunk continues where it forked, without extra text.
    assert session.generate_text(max_tokens=3, ban_eog=True)


def test_join_rules(session):
    texts = {}
    for rule in ("same-max", "same-seq", "reprefill"):
        session.clear()
        session.prompt(PROMPT)
        session.fork(PREFIXES[:2], max_tokens=4, ban_eog=True)
        session.run()
        if rule == "same-seq":
            # Same-seq moves the join text's first token: it needs one.
            with pytest.raises(PardecError) as e:
                session.join(rule=rule)
            assert e.value.status == Status.INVALID_ARGUMENT
        session.join(text="\nSo", rule=rule)
        texts[rule] = session.result().text
        assert session.generate_text(max_tokens=2, ban_eog=True)
    # Each rule shows each branch once; only where the parent reads them differs.
    assert texts["same-max"] == texts["same-seq"] == texts["reprefill"]
    with pytest.raises(ValueError):
        session.join(rule="sideways")


def test_callback_cancels_mid_branch_and_session_stays_usable(session):
    session.prompt(PROMPT)
    session.fork(PREFIXES, max_tokens=16, ban_eog=True)
    seen = []

    def stop_after_four(ev):
        seen.append(ev)
        return sum(e.kind == "token" for e in seen) < 4

    with pytest.raises(Cancelled) as info:
        session.run(on_event=stop_after_four)
    assert info.value.status == Status.CANCELLED
    assert seen[-1].kind == "done" and seen[-1].status == Status.CANCELLED
    assert {e.label: e.stop_reason for e in seen if e.kind == "end"} == {
        "1": "cancelled", "2": "cancelled", "3": "cancelled"}
    # Usable: join, continue, and the result records the cancellation.
    session.join(text="\nThen")
    assert session.generate_text(max_tokens=3, ban_eog=True)
    assert [b.stop_reason for b in session.result().blocks[0].branches] == ["cancelled"] * 3


def test_callback_exception_cancels_and_is_reraised(session):
    session.prompt(PROMPT)

    def boom(ev):
        raise KeyError("from the callback")

    with pytest.raises(Cancelled) as info:
        session.generate_text(max_tokens=8, on_event=boom)
    assert isinstance(info.value.__cause__, KeyError)
    session.append(" and")
    assert session.generate_text(max_tokens=2, ban_eog=True)


def test_closing_a_generation_early_cancels_it(session):
    session.prompt(PROMPT)
    with session.generate(max_tokens=20, ban_eog=True) as gen:
        for i, ev in enumerate(gen):
            if i == 2:
                break
    assert session.result().stats.tokens_total < 20
    # The iterator was closed: the trunk is idle again (needs text before generating).
    with pytest.raises(PardecError) as info:
        session.generate_text(max_tokens=2)
    assert info.value.status == Status.INVALID_STATE
    session.append(" red")
    assert session.generate_text(max_tokens=2, ban_eog=True)


def test_an_abandoned_generation_is_closed_when_collected(session):
    session.prompt(PROMPT)
    for i, ev in enumerate(session.generate(max_tokens=20, ban_eog=True)):
        if i == 1:
            break
    # CPython drops the iterator at once: its __del__ cancelled the trunk.
    with pytest.raises(PardecError) as info:
        session.generate_text(max_tokens=2)
    assert info.value.status == Status.INVALID_STATE
    assert "no next-token logits" in info.value.message


def test_errors_carry_status_and_message(model, session, tmp_path):
    cases = []

    def expect(status, fn, *args, **kw):
        with pytest.raises(PardecError) as info:
            fn(*args, **kw)
        assert info.value.status == status, info.value
        assert info.value.message
        cases.append(status)

    expect(Status.MODEL_NOT_FOUND, pardec.Model, tmp_path / "missing.gguf")
    not_gguf = tmp_path / "x.gguf"
    not_gguf.write_bytes(b"definitely not a model")
    expect(Status.NOT_GGUF, pardec.Model, not_gguf)
    expect(Status.INVALID_ARGUMENT, pardec.Session, model, n_ctx=0)
    expect(Status.INVALID_ARGUMENT, pardec.Session, model, top_p=2.0)
    expect(Status.EMPTY_PROMPT, session.prompt, "")
    expect(Status.INVALID_UTF8, session.prompt, "lone surrogate \ud800")
    expect(Status.INVALID_STATE, session.generate_text, max_tokens=2)  # nothing to continue
    session.prompt(PROMPT)
    expect(Status.INVALID_STATE, session.join)  # no open block
    expect(Status.TOO_MANY_BRANCHES, session.fork, ["a", "b", "c", "d", "e"])
    expect(Status.INVALID_ARGUMENT, session.fork, [])
    expect(Status.INVALID_ARGUMENT, session.fork, ["a"], parent=999)
    session.fork(["a"], max_tokens=1)
    expect(Status.INVALID_STATE, session.generate_text, max_tokens=2)  # a block is open
    session.run()
    expect(Status.INVALID_ARGUMENT, session.join, keep=[0, 0])
    with pytest.raises(ValueError):
        session.join(keep="some")
    assert len(cases) == 13



def test_nul_characters_and_out_of_range_integers_are_refused_by_name(model, session):
    """A C string ends at a NUL and ctypes wraps integers modulo the C type: both would change
    the request without a word, so the shim refuses them, naming the argument."""
    session.prompt(PROMPT)
    nul_cases = [
        (session.prompt, ("a\0b",), {}, "text"),
        (session.append, ("a\0b",), {}, "text"),
        (session.fork, (["ok", "x\0y"],), {}, "prefix"),
        (session.generate_text, (), {"max_tokens": 2, "stop": ["\0"]}, "stop string"),
        (session.score, (None, "\0"), {}, "continuation"),
        (session.generate_auto, ("multiverse",), {"response_prefix": "<Parallel>\0"}, "response_prefix"),
    ]
    for fn, args, kw, name in nul_cases:
        with pytest.raises(ValueError, match=f"{name} contains a NUL"):
            fn(*args, **kw)
    wrap_cases = [
        (pardec.Session, (model,), {"n_ctx": 2**32 + 12}, "n_ctx"),
        (pardec.Session, (model,), {"n_threads": 2**32}, "n_threads"),
        (pardec.Session, (model,), {"seed": 2**64}, "seed"),
        (pardec.Session, (model,), {"top_k": -1}, "top_k"),
        (session.generate_text, (), {"max_tokens": 2**32 + 1}, "max_tokens"),
        (session.generate_text, (), {"max_tokens": 2, "banned_tokens": [2**31]}, "banned token"),
        (session.append, ("x",), {"node": 2**32}, "node"),
        (session.generate_auto, ("multiverse",), {"max_branch_tokens": 2**64}, "max_branch_tokens"),
    ]
    for fn, args, kw, name in wrap_cases:
        with pytest.raises(ValueError, match=name):
            fn(*args, **kw)
    # A bad argument to score is refused before score clears the session for its context.
    for kw in ({"context": "a\0b", "continuation": "x"}, {"context": "ok", "continuation": "x", "node": 2**32}):
        with pytest.raises(ValueError):
            session.score(**kw)
    # Nothing above reached the session: it still continues its prompt.
    assert session.generate_text(max_tokens=2)

def test_close_twice_and_use_after_close(model_file):
    model = pardec.Model(model_file)
    session = pardec.Session(model, n_ctx=256, n_threads=1)
    model.close()
    model.close()
    assert model.closed
    with pytest.raises(ClosedError):
        _ = model.n_vocab
    with pytest.raises(ValueError):  # ClosedError is also a ValueError
        pardec.Session(model)
    # The session holds its own reference to the model.
    session.prompt(PROMPT)
    assert session.generate_text(max_tokens=2, ban_eog=True)
    session.close()
    session.close()
    for call in (lambda: session.prompt("x"), session.result, session.stats, session.run,
                 lambda: session.fork(["a"]), session.join, session.clear):
        with pytest.raises(ClosedError) as info:
            call()
        assert info.value.status == Status.INVALID_STATE
    with pardec.Model(model_file) as m2, pardec.Session(m2, n_ctx=256, n_threads=1) as s2:
        s2.prompt(PROMPT)
    assert m2.closed and s2.closed


def test_reentrant_calls_from_a_callback_are_busy(session):
    session.prompt(PROMPT)
    errors = []

    def reenter(ev):
        for call in (lambda: session.prompt("x"), session.close, session.stats):
            try:
                call()
            except PardecError as e:
                errors.append(e.status)
        return True

    session.generate_text(max_tokens=2, ban_eog=True, on_event=reenter)
    assert errors and set(errors) == {Status.BUSY}
    assert not session.closed


def _scenario(model, seeded: bool) -> str:
    kw = dict(temperature=0.9, top_k=40, seed=1234) if seeded else {}
    with pardec.Session(model, n_ctx=512, max_branches=3, n_threads=1, **kw) as s:
        s.prompt("Three colors and what they mean:")
        s.fork(["\n1. Red:", "\n2. Green:", "\n3. Blue:"], max_tokens=8)
        s.run()
        s.join(text="\nIn short,")
        s.generate_text(max_tokens=6)
        return s.result().text


def test_four_threads_match_single_threaded_runs(model):
    want = {seeded: _scenario(model, seeded) for seeded in (False, True)}
    assert want[False] != want[True]  # the comparison can tell runs apart
    got = [None] * 4
    errors = []

    def worker(i):
        try:
            got[i] = _scenario(model, seeded=bool(i % 2))
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for i, text in enumerate(got):
        assert text == want[bool(i % 2)], f"thread {i}"


def test_no_crash_at_interpreter_exit_with_everything_open(model_file):
    # Model, session, a half-consumed generation and a result left open at exit.
    code = f"""
import pardec
m = pardec.Model({str(model_file)!r})
s = pardec.Session(m, n_ctx=256, n_threads=1)
s.prompt("Hello")
g = s.generate(max_tokens=8)
next(g)
s2 = pardec.Session(m, n_ctx=256, n_threads=1)
print("ok")
"""
    pkg = str(Path(pardec.__file__).resolve().parents[1])
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**__import__("os").environ, "PYTHONPATH": pkg})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
    assert "Traceback" not in out.stderr and "Exception ignored" not in out.stderr, out.stderr


def test_generate_auto_forks_where_the_response_prefix_opens_a_block(session):
    session.prompt("Two fruits:\n")
    events = []
    report = session.generate_auto(
        "multiverse", max_tokens=16, max_branch_tokens=8, on_event=events.append,
        response_prefix="<Parallel>\n<Goal>\n<Outline>1: Apple</Outline>\n<Outline>2: Pear</Outline>\n</Goal>")
    forks = [e for e in events if e.kind == "fork"]
    assert len(forks) == 1 and forks[0].text == "1,2" and forks[0].label == ""
    assert [e.kind for e in events].count("join") == 1
    assert [b["labels"] for b in report["blocks"]] == [["1", "2"]]
    assert isinstance(report["warnings"], list)
    text = session.result().text
    assert "<Path>\n1:" in text and "<Path>\n2:" in text
    with pytest.raises(pardec.PardecError) as e:
        session.generate_auto("no-such-protocol")
    assert e.value.status == pardec.Status.INVALID_ARGUMENT


def test_generate_sot_expands_the_skeleton_points_in_parallel(model):
    with pardec.Session(model, n_ctx=2048, max_branches=8, n_threads=1) as s:
        events = []
        answer = s.generate_sot("Give three tips for better sleep.", skeleton_tokens=60, point_tokens=16,
                                on_event=events.append)
        assert set(answer) == {"points", "answer", "serial_fallback", "report"}
        kinds = [e.kind for e in events]
        if answer["serial_fallback"]:
            assert "fork" not in kinds and answer["answer"]
        else:
            assert kinds.count("fork") == 1 and kinds.count("join") == 1
            assert len(answer["report"]["blocks"][0]["labels"]) == len(answer["points"]) >= 2
            assert s.stats().branches == len(answer["points"])
        # The session now holds a conversation: SoT needs a fresh one.
        with pytest.raises(pardec.PardecError) as e:
            s.generate_sot("Again?")
        assert e.value.status == pardec.Status.INVALID_STATE


def _write_lora(path, rank: int, value: float, alpha: float = 4.0, n: int = 576) -> None:
    """A LoRA GGUF adapting blk.0's attention output of an n×n matrix (SmolLM2: n_embd 576),
    A and B filled with `value`, written by hand (GGUF v3, f32 tensors, 32-byte alignment)."""
    import struct

    def s(text: str) -> bytes:
        b = text.encode()
        return struct.pack("<Q", len(b)) + b

    kvs = [("general.type", "adapter"), ("general.architecture", "llama"), ("adapter.type", "lora")]
    tensors = [("blk.0.attn_output.weight.lora_a", [n, rank]), ("blk.0.attn_output.weight.lora_b", [rank, n])]
    out = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kvs) + 1)
    for k, v in kvs:
        out += s(k) + struct.pack("<I", 8) + s(v)
    out += s("adapter.lora.alpha") + struct.pack("<If", 6, alpha)
    offset = 0
    for name, ne in tensors:
        out += s(name) + struct.pack("<I", len(ne)) + b"".join(struct.pack("<Q", d) for d in ne)
        out += struct.pack("<IQ", 0, offset)
        offset += -(-4 * ne[0] * ne[1] // 32) * 32
    out += b"\0" * (-len(out) % 32)
    for _, ne in tensors:
        data = struct.pack("<f", value) * (ne[0] * ne[1])
        out += data + b"\0" * (-len(data) % 32)
    path.write_bytes(out)


def test_score_gives_log_probabilities_that_follow_the_context(model):
    with pardec.Session(model, n_ctx=256, n_threads=1) as s:
        ctx = model.chat([("user", "What is the capital of France?")])
        likely = s.score(ctx, "The capital of France is Paris.")
        unlikely = s.score(ctx, "The capital of France is Tokyo.")
        assert len(likely) == len(unlikely) > 3 and all(lp <= 0 for lp in likely)
        assert likely[-2] > unlikely[-2] + 2, (likely, unlikely)
        # None: the continuation follows what the trunk holds; scoring with nothing before fails.
        more = s.score(None, " It is in Europe.")
        assert len(more) > 2
        s.clear()
        with pytest.raises(pardec.PardecError) as e:
            s.score(None, "x")
        assert e.value.status == pardec.Status.INVALID_STATE


def test_adapters_change_the_scores_and_scale_zero_is_the_base(model, model_file, tmp_path):
    path = tmp_path / "lora.gguf"
    _write_lora(path, rank=2, value=0.05)
    ctx = model.chat([("user", "Name a fruit.")])
    with pardec.Adapter(model, path) as adapter, pardec.Session(model, n_ctx=256, n_threads=1) as s:
        base = s.score(ctx, "An apple.")
        s.set_adapters([(adapter, 1.0)])
        adapted = s.score(ctx, "An apple.")
        s.set_adapters([(adapter, 0.0)])
        off = s.score(ctx, "An apple.")
        assert max(abs(a - b) for a, b in zip(base, adapted)) > 1e-2
        assert max(abs(a - b) for a, b in zip(base, off)) < 1e-4
        with pardec.Session(model, n_ctx=256, n_threads=1, adapters=[(adapter, 1.0)]) as s2:
            assert s2.score(ctx, "An apple.") == pytest.approx(adapted, abs=1e-4)

    for bad, status in ((tmp_path / "missing.gguf", pardec.Status.MODEL_NOT_FOUND),
                        (model_file, pardec.Status.NOT_ADAPTER)):
        with pytest.raises(pardec.PardecError) as e:
            pardec.Adapter(model, bad)
        assert e.value.status == status
    wrong = tmp_path / "wrong.gguf"
    _write_lora(wrong, rank=2, value=0.05, n=512)
    with pytest.raises(pardec.PardecError) as e:
        pardec.Adapter(model, wrong)
    assert e.value.status == pardec.Status.ADAPTER_MISMATCH and "attn_output" in e.value.message


def test_rpc_servers_are_checked_and_a_missing_backend_or_server_is_status_rpc(model_file):
    with pytest.raises(TypeError):
        pardec.Model(model_file, rpc_servers=[1])
    with pytest.raises(ValueError):
        pardec.Model(model_file, rpc_servers=["a:1,b:2"])
    with pytest.raises(PardecError) as e:
        pardec.Model(model_file, rpc_servers="localhost")
    assert e.value.status == Status.INVALID_ARGUMENT and "no port" in e.value.message
    # The tests' library has no RPC backend; one with it finds nothing on port 1. Both: RPC.
    with pytest.raises(PardecError) as e:
        pardec.Model(model_file, rpc_servers=["127.0.0.1:1"])
    assert e.value.status == Status.RPC
