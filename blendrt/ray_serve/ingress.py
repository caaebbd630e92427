"""The HTTP ingress of a Ray Serve blend: it reads each request (body under a size limit),
computes its conversation key (blendrt.ray_serve.keys) and hands the request, key attached,
to the blend replica Ray Serve's request router picks; the replica's OpenAI app answers and
the answer streams back as it comes. It holds no model (a fraction of a CPU).

Faults: a replica that dies before its answer starts is replaced by another (one retry, a
cache miss, nothing the client sees); one that dies mid-stream ends the stream with an error
event and [DONE] (the client retries, on another replica); a non-streamed answer cut short
becomes a 503 with Retry-After when nothing was sent yet.

Own routes: GET /replicas (each replica's id, node and figures, from Ray's routing stats) and
GET /replicas/{id}/metrics (that replica's Prometheus text). Everything else is the app's.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Mount, Route

from blendrt.ray_serve.asgi_call import ForwardedRequest, Message
from blendrt.ray_serve.config import RayServeOptions
from blendrt.ray_serve.keys import conversation_key
from blendrt.ray_serve.registry import router_for
from blendrt.server.body_limit import BodyLimitMiddleware

if TYPE_CHECKING:
    from ray.serve.handle import DeploymentHandle

logger = logging.getLogger("blendrt.ray_serve")

PINNED_TIMEOUT_S = 10.0  # a request for one replica's metrics waits at most this long
LOST_MESSAGE = "the replica serving this request went away; retry (another replica takes it)"


def _error(status: int, message: str, code: str) -> dict[str, Any]:
    kind = "server_error" if status >= 500 else "invalid_request_error"
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


async def _read_body(receive: Any) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ConnectionError("client disconnected before its body was read")
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


class Forwarder:
    """ASGI: forwards every request to a blend replica through `handle`."""

    def __init__(self, handle: DeploymentHandle) -> None:
        self.handle = handle.options(stream=True)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        try:
            body = await _read_body(receive)
        except ConnectionError:
            return
        headers = list(scope.get("headers") or [])
        request = ForwardedRequest(
            method=scope["method"],
            path=scope["path"],
            query_string=scope.get("query_string", b""),
            headers=headers,
            body=body,
            client=tuple(scope["client"]) if scope.get("client") else None,
        )
        key = conversation_key(request.path, headers, body)
        await self.forward(request, key, send)

    async def forward(self, request: ForwardedRequest, key: str | None, send: Any) -> None:
        from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

        lost = (RayActorError, ActorDiedError, ActorUnavailableError)
        started = streaming = False
        for attempt in (1, 2):
            stream = self.handle.handle_http.remote(request, conversation=key)
            finished = False
            try:
                async for message in stream:
                    if message["type"] == "http.response.start":
                        started = True
                        streaming = _is_event_stream(message)
                    await send(message)
                finished = True
                return
            except lost as e:
                logger.warning("replica lost on %s (attempt %d): %s", request.path, attempt, e)
                if started:
                    await self._end_cut(send, streaming)
                    return
            finally:
                if not finished:
                    stream.cancel()  # the client left, or the replica did: stop it
        await _answer(send, 503, _error(503, LOST_MESSAGE, "replica_lost"), retry_after=True)

    async def _end_cut(self, send: Any, streaming: bool) -> None:
        """Ends a response whose replica died after its 200 was sent."""
        if streaming:
            error = _error(503, LOST_MESSAGE, "replica_lost")
            tail = f"data: {json.dumps(error)}\n\ndata: [DONE]\n\n".encode()
            await send({"type": "http.response.body", "body": tail, "more_body": False})
        else:
            await send({"type": "http.response.body", "body": b"", "more_body": False})


def _is_event_stream(start: Message) -> bool:
    for name, value in start.get("headers", []):
        if name.lower() == b"content-type":
            return value.startswith(b"text/event-stream")
    return False


async def _answer(send: Any, status: int, body: dict[str, Any], retry_after: bool) -> None:
    data = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(data))]
    if retry_after:
        headers.append((b"retry-after", b"1"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data, "more_body": False})


def build_ingress_app(handle: DeploymentHandle, options: RayServeOptions) -> Starlette:
    """The ingress's ASGI app: its own /replicas routes, the rest forwarded."""
    forwarder = BodyLimitMiddleware(Forwarder(handle), max_bytes=options.max_body_bytes)

    async def replicas(request: Request) -> JSONResponse:
        return JSONResponse({"replicas": await _replica_figures(handle, options)})

    async def replica_metrics(request: Request) -> PlainTextResponse:
        rid = request.path_params["replica"]
        known = {f["replica"] for f in await _replica_figures(handle, options)}
        if rid not in known:
            return JSONResponse(_error(404, f"no replica {rid!r}", "replica_not_found"), 404)
        try:
            text = await asyncio.wait_for(
                handle.metrics.remote(replica=rid), timeout=PINNED_TIMEOUT_S
            )
        except asyncio.TimeoutError:
            return JSONResponse(_error(404, f"no replica {rid!r}", "replica_not_found"), 404)
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")

    routes = [Route("/replicas", replicas), Route("/replicas/{replica}/metrics", replica_metrics)]
    return Starlette(routes=[*routes, Mount("/", app=forwarder)])


async def _replica_figures(handle: DeploymentHandle, options: RayServeOptions) -> list[dict]:
    """Each live replica's figures, as its last routing stats reported them."""
    router = router_for(options.app_name, "BlendReplica")
    if router is None:  # no request went through this ingress's handle yet
        await handle.info.remote()
        router = router_for(options.app_name, "BlendReplica")
    if router is None:  # Ray's default router (router="pow2"): one replica's, unpinned
        return [await handle.info.remote()]
    out = []
    for r in router.replicas():
        figures = dict(r.routing_stats or {})
        figures.update(replica=r.replica_id.unique_id, ray_node_id=r.node_id)
        out.append(figures)
    return sorted(out, key=lambda f: f["replica"])


class BlendIngress:
    """The ingress deployment's class: its ASGI app is built on the replica."""

    def __init__(self, replicas: DeploymentHandle, options: RayServeOptions) -> None:
        self.replicas = replicas
        self.options = options

    def __serve_build_asgi_app__(self) -> Starlette:
        return build_ingress_app(self.replicas, self.options)
