"""blendrt: a runtime for blended chat AI.

Several chat models (members) share one GPU and one paged KV-cache pool; each conversation
turn is answered by a member chosen at random, which prefills only what it has not cached.

    blend = blendrt.Blend([blendrt.Member("a", "path/a"), blendrt.Member("b", "path/b")])
    reply = blend.chat([{"role": "user", "content": "Hello!"}])

NOTE: the package face is lazy (as vLLM's): `import blendrt` imports nothing else, and a
name is imported from its module on first use, so `import blendrt.cache.manager` (or any
low layer) loads that layer alone.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from blendrt._lazy import lazy_exports

__version__ = "0.1.0"

#: {public name: the module that defines it}
_EXPORTS = {
    "Blend": "blendrt.blend",
    "Member": "blendrt.turn",
    "Reply": "blendrt.turn",
    "Usage": "blendrt.turn",
    "EngineConfig": "blendrt.config",
    "SamplingParams": "blendrt.sampling",
    "LoadedModel": "blendrt.models.loaded",
    "load_model": "blendrt.models.loaded",
    "KVCacheManager": "blendrt.cache.manager",
    "KVGeometry": "blendrt.cache.pool",
    "PagePool": "blendrt.cache.pool",
}

__all__ = [
    "Blend",
    "EngineConfig",
    "KVCacheManager",
    "KVGeometry",
    "LoadedModel",
    "Member",
    "PagePool",
    "Reply",
    "SamplingParams",
    "Usage",
    "__version__",
    "load_model",
]

if TYPE_CHECKING:
    from blendrt.blend import Blend
    from blendrt.cache.manager import KVCacheManager
    from blendrt.cache.pool import KVGeometry, PagePool
    from blendrt.config import EngineConfig
    from blendrt.models.loaded import LoadedModel, load_model
    from blendrt.sampling import SamplingParams
    from blendrt.turn import Member, Reply, Usage


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
