"""Conversation-affine routing against Ray Serve's default power-of-two-choices router, on
the same multi-turn workload through the same ingress, in one run.

A local Ray instance, the bundled demo blend on CPU (`--replicas` replicas, fresh for each
router), stateless clients resending the whole history each turn (a per-conversation
system prompt of `--system-words` words, `--think-s` pauses between turns, replies seeded
so both routers see the same text). Per router: the prefix-cache hit rate (cached / prompt
tokens, from each answer's usage), TTFT p50 and p90 (first content chunk of the stream),
and how often a conversation's turn landed on another replica than its previous turn.
`--repeats` alternates the routers' order.

    pip install -e ".[ray]"
    python benchmarks/bench_ray_affinity.py [--conversations 24 --turns 8 --concurrency 6]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import time

from blendrt.ray_serve.workload import WorkloadResult, run_workload

ROUTERS = ("pow2", "affinity")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def deploy(router: str, args: argparse.Namespace) -> None:
    from ray import serve

    from blendrt.ray_serve import RayServeOptions, blend_application

    options = RayServeOptions(
        blend_args=["--device", "cpu", "--seed", "0"],
        replicas=args.replicas,
        router=router,
        max_imbalance=args.max_imbalance,
        torch_threads=1,
    )
    serve.run(blend_application(options), name="blendrt", route_prefix="/")


def figures(r: WorkloadResult) -> dict[str, float | int | str]:
    later = sorted(t.ttft_s for t in r.ok() if t.index >= 1 and t.ttft_s is not None)
    return {
        "turns_ok": f"{len(r.ok())}/{len(r.turns)}",
        "hit_rate": round(r.hit_rate(), 3),
        "hit_rate_after_first_turn": round(r.hit_rate(1), 3),
        "ttft_p50_ms": round(r.ttft_p50() * 1000, 1),
        "ttft_p50_after_first_turn_ms": round(r.ttft_p50(1) * 1000, 1),
        "ttft_p90_after_first_turn_ms": round(later[int(0.9 * (len(later) - 1))] * 1000, 1),
        "replica_switches": r.replica_switches(),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument("--conversations", type=int, default=24)
    p.add_argument("--turns", type=int, default=8)
    p.add_argument("--concurrency", type=int, default=6, help="conversations at once")
    p.add_argument("--system-words", type=int, default=200)
    p.add_argument("--think-s", type=float, default=0.1)
    p.add_argument("--max-tokens", type=int, default=8)
    p.add_argument("--max-imbalance", type=int, default=4)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--json", default=None, help="also write the figures here")
    args = p.parse_args()

    import ray
    from ray import serve

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=args.replicas + 2, include_dashboard=False, log_to_driver=False)
    runs: dict[str, list[dict]] = {r: [] for r in ROUTERS}
    try:
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        for repeat in range(args.repeats):
            for router in ROUTERS if repeat % 2 == 0 else ROUTERS[::-1]:
                deploy(router, args)
                start = time.perf_counter()
                result = run_workload(
                    f"http://127.0.0.1:{port}",
                    conversations=args.conversations,
                    turns=args.turns,
                    concurrency=args.concurrency,
                    max_tokens=args.max_tokens,
                    system_words=args.system_words,
                    think_s=args.think_s,
                )
                runs[router].append({**figures(result), "wall_s": time.perf_counter() - start})
                serve.delete("blendrt")  # the next router starts on fresh replicas
    finally:
        serve.shutdown()
        ray.shutdown()

    def median(router: str, key: str) -> float:
        return statistics.median(run[key] for run in runs[router])

    summary = {
        "workload": vars(args),
        "runs": runs,
        "hit_rate_ratio": round(
            median("affinity", "hit_rate_after_first_turn")
            / median("pow2", "hit_rate_after_first_turn"),
            3,
        ),
    }
    print(f"{'router':10} {'hit':>6} {'hit>1':>6} {'ttft50':>8} {'ttft50>1':>9} {'switch':>7}")
    for router in ROUTERS:
        print(
            f"{router:10} {median(router, 'hit_rate'):6.3f} "
            f"{median(router, 'hit_rate_after_first_turn'):6.3f} "
            f"{median(router, 'ttft_p50_ms'):7.1f}ms "
            f"{median(router, 'ttft_p50_after_first_turn_ms'):7.1f}ms "
            f"{median(router, 'replica_switches'):7.0f}"
        )
    print(f"hit rate (turns after the first), affinity / pow2: {summary['hit_rate_ratio']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=1)


if __name__ == "__main__":
    main()
