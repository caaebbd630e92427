"""The request routers living in this process, by (app, deployment): the ingress lists the
replicas through them (/replicas). No Ray here.

NOTE: Ray Serve pickles a request router's module by value (RequestRouterConfig), so the
router module must not hold this state itself: a copy of it would be shipped, not shared.
"""

from __future__ import annotations

import weakref
from typing import Any

_ROUTERS: weakref.WeakValueDictionary[tuple[str, str], Any] = weakref.WeakValueDictionary()


def register(app_name: str, deployment: str, router: Any) -> None:
    """Records the router of a deployment's handle (weakly: it lives as long as the handle)."""
    _ROUTERS[(app_name, deployment)] = router


def router_for(app_name: str, deployment: str) -> Any | None:
    """The router of this process's handle to the deployment (None: none yet)."""
    return _ROUTERS.get((app_name, deployment))
