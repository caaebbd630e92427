"""EngineLoop: one thread drives the engine; any thread or asyncio task talks to it.

Callers put commands on a thread-safe queue and get results through futures; outputs are
delivered to a per-request sink (a callable that must not block: it typically puts into a
queue.Queue or schedules onto an asyncio loop). The engine itself is touched by the loop
thread only.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, TypeVar

import torch

from blendrt.engine.engine import LLMEngine
from blendrt.engine.request import RequestOutput
from blendrt.sampling import SamplingParams

logger = logging.getLogger("blendrt.engine")
T = TypeVar("T")
Sink = Callable[[RequestOutput], None]


def run_in_fresh_thread(fn: Callable[[], T]) -> T:
    """fn() in a short-lived thread: its result, or its exception raised here.

    NOTE: torch's OpenMP runtime keeps a pool of worker threads for each thread that ran a
    parallel region. Once the main thread owns one, every parallel region of the engine
    thread runs markedly slower (measured on 2 cores: a 64-row GEMM 1.5x, a decode step
    1.8x). Loading models and allocating the pool (parallel work) in a thread that then
    exits leaves the engine thread the only owner of a pool."""
    result: list[T] = []
    error: list[BaseException] = []

    def run() -> None:
        try:
            result.append(fn())
        except BaseException as e:
            error.append(e)

    thread = threading.Thread(target=run, name="blendrt-load")
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]


class EngineLoop:
    def __init__(self, engine: LLMEngine) -> None:
        self.engine = engine
        self._commands: queue.SimpleQueue[tuple[Callable[[], Any], Future]] = queue.SimpleQueue()
        self._sinks: dict[int, Sink] = {}  # {request_id: sink}, loop thread only
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._run, name="blendrt-engine", daemon=True)
        self._thread.start()

    # ---- front door (any thread) --------------------------------------------------------

    def call(self, fn: Callable[[LLMEngine], T]) -> T:
        """Runs fn(engine) on the loop thread between steps and returns its result."""
        return self._wait(self.call_soon(fn))

    def _wait(self, future: Future) -> Any:
        while True:
            try:
                return future.result(timeout=1.0)
            except FutureTimeout:
                if not self._thread.is_alive() and not future.done():
                    raise RuntimeError("the engine loop is shut down") from None

    def call_soon(self, fn: Callable[[LLMEngine], T]) -> Future:
        """Queues fn(engine) for the loop thread; the future holds its result."""
        if self._closed.is_set():
            raise RuntimeError("the engine loop is shut down")
        future: Future = Future()
        self._commands.put((lambda: fn(self.engine), future))
        return future

    def submit(
        self, member: str, prompt_token_ids: list[int], sampling: SamplingParams, sink: Sink
    ) -> int:
        """Queues a request; outputs go to sink. Raises ValueError for a bad request."""
        return self._wait(self.submit_soon(member, prompt_token_ids, sampling, sink))

    def submit_soon(
        self, member: str, prompt_token_ids: list[int], sampling: SamplingParams, sink: Sink
    ) -> Future:
        """As submit, without waiting: the future holds the request id (or the error)."""

        def add(engine: LLMEngine) -> int:
            request = engine.add_request(member, prompt_token_ids, sampling)
            self._sinks[request.request_id] = sink
            return request.request_id

        return self.call_soon(add)

    def score(self, member: str, token_ids: list[int]) -> torch.Tensor:
        """Float32 log-softmax [N, V] of member at every position of token_ids, scheduled in
        the shared pool like any request (blocking; raises ValueError for bad input)."""
        outputs: queue.SimpleQueue[RequestOutput] = queue.SimpleQueue()

        def add(engine: LLMEngine) -> int:
            request = engine.add_score_request(member, token_ids)
            self._sinks[request.request_id] = outputs.put
            return request.request_id

        request_id = self._wait(self.call_soon(add))
        try:
            out = outputs.get()
        except BaseException:
            self.abort(request_id)
            raise
        if out.error or out.prompt_logprobs is None:
            raise RuntimeError(out.error or "scoring was aborted")
        return out.prompt_logprobs

    def classify(self, member: str, token_ids: list[list[int]]) -> list[torch.Tensor]:
        """A classifier member's float32 scores [num_labels] for each token sequence, queued
        together so they run in one batch (blocking; ValueError for bad input)."""
        outputs: queue.SimpleQueue[RequestOutput] = queue.SimpleQueue()

        def add(engine: LLMEngine) -> list[int]:
            ids = []
            try:
                for seq in token_ids:
                    request = engine.add_classify_request(member, seq)
                    self._sinks[request.request_id] = outputs.put
                    ids.append(request.request_id)
            except BaseException:
                for rid in ids:
                    engine.abort_request(rid)
                    self._sinks.pop(rid, None)
                raise
            return ids

        request_ids = self._wait(self.call_soon(add))
        scores: dict[int, torch.Tensor] = {}
        try:
            while len(scores) < len(request_ids):
                out = outputs.get()
                if out.error or out.scores is None:
                    raise RuntimeError(out.error or "classification was aborted")
                scores[out.request_id] = out.scores
        except BaseException:
            for rid in request_ids:
                self.abort(rid)
            raise
        return [scores[rid] for rid in request_ids]

    def abort(self, request_id: int) -> None:
        """Cancels a request (no-op if finished); its pages are freed before this returns."""
        if not self._closed.is_set():
            self._wait(self.abort_soon(request_id))

    def abort_soon(self, request_id: int) -> Future:
        """Queues the cancellation; the future completes once the pages are freed."""

        def abort(engine: LLMEngine) -> None:
            for output in engine.abort_request(request_id):
                self._deliver(output)

        return self.call_soon(abort)

    def shutdown(self) -> None:
        if not self._closed.is_set():
            self._closed.set()
            self._commands.put((lambda: None, Future()))  # wake the thread
            self._thread.join()

    # ---- the loop (its own thread) -------------------------------------------------------

    def _run_command(self, command: tuple[Callable[[], Any], Future]) -> None:
        fn, future = command
        # NOTE: a caller may cancel its future (an asyncio task cancelled while waiting);
        # then the command does not run at all.
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(fn())
        except BaseException as e:  # handed to the caller, never kills the loop
            future.set_exception(e)

    def _run(self) -> None:
        try:
            self._serve()
        except BaseException:  # never leave callers waiting on a dead thread
            logger.exception("engine loop crashed")
            self._closed.set()
        self._fail_requests("the engine loop was shut down")
        while True:  # callers blocked on a command must not hang
            try:
                _, future = self._commands.get_nowait()
            except queue.Empty:
                break
            if not future.done():
                future.set_exception(RuntimeError("the engine loop was shut down"))

    def _serve(self) -> None:
        while not self._closed.is_set():
            if not self.engine.has_unfinished_requests():
                self._run_command(self._commands.get())  # idle: sleep until work arrives
            while True:
                try:
                    self._run_command(self._commands.get_nowait())
                except queue.Empty:
                    break
            if self.engine.has_unfinished_requests() and not self._closed.is_set():
                self._step()

    def _step(self) -> None:
        try:
            outputs = self.engine.step()
        except Exception as e:
            # NOTE: the engine isolates failures of a member's forward or sampling itself;
            # what reaches here (scheduling broke) cannot be attributed to a request, so
            # every running request fails, and the loop keeps serving new ones.
            logger.exception("engine step failed")
            self._fail_requests(f"engine step failed: {type(e).__name__}: {e}")
            return
        for output in outputs:
            self._deliver(output)

    def _deliver(self, output: RequestOutput) -> None:
        """Hands an output to its sink. NOTE: a sink that raises (say, its event loop is
        closed: nobody is listening) loses its request, which is aborted; the loop goes on."""
        sink = self._sinks.get(output.request_id)
        if output.done:
            self._sinks.pop(output.request_id, None)
        if sink is None:
            return
        try:
            sink(output)
        except Exception:
            logger.exception("output sink of request %d failed; aborting it", output.request_id)
            self._sinks.pop(output.request_id, None)
            self.engine.abort_request(output.request_id)

    def _fail_requests(self, message: str) -> None:
        for group_id in list(self.engine.groups):
            for output in self.engine.abort_request(group_id, error=message):
                self._deliver(output)
