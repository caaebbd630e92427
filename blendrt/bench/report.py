"""The benchmark's report: one table, ratios against transformers and against static pools,
the goals, JSON for machines, and an optional plot of time to first token per turn."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from blendrt.bench.metrics import SystemResult, percentile

LABELS = {
    "blendrt": "(a) blendrt",
    "blendrt-no-cache": "(b) no prefix cache",
    "blendrt-static-pools": "(c) static pools",
    "transformers": "(d) transformers",
}


def summarize(r: SystemResult, last_turn: int) -> dict[str, Any]:
    ttft, itl = r.ttfts(), r.all_itls()
    switched = r.ttfts(turn=last_turn, switched=True)
    return {
        "output_tokens": r.output_tokens,
        "wall_seconds": r.wall_seconds,
        "output_tokens_per_second": r.output_tokens_per_second,
        "ttft_p50_ms": 1e3 * percentile(ttft, 0.5),
        "ttft_p99_ms": 1e3 * percentile(ttft, 0.99),
        "itl_p50_ms": 1e3 * percentile(itl, 0.5),
        "itl_p99_ms": 1e3 * percentile(itl, 0.99),
        "ttft_switched_last_turn_ms": 1e3 * statistics.mean(switched) if switched else None,
        "prompt_tokens_per_turn": statistics.mean(t.prompt_tokens for t in r.turns),
        "computed_prompt_tokens_per_turn": r.computed_per_turn(),
        "prefix_hit_rate": r.prefix_hit_rate,
        "peak_kv_mib": None if r.peak_kv_bytes is None else r.peak_kv_bytes / 2**20,
        "pool_mib": None if r.pool_bytes is None else r.pool_bytes / 2**20,
        "preemptions": r.num_preemptions,
        "max_concurrent_without_preemption": r.max_concurrent_without_preemption,
        "notes": r.notes,
    }


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def goals(s: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    a, b = s.get("blendrt"), s.get("blendrt-no-cache")
    c, d = s.get("blendrt-static-pools"), s.get("transformers")
    out = []
    if a and d:
        x = _ratio(a["output_tokens_per_second"], d["output_tokens_per_second"])
        out.append(dict(goal="(a) output tokens/s >= 5x (d)", value=x, met=x >= 5))
    if a and b and a["ttft_switched_last_turn_ms"] and b["ttft_switched_last_turn_ms"]:
        x = _ratio(a["ttft_switched_last_turn_ms"], b["ttft_switched_last_turn_ms"])
        out.append(
            dict(
                goal="(a) TTFT of a switched-to member at the last turn <= 1/5 of (b)",
                value=x,
                met=x <= 0.2,
            )
        )
    if a and c and a["max_concurrent_without_preemption"] is not None:
        x = _ratio(a["max_concurrent_without_preemption"], c["max_concurrent_without_preemption"])
        out.append(
            dict(
                goal="(a) concurrent conversations before preempting >= 1.5x (c)",
                value=x,
                met=x is not None and x >= 1.5,
            )
        )
    return out


def _fmt(x: Any, spec: str = ".1f") -> str:
    return "-" if x is None else format(x, spec)


def print_table(summaries: dict[str, dict[str, Any]], config: dict[str, Any]) -> None:
    print("blendrt bench: " + ", ".join(f"{k}={v}" for k, v in config.items()))
    cols = (
        "system",
        "tok/s",
        "x(d)",
        "x(c)",
        "TTFT p50",
        "p99",
        "ITL p50",
        "p99",
        "prefill/turn",
        "hit rate",
        "peak MiB",
        "max conc",
    )
    line_format = "{:<22}" + "{:>13}" * (len(cols) - 1)
    print(line_format.format(*cols))
    print(f"{'':22}{'':39}{'(ms)':>26}{'(ms)':>26}")
    d, c = summaries.get("transformers"), summaries.get("blendrt-static-pools")
    for name, s in summaries.items():
        tps = s["output_tokens_per_second"]
        vs_d = _ratio(tps, d and d["output_tokens_per_second"])
        vs_c = _ratio(tps, c and c["output_tokens_per_second"])
        print(line_format.format(
            LABELS.get(name, name), _fmt(tps), _fmt(vs_d, ".2f"), _fmt(vs_c, ".2f"),
            _fmt(s["ttft_p50_ms"]), _fmt(s["ttft_p99_ms"]), _fmt(s["itl_p50_ms"]),
            _fmt(s["itl_p99_ms"]), _fmt(statistics.mean(s["computed_prompt_tokens_per_turn"])),
            _fmt(s["prefix_hit_rate"], ".2f"), _fmt(s["peak_kv_mib"]),
            _fmt(s["max_concurrent_without_preemption"], "d"),
        ))  # fmt: skip
    print("\nprompt tokens prefilled per turn (mean over conversations):")
    for name, s in summaries.items():
        row = " ".join(f"{x:6.0f}" for x in s["computed_prompt_tokens_per_turn"])
        print(f"  {LABELS.get(name, name):<22}{row}")
    for note in (n for s in summaries.values() for n in s["notes"]):
        print(f"note: {note}")
    for g in goals(summaries):
        print(f"goal: {g['goal']}: {_fmt(g['value'], '.2f')} -> {'met' if g['met'] else 'MISSED'}")


def to_json(summaries: dict[str, dict[str, Any]], config: dict[str, Any]) -> str:
    return json.dumps({"config": config, "systems": summaries, "goals": goals(summaries)}, indent=2)


def plot_ttft(results: dict[str, SystemResult], path: Path) -> None:
    """Mean time to first token against turn index, for (a) and (b)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise SystemExit("--plot needs matplotlib: pip install 'blendrt[plot]'") from e
    fig, ax = plt.subplots(figsize=(6, 4))
    for name in ("blendrt", "blendrt-no-cache"):
        if name in results:
            r = results[name]
            turns = sorted({t.turn for t in r.turns})
            ax.plot(
                [t + 1 for t in turns],
                [1e3 * statistics.mean(r.ttfts(turn=t)) for t in turns],
                marker="o",
                label=LABELS[name],
            )
    ax.set_xlabel("turn")
    ax.set_ylabel("mean time to first token (ms)")
    ax.set_title("Prefix caching across a blended conversation")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
