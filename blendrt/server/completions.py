"""POST /v1/chat/completions and /v1/completions: a request becomes prepared turns (rendered
and tokenized off the event loop), runs as BlendStreams, and is answered as one JSON body, or
as server-sent events (`streaming`)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Iterator, Sequence

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from blendrt.blend_stream import BlendStream
from blendrt.engine.request import TokenLogprob
from blendrt.server import streaming
from blendrt.server.call import Call, close_streams
from blendrt.server.errors import APIError
from blendrt.server.protocol import ChatCompletionRequest, CompletionRequest
from blendrt.server.responses import chat_body, completion_body
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
    return await _respond(state, request, Call(body, [turn], chat=True))


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
    call = Call(body, turns, chat=False)
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


async def _respond(state: ServerState, request: Request, call: Call) -> Response:
    if call.body.stream and any(t.rank_by_reward for t in call.turns):
        raise APIError(
            400, "this server ranks best_of candidates with a reward model, known only when "
            "all are scored: stream with best_of 1, or do not stream", param="best_of",
        )  # fmt: skip
    state.admit()
    streams = [state.blend.stream_turn(t) for t in call.turns]
    state.streams.update(streams)
    headers = {"x-blendrt-member": call.turns[0].member}
    if call.body.stream:
        state.metrics.count(request.url.path, 200)
        events = streaming.events(state, request, call, streams)
        return StreamingResponse(events, media_type="text/event-stream", headers=headers)
    try:
        replies = await _collect(state, request, streams)
    finally:
        await close_streams(state, streams)
    if any(t.rank_by_reward for t in call.turns):  # best_of: the reward model's top n
        with bad_input():
            ranked = [
                await asyncio.to_thread(state.blend.rank, t, r)
                for t, r in zip(call.turns, replies, strict=True)
            ]
        replies = [  # the top n
            dataclasses.replace(r, candidates=r.candidates[: t.sampling.n])
            for t, r in zip(call.turns, ranked, strict=True)
        ]
    if state.shutdown_message and any(
        c.finish_reason == "abort" for r in replies for c in r.candidates
    ):
        raise unavailable()
    body = chat_body(state, call, replies) if call.chat else completion_body(state, call, replies)
    state.metrics.count(request.url.path, 200)
    return JSONResponse(body.model_dump(), headers=headers)


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
