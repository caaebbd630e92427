"""The `blendrt` command: chat with a blend, serve it over HTTP, benchmark it."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from blendrt.cli import chat, plan, serve


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="blendrt", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    chat.add_args(sub.add_parser("chat", help="chat with a blend in the terminal"))
    serve.add_args(sub.add_parser("serve", help="an OpenAI-compatible HTTP server for a blend"))
    plan.add_args(sub.add_parser("plan", help="what a blend needs and what fits, before loading"))
    from blendrt.bench.main import add_args as add_bench_args
    from blendrt.bench.main import run as run_bench

    bench = sub.add_parser("bench", help="benchmark blended multi-turn serving")
    add_bench_args(bench)
    bench.set_defaults(func=run_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"blendrt: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
