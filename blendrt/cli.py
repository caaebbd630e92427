"""The `blendrt` command: chat with a blend (and, in later subcommands, bench and serve)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Iterator, Sequence

from blendrt.blend import Blend, Member
from blendrt.config import EngineConfig
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
        from blendrt.demo import demo_members

        members = [
            Member(
                m["name"],
                m["path"],
                chat_format=m["chat_format"],
                chat_options=m.get("chat_options", {}),
            )
            for m in demo_members()
        ]
    members = [
        Member(m.name, m.path, m.weight, formats.get(m.name, m.chat_format), m.chat_options)
        for m in members
    ]
    config = EngineConfig(device=args.device, dtype=args.dtype, kv_cache_bytes=args.kv_cache_bytes)
    return Blend(members, policy=args.policy, seed=args.seed, config=config)


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
            messages.append(asyncio.run(stream_turn(blend, messages, args.member, sampling)))
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
