"""Long conversations past the members' windows: chunked truncation against dropping the
fewest messages (one exchange at a time), on the same conversation.

A conversation of T turns on a blend (the demo blend by default, windows capped with
--max-model-len) with a system message; each turn a member is drawn (seeded, the same for
both rules) and the whole history is sent, as a stateless client does. Reported over the
turns from --from-turn on: the share of prompt tokens served from the prefix cache, time to
first token (p50, mean), prompt tokens prefilled per turn, and how many turns truncated.

    python benchmarks/bench_truncation.py                     # 200 turns, --max-model-len 512
    python benchmarks/bench_truncation.py --repeats 3 --turns 200 --json
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time

from blendrt import Blend, EngineConfig
from blendrt.demo import demo_blend_members

USER_LINES = [
    "Hello! How are you doing today?",
    "What do you like to do on weekends?",
    "Do you like music? What kind?",
    "Tell me something about computers.",
    "What is your favourite food?",
    "Have you read any good books lately?",
    "Do you think robots will ever be friends with people?",
    "What makes you happy?",
    "Where would you like to travel?",
    "Can you tell me a joke?",
    "What did you do yesterday?",
    "Why do you think so?",
]
SYSTEM = "A friendly chat between a curious person and a cheerful companion who loves stories."
RULES = {"chunked": None, "one-at-a-time": 1}  # {rule: Blend(truncation_chunk=...)}


def converse(blend: Blend, turns: int, seed: int) -> list[dict]:
    """One conversation; per turn: member, prompt and cached tokens, TTFT, truncation."""
    rng = random.Random(seed)
    names = list(blend.members)
    messages: list[dict] = [{"role": "system", "content": SYSTEM}]
    log = []
    for turn in range(turns):
        messages.append({"role": "user", "content": rng.choice(USER_LINES)})
        member = rng.choice(names)
        reply = blend.chat(messages, member=member, sampling={"seed": seed * 1000 + turn})
        u = reply.usage
        log.append(
            dict(
                member=member,
                prompt=u.prompt_tokens,
                cached=u.cached_prompt_tokens,
                ttft=reply.time_to_first_token,
                truncated=u.truncated_messages,
            )
        )
        messages.append({"role": "assistant", "content": reply.text, "member": member})
    return log


def summarize(log: list[dict], start: int) -> dict:
    part = log[start:]
    prompt = sum(t["prompt"] for t in part)
    cached = sum(t["cached"] for t in part)
    ttft = [t["ttft"] * 1000 for t in part]
    return {
        "turns": len(part),
        "cached_share": cached / prompt if prompt else 0.0,
        "prefilled_per_turn": (prompt - cached) / len(part),
        "prompt_per_turn": prompt / len(part),
        "ttft_p50_ms": statistics.median(ttft),
        "ttft_mean_ms": statistics.fmean(ttft),
        "truncated_turns": sum(t["truncated"] > 0 for t in part),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--turns", type=int, default=200)
    p.add_argument("--from-turn", type=int, default=50, help="first turn reported (0-based)")
    p.add_argument("--max-model-len", type=int, default=512)
    p.add_argument("--repeats", type=int, default=1, help="conversations per rule (seeds)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    results: dict[str, list[dict]] = {rule: [] for rule in RULES}
    config = EngineConfig(device="cpu", max_model_len=args.max_model_len)
    for repeat in range(args.repeats):
        for rule, chunk in RULES.items():  # interleaved: the machine's drift hits both
            with Blend(demo_blend_members(), config=config, truncation_chunk=chunk) as blend:
                start = time.perf_counter()
                log = converse(blend, args.turns, seed=repeat)
                summary = summarize(log, args.from_turn)
                summary["seconds"] = time.perf_counter() - start
            results[rule].append(summary)
            print(f"{rule} seed {repeat}: {summary}", file=sys.stderr)
    if args.json:
        print(json.dumps({"config": vars(args), "results": results}, indent=2))
        return 0
    print(
        f"{args.turns} turns, window {args.max_model_len}, turns {args.from_turn}-"
        f"{args.turns - 1} reported, {args.repeats} conversation(s) per rule"
    )
    header = ("rule", "cached share", "prefilled/turn", "prompt/turn", "TTFT p50", "TTFT mean")
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for rule, runs in results.items():

        def spread(key: str, fmt: str, runs: list[dict] = runs) -> str:
            values = [r[key] for r in runs]
            lo, hi = min(values), max(values)
            return format(lo, fmt) if lo == hi else f"{lo:{fmt}}-{hi:{fmt}}"

        print(
            f"| {rule} | {spread('cached_share', '.3f')} | {spread('prefilled_per_turn', '.0f')}"
            f" | {spread('prompt_per_turn', '.0f')} | {spread('ttft_p50_ms', '.1f')} ms"
            f" | {spread('ttft_mean_ms', '.1f')} ms |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
