"""One HTTP request answered by an ASGI app in this process, its response as a stream of ASGI
messages: how a replica runs blendrt's own FastAPI app (unchanged) for a request the ingress
forwarded. No Ray here.

The request body is whole (the ingress read it, under its size limit); after it, `receive`
waits for a disconnect, which comes when the consumer stops reading (the client went away,
or the generator was closed): the app then aborts the request and frees its pages, as it
does for a client that hangs up on the single-process server.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

Message = dict[str, Any]
ASGIApp = Callable[[dict[str, Any], Callable, Callable], Awaitable[None]]

DISCONNECT_GRACE_S = 5.0  # how long an app may take to wind down after a disconnect


@dataclass
class ForwardedRequest:
    """An HTTP request as the ingress hands it to a replica (picklable)."""

    method: str
    path: str
    query_string: bytes = b""
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""
    client: tuple[str, int] | None = None

    def scope(self) -> dict[str, Any]:
        return {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": self.method,
            "scheme": "http",
            "path": self.path,
            "raw_path": self.path.encode("utf-8", "surrogateescape"),
            "root_path": "",
            "query_string": self.query_string,
            "headers": list(self.headers),
            "client": self.client,
            "server": None,
            "state": {},
        }


async def call_asgi(app: ASGIApp, request: ForwardedRequest) -> AsyncIterator[Message]:
    """Runs `app` on the request; yields its http.response.start and http.response.body
    messages as it sends them. An exception the app raises is raised here after the
    messages it sent."""
    queue: asyncio.Queue[Message | None] = asyncio.Queue()
    disconnected = asyncio.Event()
    body_given = False

    async def receive() -> Message:
        nonlocal body_given
        if not body_given:
            body_given = True
            return {"type": "http.request", "body": request.body, "more_body": False}
        await disconnected.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        if disconnected.is_set():
            raise OSError("client disconnected")  # as a server does on a closed socket
        queue.put_nowait(message)

    async def run() -> None:
        try:
            await app(request.scope(), receive, send)
        finally:
            queue.put_nowait(None)

    task = asyncio.ensure_future(run())
    try:
        while (message := await queue.get()) is not None:
            yield message
        await task  # the app's own exception, if any
    finally:
        # NOTE: reached on a normal end, and when the consumer closes or cancels this
        # generator: the app sees a disconnect and must end (its streams abort).
        disconnected.set()
        if not task.done():
            await asyncio.wait({task}, timeout=DISCONNECT_GRACE_S)
            if not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
