"""The OpenAI-compatible HTTP server over a Blend (FastAPI).

    POST /v1/chat/completions   model "blend" lets the policy pick, a member's name pins it
    POST /v1/completions        a raw prompt to a named member
    GET  /v1/models, /health, /metrics

Every request is a BlendStream: a client that disconnects closes it, which aborts the request
and frees its pages. A bounded number of requests may be in flight (429 beyond it), bodies
are size-limited (413), and bad input is answered 4xx with an OpenAI-style error object.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from pydantic import ValidationError

from blendrt.blend import Blend, PreparedTurn
from blendrt.blend_stream import BlendStream
from blendrt.server.body_limit import BodyLimitMiddleware
from blendrt.server.metrics import ServerMetrics
from blendrt.server.protocol import (
    APIError,
    ChatCompletionRequest,
    CompletionRequest,
    from_validation_error,
)
from blendrt.truncation import ContextLengthError

logger = logging.getLogger("blendrt.server")


class ServerState:
    def __init__(
        self, blend: Blend, api_key: str | None, max_in_flight: int, served_model_name: str
    ) -> None:
        self.blend = blend
        self.api_key = api_key
        self.max_in_flight = max_in_flight
        self.served_model_name = served_model_name  # the blend's model id
        self.in_flight = 0
        self.metrics = ServerMetrics(blend)


def create_app(
    blend: Blend,
    *,
    api_key: str | None = None,
    max_in_flight: int = 256,
    max_body_bytes: int = 4 << 20,
    served_model_name: str = "blend",
) -> FastAPI:
    if not served_model_name or served_model_name in blend.members:
        raise ValueError(
            f"served_model_name {served_model_name!r} must be non-empty and differ from the "
            f"member names ({', '.join(blend.members)})"
        )
    app = FastAPI(title="blendrt", docs_url=None, redoc_url=None)
    state = ServerState(blend, api_key, max_in_flight, served_model_name)
    app.add_middleware(
        BodyLimitMiddleware,
        max_bytes=max_body_bytes,
        on_reject=lambda: state.metrics.count("any", 413),
    )

    @app.exception_handler(APIError)
    async def api_error(request: Request, e: APIError) -> JSONResponse:
        state.metrics.count(request.url.path, e.status)
        return JSONResponse(e.body(), status_code=e.status)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metrics")
    async def metrics() -> Response:
        return PlainTextResponse(
            await asyncio.to_thread(state.metrics.render), media_type="text/plain; version=0.0.4"
        )

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        _authorize(state, request)
        now = int(time.time())
        ids = [state.served_model_name, *blend.members]
        return {
            "object": "list",
            "data": [
                {"id": i, "object": "model", "created": now, "owned_by": "blendrt"} for i in ids
            ],
        }

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        _authorize(state, request)
        body = _parse(ChatCompletionRequest, await _json(request))
        member = _member(state, body.model)
        with _bad_input():
            turn = blend.prepare(
                body.blend_messages(),
                member=member,
                sampling=body.sampling_fields(),
                truncation=body.truncation,
            )
        return await _respond(state, request, turn, body.stream, _include_usage(body), chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        _authorize(state, request)
        body = _parse(CompletionRequest, await _json(request))
        member = _member(state, body.model)
        if member is None:
            raise APIError(
                400,
                "/v1/completions needs a member's name as model: a raw "
                "prompt is in one member's format",
                param="model",
            )
        ids = blend.tokenizer(member).encode(body.prompt)
        with _bad_input():
            turn = blend.prepare_prompt(member, ids, body.sampling_fields())
        return await _respond(state, request, turn, body.stream, _include_usage(body), chat=False)

    return app


def _authorize(state: ServerState, request: Request) -> None:
    if state.api_key is None:
        return
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not secrets.compare_digest(token, state.api_key):
        raise APIError(
            401,
            "missing or wrong API key (Authorization: Bearer ...)",
            kind="authentication_error",
            code="invalid_api_key",
        )


async def _json(request: Request) -> Any:
    try:
        return json.loads(await request.body())
    except (ValueError, UnicodeDecodeError) as e:
        raise APIError(400, f"request body is not valid JSON: {e}") from e


def _parse(model: type, data: Any) -> Any:
    if not isinstance(data, dict):
        raise APIError(400, "request body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise from_validation_error(e) from e


@contextlib.contextmanager
def _bad_input() -> Iterator[None]:
    """ValueErrors of preparing a turn as 400s (context_length_exceeded where it is that)."""
    try:
        yield
    except ContextLengthError as e:
        raise APIError(400, str(e), param=e.param, code=e.code) from e
    except ValueError as e:
        raise APIError(400, str(e)) from e


def _member(state: ServerState, model: str) -> str | None:
    if model == state.served_model_name:
        return None
    if model not in state.blend.members:
        known = ", ".join([state.served_model_name, *state.blend.members])
        raise APIError(
            404,
            f"model {model!r} not found; available: {known}",
            param="model",
            code="model_not_found",
        )
    return model


def _include_usage(body: Any) -> bool:
    return bool(body.stream_options and body.stream_options.include_usage)


async def _respond(
    state: ServerState,
    request: Request,
    turn: PreparedTurn,
    stream: bool,
    include_usage: bool,
    *,
    chat: bool,
) -> Response:
    if state.in_flight >= state.max_in_flight:
        raise APIError(
            429, f"server busy: {state.max_in_flight} requests in flight", kind="rate_limit_error"
        )
    state.in_flight += 1
    released = False

    def release() -> None:
        nonlocal released
        if not released:
            released = True
            state.in_flight -= 1

    out = BlendStream(state.blend, turn)
    rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
    headers = {"x-blendrt-member": turn.member}
    path = request.url.path
    if stream:
        body = _sse(state, request, out, rid, include_usage, chat, release)
        state.metrics.count(path, 200)
        return StreamingResponse(body, media_type="text/event-stream", headers=headers)
    try:
        text = await _collect(state, request, out)
    except ValueError as e:  # the engine refused the request (say, the pool is too small)
        raise APIError(400, str(e)) from e
    finally:
        release()
    state.metrics.count(path, 200)
    return JSONResponse(_completion(rid, out, text, chat), headers=headers)


async def _collect(state: ServerState, request: Request, out: BlendStream) -> str:
    """The whole reply; closes the stream (aborting the request) if the client leaves."""
    parts: list[str] = []

    async def read() -> None:
        async for delta in state.metrics.timed(out):
            parts.append(delta)

    reader = asyncio.ensure_future(read())
    try:
        while not reader.done():
            await asyncio.wait({reader}, timeout=0.25)
            if not reader.done() and await request.is_disconnected():
                reader.cancel()
                raise APIError(499, "client disconnected")
        reader.result()
    finally:
        if not reader.done():
            reader.cancel()
        await out.aclose()
    return "".join(parts)


def _usage(out: BlendStream) -> dict[str, Any]:
    u = out.reply.usage if out.reply else None
    if u is None:
        return {}
    return {
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens + u.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": u.cached_prompt_tokens},
        # blendrt: the oldest messages left out to fit the member's window (truncation auto)
        "truncated_messages": u.truncated_messages,
        "truncated_tokens": u.truncated_tokens,
    }


def _completion(rid: str, out: BlendStream, text: str, chat: bool) -> dict[str, Any]:
    reason = out.reply.finish_reason if out.reply else "abort"
    reason = "length" if reason == "length" else "stop"
    if chat:
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "finish_reason": reason,
            "logprobs": None,
        }
    else:
        choice = {"index": 0, "text": text, "finish_reason": reason, "logprobs": None}
    return {
        "id": rid,
        "object": "chat.completion" if chat else "text_completion",
        "created": int(time.time()),
        "model": out.member,
        "choices": [choice],
        "usage": _usage(out),
    }


async def _sse(
    state: ServerState,
    request: Request,
    out: BlendStream,
    rid: str,
    include_usage: bool,
    chat: bool,
    release: Any,
) -> AsyncIterator[str]:
    created = int(time.time())
    kind = "chat.completion.chunk" if chat else "text_completion"

    def chunk(choices: list[dict[str, Any]], **extra: Any) -> str:
        body = {
            "id": rid,
            "object": kind,
            "created": created,
            "model": out.member,
            "choices": choices,
            **extra,
        }
        return f"data: {json.dumps(body)}\n\n"

    async def watch_connection() -> None:
        # NOTE: uvicorn drops writes to a closed connection silently, so a client that hangs
        # up is noticed here, on the receive channel, and its request aborted.
        while (await request.receive())["type"] != "http.disconnect":
            pass
        out.cancel()

    watcher = asyncio.ensure_future(watch_connection())
    try:
        if chat:
            yield chunk(
                [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]
            )
        try:
            async for delta in state.metrics.timed(out):
                piece = {"content": delta} if chat else None
                yield chunk(
                    [
                        {
                            "index": 0,
                            "finish_reason": None,
                            **({"delta": piece} if chat else {"text": delta}),
                        }
                    ]
                )
        except Exception as e:
            # NOTE: the 200 is already sent: a failure after it is an error event, then
            # [DONE], so clients see why the stream ended rather than a cut connection.
            if isinstance(e, ValueError):  # the engine refused the request
                error = APIError(400, str(e))
            else:
                logger.exception("stream %s failed", rid)
                error = APIError(500, f"generation failed: {e}", kind="server_error")
            yield f"data: {json.dumps(error.body())}\n\n"
            yield "data: [DONE]\n\n"
            return
        reason = "length" if out.reply and out.reply.finish_reason == "length" else "stop"
        yield chunk(
            [{"index": 0, "finish_reason": reason, **({"delta": {}} if chat else {"text": ""})}]
        )
        if include_usage:
            yield chunk([], usage=_usage(out))
        yield "data: [DONE]\n\n"
    finally:
        watcher.cancel()
        await out.aclose()
        release()
