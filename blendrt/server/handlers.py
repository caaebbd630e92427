"""How the server answers what goes wrong: its APIErrors, FastAPI's validation errors (a 400
naming the field, not a 422), unknown paths and methods, and, in a middleware, any exception
no handler took (a bug: logged once, counted, answered 500)."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from blendrt.server.errors import APIError, from_validation_errors
from blendrt.server.state import ServerState

logger = logging.getLogger("blendrt.server")


def add_error_handlers(app: FastAPI, state: ServerState) -> None:
    def answer(request: Request, e: APIError) -> JSONResponse:
        state.metrics.count(request.url.path, e.status)
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers)

    @app.exception_handler(APIError)
    async def api_error(request: Request, e: APIError) -> JSONResponse:
        return answer(request, e)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, e: RequestValidationError) -> JSONResponse:
        return answer(request, from_validation_errors(list(e.errors())))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException) -> JSONResponse:
        # 404 for unknown paths, 405 (with its Allow header) for unsupported methods
        error = APIError(e.status_code, str(e.detail), headers=dict(e.headers or {}))
        return answer(request, error)


class InternalErrorMiddleware:
    """ASGI: an exception no handler took is a bug: logged once with its traceback, counted,
    and answered as a 500 error object (instead of uvicorn's bare 500 and second log)."""

    def __init__(self, app: Any, state: ServerState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: dict[str, Any]) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as e:
            logger.error("internal error on %s", scope.get("path"), exc_info=e)
            self.state.metrics.count(scope.get("path", "any"), 500)
            if started:  # the answer is on its way: nothing more can be said
                return
            error = APIError(500, f"internal error: {type(e).__name__}", kind="server_error")
            await JSONResponse(error.body(), status_code=500)(scope, receive, send)
