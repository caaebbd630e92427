"""One bad request never hurts another: a member whose forward raises, a sampler that
raises on one row, a step that breaks outright. Every other request completes (including
one that finished in the very step that failed), nothing hangs, no page leaks."""

from __future__ import annotations

import threading

import pytest
from members import greedy, make_engine, run_all

import blendrt.engine.sampler as sampler_module
from blendrt import Blend, EngineConfig, Member
from blendrt.sampling import SamplingParams
from blendrt.turn import EngineError

WAIT = 60  # seconds: a bounded wait, so a hang fails the test instead of hanging it


def test_a_failing_forward_fails_only_its_members_requests(member_folders, monkeypatch) -> None:
    engine = make_engine(member_folders, num_pages=128)
    ok = engine.add_request("llama", list(range(3, 30)), greedy(5))
    quick = engine.add_request("gptj", list(range(3, 20)), greedy(1))  # done in step 1

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("device fell over")

    doomed = engine.add_request("mha", list(range(3, 25)), greedy(9))
    monkeypatch.setattr(engine.runners["mha"], "forward", broken)
    first = {out.request_id: out for out in engine.step()}
    # In the step that failed mha, gptj's request finished and got its final output.
    assert first[quick.request_id].finished and first[quick.request_id].error is None
    assert first[doomed.request_id].finish_reason == "abort"
    assert "member 'mha' failed: RuntimeError: device fell over" in first[doomed.request_id].error
    rest = run_all(engine)
    assert sum(len(o.new_token_ids) for o in rest[ok.request_id]) + 1 == 5
    assert rest[ok.request_id][-1].error is None
    for manager in set(engine.managers.values()):
        assert manager.num_pages_in_use == 0
        manager.check_invariants()


def test_a_sampler_failure_on_one_row_fails_only_that_request(member_folders, monkeypatch) -> None:
    real = sampler_module.sample

    def picky(logits, rows):  # raises whenever the poisoned request is in the batch
        if any(r.params.temperature == 0.123 for r in rows):
            raise ValueError("Overflow when unpacking long long")
        return real(logits, rows)

    monkeypatch.setattr(sampler_module, "sample", picky)
    engine = make_engine(member_folders, num_pages=128)
    good = [engine.add_request("llama", list(range(3, 20 + i)), greedy(4)) for i in range(3)]
    bad = engine.add_request("llama", list(range(3, 22)), SamplingParams(temperature=0.123))
    outputs = run_all(engine)
    assert "sampling failed: ValueError: Overflow" in outputs[bad.request_id][-1].error
    for request in good:
        assert outputs[request.request_id][-1].error is None
        assert sum(len(o.new_token_ids) for o in outputs[request.request_id]) == 4
    assert engine.managers["llama"].num_pages_in_use == 0


def test_through_the_blend_nothing_hangs(member_folders, monkeypatch) -> None:
    members = [
        Member(name, folder, chat_format="chatml") for name, (folder, _) in member_folders.items()
    ]
    with Blend(members, seed=0, config=EngineConfig(device="cpu", num_pages=128)) as blend:

        def broken(*args: object, **kwargs: object) -> None:
            raise RuntimeError("device fell over")

        monkeypatch.setattr(blend.engine.runners["mha"], "forward", broken)
        results: dict[str, object] = {}

        def turn(member: str, max_tokens: int) -> None:
            try:
                hello = [{"role": "user", "content": f"hello {member}"}]
                results[member] = blend.chat(hello, member=member, sampling=greedy(max_tokens))
            except Exception as e:
                results[member] = e

        threads = [
            threading.Thread(target=turn, args=args)
            for args in (("llama", 6), ("gptj", 1), ("mha", 6))
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=WAIT)
        assert not any(t.is_alive() for t in threads), "a caller hung"
        assert isinstance(results["mha"], EngineError)
        assert results["llama"].usage.completion_tokens == 6
        assert results["gptj"].usage.completion_tokens == 1
        stats = blend.stats()
        assert stats["pool"]["pages_in_use"] == 0


def test_a_step_that_breaks_outright_fails_its_requests_and_the_loop_serves_on(
    member_folders, monkeypatch
) -> None:
    members = [
        Member(name, folder, chat_format="chatml") for name, (folder, _) in member_folders.items()
    ]
    with Blend(members, seed=0, config=EngineConfig(device="cpu", num_pages=128)) as blend:
        real = blend.engine.scheduler.schedule
        calls = {"n": 0}

        def flaky():
            calls["n"] += 1
            if calls["n"] == 1:
                raise RuntimeError("scheduler bug")
            return real()

        monkeypatch.setattr(blend.engine.scheduler, "schedule", flaky)
        hello = [{"role": "user", "content": "hello"}]
        with pytest.raises(EngineError, match="engine step failed: RuntimeError: scheduler bug"):
            blend.chat(hello, member="llama", sampling=greedy(3))
        assert blend.chat(hello, member="llama", sampling=greedy(3)).usage.completion_tokens == 3
        assert blend.stats()["pool"]["pages_in_use"] == 0
