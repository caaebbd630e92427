"""A snapshot of the engine for Blend.stats() and the server's /metrics."""

from __future__ import annotations

from blendrt.engine.engine import LLMEngine


def engine_stats(engine: LLMEngine) -> dict:
    """A snapshot for Blend.stats(); runs on the loop thread."""
    c = engine.counters
    pools, members = {}, {}
    for name, manager in engine.managers.items():
        s = manager.stats()
        pools.setdefault(id(manager), s)
        m = s.members[name]
        members[name] = {
            "tokens_per_page": m.tokens_per_page,
            # page memory the page granularity costs: bytes of each page the member cannot
            # use, and slots its live sequences hold unfilled
            "wasted_bytes_per_page": engine.kv.views[name].wasted_bytes_per_page,
            "slack_tokens": m.slack_tokens,
            "pages_in_use": m.pages_in_use,
            "pages_cached": m.pages_cached,
            "prefix_hit_tokens": m.hit_tokens,
            "prefix_miss_tokens": m.miss_tokens,
            "prefix_hit_rate": m.hit_rate,
            # sliding-window members: pages freed before the window while sequences ran
            "window": m.window,
            "released_pages": m.released_pages,
        }
    hits = sum(m["prefix_hit_tokens"] for m in members.values())
    looked_up = hits + sum(m["prefix_miss_tokens"] for m in members.values())
    return {
        "pool": {
            "partition": engine.config.pool_partition,
            "page_bytes": next(iter(engine.pools.values())).page_bytes,
            "num_pages": sum(s.num_pages for s in pools.values()),
            "pages_free": sum(s.pages_free for s in pools.values()),
            "pages_cached": sum(s.pages_cached for s in pools.values()),
            "pages_in_use": sum(s.pages_in_use for s in pools.values()),
            "peak_pages_in_use": c.peak_pages_in_use,
        },
        "members": members,
        "prefix_hit_rate": hits / looked_up if looked_up else 0.0,
        "prompt_tokens_received": c.prompt_tokens_received,
        "prompt_tokens_computed": c.prompt_tokens_computed,
        "generated_tokens": c.generated_tokens,
        "tokens_per_second": c.generated_tokens / c.busy_seconds if c.busy_seconds else 0.0,
        "steps": c.steps,
        "preemptions": engine.scheduler.num_preemptions,
        "requests_running": len(engine.scheduler.running),
        "peak_requests_running": c.peak_running,
        "requests_waiting": len(engine.scheduler.waiting),
        "finished": dict(c.finished),
    }
