"""The engine loop over a stand-in engine: commands run on its thread between steps, errors
reach their callers, a failing sink or step loses only what it must, and shutdown leaves
nobody waiting."""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, field

import pytest

from blendrt.engine.loop import EngineLoop
from blendrt.engine.request import RequestOutput
from blendrt.sampling import SamplingParams

WAIT = 10  # seconds: a bounded wait, so a hang fails the test


def out(rid: int, token: int, done: bool = False, error: str | None = None) -> RequestOutput:
    return RequestOutput(
        rid, (token,), str(token), "stop" if done else None, 1, 0, token, done=done, error=error
    )


@dataclass
class Request:
    request_id: int


@dataclass
class FakeEngine:
    """Each request yields `length` outputs, one a step; step() raises while `broken`."""

    length: int = 3
    broken: bool = False
    threads: set[str] = field(default_factory=set)  # where methods ran
    requests: dict[int, int] = field(default_factory=dict)  # {request_id: outputs given}
    groups: dict[int, int] = field(default_factory=dict)
    num_added: int = 0

    def add_request(self, member: str, ids: list[int], sampling: SamplingParams) -> Request:
        if member != "ok":
            raise ValueError(f"unknown member {member!r}")
        rid, self.num_added = self.num_added, self.num_added + 1
        self.requests[rid] = self.groups[rid] = 0
        return Request(rid)

    def abort_request(self, rid: int, error: str | None = None) -> list[RequestOutput]:
        if rid not in self.requests:
            return []
        del self.requests[rid], self.groups[rid]
        return [out(rid, -1, done=True, error=error)]

    def has_unfinished_requests(self) -> bool:
        return bool(self.requests)

    def step(self) -> list[RequestOutput]:
        self.threads.add(threading.current_thread().name)
        if self.broken:
            raise RuntimeError("step broke")
        outputs = []
        for rid in list(self.requests):
            self.requests[rid] += 1
            done = self.requests[rid] == self.length
            outputs.append(out(rid, self.requests[rid], done))
            if done:
                del self.requests[rid], self.groups[rid]
        return outputs


def collect(loop: EngineLoop, member: str = "ok") -> tuple[int, queue.SimpleQueue]:
    outputs: queue.SimpleQueue[RequestOutput] = queue.SimpleQueue()
    rid = loop.submit(member, [1, 2], SamplingParams(), outputs.put)
    return rid, outputs


def drain(outputs: queue.SimpleQueue) -> list[RequestOutput]:
    got = [outputs.get(timeout=WAIT)]
    while not got[-1].done:
        got.append(outputs.get(timeout=WAIT))
    return got


def test_requests_run_on_the_loop_thread_and_stream_to_their_sinks() -> None:
    engine = FakeEngine()
    loop = EngineLoop(engine)
    try:
        (a, qa), (b, qb) = collect(loop), collect(loop)
        assert [o.new_token_ids for o in drain(qa)] == [(1,), (2,), (3,)]
        assert [o.request_id for o in drain(qb)] == [b] * 3 and a != b
        assert engine.threads == {"blendrt-engine"}
        assert loop.call(lambda e: len(e.requests)) == 0
        with pytest.raises(ValueError, match="unknown member 'nope'"):
            collect(loop, member="nope")
        with pytest.raises(ZeroDivisionError):
            loop.call(lambda e: 1 / 0)  # a command's error reaches its caller only
        assert loop.call(lambda e: "still serving") == "still serving"
    finally:
        loop.shutdown()


def test_a_failing_sink_loses_only_its_request() -> None:
    engine = FakeEngine(length=50)
    loop = EngineLoop(engine)
    try:

        def broken(output: RequestOutput) -> None:
            raise RuntimeError("nobody is listening")

        loop.submit("ok", [1], SamplingParams(), broken)
        rid, outputs = collect(loop)
        assert len(drain(outputs)) == 50  # the other request ran to its end
        assert loop.call(lambda e: e.has_unfinished_requests()) is False  # both gone
        assert rid == 1
    finally:
        loop.shutdown()


def test_a_broken_step_fails_the_running_requests_and_the_loop_serves_on() -> None:
    engine = FakeEngine(length=10**9)
    loop = EngineLoop(engine)
    try:
        _, outputs = collect(loop)
        outputs.get(timeout=WAIT)
        loop.call(lambda e: setattr(e, "broken", True))
        last = drain(outputs)[-1]
        assert last.error == "engine step failed: RuntimeError: step broke"
        loop.call(lambda e: setattr(e, "broken", False))
        engine.length = 2
        _, outputs = collect(loop)
        assert [o.new_token_ids for o in drain(outputs)] == [(1,), (2,)]
    finally:
        loop.shutdown()


def test_shutdown_leaves_nobody_waiting() -> None:
    engine = FakeEngine(length=10**9)
    loop = EngineLoop(engine)
    _, outputs = collect(loop)
    outputs.get(timeout=WAIT)
    loop.shutdown()
    assert drain(outputs)[-1].error == "the engine loop was shut down"
    with pytest.raises(RuntimeError, match="shut down"):
        loop.call(lambda e: None)
    loop.shutdown()  # twice is fine
