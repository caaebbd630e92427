"""blendrt: a runtime for blended chat AI.

Several chat models (members) share one GPU and one paged KV-cache pool; each conversation
turn is answered by a member chosen at random, which prefills only what it has not cached.

    blend = blendrt.Blend([blendrt.Member("a", "path/a"), blendrt.Member("b", "path/b")])
    reply = blend.chat([{"role": "user", "content": "Hello!"}])
"""

from blendrt.blend import Blend, Member, Reply, Usage
from blendrt.cache import KVCacheManager, KVGeometry, PagePool
from blendrt.config import EngineConfig
from blendrt.models import LoadedModel, load_model
from blendrt.sampling import SamplingParams

__version__ = "0.1.0"

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
