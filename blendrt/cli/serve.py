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
