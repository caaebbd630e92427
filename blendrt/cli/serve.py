"""`blendrt serve`: the OpenAI-compatible HTTP server over a blend."""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys

from blendrt.cli.options import add_blend_args, build_blend, parse_member


def add_args(serve: argparse.ArgumentParser) -> None:
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
    serve.set_defaults(func=run)


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
    add_args(parser)
    return parser.parse_args(argv)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve beyond this machine
        return False


def bind_warning(host: str, api_key: str | None) -> str | None:
    """What to tell someone serving beyond this machine without a key (None: nothing)."""
    if api_key or is_loopback(host):
        return None
    return (
        f"blendrt: warning: serving on {host} beyond this machine without an API key: anyone "
        "who can reach it can use the blend (set --api-key or BLENDRT_API_KEY)"
    )


def run(args: argparse.Namespace) -> int:
    if args.ray:
        return run_ray(args)
    import uvicorn

    from blendrt.server.app import create_app
    from blendrt.server.shutdown import DrainingServer

    if args.shutdown_timeout < 0:
        raise ValueError(f"--shutdown-timeout must be >= 0, got {args.shutdown_timeout}")
    api_key = args.api_key or os.environ.get("BLENDRT_API_KEY") or None
    if warning := bind_warning(args.host, api_key):
        print(warning, file=sys.stderr)
    with build_blend(args, args.member) as blend:
        app = create_app(
            blend,
            api_key=api_key,
            metrics_key=args.metrics_key,
            max_in_flight=args.max_in_flight,
            max_body_bytes=args.max_body_bytes,
            served_model_name=args.served_model_name,
        )
        print(
            f"serving {', '.join([args.served_model_name, *blend.members])} on "
            f"http://{args.host}:{args.port}/v1 (API key "
            f"{'required' if api_key else 'not required'})",
            file=sys.stderr,
        )
        config = uvicorn.Config(
            app,
            host=args.host,
            port=args.port,
            log_level=args.log_level,
            timeout_graceful_shutdown=3,
        )
        server = DrainingServer(config, app.state.blendrt, args.shutdown_timeout)
        server.run()
        if server.drain_seconds is not None:
            print(f"drained in {server.drain_seconds:.2f} s", file=sys.stderr)
    return 0


def run_ray(args: argparse.Namespace) -> int:
    """`blendrt serve --ray`: the blend on Ray Serve, one ingress on --host:--port."""
    try:
        import ray
    except ImportError:
        print("blendrt: error: --ray needs Ray Serve: pip install 'blendrt[ray]'", file=sys.stderr)
        return 2
    from blendrt.ray_serve.app import deploy
    from blendrt.ray_serve.config import RayServeOptions

    api_key = args.api_key or os.environ.get("BLENDRT_API_KEY") or None
    if warning := bind_warning(args.host, api_key):
        print(warning, file=sys.stderr)
    ray.init(address=args.ray_address)
    gpus = args.gpus_per_replica
    if gpus is None:
        has_gpu = ray.cluster_resources().get("GPU", 0) > 0
        gpus = 1.0 if has_gpu and args.device != "cpu" else 0.0
    # NOTE: the replicas get the flags (and the key resolved here), not this module's func.
    flags = {k: v for k, v in vars(args).items() if k != "func"}
    blend = argparse.Namespace(**{**flags, "api_key": api_key})
    options = RayServeOptions(
        blend_namespace=blend,
        replicas=args.replicas,
        min_replicas=args.min_replicas,
        max_replicas=args.max_replicas,
        target_ongoing_requests=args.target_ongoing_requests,
        max_ongoing_requests=args.max_ongoing_requests,
        gpus_per_replica=gpus,
        cpus_per_replica=args.cpus_per_replica,
        router=args.routing,
        max_imbalance=args.max_imbalance,
        max_body_bytes=args.max_body_bytes,
    )
    print(
        f"serving the blend on Ray Serve: {args.replicas} replica(s), {gpus:g} GPU each, "
        f"{args.routing} routing, on http://{args.host}:{args.port}/v1 (replicas: /replicas)",
        file=sys.stderr,
    )
    try:
        deploy(options, host=args.host, port=args.port, blocking=True)
    finally:
        ray.shutdown()
    return 0
