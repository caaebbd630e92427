"""`blendrt chat`: a conversation with a blend in the terminal (or scripted with --say)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Iterator
from typing import Any

from blendrt.blend import Blend
from blendrt.cli.options import add_blend_args, add_sampling_args, build_blend, parse_member
from blendrt.cli.options import sampling_from_args as sampling_fields


def add_args(chat: argparse.ArgumentParser) -> None:
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
    chat.set_defaults(func=run)


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
    blend: Blend,
    messages: list[dict],
    member: str | None,
    sampling: dict[str, Any],
    truncation: str,
) -> dict:
    turn = blend.prepare(messages, member=member, sampling=sampling, truncation=truncation)
    if turn.rank_by_reward:  # best-of-N: the best reply is known once all are scored
        reply = await asyncio.to_thread(blend.run, turn)
        print(f"{reply.member}> {reply.text}")
        scores = ", ".join(f"{c.score:.3f}" for c in reply.candidates)
        print(f"  [best of {turn.sampling.num_candidates}; reward {scores}]", file=sys.stderr)
    else:
        stream = blend.stream_turn(turn)
        print(f"{stream.member}> ", end="", flush=True)
        async with stream:
            async for delta in stream:
                print(delta, end="", flush=True)
        print()
        reply = stream.reply
    assert reply is not None
    u = reply.usage
    dropped = (
        f"; {u.truncated_messages} oldest messages ({u.truncated_tokens} tokens) left out to "
        "fit its window"
        if u.truncated_messages
        else ""
    )
    print(
        f"  [{reply.member}: prompt {u.prompt_tokens} tokens, {u.cached_prompt_tokens} from "
        f"cache, {u.prompt_tokens - u.cached_prompt_tokens} prefilled; {u.completion_tokens} "
        f"generated; first token {reply.time_to_first_token * 1000:.0f} ms, total "
        f"{reply.total_time * 1000:.0f} ms{dropped}]",
        file=sys.stderr,
    )
    return {"role": "assistant", "content": reply.text, "member": reply.member}


def run(args: argparse.Namespace) -> int:
    with build_blend(args, args.members) as blend:
        names = ", ".join(f"{n} ({blend.formats[n].name or 'template'})" for n in blend.members)
        print(f"blend of {names}; policy {blend.policy.policy}. /quit to leave.", file=sys.stderr)
        messages: list[dict] = []
        if args.system:
            messages.append({"role": "system", "content": args.system})
        sampling = sampling_fields(args)
        for line in user_lines(args.say):
            if args.say or not sys.stdin.isatty():
                print(f"you> {line}")
            messages.append({"role": "user", "content": line})
            turn = stream_turn(blend, messages, args.member, sampling, args.truncation)
            messages.append(asyncio.run(turn))
    return 0
