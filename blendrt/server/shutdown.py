"""Graceful shutdown: on SIGTERM (or SIGINT) the server stops taking requests (503 with
Retry-After while draining), gives live requests a bounded drain time, then cuts the rest
short (each stream ends with a final chunk and an error event saying why, then [DONE]) and
exits. A second signal exits at once."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import uvicorn

from blendrt.server.state import ServerState, unavailable

SHUTDOWN_MESSAGE = "the server is shutting down; retry on another replica or later"
CUT_GRACE_SECONDS = 2.0  # for cut requests to send their last chunk


class DrainMiddleware:
    """ASGI: while the server drains, every new HTTP request is answered 503."""

    def __init__(self, app: Any, state: ServerState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or not self.state.draining:
            await self.app(scope, receive, send)
            return
        error = unavailable()
        self.state.metrics.count(scope.get("path", "any"), 503)
        body = json.dumps(error.body()).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ]
        headers += [(k.encode(), v.encode()) for k, v in (error.headers or {}).items()]
        await send({"type": "http.response.start", "status": 503, "headers": headers})
        await send({"type": "http.response.body", "body": body})


class DrainingServer(uvicorn.Server):
    """uvicorn.Server whose exit signal starts a drain of at most `drain_timeout` seconds."""

    def __init__(self, config: uvicorn.Config, state: ServerState, drain_timeout: float) -> None:
        super().__init__(config)
        self.state = state
        self.drain_timeout = drain_timeout
        self._deadline: float | None = None
        self._cut_at: float | None = None
        self.drain_seconds: float | None = None  # how long the last drain took

    def handle_exit(self, sig: int, frame: Any) -> None:
        if self._deadline is not None:  # a second signal: leave now
            super().handle_exit(sig, frame)
            return
        self.state.draining = True
        self._deadline = time.monotonic() + self.drain_timeout
        self._started = time.monotonic()

    async def on_tick(self, counter: int) -> bool:
        should_exit = await super().on_tick(counter)
        if should_exit or self._deadline is None:
            return should_exit
        now = time.monotonic()
        if self.state.in_flight == 0:
            self.drain_seconds = now - self._started
            return True
        if now >= self._deadline:
            if self._cut_at is None:
                self._cut_at = now
                self.state.cut_streams(SHUTDOWN_MESSAGE)
            elif now - self._cut_at > CUT_GRACE_SECONDS:  # the cut requests did not finish
                return True
        return False
