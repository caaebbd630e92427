"""The shared KV memory: one page pool for all members (`pool`), and its prefix-caching
manager over the C++ core (`manager`). A lazy face: importing the package loads neither."""

from blendrt._lazy import lazy_exports

_EXPORTS = {
    "BatchMetadata": "blendrt.cache.manager",
    "CacheStats": "blendrt.cache.manager",
    "KVCacheManager": "blendrt.cache.manager",
    "MemberCacheStats": "blendrt.cache.manager",
    "KVGeometry": "blendrt.cache.pool",
    "MemberKV": "blendrt.cache.pool",
    "PagePool": "blendrt.cache.pool",
    "page_bytes_for": "blendrt.cache.pool",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
