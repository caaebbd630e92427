"""BlendReplica: one Ray Serve replica holding the whole blend and blendrt's OpenAI app
(blendrt.server.app.create_app, unchanged), answering the HTTP requests the ingress forwards.

Each response carries `x-blendrt-replica` (this replica's id). Ray Serve calls check_health
(the engine loop must answer) and record_routing_stats (the figures /replicas shows) on
every replica; a replica that stops answering is replaced, and the new one rejoins the
routing with its own id.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
from collections.abc import AsyncIterator
from typing import Any

from blendrt.ray_serve.asgi_call import ForwardedRequest, Message, call_asgi
from blendrt.ray_serve.config import RayServeOptions

REPLICA_HEADER = "x-blendrt-replica"
HEALTH_TIMEOUT_S = 20.0  # an engine loop that does not answer stats in this long is stuck


def blend_namespace(options: RayServeOptions) -> argparse.Namespace:
    """The `blendrt serve` flags the replica builds its blend and server from."""
    if options.blend_namespace is not None:
        return options.blend_namespace
    from blendrt.cli.serve_args import parse_args

    return parse_args(options.blend_args)


class BlendReplica:
    def __init__(self, options: RayServeOptions) -> None:
        if options.torch_threads:
            import torch

            torch.set_num_threads(options.torch_threads)
        from blendrt.cli.options import build_blend
        from blendrt.server.app import create_app

        args = blend_namespace(options)
        self.blend = build_blend(args, args.member)
        self.app = create_app(
            self.blend,
            api_key=args.api_key or os.environ.get("BLENDRT_API_KEY") or None,
            metrics_key=args.metrics_key,
            max_in_flight=args.max_in_flight,
            max_body_bytes=args.max_body_bytes,
            served_model_name=args.served_model_name,
        )
        self.state = self.app.state.blendrt
        from ray import serve

        self.replica_id = serve.get_replica_context().replica_id.unique_id
        self._header = (REPLICA_HEADER.encode(), self.replica_id.encode())

    async def handle_http(
        self,
        request: ForwardedRequest,
        conversation: str | None = None,
        replica: str | None = None,
    ) -> AsyncIterator[Message]:
        """The app's ASGI messages for one request. `conversation` and `replica` are read
        by the request router, not here."""
        async for message in call_asgi(self.app, request):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), self._header]}
            yield message

    def info(self, conversation: str | None = None, replica: str | None = None) -> dict:
        """This replica's identity and figures (also what record_routing_stats reports)."""
        stats = self.blend.stats()
        return {
            "replica": self.replica_id,
            "node": socket.gethostname(),
            "pid": os.getpid(),
            "in_flight": self.state.in_flight,
            "requests_running": stats["requests_running"],
            "requests_waiting": stats["requests_waiting"],
            "prefix_hit_rate": stats["prefix_hit_rate"],
            "prompt_tokens_received": stats["prompt_tokens_received"],
            "prompt_tokens_computed": stats["prompt_tokens_computed"],
            "pages_free": stats["pool"]["pages_free"],
            "num_pages": stats["pool"]["num_pages"],
        }

    def metrics(self, conversation: str | None = None, replica: str | None = None) -> bytes:
        """This replica's Prometheus text (as its /metrics, without the key check)."""
        return self.state.metrics.render()

    async def check_health(self) -> None:
        # NOTE: stats() runs on the engine loop's thread: a dead or wedged loop fails here.
        await asyncio.wait_for(asyncio.to_thread(self.blend.stats), HEALTH_TIMEOUT_S)

    async def record_routing_stats(self) -> dict[str, Any]:
        return await asyncio.to_thread(self.info)

    def __del__(self) -> None:
        # Ray Serve stops a replica after its graceful_shutdown_timeout_s: live streams end
        # with an error event (as at the single-process server's shutdown), then the pool goes.
        state = getattr(self, "state", None)
        if state is not None:
            from blendrt.server.shutdown import SHUTDOWN_MESSAGE

            state.draining = True
            state.cut_streams(SHUTDOWN_MESSAGE)
        blend = getattr(self, "blend", None)
        if blend is not None:
            blend.close()
