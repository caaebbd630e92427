"""A completion request answered as server-sent events: a role chunk per choice, the deltas
as they come (several prompts merged), the final chunks, usage if asked, then [DONE]. After
the 200, a failure is an error event, then [DONE]; so is a stream cut short at shutdown."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from fastapi import Request

from blendrt.blend_stream import BlendStream
from blendrt.engine.request import RequestOutput
from blendrt.server.call import Call, close_streams
from blendrt.server.errors import APIError
from blendrt.server.responses import (
    ContentChunks,
    TokenText,
    chat_logprobs,
    completion_logprobs,
    finish_reason,
    sse,
    usage,
)
from blendrt.server.schemas import (
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatDelta,
    CompletionChoice,
    CompletionResponse,
)
from blendrt.server.state import ServerState, unavailable

logger = logging.getLogger("blendrt.server")


async def merged(
    state: ServerState, streams: list[BlendStream]
) -> AsyncIterator[tuple[int, str, RequestOutput]]:
    """The outputs of several streams as they come: (stream index, delta, output)."""
    if len(streams) == 1:
        async for delta, out in state.metrics.timed_outputs(streams[0]):
            yield 0, delta, out
        return
    queue: asyncio.Queue[tuple[int, str, RequestOutput] | BaseException | None] = asyncio.Queue()

    async def pump(k: int, stream: BlendStream) -> None:
        try:
            async for delta, out in state.metrics.timed_outputs(stream):
                queue.put_nowait((k, delta, out))
        except BaseException as e:
            queue.put_nowait(e)
            raise
        queue.put_nowait(None)

    tasks = [asyncio.ensure_future(pump(k, s)) for k, s in enumerate(streams)]
    try:
        for _ in range(len(streams)):
            while (item := await queue.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                yield item
    finally:
        for task in tasks:
            task.cancel()


async def events(
    state: ServerState, request: Request, call: Call, streams: list[BlendStream]
) -> AsyncIterator[str]:
    model = call.turns[0].member
    body = call.body
    text = TokenText(state.blend.tokenizer(model))
    want_logprobs = body.num_top_logprobs() is not None
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    content = ContentChunks(call, model)

    def chunk(
        index: int, delta: str | None, out: RequestOutput | None, *, role: bool = False
    ) -> str:
        reason = finish_reason(out.finish_reason) if out is not None and out.finished else None
        if call.chat:
            logprobs = (
                chat_logprobs(text, out.logprobs)
                if want_logprobs and out and out.logprobs
                else None
            )
            choice = ChatChunkChoice(
                index=index,
                delta=ChatDelta(role="assistant" if role else None, content=delta),
                finish_reason=reason,
                logprobs=logprobs,
            )
            return sse(
                ChatCompletionChunk(id=call.id, created=call.created, model=model, choices=[choice])
            )
        logprobs = None
        if want_logprobs and out is not None and out.logprobs:
            logprobs = completion_logprobs(text, out.logprobs, [lp.token_id for lp in out.logprobs])
        choice = CompletionChoice(
            index=index, text=delta or "", finish_reason=reason, logprobs=logprobs
        )
        return sse(
            CompletionResponse(id=call.id, created=call.created, model=model, choices=[choice])
        )

    async def watch_connection() -> None:
        # NOTE: uvicorn drops writes to a closed connection silently, so a client that hangs
        # up is noticed here, on the receive channel, and its requests aborted.
        while (await request.receive())["type"] != "http.disconnect":
            pass
        for s in streams:
            s.cancel()

    watcher = asyncio.ensure_future(watch_connection())
    try:
        for t in range(len(streams)):
            for j in range(body.n):
                if call.chat:
                    yield chunk(call.choice_index(t, j), "", None, role=True)
                elif call.echo:
                    yield chunk(call.choice_index(t, j), call.echo[t], None)
        try:
            async for t, delta, out in merged(state, streams):
                plain = delta and not out.finished and not (want_logprobs and out.logprobs)
                if plain:
                    yield content.event(call.choice_index(t, out.index), delta)
                elif delta or out.finished or (want_logprobs and out.logprobs):
                    yield chunk(call.choice_index(t, out.index), delta, out)
        except Exception as e:
            # NOTE: the 200 is already sent: a failure after it is an error event, then
            # [DONE], so clients see why the stream ended rather than a cut connection.
            if isinstance(e, ValueError):  # the engine refused the request
                error = APIError(400, str(e))
            else:
                logger.exception("stream %s failed", call.id)
                state.metrics.stream_errors.inc()
                error = APIError(500, f"generation failed: {e}", kind="server_error")
            yield sse(error.body())
            yield "data: [DONE]\n\n"
            return
        replies = [s.reply for s in streams if s.reply is not None]
        if state.shutdown_message and any(
            c.finish_reason == "abort" for r in replies for c in r.candidates
        ):
            error = unavailable()
            error.message = state.shutdown_message
            yield sse(error.body())
        elif include_usage and len(replies) == len(streams):
            u = usage(replies)
            if call.chat:
                yield sse(
                    ChatCompletionChunk(
                        id=call.id, created=call.created, model=model, choices=[], usage=u
                    )
                )
            else:
                yield sse(
                    CompletionResponse(
                        id=call.id, created=call.created, model=model, choices=[], usage=u
                    )
                )
        yield "data: [DONE]\n\n"
    finally:
        watcher.cancel()
        await close_streams(state, streams)
