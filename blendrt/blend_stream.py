"""BlendStream: one streamed turn of a blend, as an async iterator of text deltas."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from blendrt.engine.request import RequestOutput

if TYPE_CHECKING:
    from blendrt.blend import Blend, PreparedTurn, Reply


class BlendStream:
    """`async for delta in stream` yields text; `stream.member` is known before the first
    delta and `stream.reply` once the turn ends. Leaving early (break + aclose, `async with`,
    or cancelling the task) aborts the request and frees its pages."""

    def __init__(self, blend: Blend, turn: PreparedTurn) -> None:
        self.member = turn.member
        self.reply: Reply | None = None
        self._blend = blend
        self._turn = turn
        self._gen = self._run()
        self._request_id: int | None = None
        self._cancelled = False

    def cancel(self) -> None:
        """Aborts the request from outside the iteration (any coroutine of the same loop,
        e.g. a watcher of the client's connection); iteration then ends with no more text."""
        self._cancelled = True
        if self._request_id is not None:
            self._blend._loop.abort_soon(self._request_id)

    def __aiter__(self) -> BlendStream:
        return self

    async def __anext__(self) -> str:
        return await self._gen.__anext__()

    async def aclose(self) -> None:
        await self._gen.aclose()

    async def __aenter__(self) -> BlendStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _run(self) -> AsyncIterator[str]:
        loop = asyncio.get_running_loop()
        outputs: asyncio.Queue[RequestOutput] = asyncio.Queue()
        turn, engine_loop = self._turn, self._blend._loop
        start, first_token, parts = time.perf_counter(), None, []
        future = engine_loop.submit_soon(
            turn.member,
            turn.prompt_ids,
            turn.sampling,
            lambda out: loop.call_soon_threadsafe(outputs.put_nowait, out),
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
        finished = False
        try:
            while True:
                out = await outputs.get()
                if out.error:
                    raise RuntimeError(out.error)
                if first_token is None and out.new_token_ids:
                    first_token = time.perf_counter()
                # The reply's leading spaces belong to the format ("Bob: Hi"), not the text.
                delta = out.delta_text if parts else out.delta_text.lstrip(" ")
                if delta:
                    parts.append(delta)
                if out.finished:
                    finished = True
                    self.reply = self._blend.finish_reply(
                        turn, "".join(parts), out, start, first_token
                    )
                if delta:
                    yield delta
                if finished:
                    return
        finally:
            if not finished:
                await asyncio.wrap_future(engine_loop.abort_soon(request_id))
