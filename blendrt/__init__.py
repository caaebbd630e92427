"""blendrt: a runtime for blended chat AI.

Several chat models (members) share one GPU and one paged KV-cache pool; each conversation
turn is answered by a member chosen at random, which prefills only what it has not cached.
"""

from blendrt.cache import KVCacheManager, KVGeometry, PagePool
from blendrt.models import LoadedModel, load_model

__version__ = "0.1.0"

__all__ = [
    "KVCacheManager",
    "KVGeometry",
    "LoadedModel",
    "PagePool",
    "__version__",
    "load_model",
]
