"""`blendrt plan`: what a blend needs, and what fits, before anyone loads weights.

From member folders (config.json and safetensors headers only), a device's memory and a
conversation length: each member's weight bytes at bf16, int8 and int4, its KV bytes per token,
the pool's pages and how many conversations it holds for the mix asked for (--quantization,
--kv-cache-dtype, as `blendrt serve` takes them), and the cheapest mix that fits. The numbers
and their definitions: blendrt/plan.py and blendrt/plan_search.py.

`--paper` plans the blend of "Blending Is All You Need" (arXiv 2401.02994) from the published
config.json of its members, bundled without weights in blendrt/demo/paper: Pygmalion-6B and
Chai's GPT-J-6B fine-tune (GPT-J-6B shapes) and Vicuna-13B (v1.5: Llama-2-13B shapes).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from blendrt.cache.pool import KV_CACHE_DTYPES
from blendrt.demo import DEMO_DIR, demo_members
from blendrt.plan import (
    PRECISIONS,
    GiB,
    MemberShapes,
    kv_geometry,
    local_gpu_memory,
    parse_size,
    precision_ok,
    read_member,
    weight_bytes,
)
from blendrt.plan_search import (
    DEFAULT_GPU_MEMORY_UTILIZATION,
    DEFAULT_MIN_CONVERSATIONS,
    BlendPlan,
    cheapest_mix,
    plan_blend,
)

PAPER_DIR: Path = DEMO_DIR / "paper"
PAPER_MEMBERS = ("pygmalion-6b", "chai-6b", "vicuna-13b")


def add_args(plan: argparse.ArgumentParser) -> None:
    plan.add_argument(
        "members",
        nargs="*",
        metavar="NAME=PATH",
        help="member model folders (default: the bundled demo blend)",
    )
    plan.add_argument(
        "--paper", action="store_true", help="the paper's blend: 2 x GPT-J-6B + Vicuna-13B"
    )
    plan.add_argument(
        "--gpu-memory",
        default=None,
        metavar="SIZE",
        help="the device's memory, e.g. 24GiB, 80GB (default: the local CUDA device's)",
    )
    plan.add_argument(
        "--context",
        type=int,
        default=None,
        metavar="TOKENS",
        help="tokens per conversation (default: each member's window; a member holds at "
        "most its window)",
    )
    plan.add_argument(
        "--quantization",
        action="append",
        default=[],
        metavar="NAME=SCHEME",
        help="a member's weights: int8, int4, int4-g32|g64|g128, optionally -zp",
    )
    plan.add_argument("--kv-cache-dtype", choices=KV_CACHE_DTYPES, default="auto")
    plan.add_argument(
        "--weight",
        action="append",
        default=[],
        metavar="NAME=W",
        help="a member's weight in the draw (default: uniform)",
    )
    plan.add_argument(
        "--gpu-memory-utilization",
        type=float,
        default=DEFAULT_GPU_MEMORY_UTILIZATION,
        help="fraction of the device the blend may use, weights included (default 0.9)",
    )
    plan.add_argument("--max-num-seqs", type=int, default=None, help="default 256")
    plan.add_argument("--max-num-batched-tokens", type=int, default=None, help="default 2048")
    plan.add_argument(
        "--min-conversations",
        type=int,
        default=DEFAULT_MIN_CONVERSATIONS,
        help="conversations the suggested mix must hold at once (blended)",
    )
    plan.add_argument("--json", action="store_true", help="machine-readable output")
    plan.set_defaults(func=run)


def _pairs(specs: list[str], flag: str) -> dict[str, str]:
    out = {}
    for spec in specs:
        name, sep, value = spec.partition("=")
        if not sep or not name or not value:
            raise ValueError(f"{flag} expects NAME=VALUE, got {spec!r}")
        out[name] = value
    return out


def member_folders(args: argparse.Namespace) -> dict[str, str]:
    if args.paper and args.members:
        raise ValueError("give member folders or --paper, not both")
    if args.paper:
        return {name: str(PAPER_DIR / name) for name in PAPER_MEMBERS}
    if args.members:
        return _pairs(args.members, "a member")
    return {m["name"]: m["path"] for m in demo_members()}


def _draw_weights(specs: list[str]) -> dict[str, float]:
    weights = {}
    for name, value in _pairs(specs, "--weight").items():
        try:
            weights[name] = float(value)
        except ValueError:
            raise ValueError(f"--weight {name}={value}: not a number") from None
    return weights


def _gib(n: int) -> str:
    return f"{n / GiB:.2f}"


def _name_width(names: Iterable[str]) -> int:
    return max(12, *(len(n) for n in names)) + 2


def member_lines(members: list[MemberShapes]) -> list[str]:
    w = _name_width(m.name for m in members)
    lines = [
        f"{'weights (GiB)':<{w + 2}}{'params':>8}  {'from':<8}"
        + "".join(f"{p:>10}" for p in PRECISIONS)
    ]
    totals: dict[str, int | None] = dict.fromkeys(PRECISIONS, 0)
    for m in members:
        row = f"  {m.name:<{w}}{m.params / 1e9:>7.2f}B  {m.source:<8}"
        for p in PRECISIONS:
            fixed = m.checkpoint is not None  # loads as it is, whatever is asked
            size = weight_bytes(m) if fixed else weight_bytes(m, p) if precision_ok(m, p) else None
            row += f"{_gib(size) + '*' * fixed if size is not None else '-':>10}"
            total = totals[p]
            totals[p] = None if total is None or size is None else total + size
        lines.append(row + (f"  * a {m.precision} checkpoint" if m.checkpoint else ""))
    params = sum(m.params for m in members) / 1e9
    lines.append(
        f"  {'blend':<{w}}{params:>7.2f}B  {'':<8}"
        + "".join(f"{_gib(t) if t is not None else '-':>10}" for t in totals.values())
    )
    lines.append(f"{'KV cache (bytes/token)':<{w + 10}}{'auto':>10}{'int8/fp8':>10}{'window':>10}")
    for m in members:
        auto, int8 = (kv_geometry(m, d).bytes_per_token for d in ("auto", "int8"))
        window = m.config.max_position_embeddings
        lines.append(f"  {m.name:<{w + 8}}{auto:>10}{int8:>10}{window:>10}")
    return lines


def mix_lines(plan: BlendPlan) -> list[str]:
    budget = int(plan.gpu_memory_utilization * plan.gpu_memory)
    pool = (
        f"KV pool {_gib(plan.pool_bytes)} GiB = {plan.num_pages} pages of "
        f"{plan.page_bytes / (1 << 20):.2f} MiB"
        if plan.num_pages
        else "no room left for the KV pool"
    )
    lines = [
        f"  weights {_gib(plan.weight_bytes)} GiB + activation reserve "
        f"{_gib(plan.activation_reserve)} GiB, of {_gib(budget)} GiB: {pool}"
    ]
    head = ("member", "weights", "GiB", "KV B/tok", "tok/page", "conv tok", "pages/conv",
            "tok alone", "conv alone", "draw")  # fmt: skip
    w = _name_width(m.name for m in plan.members)
    lines.append("  " + f"{head[0]:<{w}}{head[1]:<10}" + "".join(f"{h:>11}" for h in head[2:]))
    for m in plan.members:
        cells = (_gib(m.weight_bytes), m.kv_bytes_per_token, m.tokens_per_page,
                 m.conversation_tokens, m.pages_per_conversation, m.tokens_alone,
                 m.conversations_alone, f"{m.draw_weight:.2f}")  # fmt: skip
        lines.append(f"  {m.name:<{w}}{m.precision:<10}" + "".join(f"{c:>11}" for c in cells))
    lines.append(
        f"  conversations at once: {plan.conversations} blended (members drawn by weight), "
        f"{plan.conversations_all_cached} if every member keeps every one cached"
    )
    verdict = "fits" if plan.fits else "does NOT fit"
    lines.append(f"  {verdict} (the pool must hold >= {plan.min_conversations} conversations)")
    return lines


def render(members: list[MemberShapes], given: BlendPlan, best: BlendPlan | None) -> str:
    context = f"{given.context} tokens" if given.context else "each member's full window"
    budget = int(given.gpu_memory_utilization * given.gpu_memory)
    lines = [
        f"blendrt plan: {len(members)} members, conversations of {context}, on "
        f"{_gib(given.gpu_memory)} GiB",
        f"  the blend may use {given.gpu_memory_utilization:g} of it: {_gib(budget)} GiB "
        f"(the CUDA context, ~{_gib(given.cuda_context)} GiB, must fit in the rest)",
        "",
        *member_lines(members),
        "",
        "as asked: " + (" ".join(given.flags) or "bf16 weights, KV in the model dtype"),
        *mix_lines(given),
        "",
    ]
    if best is None:
        lines.append(
            "nothing fits: even int4-g128 weights and int8 KV leave fewer than "
            f"{given.min_conversations} conversations; add memory or lower --context"
        )
    elif best == given:
        lines.append("cheapest mix that fits: the one asked for")
    else:
        flags = " ".join(best.flags) or "(no flags: bf16 weights and KV)"
        lines += [f"cheapest mix that fits: {flags}", *mix_lines(best)]
    return "\n".join(lines)


def report(
    folders: dict[str, str], members: list[MemberShapes], given: BlendPlan, best: BlendPlan | None
) -> dict[str, Any]:
    """The plan as JSON-ready data: members' bytes at every precision, the mix asked for,
    the cheapest that fits (None when nothing does)."""
    shapes = [
        {
            "name": m.name,
            "path": folders[m.name],
            "architecture": m.config.architecture,
            "params": m.params,
            "source": m.source,
            "window": m.config.max_position_embeddings,
            "checkpoint": m.checkpoint,
            "weight_bytes": {
                p: weight_bytes(m, p) if precision_ok(m, p) else None
                for p in (PRECISIONS if m.checkpoint is None else (m.precision,))
            },
            "kv_bytes_per_token": {d: kv_geometry(m, d).bytes_per_token for d in KV_CACHE_DTYPES},
        }
        for m in members
    ]
    return {
        "members": shapes,
        "plan": asdict(given),
        "suggestion": asdict(best) if best is not None else None,
    }


def run(args: argparse.Namespace) -> int:
    folders = member_folders(args)
    members = [read_member(name, path) for name, path in folders.items()]
    gpu = parse_size(args.gpu_memory) if args.gpu_memory is not None else local_gpu_memory()
    common: dict[str, Any] = dict(
        gpu_memory=gpu,
        context=args.context,
        draw_weights=_draw_weights(args.weight),
        gpu_memory_utilization=args.gpu_memory_utilization,
        min_conversations=args.min_conversations,
    )
    for flag in ("max_num_seqs", "max_num_batched_tokens"):
        if getattr(args, flag) is not None:
            common[flag] = getattr(args, flag)
    given = plan_blend(
        members,
        quantization=_pairs(args.quantization, "--quantization"),
        kv_cache_dtype=args.kv_cache_dtype,
        **common,
    )
    best = cheapest_mix(members, **common)
    if args.json:
        print(json.dumps(report(folders, members, given, best), indent=2))
    else:
        print(render(members, given, best))
    return 0
