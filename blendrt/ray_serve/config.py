"""What a Ray Serve deployment of a blend is made of (no Ray here): the blend, given as
`blendrt serve` flags so every replica builds it exactly as the single-process server does,
and the Ray side: replicas or autoscaling, resources per replica, the router.

`blendrt serve --ray` fills it from its flags; `serve run blendrt.ray_serve.app:build` from
key=value arguments (see `from_serve_args`).
"""

from __future__ import annotations

import argparse
import shlex
from dataclasses import asdict, dataclass, field
from typing import Any

from blendrt.ray_serve.placement import DEFAULT_MAX_IMBALANCE

ROUTERS = ("affinity", "pow2")  # pow2: Ray's default PowerOfTwoChoicesRequestRouter
AFFINITY_ROUTER = "blendrt.ray_serve.router:ConversationAffinityRouter"


@dataclass
class RayServeOptions:
    #: `blendrt serve` flags describing the blend and its OpenAI server (members, engine,
    #: --api-key, --max-in-flight, ...); each replica parses them (Ray flags excluded).
    blend_args: list[str] = field(default_factory=list)
    #: the same, already parsed (`blendrt serve --ray` passes its own); wins over blend_args
    blend_namespace: argparse.Namespace | None = None
    replicas: int = 1
    #: autoscaling on queue length: set max_replicas to turn it on (replicas is the start).
    min_replicas: int | None = None
    max_replicas: int | None = None
    target_ongoing_requests: float = 8.0  # per replica, what the autoscaler aims for
    max_ongoing_requests: int = 64  # per replica; more wait in the router
    gpus_per_replica: float = 0.0
    cpus_per_replica: float = 1.0
    torch_threads: int | None = None  # torch's intra-op threads per replica (CPU blends)
    router: str = "affinity"
    max_imbalance: int = DEFAULT_MAX_IMBALANCE  # queue difference before a spill
    ingress_replicas: int = 1
    max_body_bytes: int = 4 << 20  # what the ingress reads (the replica checks it again)
    app_name: str = "blendrt"

    def __post_init__(self) -> None:
        if self.router not in ROUTERS:
            raise ValueError(f"router must be one of {ROUTERS}, got {self.router!r}")
        if self.replicas < 1 or self.ingress_replicas < 1:
            raise ValueError("replicas and ingress_replicas must be >= 1")
        if self.max_replicas is not None:
            low = self.min_replicas if self.min_replicas is not None else 1
            if not 0 <= low <= self.replicas <= self.max_replicas:
                raise ValueError(
                    "autoscaling needs min_replicas <= replicas <= max_replicas, got "
                    f"{low} <= {self.replicas} <= {self.max_replicas}"
                )
        elif self.min_replicas is not None:
            raise ValueError("min_replicas needs max_replicas (autoscaling)")
        if self.max_imbalance < 0 or self.max_ongoing_requests < 1:
            raise ValueError("max_imbalance must be >= 0 and max_ongoing_requests >= 1")

    def autoscaling_config(self) -> dict[str, Any] | None:
        """Ray Serve's autoscaling_config (queue-length based), or None: fixed replicas."""
        if self.max_replicas is None:
            return None
        return {
            "min_replicas": self.min_replicas if self.min_replicas is not None else 1,
            "initial_replicas": self.replicas,
            "max_replicas": self.max_replicas,
            "target_ongoing_requests": self.target_ongoing_requests,
        }

    def router_config(self) -> dict[str, Any]:
        """Ray Serve's request_router_config for the blend replicas."""
        if self.router == "pow2":
            return {}  # Ray's default router
        return {
            "request_router_class": AFFINITY_ROUTER,
            "request_router_kwargs": {"max_imbalance": self.max_imbalance},
            "request_routing_stats_period_s": 2.0,  # per-replica stats for /replicas
        }


def from_serve_args(args: dict[str, Any]) -> RayServeOptions:
    """Options from `serve run blendrt.ray_serve.app:build key=value ...` (strings), e.g.
    replicas=2 blend_args="--device cpu --max-in-flight 64"."""
    types = {f: type(v) for f, v in asdict(RayServeOptions()).items()}
    kwargs: dict[str, Any] = {}
    for name, value in args.items():
        if name not in types:
            raise ValueError(f"unknown option {name!r}; options: {', '.join(types)}")
        if name == "blend_namespace":
            raise ValueError("blend_namespace is not a serve run option: give blend_args")
        if name == "blend_args":
            kwargs[name] = shlex.split(value) if isinstance(value, str) else list(value)
        elif value is None or value == "":
            kwargs[name] = None
        elif name in ("min_replicas", "max_replicas", "torch_threads"):
            kwargs[name] = int(value)
        else:
            kwargs[name] = types[name](value)
    return RayServeOptions(**kwargs)
