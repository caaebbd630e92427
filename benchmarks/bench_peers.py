"""blendrt against what users run today: one llama.cpp server per member.

Both systems serve the same blended multi-turn workload over the OpenAI API on loopback (the
same members, converted to GGUF by llama.cpp's converter; the same chat template, checked to
give identical prompt token ids; float32 weights and KV on both; the same 2 cores), one after
the other in one run, started and stopped by this script, repeated and interleaved.

  (A) plenty of memory, member sets "tiny" (3 x 2.4M) and "mixed" (31M + 26M + 2.4M):
      each llama-server has -c 8192 with 4 slots and its default host prompt cache;
      blendrt its default 256 MiB pool.
  (B) memory pressure, set "pressure" (5 members, mix 0.5/0.2/0.1/0.1/0.1, 16 turns):
      an equal KV budget, blendrt's pool = the sum of the llama-servers' -c KV, and
      llama-server's host prompt cache off (--cache-ram 0).

Needs llama-server and the converter from ../shared/tools/build-llama-server.sh (skips with a
message when they are absent). Prints markdown tables; --json writes every figure.

  python benchmarks/bench_peers.py --scenario A --repeat 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

from peers.client import TurnResult, run_workload, warm_up
from peers.members import MEMBER_SETS, build_members, write_template
from peers.systems import System, check_same_prompt, start_blendrt, start_llama_servers

from blendrt.bench.workload import make_workload

PEERS = Path(os.environ.get("PEERS", Path.home() / ".cache" / "blendrt-peers"))
SCENARIOS = {
    "A": dict(sets=("tiny", "mixed"), turns=6, weights=None, llama_ctx=8192, cache_ram=None),
    "B": dict(sets=("pressure",), turns=16, weights=(0.5, 0.2, 0.1, 0.1, 0.1), llama_ctx=1024,
              cache_ram=0),
}  # fmt: skip


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def summarize(results: list[TurnResult], wall: float, workload, rss: int) -> dict:
    expected_turns = len(workload.conversations) * workload.num_turns
    ok = [r for r in results if r.error is None]
    ttfts = [r.ttft for r in ok if r.ttft is not None]
    turns = range(workload.num_turns)
    prompt = sum(r.prompt_tokens for r in ok)
    return {
        "output_tokens": sum(r.completion_tokens for r in ok),
        "output_tokens_per_second": sum(r.completion_tokens for r in ok) / wall,
        "wall_seconds": wall,
        "ttft_p50_ms": 1e3 * percentile(ttfts, 0.5),
        "ttft_p99_ms": 1e3 * percentile(ttfts, 0.99),
        "ttft_p50_ms_by_turn": [
            1e3 * percentile([r.ttft for r in ok if r.turn == t and r.ttft], 0.5) for t in turns
        ],
        "ttft_p99_ms_by_turn": [
            1e3 * percentile([r.ttft for r in ok if r.turn == t and r.ttft], 0.99) for t in turns
        ],
        "prompt_tokens": prompt,
        "cached_share": sum(r.cached_tokens for r in ok) / max(1, prompt),
        "failed": len(results) - len(ok),
        "retries": sum(r.retries for r in results),
        "not_played": expected_turns - len(results),
        "errors": sorted({r.error for r in results if r.error})[:5],
        "peak_rss_mib": rss / 2**20,
    }


def run_system(system: System, workload, in_flight: int) -> dict:
    try:
        warm_up(system)
        results, wall = asyncio.run(run_workload(system, workload, in_flight))
        return summarize(results, wall, workload, system.peak_rss_bytes())
    finally:
        system.stop()


def run_set(set_name: str, scenario: dict, args: argparse.Namespace, cache: Path) -> dict:
    converter = [str(PEERS / "convert-venv/bin/python"), str(PEERS / "src/convert_hf_to_gguf.py")]
    members = build_members(set_name, cache, converter)
    template = write_template(cache)
    names = [m.name for m in members]
    workload = make_workload(
        names, num_conversations=args.conversations, num_turns=scenario["turns"],
        weights=list(scenario["weights"] or [1.0] * len(names)), num_personas=4,
        persona_words=args.persona_words, user_words=args.user_words,
        max_tokens=args.max_tokens, seed=args.seed,
    )  # fmt: skip
    llama_kv = sum(scenario["llama_ctx"] * m.kv_bytes_per_token for m in members)
    pool = llama_kv if scenario["cache_ram"] == 0 else None  # B: the same KV budget
    logs = Path(tempfile.mkdtemp(prefix=f"peers-{set_name}-"))

    def blendrt() -> System:
        return start_blendrt(members, template, args.port, logs, pool)

    def llama() -> System:
        return start_llama_servers(
            PEERS / "bin/llama-server", members, template, args.port + 100, logs,
            ctx=scenario["llama_ctx"], slots=args.in_flight, cache_ram_mib=scenario["cache_ram"],
        )  # fmt: skip

    check = [blendrt(), llama()]
    try:
        check_same_prompt(check, members)
    finally:
        for s in check:
            s.stop()
    runs: dict[str, list[dict]] = {"blendrt": [], "llama-servers": []}
    for _ in range(args.repeat):  # interleaved, so drift hits both alike
        runs["blendrt"].append(run_system(blendrt(), workload, args.in_flight))
        runs["llama-servers"].append(run_system(llama(), workload, args.in_flight))
    return {
        "members": [
            {"name": m.name, "shape": m.spec, "params": m.num_params, "kv": m.kv_bytes_per_token}
            for m in members
        ],
        "weights": list(workload.weights),
        "turns": scenario["turns"],
        "llama_ctx_per_server": scenario["llama_ctx"],
        "llama_cache_ram_mib": scenario["cache_ram"],
        "blendrt_pool_bytes": pool,
        "llama_kv_bytes": llama_kv,
        "logs": str(logs),
        "runs": runs,
    }


def _span(runs: list[dict], key: str, fmt: str) -> str:
    values = [r[key] for r in runs]
    lo, hi = min(values), max(values)
    return format(lo, fmt) if lo == hi else f"{lo:{fmt}}-{hi:{fmt}}"


def print_table(scenario: str, set_name: str, result: dict) -> None:
    b, ll = result["runs"]["blendrt"], result["runs"]["llama-servers"]
    sizes = " + ".join(f"{m['params'] / 1e6:.1f}M" for m in result["members"])
    print(f"\n### Scenario {scenario}, set {set_name} ({sizes}), {result['turns']} turns")
    print(
        "| system | tok/s | TTFT p50 ms | TTFT p99 ms | cached share "
        "| failed (+not played), retried | peak RSS MiB |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, runs in (("blendrt", b), ("llama-servers", ll)):
        failed = f"{sum(r['failed'] for r in runs)} (+{sum(r['not_played'] for r in runs)})"
        failed += f", {sum(r.get('retries', 0) for r in runs)} retried"
        print(
            f"| {name} | {_span(runs, 'output_tokens_per_second', '.0f')} "
            f"| {_span(runs, 'ttft_p50_ms', '.0f')} | {_span(runs, 'ttft_p99_ms', '.0f')} "
            f"| {_span(runs, 'cached_share', '.2f')} | {failed} "
            f"| {_span(runs, 'peak_rss_mib', '.0f')} |"
        )
    pairs = list(zip(b, ll, strict=True))
    ratio = [x["output_tokens_per_second"] / y["output_tokens_per_second"] for x, y in pairs]
    share = [x["cached_share"] / max(1e-9, y["cached_share"]) for x, y in pairs]
    ttft = [x["ttft_p50_ms"] / y["ttft_p50_ms"] for x, y in pairs]
    print(
        f"\nblendrt / llama-servers per repeat: tok/s {', '.join(f'{r:.2f}' for r in ratio)}; "
        f"TTFT p50 {', '.join(f'{r:.2f}' for r in ttft)}; "
        f"cached share {', '.join(f'{r:.2f}' for r in share)}"
    )
    for name, runs in (("blendrt", b), ("llama-servers", ll)):
        columns = zip(*(r["ttft_p50_ms_by_turn"] for r in runs), strict=True)
        # per turn, the median over repeats (of those where some request of it succeeded)
        p50 = [statistics.median([v for v in col if v == v] or [float("nan")]) for col in columns]
        print(f"{name} TTFT p50 by turn (ms): {' '.join(f'{v:.0f}' for v in p50)}")
        errors = sorted({e for r in runs for e in r["errors"]})
        if errors:
            print(f"{name} errors (first kinds): {errors[:3]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", choices=["A", "B", "both"], default="both")
    parser.add_argument("--sets", nargs="*", choices=list(MEMBER_SETS), help="only these sets")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--conversations", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--in-flight", type=int, default=4)
    parser.add_argument("--persona-words", type=int, default=60)
    parser.add_argument("--user-words", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--port", type=int, default=8600)
    parser.add_argument("--cache", type=Path, default=PEERS / "members", help="members' folders")
    parser.add_argument("--json", type=Path, help="write every figure here")
    args = parser.parse_args()
    needed = ("bin/llama-server", "convert-venv/bin/python")
    missing = [p for p in needed if not (PEERS / p).exists()]
    if missing:
        print(f"skipped: llama.cpp is not built under {PEERS} (missing {', '.join(missing)}); "
              "run ../shared/tools/build-llama-server.sh first")  # fmt: skip
        return
    args.cache.mkdir(parents=True, exist_ok=True)
    report = {"cores": os.cpu_count(), "llama_server_threads": 1, "results": {}}
    for scenario in ("A", "B") if args.scenario == "both" else (args.scenario,):
        for set_name in SCENARIOS[scenario]["sets"]:
            if args.sets and set_name not in args.sets:
                continue
            result = run_set(set_name, SCENARIOS[scenario], args, args.cache)
            report["results"][f"{scenario}/{set_name}"] = result
            print_table(scenario, set_name, result)
            sys.stdout.flush()
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
