"""`blendrt bench` end to end on a tiny workload: every system runs, the JSON report holds
the figures the issue asks for, and the numbers are consistent with each other."""

from __future__ import annotations

import json

import pytest

from blendrt.cli import main


def test_bench_json_report(capsys: pytest.CaptureFixture[str], tmp_path) -> None:
    pytest.importorskip("transformers")
    code = main([
        "bench", "--shapes", "llama-3.2-1b:32:8", "gpt-j-6b:32:14", "--conversations", "4",
        "--turns", "3", "--max-tokens", "4", "--persona-words", "48", "--user-words", "6",
        "--kv-cache-mb", "16", "--json", "--seed", "3",
    ])  # fmt: skip
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    systems = report["systems"]
    assert set(systems) == {"blendrt", "blendrt-no-cache", "blendrt-static-pools", "transformers"}
    for s in systems.values():
        assert s["output_tokens"] == 4 * 3 * 4  # conversations x turns x max_tokens
        assert s["output_tokens_per_second"] > 0
        assert s["ttft_p50_ms"] > 0 and s["itl_p50_ms"] >= 0
        assert len(s["computed_prompt_tokens_per_turn"]) == 3
    a, b, d = systems["blendrt"], systems["blendrt-no-cache"], systems["transformers"]
    # Without a cache every system prefills whole histories; with it, later turns much less.
    assert b["computed_prompt_tokens_per_turn"] == pytest.approx(
        d["computed_prompt_tokens_per_turn"], abs=1
    )
    assert a["computed_prompt_tokens_per_turn"][0] <= b["computed_prompt_tokens_per_turn"][0]
    assert a["computed_prompt_tokens_per_turn"][-1] < 0.6 * b["computed_prompt_tokens_per_turn"][-1]
    assert a["prefix_hit_rate"] > 0.3 and b["prefix_hit_rate"] == 0
    assert a["max_concurrent_without_preemption"] >= 1
    assert systems["blendrt-static-pools"]["max_concurrent_without_preemption"] >= 1
    assert {g["goal"][:3] for g in report["goals"]} == {"(a)"}
    assert len(report["goals"]) == 3
