"""A replica killed mid-run (SIGKILL, a crash) on a local Ray Serve with 2 replicas of the
demo blend: its in-flight stream ends with an error event and [DONE] (no hang), its
conversations continue on another replica (a client retrying once sees no error), the
other replica's conversations stay put, and the replacement replica rejoins the routing."""

from __future__ import annotations

import http.client
import json
import os
import signal
import time
import urllib.request
from urllib.parse import urlsplit

import pytest

from blendrt.ray_serve.workload import Turn, chat_turn

pytestmark = pytest.mark.ray

STREAM_TIMEOUT_S = 30.0  # the cut stream must end well within this
REJOIN_TIMEOUT_S = 90.0


def replicas(base: str, want_pids: bool = True, timeout: float = 30.0) -> list[dict]:
    """/replicas, once every replica has reported its routing stats (pid included)."""
    deadline = time.monotonic() + timeout
    while True:
        with urllib.request.urlopen(f"{base}/replicas", timeout=10) as r:
            found = json.loads(r.read())["replicas"]
        if not want_pids or all("pid" in f for f in found) or time.monotonic() > deadline:
            return found
        time.sleep(0.5)


def turn(base: str, key: str, text: str, retries: int = 1) -> tuple[Turn, int]:
    """A keyed turn, retried as a client would; (the last answer, attempts)."""
    body = {"model": "blend", "messages": [{"role": "user", "content": text}], "max_tokens": 4}
    attempts = 0
    while True:
        attempts += 1
        answer = chat_turn(base, body, {"x-conversation-id": key})
        if (answer.status == 200 and answer.error is None) or attempts > retries:
            return answer, attempts


def test_killed_replica_fails_over_and_rejoins(local_serve) -> None:
    base = local_serve.deploy("affinity")
    keys = [f"conv-{i}" for i in range(10)]
    home = {k: turn(base, k, "hello there")[0].replica for k in keys}
    victim = home[keys[0]]
    assert set(home.values()) == {r["replica"] for r in replicas(base)}, home
    pid = next(r["pid"] for r in replicas(base) if r["replica"] == victim)

    # A long stream on the victim, killed after its first chunk.
    url = urlsplit(base)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=STREAM_TIMEOUT_S)
    body = {
        "model": "blend",
        "messages": [{"role": "user", "content": "tell me a long story"}],
        "max_tokens": 600,
        "ignore_eos": True,
        "stream": True,
    }
    headers = {"content-type": "application/json", "x-conversation-id": keys[0]}
    conn.request("POST", "/v1/chat/completions", json.dumps(body), headers)
    response = conn.getresponse()
    assert response.status == 200, response.read()
    assert response.getheader("x-blendrt-replica") == victim
    assert response.readline().startswith(b"data: ")
    os.kill(pid, signal.SIGKILL)
    start = time.monotonic()
    events = [line.strip() for line in response if line.strip()]  # to EOF: no hang
    conn.close()
    cut_s = time.monotonic() - start
    assert cut_s < STREAM_TIMEOUT_S
    assert events[-1] == b"data: [DONE]", events[-3:]
    error = json.loads(events[-2][len(b"data: ") :])["error"]
    assert error["code"] == "replica_lost", error

    # Every conversation goes on: the victim's elsewhere, the survivor's where they were.
    tries = {}
    for k in keys:
        answer, attempts = turn(base, k, "and then?")
        tries[k] = attempts
        assert answer.status == 200 and answer.error is None, (k, answer, attempts)
        assert answer.replica != victim
        if home[k] != victim:  # consistent placement: it stays, unless the replacement
            # replica is already up and takes it (about 1/N of every replica's keys)
            assert answer.replica == home[k] or answer.replica not in home.values()

    # The replacement comes up under a new id and takes its share of new conversations.
    killed_at = start
    deadline = time.monotonic() + REJOIN_TIMEOUT_S
    while True:
        live = {r["replica"] for r in replicas(base, want_pids=False)}
        if len(live) == 2 and victim not in live:
            rejoined = time.monotonic()
            break
        assert time.monotonic() < deadline, f"no replacement replica: {live}"
        time.sleep(1.0)
    (new,) = live - set(home.values())
    servers = [turn(base, f"new-{i}", "hi")[0].replica for i in range(12)]
    served, served_new = set(servers), servers.count(new)
    assert new in served, (new, served)
    moved = [k for k in keys if home[k] == victim]
    outcome = {
        "stream_cut_after_s": round(cut_s, 2),
        "victim_conversations": len(moved),
        "attempts_per_turn_after_kill": tries,
        "rejoined_after_s": round(rejoined - killed_at, 1),
        "new_conversations_on_new_replica": f"{served_new}/12",
    }
    print(json.dumps(outcome))
