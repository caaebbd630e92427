"""Conversation-affine routing on a local Ray Serve (2 replicas of the demo blend, CPU):
the same multi-turn workload through the ingress under Ray's default power-of-two router
and under ConversationAffinityRouter, the prefix-cache hit rate of each (and TTFT p50);
keys from the header and the `user` field; per-replica health and metrics."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from blendrt.ray_serve.workload import chat_turn, run_workload

pytestmark = pytest.mark.ray

# NOTE: at most 4 requests in flight, under the router's bound (4): affinity never spills,
# so its hit rate is this workload's best; the replies are seeded, the same under both.
WORKLOAD = dict(conversations=12, turns=6, concurrency=4, system_words=200, think_s=0.1)


def get(url: str) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def test_affinity_hits_the_cache_more_than_power_of_two(local_serve) -> None:
    results = {}
    for router in ("pow2", "affinity"):
        base = local_serve.deploy(router)
        results[router] = run_workload(base, **WORKLOAD)
    figures = {
        router: {
            "turns_ok": f"{len(r.ok())}/{len(r.turns)}",
            "hit_rate": round(r.hit_rate(), 3),
            "hit_rate_after_first_turn": round(r.hit_rate(1), 3),
            "ttft_p50_ms": round(r.ttft_p50() * 1000, 1),
            "replica_switches": r.replica_switches(),
        }
        for router, r in results.items()
    }
    ratio = results["affinity"].hit_rate(1) / results["pow2"].hit_rate(1)
    print(json.dumps({**figures, "hit_rate_ratio": round(ratio, 3)}, indent=1))
    for r in results.values():
        assert len(r.ok()) == len(r.turns) == WORKLOAD["conversations"] * WORKLOAD["turns"]
    assert results["affinity"].replica_switches() == 0
    assert results["pow2"].replica_switches() > 0
    assert ratio > 1.0


def test_header_and_user_keys_stay_on_one_replica(local_serve) -> None:
    base = local_serve.deploy("affinity", fresh=False)
    body = {"model": "blend", "max_tokens": 4}
    for i in range(6):
        seen = set()
        for turn in range(3):
            messages = [{"role": "user", "content": f"different text {turn}"}]
            header = chat_turn(base, {**body, "messages": messages}, {"x-conversation-id": f"k{i}"})
            user = chat_turn(base, {**body, "messages": messages, "user": f"user-{i}"})
            assert header.status == user.status == 200
            seen.add(("header", header.replica))
            seen.add(("user", user.replica))
        assert len(seen) == 2, seen  # one replica per key, whatever the text


def test_replicas_report_health_and_metrics(local_serve) -> None:
    base = local_serve.deploy("affinity", fresh=False)
    status, headers, _ = get(f"{base}/health")
    assert status == 200 and headers.get("x-blendrt-replica")
    status, _, text = get(f"{base}/replicas")
    replicas = json.loads(text)["replicas"]
    assert status == 200 and len(replicas) == 2
    for figures in replicas:
        status, _, metrics = get(f"{base}/replicas/{figures['replica']}/metrics")
        assert status == 200 and b"blendrt_prefix_hit_rate" in metrics
    assert get(f"{base}/replicas/nosuch/metrics")[0] == 404
