"""`blendrt serve`'s flags: the parser alone, so a Ray Serve replica can rebuild a blend
from them without importing the command (blendrt/ray_serve/replica.py)."""

from __future__ import annotations

import argparse

from blendrt.cli.options import add_blend_args, parse_member


def add_server_args(serve: argparse.ArgumentParser) -> None:
    serve.add_argument(
        "--member",
        action="append",
        default=[],
        type=parse_member,
        metavar="NAME=PATH",
        help="a member model folder (repeatable; default: the demo blend)",
    )
    add_blend_args(serve)
    http = serve.add_argument_group("server")
    http.add_argument(
        "--served-model-name",
        default="blend",
        help="the blend's model id: requests naming it let the policy choose the member",
    )
    http.add_argument("--host", default="127.0.0.1", help="bind address (loopback default)")
    http.add_argument("--port", type=int, default=8000)
    http.add_argument("--api-key", default=None, help="require this key (or BLENDRT_API_KEY)")
    http.add_argument(
        "--max-in-flight", type=int, default=256, help="requests served at once; more get 429"
    )
    http.add_argument("--max-body-bytes", type=int, default=4 << 20)
    http.add_argument(
        "--metrics-key", default=None, help="the key /metrics needs (default: --api-key)"
    )
    http.add_argument(
        "--shutdown-timeout",
        type=float,
        default=10.0,
        help="seconds live requests may drain after SIGTERM before they are cut short",
    )
    http.add_argument("--log-level", default="info")
    add_ray_args(serve)


def add_ray_args(serve: argparse.ArgumentParser) -> None:
    ray = serve.add_argument_group(
        "ray serve (pip install 'blendrt[ray]'): replicas of the whole blend behind one port"
    )
    ray.add_argument(
        "--ray", action="store_true", help="serve on Ray Serve (a local Ray, or --ray-address)"
    )
    ray.add_argument(
        "--ray-address",
        default=None,
        help="an existing Ray cluster (auto: the one this node joined; default: start one)",
    )
    ray.add_argument("--replicas", type=int, default=1, help="blend replicas (the start size)")
    ray.add_argument(
        "--min-replicas", type=int, default=None, help="autoscaling floor (with --max-replicas)"
    )
    ray.add_argument(
        "--max-replicas",
        type=int,
        default=None,
        help="autoscale on queue length between --min-replicas and this",
    )
    ray.add_argument(
        "--target-ongoing-requests",
        type=float,
        default=8.0,
        help="the queue length per replica the autoscaler aims for",
    )
    ray.add_argument(
        "--max-ongoing-requests",
        type=int,
        default=64,
        help="requests a replica takes at once; more wait in Ray's router",
    )
    ray.add_argument(
        "--gpus-per-replica",
        type=float,
        default=None,
        help="GPUs each replica reserves (default: 0 with --device cpu or no GPU in the "
        "cluster, else 1)",
    )
    ray.add_argument("--cpus-per-replica", type=float, default=1.0)
    ray.add_argument(
        "--routing",
        choices=("affinity", "pow2"),
        default="affinity",
        help="affinity: a conversation stays on its replica (bounded load); pow2: Ray's "
        "default power of two choices",
    )
    ray.add_argument(
        "--max-imbalance",
        type=int,
        default=4,
        help="queue length a conversation's replica may have beyond the shortest before "
        "its request goes elsewhere",
    )


def parse_args(argv: list[str]) -> argparse.Namespace:
    """`blendrt serve` flags, parsed alone (what a Ray Serve replica builds its blend from)."""
    parser = argparse.ArgumentParser(prog="blendrt serve")
    add_server_args(parser)
    return parser.parse_args(argv)
