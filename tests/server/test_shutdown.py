"""SIGTERM with streams in flight: new requests get 503 (Retry-After) while the server
drains, the streams get --shutdown-timeout to finish, then end with a final chunk, an error
event saying why and [DONE]; the process exits promptly, with code 0."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time

import httpx
from conftest import free_port, serve_subprocess

NUM_STREAMS = 20
TIMEOUT = 2.0  # --shutdown-timeout


def start_server(port: int) -> subprocess.Popen:
    return serve_subprocess(port, "--shutdown-timeout", str(TIMEOUT))


def read_stream(url: str, events: list, started: threading.Event) -> None:
    body = {
        "model": "blend", "messages": [{"role": "user", "content": "Tell me a long story."}],
        "max_tokens": 900, "ignore_eos": True, "stream": True,
    }  # fmt: skip
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=60) as r:
        for line in r.iter_lines():
            if line.startswith("data: "):
                events.append(line[6:])
                if '"content"' in line and len(events) > 2:
                    started.set()


def test_sigterm_drains_then_cuts_streams_with_a_reason() -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_server(port)
    try:
        streams = [([], threading.Event()) for _ in range(NUM_STREAMS)]
        threads = [
            threading.Thread(target=read_stream, args=(url, events, started), daemon=True)
            for events, started in streams
        ]
        for t in threads:
            t.start()
        for _, started in streams:
            assert started.wait(60), "a stream never started"
        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        late = httpx.get(f"{url}/v1/models", timeout=5)
        assert late.status_code == 503 and late.headers["retry-after"] == "1"
        assert late.json()["error"]["code"] == "server_shutting_down"
        for t in threads:
            t.join(timeout=30)
        proc.wait(timeout=30)
        exited = time.monotonic() - signalled
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    assert TIMEOUT <= exited < TIMEOUT + 8, exited
    for events, _ in streams:
        assert events[-1] == "[DONE]"
        error = json.loads(events[-2])["error"]
        assert error["code"] == "server_shutting_down" and "shutting down" in error["message"]
        final = json.loads(events[-3])
        assert final["choices"][0]["finish_reason"] == "abort"
    print(
        f"\nSIGTERM with {NUM_STREAMS} streams: exited after {exited:.2f} s (timeout {TIMEOUT} s)"
    )


def test_sigterm_with_short_requests_lets_them_finish() -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_server(port)
    results: list[int] = []

    def ask() -> None:
        body = {"model": "blend", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 40,
                "ignore_eos": True}  # fmt: skip
        results.append(httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60).status_code)

    try:
        threads = [threading.Thread(target=ask) for _ in range(4)]
        for t in threads:
            t.start()
        time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(timeout=30)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert results == [200] * 4 and proc.returncode == 0
