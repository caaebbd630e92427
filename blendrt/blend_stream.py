"""BlendStream: one streamed turn of a blend, as an async iterator of text deltas."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from blendrt.engine.inbox import Inboxes
from blendrt.engine.loop import EngineLoop
from blendrt.engine.request import RequestOutput
from blendrt.turn import PreparedTurn, Reply, ReplyMemory, TurnCollector


class BlendStream:
    """`async for delta in stream` yields the text of the (first) candidate; `outputs()`
    yields every candidate's (delta, RequestOutput). `stream.member` is known before the
    first delta and `stream.reply` once the turn ends. Leaving early (break + aclose,
    `async with`, or cancelling the task) aborts the request and frees its pages."""

    def __init__(
        self, loop: EngineLoop, turn: PreparedTurn, memory: ReplyMemory, inboxes: Inboxes
    ) -> None:
        self.member = turn.member
        self.turn = turn
        self._loop = loop
        self._inboxes = inboxes
        self._collector = TurnCollector(turn, memory)
        self._outputs = self._run()
        self._text = self._first_candidate_text()
        self._request_id: int | None = None
        self._cancelled = False

    @property
    def reply(self) -> Reply | None:
        return self._collector.reply

    def cancel(self) -> None:
        """Aborts the request from outside the iteration (any coroutine of the same loop,
        e.g. a watcher of the client's connection); iteration then ends with no more text."""
        self._cancelled = True
        if self._request_id is not None:
            self._loop.abort_soon(self._request_id)

    def __aiter__(self) -> BlendStream:
        return self

    async def __anext__(self) -> str:
        return await self._text.__anext__()

    def outputs(self) -> AsyncIterator[tuple[str, RequestOutput]]:
        """Every candidate's outputs, each with the new text it adds (not mixable with
        iterating the stream itself)."""
        return self._outputs

    async def aclose(self) -> None:
        await self._text.aclose()
        await self._outputs.aclose()

    async def __aenter__(self) -> BlendStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _first_candidate_text(self) -> AsyncIterator[str]:
        async for delta, out in self._outputs:
            if delta and out.index == 0:
                yield delta

    async def _run(self) -> AsyncIterator[tuple[str, RequestOutput]]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[RequestOutput] = asyncio.Queue()
        turn, engine_loop = self.turn, self._loop
        future = engine_loop.submit_soon(
            turn.member,
            turn.prompt_ids,
            turn.sampling,
            self._inboxes.for_loop(loop).sink(queue),
        )
        try:
            request_id = await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            # Cancelled while queued: the command never runs, or, if it already ran, the
            # request is aborted as soon as its id is known.
            future.add_done_callback(
                lambda f: (
                    None if f.cancelled() or f.exception() else engine_loop.abort_soon(f.result())
                )
            )
            raise
        self._request_id = request_id
        if self._cancelled:
            engine_loop.abort_soon(request_id)
        done = False
        try:
            while not done:
                out = await queue.get()
                delta = self._collector.add(out)
                done = out.done
                yield delta, out
        finally:
            if not done:
                await asyncio.wrap_future(engine_loop.abort_soon(request_id))
