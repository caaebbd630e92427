"""What best-of-N with a reward model costs in the shared pool: best_of=4 (one prefill, four
forked candidates, one scoring batch) against four separate requests for the same turn
(submitted together, then scored the same way; with the prefix cache on, and off so each
prefills the whole prompt) and against best_of=1 (one reply, nothing scored).

Per scenario, on the bundled demo blend and its demo reward model (or --reward-model):
wall time of the turn, prompt tokens the member computed, tokens the scorer computed, and
the peak pages in use; interleaved repeats, median and range.

    python benchmarks/bench_best_of.py [--repeats 5] [--max-tokens 32]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from blendrt import Blend, EngineConfig
from blendrt.demo import demo_blend_members
from blendrt.reward import REWARD_MEMBER

EXCHANGES = [
    ("hello there, how are you today?", "I am great, thanks! I just baked some bread."),
    ("what kind of bread do you like to bake?", "Sourdough, mostly. It takes patience."),
    ("how long does it take?", "A whole day, with the starter fed the night before."),
    ("do you sell it?", "At the market on Saturdays, if it rises in time."),
    ("what else do you bake?", "Cakes for birthdays and sometimes pretzels."),
    ("which is the hardest?", "Croissants: the butter must stay cold."),
]
#: A chat of some length (about 400-600 tokens per member): prefill matters.
HISTORY = [{"role": "system", "content": "Ann is a cheerful baker who loves bread."}]
for _ in range(2):
    for user, bot in EXCHANGES:
        HISTORY += [{"role": "user", "content": user}, {"role": "assistant", "content": bot}]
HISTORY.append({"role": "user", "content": "do you like music while you bake?"})


def one_turn(blend: Blend, scenario: str, member: str, max_tokens: int, seed: int) -> dict:
    sampling = {"max_tokens": max_tokens, "seed": seed, "temperature": 1.0}
    before = blend.stats()["members"]
    start = time.perf_counter()
    if scenario == "best_of=4":
        reply = blend.chat(HISTORY, member=member, sampling=sampling | {"best_of": 4})
        assert len(reply.candidates) == 4
    elif scenario.startswith("4 requests"):
        turns = [
            blend.prepare(HISTORY, member=member, sampling=sampling | {"seed": seed + i})
            for i in range(4)
        ]
        replies = blend.run_many(turns)  # submitted together, as 4 clients would
        blend.scorer.score(HISTORY, [r.text for r in replies])
    else:
        blend.chat(HISTORY, member=member, sampling=sampling)
    seconds = time.perf_counter() - start
    after = blend.stats()
    return {
        "seconds": seconds,
        "member_prompt_tokens": after["members"][member]["prefix_miss_tokens"]
        - before[member]["prefix_miss_tokens"],
        "scorer_tokens": after["members"][REWARD_MEMBER]["prefix_miss_tokens"]
        - before[REWARD_MEMBER]["prefix_miss_tokens"],
        "peak_pages": after["pool"]["peak_pages_in_use"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--member", default="vic")
    parser.add_argument("--reward-model", type=Path, default=None)
    args = parser.parse_args()
    from blendrt.demo import DEMO_REWARD_DIR

    reward = args.reward_model or DEMO_REWARD_DIR
    scenarios = ("best_of=1", "best_of=4", "4 requests", "4 requests, no prefix cache")
    runs: dict[str, list[dict]] = {s: [] for s in scenarios}
    for r in range(args.repeats):
        for s in scenarios:
            # A fresh blend per run: a cold prefix cache and a clean peak-pages counter.
            caching = not s.endswith("no prefix cache")
            config = EngineConfig(device="cpu", num_pages=512, enable_prefix_caching=caching)
            with Blend(demo_blend_members(), seed=0, config=config, reward_model=reward) as b:
                runs[s].append(one_turn(b, s, args.member, args.max_tokens, seed=100 + r))
    report = {}
    for s, rows in runs.items():
        secs = [row["seconds"] * 1e3 for row in rows]
        report[s] = {
            "ms_median": statistics.median(secs),
            "ms_range": [min(secs), max(secs)],
            "member_prompt_tokens": rows[0]["member_prompt_tokens"],
            "scorer_tokens": rows[0]["scorer_tokens"],
            "peak_pages": max(row["peak_pages"] for row in rows),
        }
    one, four = report["best_of=1"], report["best_of=4"]
    for s in scenarios[2:]:
        report[f"best_of=4 / {s}"] = {
            "time": four["ms_median"] / report[s]["ms_median"],
            "member_prompt_tokens": four["member_prompt_tokens"]
            / report[s]["member_prompt_tokens"],
            "peak_pages": four["peak_pages"] / report[s]["peak_pages"],
        }
    report["best_of=4 / best_of=1"] = {"time": four["ms_median"] / one["ms_median"]}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
