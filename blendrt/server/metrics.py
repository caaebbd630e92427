"""Prometheus metrics of one server (its own registry, no globals): requests by status,
tokens in and out, time to first token and between tokens, and the pool and prefix cache
read from the blend at each scrape."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

if TYPE_CHECKING:
    from blendrt.blend import Blend
    from blendrt.blend_stream import BlendStream
    from blendrt.engine.request import RequestOutput

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class ServerMetrics:
    def __init__(self, blend: Blend) -> None:
        self.blend = blend
        r = self.registry = CollectorRegistry()
        self.requests = Counter(
            "blendrt_requests",
            "HTTP requests by endpoint and status",
            ["endpoint", "status"],
            registry=r,
        )
        self.prompt_tokens = Counter(
            "blendrt_prompt_tokens", "prompt tokens received", ["member"], registry=r
        )
        self.cached_tokens = Counter(
            "blendrt_cached_prompt_tokens",
            "prompt tokens served by the prefix cache",
            ["member"],
            registry=r,
        )
        self.completion_tokens = Counter(
            "blendrt_completion_tokens", "tokens generated", ["member"], registry=r
        )
        self.ttft = Histogram(
            "blendrt_time_to_first_token_seconds",
            "time to first token",
            ["member"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.itl = Histogram(
            "blendrt_inter_token_seconds",
            "time between streamed chunks",
            ["member"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.pages = Gauge(
            "blendrt_pool_pages",
            "pool pages by state (free is pool-wide)",
            ["member", "state"],
            registry=r,
        )
        self.hit_rate = Gauge(
            "blendrt_prefix_hit_rate",
            "prompt tokens served from cache / prompt tokens looked up",
            registry=r,
        )
        self.preemptions = Gauge("blendrt_preemptions", "requests preempted so far", registry=r)
        self.stream_errors = Counter(
            "blendrt_stream_errors",
            "streams that failed after their 200 (an error event was sent)",
            registry=r,
        )
        self.running = Gauge(
            "blendrt_requests_running", "requests in the engine", ["state"], registry=r
        )

    def count(self, endpoint: str, status: int) -> None:
        self.requests.labels(endpoint, str(status)).inc()

    async def timed_outputs(self, stream: BlendStream) -> AsyncIterator[tuple[str, RequestOutput]]:
        """Passes the stream's outputs through, observing latencies and, at the end, usage."""
        start = last = time.perf_counter()
        first = True
        itl = self.itl.labels(stream.member)  # looked up once, observed per token
        async for delta, out in stream.outputs():
            if out.new_token_ids:
                now = time.perf_counter()
                if first:
                    self.ttft.labels(stream.member).observe(now - start)
                    first = False
                else:
                    itl.observe(now - last)
                last = now
            yield delta, out
        if stream.reply is not None:
            u = stream.reply.usage
            self.prompt_tokens.labels(stream.member).inc(u.prompt_tokens)
            self.cached_tokens.labels(stream.member).inc(u.cached_prompt_tokens)
            self.completion_tokens.labels(stream.member).inc(u.completion_tokens)

    def render(self) -> bytes:
        stats = self.blend.stats()
        self.pages.labels("*", "free").set(stats["pool"]["pages_free"])
        for name, m in stats["members"].items():
            self.pages.labels(name, "cached").set(m["pages_cached"])
            self.pages.labels(name, "in_use").set(m["pages_in_use"])
        self.hit_rate.set(stats["prefix_hit_rate"])
        self.preemptions.set(stats["preemptions"])
        self.running.labels("running").set(stats["requests_running"])
        self.running.labels("waiting").set(stats["requests_waiting"])
        return generate_latest(self.registry)
