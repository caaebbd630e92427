"""`blendrt bench`: argument parsing and the run of every system on one workload."""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import sys
import tempfile
from pathlib import Path

from blendrt.bench.blendrt_runner import (
    SYSTEMS,
    max_concurrent_without_preemption,
    probe_pool_bytes,
    run_blendrt,
)
from blendrt.bench.metrics import SystemResult
from blendrt.bench.report import plot_ttft, print_table, summarize, to_json
from blendrt.bench.shapes import make_shape_member
from blendrt.bench.workload import Workload, make_workload
from blendrt.blend import Member
from blendrt.config import EngineConfig
from blendrt.models.loaded import load_model

ALL_SYSTEMS = (*SYSTEMS, "transformers")


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("members", nargs="*", metavar="NAME=PATH", help="member folders")
    p.add_argument("--chat-format", action="append", default=[], metavar="NAME=FORMAT")
    p.add_argument(
        "--shapes",
        nargs="+",
        default=None,
        metavar="NAME[:W[:D]]",
        help="random members of real shapes scaled down by W (width), D (depth), "
        "e.g. gpt-j-6b:16:4 llama-3.2-1b:8:4",
    )
    p.add_argument("--conversations", type=int, default=32)
    p.add_argument("--turns", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=16, help="reply length (EOS ignored)")
    p.add_argument("--personas", type=int, default=4, help="distinct personas (shared)")
    p.add_argument("--persona-words", type=int, default=120)
    p.add_argument("--user-words", type=int, default=12)
    p.add_argument("--weights", default=None, help="member mix, e.g. 0.6,0.3,0.1")
    p.add_argument(
        "--arrival-rate",
        type=float,
        default=None,
        help="conversations per second (Poisson); default: all at once",
    )
    p.add_argument("--systems", default=",".join(ALL_SYSTEMS))
    p.add_argument("--kv-cache-mb", type=float, default=256.0, help="pool size of (a)-(c)")
    p.add_argument(
        "--capacity-weights",
        default=None,
        help="member mix of the concurrency probe (default 0.6,0.3,0.1 for three "
        "members, halving per member otherwise; '' skips the probe)",
    )
    p.add_argument(
        "--capacity-kv-mb",
        type=float,
        default=None,
        help="pool size of the concurrency probe, equal for (a) and (c) (default: "
        "what about 12 average conversations need at their last turn)",
    )
    p.add_argument("--max-num-batched-tokens", type=int, default=2048)
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default=None, choices=("float32", "float16", "bfloat16"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    p.add_argument("--plot", type=Path, default=None, help="PNG of TTFT per turn, (a) vs (b)")


def _weights(text: str, n: int) -> list[float] | None:
    if not text:
        return None
    w = [float(x) for x in text.split(",")]
    if len(w) != n:
        raise SystemExit(f"{len(w)} weights given for {n} members")
    return w


def _skewed(n: int) -> list[float]:
    """The skewed member mix of the concurrency probe."""
    return [0.6, 0.3, 0.1] if n == 3 else [2.0**-i for i in range(n)]


def _members(args: argparse.Namespace, scratch: Path) -> list[Member]:
    formats = dict(spec.split("=", 1) for spec in args.chat_format)
    if args.shapes:
        members = []
        for i, spec in enumerate(args.shapes):
            name = f"{spec.replace(':', '-')}-{i}"
            fmt = make_shape_member(spec, scratch / name, seed=args.seed + i)
            members.append(Member(name, scratch / name, chat_format=fmt))
        return members
    if args.members:
        out = []
        for spec in args.members:
            name, _, path = spec.partition("=")
            out.append(Member(name, path, chat_format=formats.get(name)))
        return out
    from blendrt.demo import demo_blend_members

    return demo_blend_members()


def run(args: argparse.Namespace) -> int:
    systems = [s for s in args.systems.split(",") if s]
    unknown = set(systems) - set(ALL_SYSTEMS)
    if unknown:
        raise SystemExit(f"unknown systems {sorted(unknown)}; choose from {ALL_SYSTEMS}")
    with tempfile.TemporaryDirectory(prefix="blendrt-bench-") as scratch:
        members = _members(args, Path(scratch))
        names = [m.name for m in members]
        base = EngineConfig(
            device=args.device,
            dtype=args.dtype,
            kv_cache_bytes=int(args.kv_cache_mb * 2**20),
            max_num_batched_tokens=args.max_num_batched_tokens,
        )
        models = {m.name: load_model(m.path, device=base.device, dtype=base.dtype) for m in members}
        workload = make_workload(
            names, num_conversations=args.conversations, num_turns=args.turns,
            weights=_weights(args.weights or "", len(names)), num_personas=args.personas,
            persona_words=args.persona_words, user_words=args.user_words,
            max_tokens=args.max_tokens, arrival_rate=args.arrival_rate, seed=args.seed,
        )  # fmt: skip
        results: dict[str, SystemResult] = {}
        for name in systems:
            print(f"running {name} ...", file=sys.stderr, flush=True)
            if name == "transformers":
                if importlib.util.find_spec("transformers") is None:
                    print(
                        "skipping (d) transformers: it is not installed "
                        '(pip install "blendrt[bench]")',
                        file=sys.stderr,
                    )
                    continue
                from blendrt.bench.hf_baseline import run_transformers

                dtype = next(iter(models.values())).dtype
                results[name] = run_transformers(workload, members, device=base.device, dtype=dtype)
            else:
                results[name] = run_blendrt(name, workload, members, base, models)
        mix = (
            _weights(args.capacity_weights, len(names))
            if args.capacity_weights is not None
            else _skewed(len(names))
        )
        if mix:

            def skewed(n: int) -> Workload:
                return make_workload(
                    names, num_conversations=n, num_turns=args.turns, weights=mix,
                    num_personas=args.personas, persona_words=args.persona_words,
                    user_words=args.user_words, max_tokens=args.max_tokens, seed=args.seed,
                )  # fmt: skip

            probe_bytes = (
                int(args.capacity_kv_mb * 2**20)
                if args.capacity_kv_mb
                else probe_pool_bytes(skewed(64), members, base, models)
            )
            probe = dataclasses.replace(base, kv_cache_bytes=probe_bytes)
            for name in ("blendrt", "blendrt-static-pools"):
                if name in results:
                    print(f"probing {name} capacity ...", file=sys.stderr, flush=True)
                    results[
                        name
                    ].max_concurrent_without_preemption = max_concurrent_without_preemption(
                        name, skewed, members, probe, models
                    )
                    results[name].notes.append(
                        f"{name}: concurrency probe with mix {mix} in {probe_bytes / 2**20:.1f} MiB"
                    )
    summaries = {name: summarize(r, args.turns - 1) for name, r in results.items()}
    config = {k: v for k, v in vars(args).items() if k not in ("json", "plot", "func")}
    config["members"] = names
    if args.json:
        print(to_json(summaries, config))
    else:
        print_table(summaries, config)
    if args.plot:
        plot_ttft(results, args.plot)
    return 0
