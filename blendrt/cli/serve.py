"""`blendrt serve`: the OpenAI-compatible HTTP server over a blend."""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys

from blendrt.cli.options import build_blend
from blendrt.cli.serve_args import add_server_args


def add_args(serve: argparse.ArgumentParser) -> None:
    add_server_args(serve)
    serve.set_defaults(func=run)


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
