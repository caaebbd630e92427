"""The Ray Serve application of a blend: the blend replicas (BlendReplica, routed by
ConversationAffinityRouter) behind the ingress (BlendIngress), and how to start it.

    from blendrt.ray_serve import RayServeOptions, blend_application
    serve.run(blend_application(RayServeOptions(replicas=2)), route_prefix="/")

or, from a shell (a documented `serve run` config):

    serve run blendrt.ray_serve.app:build replicas=2 blend_args="--device cpu"
"""

from __future__ import annotations

import signal
import time
from typing import TYPE_CHECKING, Any

from blendrt.ray_serve.config import RayServeOptions, from_serve_args
from blendrt.ray_serve.ingress import BlendIngress
from blendrt.ray_serve.replica import BlendReplica

if TYPE_CHECKING:
    from ray.serve import Application

#: Replicas get this long to finish live requests when they are stopped (scale-down,
#: redeploy, shutdown); then their streams end with an error event.
GRACEFUL_SHUTDOWN_S = 10.0
HEALTH_CHECK_PERIOD_S = 5.0


def blend_application(options: RayServeOptions) -> Application:
    """The bound application: `serve.run` it (route_prefix "/")."""
    from ray import serve

    resources: dict[str, Any] = {"num_cpus": options.cpus_per_replica}
    if options.gpus_per_replica:
        resources["num_gpus"] = options.gpus_per_replica
    scaling = options.autoscaling_config()
    replicas = serve.deployment(
        BlendReplica,
        name="BlendReplica",
        num_replicas=None if scaling else options.replicas,
        autoscaling_config=scaling,
        max_ongoing_requests=options.max_ongoing_requests,
        ray_actor_options=resources,
        request_router_config=options.router_config(),
        health_check_period_s=HEALTH_CHECK_PERIOD_S,
        graceful_shutdown_timeout_s=GRACEFUL_SHUTDOWN_S,
    )
    ingress = serve.deployment(
        serve.ingress()(BlendIngress),  # its ASGI app: BlendIngress.__serve_build_asgi_app__
        name="BlendIngress",
        num_replicas=options.ingress_replicas,
        # NOTE: the ingress only forwards; it queues what the replicas have no room for.
        max_ongoing_requests=max(1024, 4 * options.max_ongoing_requests * options.replicas),
        # NOTE: no CPU reserved (as Serve's own proxy): `--replicas N` on N cores still fits.
        ray_actor_options={"num_cpus": 0},
    )
    return ingress.bind(replicas.bind(options), options)


def build(args: dict[str, str]) -> Application:
    """`serve run blendrt.ray_serve.app:build key=value ...` (keys: RayServeOptions')."""
    return blend_application(from_serve_args(args))


def deploy(options: RayServeOptions, *, host: str, port: int, blocking: bool = False) -> None:
    """Starts Serve's HTTP proxy on host:port and deploys the blend (Ray must be up:
    ray.init()); with blocking, waits until interrupted, then shuts Serve down."""
    from ray import serve

    serve.start(http_options={"host": host, "port": port})
    serve.run(blend_application(options), name=options.app_name, route_prefix="/")
    if not blocking:
        return
    signal.signal(signal.SIGTERM, _interrupt)  # a SIGTERM shuts down as Ctrl-C does
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        serve.shutdown()


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt
