"""Where the members' K/V live: the pool (or pools), their cache managers, and each
member's views, built once for an engine.

One shared pool and one manager for the whole blend (blendrt), or the same bytes split
statically, one pool and manager per member (the benchmark baseline).

NOTE (the static baseline's place): it is N independent (pool, manager) pairs, exactly what
N separate servers would have, each with its own LRU queue. A per-member quota inside one
manager would share one LRU and one eviction order across members: not the baseline it
stands for.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from blendrt.cache.manager import KVCacheManager
from blendrt.cache.pool import KVGeometry, MemberKV, PagePool


@dataclass(frozen=True)
class KVLayout:
    pools: dict[str, PagePool]  # {member: the pool its pages are in}
    managers: dict[str, KVCacheManager]  # {member: the manager of that pool}
    views: dict[str, MemberKV]  # {member: its K/V views of that pool}
    page_bytes: int
    num_pages: int  # in all, over every pool


def register_member(
    pool: PagePool, manager: KVCacheManager, name: str, geometry: KVGeometry, window: int = 0
) -> MemberKV:
    """A member's views of the pool, and its tokens per page and sliding window (0: none)
    in the manager: the one call that puts a member in the cache."""
    kv = pool.register_member(name, geometry)
    manager.register_member(name, kv.tokens_per_page, window=window)
    return kv


def build_kv_layout(
    geometries: Mapping[str, KVGeometry],
    *,
    page_bytes: int,
    num_pages: int,
    partition: str,
    device: str,
    enable_prefix_caching: bool,
    windows: Mapping[str, int] | None = None,  # {member: tokens every layer sees back}
) -> KVLayout:
    def part(pages: int) -> tuple[PagePool, KVCacheManager]:
        pool = PagePool(page_bytes, num_pages=pages, device=device)
        return pool, KVCacheManager(pages, enable_prefix_caching=enable_prefix_caching)

    if partition == "shared":
        shared = part(num_pages)
        parts = dict.fromkeys(geometries, shared)
    else:
        parts = {name: part(num_pages // len(geometries)) for name in geometries}
    pools, managers, views = {}, {}, {}
    for name, geometry in geometries.items():
        pools[name], managers[name] = parts[name]
        window = (windows or {}).get(name, 0)
        views[name] = register_member(pools[name], managers[name], name, geometry, window)
    total = sum(p.num_pages for p in {id(p): p for p in pools.values()}.values())
    return KVLayout(pools, managers, views, page_bytes, total)
