"""The OpenAI-compatible HTTP server over a Blend (FastAPI).

    POST /v1/chat/completions   model: the blend's id lets the policy pick, a member's pins it
    POST /v1/completions        raw prompts (text or token ids) to a named member
    GET  /v1/models, /health, /metrics, /version; POST /tokenize, /detokenize (vLLM's shapes)

Every request is a BlendStream: a client that disconnects closes it, which aborts the request
and frees its pages. A bounded number of requests may be in flight (429 + Retry-After beyond
it), bodies are size-limited (413), bad input is a 400 naming the field, and every answer
that is not a 200 is an OpenAI-style error object, documented in /openapi.json.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import PlainTextResponse, Response

import blendrt
from blendrt.blend import Blend
from blendrt.server import completions
from blendrt.server.body_limit import BodyLimitMiddleware
from blendrt.server.errors import APIError
from blendrt.server.handlers import InternalErrorMiddleware, add_error_handlers
from blendrt.server.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    TokenizeChatRequest,
    TokenizeCompletionRequest,
    blend_messages,
)
from blendrt.server.schemas import (
    ChatCompletionResponse,
    CompletionResponse,
    DetokenizeResponse,
    ErrorResponse,
    HealthResponse,
    ModelCard,
    ModelList,
    TokenizeResponse,
    VersionResponse,
)
from blendrt.server.shutdown import DrainMiddleware
from blendrt.server.state import ServerState

logger = logging.getLogger("blendrt.server")

_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": what}
    for status, what in {
        400: "bad input, naming the field (code context_length_exceeded: past the window)",
        401: "missing or wrong API key",
        404: "unknown model",
        413: "request body too large",
        429: "too many requests in flight (see Retry-After)",
        500: "internal error",
        503: "shutting down (see Retry-After)",
    }.items()
}


#: One server-sent event: `data` holds a chunk as JSON, an error object, or [DONE].
_SSE_EVENT = {
    "type": "object",
    "properties": {"data": {"type": "string"}, "event": {"type": "string"}},
    "required": ["data"],
}


def _streamed(model: type) -> dict[int | str, dict[str, Any]]:
    """200 as JSON, or with "stream": true as server-sent events (data: chunk ... [DONE])."""
    return {
        200: {
            "model": model,
            "content": {"text/event-stream": {"schema": _SSE_EVENT}},
            "description": "the completion, or its chunks as server-sent events",
        },
        **_ERRORS,
    }


def create_app(
    blend: Blend,
    *,
    api_key: str | None = None,
    metrics_key: str | None = None,
    max_in_flight: int = 256,
    max_body_bytes: int = 4 << 20,
    served_model_name: str = "blend",
) -> FastAPI:
    state = ServerState(
        blend,
        api_key=api_key,
        metrics_key=metrics_key,
        max_in_flight=max_in_flight,
        served_model_name=served_model_name,
    )
    app = FastAPI(
        title="blendrt",
        version=blendrt.__version__,
        description="An OpenAI-compatible server for a blend of chat models.",
        docs_url=None,
        redoc_url=None,
    )
    app.state.blendrt = state
    app.add_middleware(InternalErrorMiddleware, state=state)
    app.add_middleware(DrainMiddleware, state=state)
    app.add_middleware(
        BodyLimitMiddleware,
        max_bytes=max_body_bytes,
        on_reject=lambda: state.metrics.count("any", 413),
    )
    add_error_handlers(app, state)
    app.openapi = lambda: _openapi(app, state)  # type: ignore[method-assign]

    @app.get("/health", response_model=HealthResponse, responses=_ERRORS)
    async def health() -> HealthResponse:
        return HealthResponse()

    @app.get("/version", response_model=VersionResponse, responses=_ERRORS)
    async def version() -> VersionResponse:
        return VersionResponse(version=blendrt.__version__)

    @app.get(
        "/metrics",
        response_class=PlainTextResponse,
        responses={200: {"content": {"text/plain": {}}}, **_ERRORS},
    )
    async def metrics(request: Request) -> Response:
        state.authorize(request, state.metrics_key)
        text = await asyncio.to_thread(state.metrics.render)
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")

    @app.get("/v1/models", response_model=ModelList, responses=_ERRORS)
    async def models(request: Request) -> ModelList:
        state.authorize(request, state.api_key)
        now = int(time.time())
        cards = [ModelCard(id=state.served_model_name, created=now)]
        cards += [
            ModelCard(id=name, created=now, max_model_len=blend.engine.max_model_len(name))
            for name in blend.members
        ]
        return ModelList(data=cards)

    @app.post(
        "/v1/chat/completions",
        response_model=ChatCompletionResponse,
        responses=_streamed(ChatCompletionResponse),
    )
    async def chat_completions(request: Request, body: ChatCompletionRequest) -> Response:
        state.authorize(request, state.api_key)
        return await completions.chat_completions(state, request, body)

    @app.post(
        "/v1/completions",
        response_model=CompletionResponse,
        responses=_streamed(CompletionResponse),
    )
    async def text_completions(request: Request, body: CompletionRequest) -> Response:
        state.authorize(request, state.api_key)
        return await completions.completions(state, request, body)

    @app.post("/tokenize", response_model=TokenizeResponse, responses=_ERRORS)
    async def tokenize(
        request: Request, body: TokenizeCompletionRequest | TokenizeChatRequest
    ) -> TokenizeResponse:
        state.authorize(request, state.api_key)
        member = _one_member(state, body.model, "/tokenize")

        def run() -> list[int]:
            if isinstance(body, TokenizeCompletionRequest):
                tok = blend.tokenizer(member)
                return tok.encode(body.prompt, add_special_tokens=body.add_special_tokens)
            fmt = blend.formats[member]
            messages = blend_messages(body.messages)
            return fmt.render(messages, add_generation_prompt=body.add_generation_prompt)

        with completions.bad_input():
            ids = await asyncio.to_thread(run)
        window = blend.engine.max_model_len(member)
        return TokenizeResponse(count=len(ids), max_model_len=window, tokens=ids)

    @app.post("/detokenize", response_model=DetokenizeResponse, responses=_ERRORS)
    async def detokenize(request: Request, body: DetokenizeRequest) -> DetokenizeResponse:
        state.authorize(request, state.api_key)
        member = _one_member(state, body.model, "/detokenize")
        vocab = blend.engine.models[member].config.vocab_size
        if any(t >= vocab for t in body.tokens):
            raise APIError(400, f"tokens must lie in [0, {vocab})", param="tokens")
        text = await asyncio.to_thread(blend.tokenizer(member).decode, body.tokens)
        return DetokenizeResponse(prompt=text)

    return app


def _openapi(app: FastAPI, state: ServerState) -> dict[str, Any]:
    """FastAPI's schema, made truthful for this server: no 422 (bad input is a 400), and
    `model` lists the ids it serves (members only where a member is needed)."""
    if app.openapi_schema is None:
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        for path in schema["paths"].values():
            for operation in path.values():
                operation.get("responses", {}).pop("422", None)
        components = schema.get("components", {}).get("schemas", {})
        for name in ("HTTPValidationError", "ValidationError"):
            components.pop(name, None)
        members = list(state.blend.members)
        for name, ids in {
            "ChatCompletionRequest": [state.served_model_name, *members],
            "CompletionRequest": members,
            "TokenizeCompletionRequest": members,
            "TokenizeChatRequest": members,
            "DetokenizeRequest": members,
        }.items():
            if name in components:
                components[name]["properties"]["model"]["enum"] = ids
        app.openapi_schema = schema
    return app.openapi_schema


def _one_member(state: ServerState, model: str, path: str) -> str:
    member = state.member_of(model)
    if member is None:
        raise APIError(
            400, f"{path} needs a member's name as model: tokens are per member", param="model"
        )
    return member
