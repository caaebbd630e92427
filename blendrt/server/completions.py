"""POST /v1/chat/completions and /v1/completions: a request becomes prepared turns (rendered
and tokenized off the event loop), runs as BlendStreams, and is answered as one JSON body or
as server-sent events. After a stream's 200, a failure is an error event then [DONE]."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from blendrt.blend_stream import BlendStream
from blendrt.engine.request import RequestOutput, TokenLogprob
from blendrt.server.protocol import APIError, ChatCompletionRequest, CompletionRequest
from blendrt.server.responses import (
    TokenText,
    chat_logprobs,
    completion_logprobs,
    finish_reason,
    sse,
    usage,
)
from blendrt.server.schemas import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionResponse,
    ChatDelta,
    CompletionChoice,
    CompletionResponse,
)
from blendrt.server.state import ServerState, unavailable
from blendrt.truncation import ContextLengthError
from blendrt.turn import EngineError, PreparedTurn, Reply

logger = logging.getLogger("blendrt.server")


@contextlib.contextmanager
def bad_input() -> Iterator[None]:
    """ValueErrors of preparing a turn as 400s (context_length_exceeded where it is that)."""
    try:
        yield
    except ContextLengthError as e:
        raise APIError(400, str(e), param=e.param, code=e.code) from e
    except ValueError as e:
        raise APIError(400, str(e)) from e


async def chat_completions(
    state: ServerState, request: Request, body: ChatCompletionRequest
) -> Response:
    member = state.member_of(body.model)
    _check_stream(body)
    with bad_input():
        turn = await asyncio.to_thread(
            state.blend.prepare,
            body.blend_messages(),
            member=member,
            sampling=body.sampling_fields(),
            truncation=body.truncation,
        )
    return await _respond(state, request, _Call(body, [turn], chat=True))


async def completions(state: ServerState, request: Request, body: CompletionRequest) -> Response:
    member = state.member_of(body.model)
    if member is None:
        raise APIError(
            400,
            "/v1/completions needs a member's name as model: a raw prompt is in one member's "
            "format",
            param="model",
        )
    _check_stream(body)
    blend = state.blend

    def prepare() -> list[PreparedTurn]:
        tok = blend.tokenizer(member)
        ids = [tok.encode(p) if isinstance(p, str) else p for p in body.prompts()]
        return [blend.prepare_prompt(member, p, body.sampling_fields()) for p in ids]

    with bad_input():
        turns = await asyncio.to_thread(prepare)
    call = _Call(body, turns, chat=False)
    if body.echo:
        call.echo = [blend.tokenizer(member).decode(t.prompt_ids) for t in turns]
        if body.logprobs is not None:
            call.echo_logprobs = await asyncio.to_thread(_prompt_logprobs, state, turns, body)
    return await _respond(state, request, call)


def _check_stream(body: ChatCompletionRequest | CompletionRequest) -> None:
    if body.stream and body.best_of and body.best_of > body.n:
        raise APIError(
            400, "best_of > n cannot stream: the best candidates are known at the end",
            param="best_of",
        )  # fmt: skip


def _prompt_logprobs(
    state: ServerState, turns: Sequence[PreparedTurn], body: CompletionRequest
) -> list[list[TokenLogprob | None]]:
    """For echo with logprobs: each prompt token's logprob after the tokens before it."""
    out = []
    k = body.logprobs or 0
    for turn in turns:
        lp = state.blend.logprobs(turn.member, turn.prompt_ids)  # [N, V]
        ids = turn.prompt_ids
        rows: list[TokenLogprob | None] = [None]
        for i in range(1, len(ids)):
            top = lp[i - 1].topk(k) if k else None
            pairs = tuple(zip(top.indices.tolist(), top.values.tolist(), strict=True)) if k else ()
            rows.append(TokenLogprob(ids[i], float(lp[i - 1, ids[i]]), pairs))
        out.append(rows)
    return out


@dataclass
class _Call:
    """One request in flight: its turns (one per prompt) and how to answer."""

    body: ChatCompletionRequest | CompletionRequest
    turns: list[PreparedTurn]
    chat: bool
    echo: list[str] | None = None  # prompt texts, for completions with echo
    echo_logprobs: list[list[TokenLogprob | None]] | None = None
    id: str = ""
    created: int = field(default_factory=lambda: int(time.time()))

    def __post_init__(self) -> None:
        self.id = f"{'chatcmpl' if self.chat else 'cmpl'}-{uuid.uuid4().hex}"

    def choice_index(self, turn: int, candidate: int) -> int:
        return turn * self.body.n + candidate


async def _respond(state: ServerState, request: Request, call: _Call) -> Response:
    state.admit()
    streams = [state.blend.stream_turn(t) for t in call.turns]
    state.streams.update(streams)
    headers = {"x-blendrt-member": call.turns[0].member}
    if call.body.stream:
        state.metrics.count(request.url.path, 200)
        events = _events(state, request, call, streams)
        return StreamingResponse(events, media_type="text/event-stream", headers=headers)
    try:
        replies = await _collect(state, request, streams)
    finally:
        await _close(state, streams)
    if state.shutdown_message and any(
        c.finish_reason == "abort" for r in replies for c in r.candidates
    ):
        raise unavailable()
    body = _chat_body(state, call, replies) if call.chat else _completion_body(state, call, replies)
    state.metrics.count(request.url.path, 200)
    return JSONResponse(body.model_dump(), headers=headers)


async def _close(state: ServerState, streams: list[BlendStream]) -> None:
    for s in streams:
        await s.aclose()
        state.streams.discard(s)
    state.release()


async def _collect(state: ServerState, request: Request, streams: list[BlendStream]) -> list[Reply]:
    """Every stream run to its reply; a client that leaves cancels them (499)."""

    async def run(stream: BlendStream) -> Reply:
        async for _ in state.metrics.timed_outputs(stream):
            pass
        assert stream.reply is not None
        return stream.reply

    gathered = asyncio.gather(*(run(s) for s in streams))
    try:
        while not gathered.done():
            await asyncio.wait({gathered}, timeout=0.25)
            if not gathered.done() and await request.is_disconnected():
                raise APIError(499, "client closed the request", code="client_closed_request")
        return gathered.result()
    except EngineError as e:
        raise APIError(500, str(e), kind="server_error") from e
    except ValueError as e:  # the engine refused the request (say, the pool is too small)
        raise APIError(400, str(e)) from e
    finally:
        if not gathered.done():
            gathered.cancel()
            with contextlib.suppress(BaseException):
                await gathered


def _chat_body(state: ServerState, call: _Call, replies: list[Reply]) -> ChatCompletionResponse:
    text = TokenText(state.blend.tokenizer(replies[0].member))
    choices = [
        ChatChoice(
            index=call.choice_index(t, j),
            message=AssistantMessage(content=c.text),
            finish_reason=finish_reason(c.finish_reason),
            logprobs=chat_logprobs(text, c.logprobs)
            if call.body.num_top_logprobs() is not None
            else None,
        )
        for t, reply in enumerate(replies)
        for j, c in enumerate(reply.candidates)
    ]
    return ChatCompletionResponse(
        id=call.id,
        created=call.created,
        model=replies[0].member,
        choices=choices,
        usage=usage(replies),
    )


def _completion_body(state: ServerState, call: _Call, replies: list[Reply]) -> CompletionResponse:
    text = TokenText(state.blend.tokenizer(replies[0].member))
    choices = []
    for t, reply in enumerate(replies):
        prefix = call.echo[t] if call.echo else ""
        for j, c in enumerate(reply.candidates):
            logprobs = None
            if call.body.num_top_logprobs() is not None:
                ids, lps = [], []
                if call.echo_logprobs is not None:
                    ids, lps = list(call.turns[t].prompt_ids), list(call.echo_logprobs[t])
                ids += [lp.token_id for lp in c.logprobs]
                lps += list(c.logprobs)
                logprobs = completion_logprobs(text, lps, ids)
            choices.append(
                CompletionChoice(
                    index=call.choice_index(t, j),
                    text=prefix + c.text,
                    finish_reason=finish_reason(c.finish_reason),
                    logprobs=logprobs,
                )
            )
    return CompletionResponse(
        id=call.id,
        created=call.created,
        model=replies[0].member,
        choices=choices,
        usage=usage(replies),
    )


async def _merged(
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


async def _events(
    state: ServerState, request: Request, call: _Call, streams: list[BlendStream]
) -> AsyncIterator[str]:
    model = call.turns[0].member
    body = call.body
    text = TokenText(state.blend.tokenizer(model))
    want_logprobs = body.num_top_logprobs() is not None
    include_usage = bool(body.stream_options and body.stream_options.include_usage)

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
            async for t, delta, out in _merged(state, streams):
                if delta or out.finished or (want_logprobs and out.logprobs):
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
        await _close(state, streams)
