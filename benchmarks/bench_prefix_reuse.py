"""Prefix reuse to the token, whatever a member's KV size: history recomputed per turn.

A blend of three members whose KV bytes per token are 1x, 4x and 16x of the smallest. The
page fits the largest member 16 tokens, so the others get 64 and 256 tokens per page. Each
member holds its own conversation (the same member every turn, so all of its previous turn
is cached): T turns of a user message and a fixed-length reply. Per turn and member it
records the history the member had computed (the new prompt's common prefix with the last
prompt + reply, less the last reply token, never computed), what the prefix cache served,
and so the history recomputed; beside it, what full pages alone would have served (the
scheme before partial pages were reused: the cacheable history floored to the member's
tokens per page). Also each member's tokens per page and the bytes of a page it cannot use.

  python benchmarks/bench_prefix_reuse.py --turns 8
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from blendrt import Blend, EngineConfig, Member
from blendrt.bench.shapes import make_shape_member
from blendrt.bench.workload import make_workload
from blendrt.engine.loop import run_in_fresh_thread

#: {member: shape}: KV bytes per token 2, 8 and 32 KiB (1x, 4x, 16x) in float32.
MEMBERS = {"small": "vicuna-13b:40:20", "medium": "vicuna-13b:20:10", "large": "vicuna-13b:10:5"}


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def run(args: argparse.Namespace) -> dict:
    root = Path(tempfile.mkdtemp(prefix="prefix-reuse-"))
    members = []
    for seed, (name, shape) in enumerate(MEMBERS.items()):
        fmt = run_in_fresh_thread(
            lambda n=name, s=shape, k=seed: make_shape_member(s, root / n, seed=k)
        )
        members.append(Member(name, root / name, chat_format=fmt))
    blend = Blend(members, config=EngineConfig(device="cpu"), progress=False)
    workload = make_workload(
        list(MEMBERS), num_conversations=len(MEMBERS), num_turns=args.turns,
        persona_words=args.persona_words, user_words=args.user_words, seed=args.seed,
    )  # fmt: skip
    sampling = {"max_tokens": args.max_tokens, "ignore_eos": True, "temperature": 0.8}
    rows: dict[str, list[dict]] = {name: [] for name in MEMBERS}
    try:
        for name, conv in zip(MEMBERS, workload.conversations, strict=True):
            messages: list[dict] = [{"role": "system", "content": conv.persona}]
            computed: list[int] = []  # the member's last prompt + reply ids
            for user in conv.user_messages:
                messages.append({"role": "user", "content": user})
                turn = blend.prepare(messages, member=name, sampling=sampling)
                reply = blend.run(turn)
                prompt = turn.prompt_ids
                cacheable = min(common_prefix(prompt, computed[:-1]), len(prompt) - 1)
                tpp = blend.stats()["members"][name]["tokens_per_page"]
                cached = reply.usage.cached_prompt_tokens
                rows[name].append(
                    {"prompt": len(prompt), "cacheable": cacheable, "cached": cached,
                     "recomputed": cacheable - cached,
                     "recomputed_full_pages_only": cacheable - cacheable // tpp * tpp}
                )  # fmt: skip
                computed = prompt + reply.token_ids
                messages.append({"role": "assistant", "content": reply.text})
        stats = blend.stats()["members"]
        kv = {name: blend.engine.models[name].geometry.bytes_per_token for name in MEMBERS}
    finally:
        blend.close()
    return {
        name: {
            "kv_bytes_per_token": kv[name],
            "tokens_per_page": stats[name]["tokens_per_page"],
            "wasted_bytes_per_page": stats[name]["wasted_bytes_per_page"],
            "turns": turns,
        }
        for name, turns in rows.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument("--persona-words", type=int, default=60)
    parser.add_argument("--user-words", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    result = run(args)
    print("| member | KV/token | tokens/page | wasted B/page | recomputed history per turn "
          "(max / mean), token-level | full pages only (max / mean) |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for name, r in result.items():
        later = r["turns"][1:]  # the first turn has no history yet
        ours = [t["recomputed"] for t in later]
        full = [t["recomputed_full_pages_only"] for t in later]
        kv = r["kv_bytes_per_token"]
        print(f"| {name} | {kv} B | {r['tokens_per_page']} | {r['wasted_bytes_per_page']} "
              f"| {max(ours)} / {statistics.mean(ours):.1f} "
              f"| {max(full)} / {statistics.mean(full):.1f} |")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
