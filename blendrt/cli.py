"""The `blendrt` command: chat with a blend (and, in later subcommands, bench and serve)."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Iterator, Sequence

from blendrt.blend import Blend, Member
from blendrt.config import EngineConfig
from blendrt.models.loaded import load_model
from blendrt.policy import POLICIES
from blendrt.sampling import SamplingParams


def parse_member(spec: str) -> Member:
    """ "name=path" -> Member."""
    name, sep, path = spec.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH, got {spec!r}")
    return Member(name, path)


def add_blend_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--demo",
        action="store_true",
        help="use the bundled demo blend (the default when no member is given)",
    )
    parser.add_argument(
        "--chat-format",
        action="append",
        default=[],
        metavar="NAME=FORMAT",
        help="a member's built-in chat format (pygmalion, vicuna, llama-2-chat, "
        "chatml); default: the folder's chat_template",
    )
    parser.add_argument("--policy", choices=POLICIES, default="uniform")
    parser.add_argument("--seed", type=int, default=None, help="seeds the member choice")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if present)")
    parser.add_argument("--dtype", default=None, choices=("float32", "float16", "bfloat16"))
    parser.add_argument("--kv-cache-bytes", type=int, default=None)


def add_sampling_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--top-p", type=float, default=0.9)
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--min-p", type=float, default=0.0)
    parser.add_argument("--repetition-penalty", type=float, default=1.1)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument(
        "--sampling-seed", type=int, default=None, help="seeds sampling (reproducible replies)"
    )


def sampling_from_args(args: argparse.Namespace) -> SamplingParams:
    return SamplingParams(
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        min_p=args.min_p,
        repetition_penalty=args.repetition_penalty,
        max_tokens=args.max_tokens,
        seed=args.sampling_seed,
    )


def build_blend(args: argparse.Namespace, members: Sequence[Member]) -> Blend:
    formats = {}
    for spec in args.chat_format:
        name, sep, fmt = spec.partition("=")
        if not sep:
            raise SystemExit(f"--chat-format expects NAME=FORMAT, got {spec!r}")
        formats[name] = fmt
    if not members:
        from blendrt.demo import demo_blend_members

        members = demo_blend_members()
    members = [
        Member(m.name, m.path, m.weight, formats.get(m.name, m.chat_format), m.chat_options)
        for m in members
    ]
    config = EngineConfig(device=args.device, dtype=args.dtype, kv_cache_bytes=args.kv_cache_bytes)
    models = {}
    for m in members:  # one at a time, with progress: big members take a while
        print(f"loading {m.name} from {m.path} ...", end="", file=sys.stderr, flush=True)
        start = time.perf_counter()
        models[m.name] = load_model(
            m.path,
            device=config.device,
            dtype=config.dtype,
            attention_backend=config.attention_backend,
        )
        params = sum(p.numel() for p in models[m.name].model.parameters())
        print(
            f" {params / 1e6:.1f}M parameters, {models[m.name].dtype}, "
            f"{time.perf_counter() - start:.1f} s",
            file=sys.stderr,
        )
    blend = Blend(members, policy=args.policy, seed=args.seed, config=config, models=models)
    stats = blend.stats()["pool"]
    print(
        f"pool: {stats['num_pages']} pages x {stats['page_bytes']} bytes = "
        f"{stats['num_pages'] * stats['page_bytes'] / 2**20:.1f} MiB on {config.device}; "
        + ", ".join(
            f"{name} {m['tokens_per_page']} tokens/page"
            for name, m in blend.stats()["members"].items()
        ),
        file=sys.stderr,
    )
    return blend


def user_lines(scripted: list[str] | None) -> Iterator[str]:
    if scripted:
        yield from scripted
        return
    interactive = sys.stdin.isatty()
    while True:
        try:
            line = input("you> ") if interactive else sys.stdin.readline()
        except EOFError:
            return
        if not interactive and not line:
            return
        line = line.strip()
        if line in ("/quit", "/exit"):
            return
        if line:
            yield line


async def stream_turn(
    blend: Blend, messages: list[dict], member: str | None, sampling: SamplingParams
) -> dict:
    stream = blend.stream(messages, member=member, sampling=sampling)
    print(f"{stream.member}> ", end="", flush=True)
    async with stream:
        async for delta in stream:
            print(delta, end="", flush=True)
    print()
    reply = stream.reply
    assert reply is not None
    u = reply.usage
    print(
        f"  [{reply.member}: prompt {u.prompt_tokens} tokens, {u.cached_prompt_tokens} from "
        f"cache, {u.prompt_tokens - u.cached_prompt_tokens} prefilled; {u.completion_tokens} "
        f"generated; first token {reply.time_to_first_token * 1000:.0f} ms, total "
        f"{reply.total_time * 1000:.0f} ms]",
        file=sys.stderr,
    )
    return {"role": "assistant", "content": reply.text, "member": reply.member}


async def chat_turn(
    blend: Blend, messages: list[dict], member: str | None, sampling: SamplingParams
) -> dict:
    """One turn; when the history outgrows the member's context, the oldest exchanges are
    dropped (the system message stays) until it fits."""
    while True:
        try:
            return await stream_turn(blend, messages, member, sampling)
        except ValueError as e:
            first = 1 if messages[0]["role"] == "system" else 0
            if "context" not in str(e) or len(messages) - first < 3:
                raise
            del messages[first : first + 2]


def cmd_chat(args: argparse.Namespace) -> int:
    with build_blend(args, args.members) as blend:
        names = ", ".join(f"{n} ({blend.formats[n].name or 'template'})" for n in blend.members)
        print(f"blend of {names}; policy {args.policy}. /quit to leave.", file=sys.stderr)
        messages: list[dict] = []
        if args.system:
            messages.append({"role": "system", "content": args.system})
        sampling = sampling_from_args(args)
        for line in user_lines(args.say):
            if args.say or not sys.stdin.isatty():
                print(f"you> {line}")
            messages.append({"role": "user", "content": line})
            messages.append(asyncio.run(chat_turn(blend, messages, args.member, sampling)))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from blendrt.server.app import create_app

    api_key = args.api_key or os.environ.get("BLENDRT_API_KEY") or None
    with build_blend(args, [parse_member(spec) for spec in args.member]) as blend:
        app = create_app(
            blend,
            api_key=api_key,
            max_in_flight=args.max_in_flight,
            max_body_bytes=args.max_body_bytes,
        )
        print(
            f"serving {', '.join(['blend', *blend.members])} on http://{args.host}:"
            f"{args.port}/v1 (API key {'required' if api_key else 'not required'})",
            file=sys.stderr,
        )
        uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="blendrt", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    chat = sub.add_parser("chat", help="chat with a blend in the terminal")
    chat.add_argument(
        "members",
        nargs="*",
        type=parse_member,
        metavar="NAME=PATH",
        help="member model folders (default: the bundled demo blend)",
    )
    add_blend_args(chat)
    add_sampling_args(chat)
    chat.add_argument("--member", default=None, help="pin every turn to this member")
    chat.add_argument("--system", default=None, help="persona / system text")
    chat.add_argument(
        "--say",
        action="append",
        default=None,
        metavar="TEXT",
        help="a scripted user turn (repeatable): chat without a terminal",
    )
    chat.set_defaults(func=cmd_chat)
    serve = sub.add_parser("serve", help="an OpenAI-compatible HTTP server for a blend")
    serve.add_argument(
        "--member",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="a member model folder (repeatable; default: the demo blend)",
    )
    add_blend_args(serve)
    serve.add_argument("--host", default="127.0.0.1", help="bind address (loopback default)")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--api-key", default=None, help="require this key (or BLENDRT_API_KEY)")
    serve.add_argument(
        "--max-in-flight", type=int, default=256, help="requests served at once; more get 429"
    )
    serve.add_argument("--max-body-bytes", type=int, default=4 << 20)
    serve.add_argument("--log-level", default="info")
    serve.set_defaults(func=cmd_serve)
    bench = sub.add_parser("bench", help="benchmark blended multi-turn serving")
    from blendrt.bench.main import add_args as add_bench_args
    from blendrt.bench.main import run as run_bench

    add_bench_args(bench)
    bench.set_defaults(func=run_bench)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"blendrt: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
