"""blendrt on Ray Serve (`pip install "blendrt[ray]"`): replicas of a whole blend behind one
HTTP ingress, each conversation routed to the replica that holds its caches.

    blendrt serve --ray --replicas 2            # local Ray, two replicas, one port

Modules: config (options, no Ray), keys and placement (the conversation key and where it
goes, no Ray), asgi_call (a replica running the OpenAI app in-process, no Ray), router
(Ray Serve's RequestRouter), replica, ingress, app (the application and how to start it).
Importing this package imports nothing of Ray, and its names load their modules when used.
NOTE: every module here imports without Ray (a runtime-only install imports them all); Ray
is imported where a deployment is built or run, and by `router` when Ray is installed.
"""

from __future__ import annotations

from blendrt._lazy import lazy_exports

_EXPORTS = {
    "RayServeOptions": "blendrt.ray_serve.config",
    "conversation_key": "blendrt.ray_serve.keys",
    "ConversationAffinityRouter": "blendrt.ray_serve.router",
    "BlendReplica": "blendrt.ray_serve.replica",
    "BlendIngress": "blendrt.ray_serve.ingress",
    "blend_application": "blendrt.ray_serve.app",
    "deploy": "blendrt.ray_serve.app",
}

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = sorted(_EXPORTS)
