"""The shared KV memory: one page pool for all members, and its prefix-caching manager."""

from blendrt.cache.manager import BatchMetadata, CacheStats, KVCacheManager, MemberCacheStats
from blendrt.cache.pool import KVGeometry, MemberKV, PagePool, page_bytes_for

__all__ = [
    "BatchMetadata",
    "CacheStats",
    "KVCacheManager",
    "KVGeometry",
    "MemberCacheStats",
    "MemberKV",
    "PagePool",
    "page_bytes_for",
]
