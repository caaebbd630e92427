"""Internal errors are 500 error objects, logged with their traceback and counted; a client
that hangs up on a plain (non-streamed) request is counted as 499, without a traceback."""

from __future__ import annotations

import logging
import socket
import time

import httpx
from conftest import API_KEY, wait_idle

from blendrt.server import completions

AUTH = {"authorization": f"Bearer {API_KEY}"}
HELLO = [{"role": "user", "content": "Hello there!"}]


def metric(served, line_start: str) -> float:
    text = httpx.get(served.base_url + "/metrics", headers=AUTH, timeout=30).text
    values = [float(l.split()[-1]) for l in text.splitlines() if l.startswith(line_start)]
    return sum(values)


def test_a_failing_member_is_a_500_error_object_and_counted(served, monkeypatch) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("device fell over")

    before = metric(served, 'blendrt_requests_total{endpoint="/v1/chat/completions",status="500"}')
    monkeypatch.setattr(served.blend.engine.runners["ann"], "forward", broken)
    body = {"model": "ann", "messages": HELLO, "max_tokens": 3}
    r = httpx.post(served.base_url + "/v1/chat/completions", json=body, headers=AUTH, timeout=30)
    assert r.status_code == 500
    error = r.json()["error"]
    assert error["type"] == "server_error" and "device fell over" in error["message"]
    after = metric(served, 'blendrt_requests_total{endpoint="/v1/chat/completions",status="500"}')
    assert after == before + 1
    monkeypatch.undo()
    body["model"] = "vic"  # the other member was never affected
    assert httpx.post(served.base_url + "/v1/chat/completions", json=body, headers=AUTH).is_success


def test_an_unexpected_exception_is_a_logged_500(served, monkeypatch, caplog) -> None:
    async def bug(*args: object, **kwargs: object) -> None:
        raise KeyError("oops")

    monkeypatch.setattr(completions, "chat_completions", bug)
    body = {"model": "ann", "messages": HELLO}
    with caplog.at_level(logging.ERROR, logger="blendrt.server"):
        r = httpx.post(served.base_url + "/v1/chat/completions", json=body, headers=AUTH)
    assert r.status_code == 500 and r.json()["error"]["message"] == "internal error: KeyError"
    assert any(rec.exc_info and "oops" in str(rec.exc_info[1]) for rec in caplog.records)


def test_a_client_hanging_up_on_a_plain_request_is_a_499(served, caplog) -> None:
    before = metric(served, 'blendrt_requests_total{endpoint="/v1/chat/completions",status="499"}')
    host, port = served.base_url.removeprefix("http://").split(":")
    body = (
        b'{"model": "vic", "messages": [{"role": "user", "content": "hi"}], '
        b'"max_tokens": 800, "ignore_eos": true}'
    )
    request = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {API_KEY}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    with caplog.at_level(logging.WARNING):
        with socket.create_connection((host, int(port))) as sock:
            sock.sendall(request)
            time.sleep(0.5)  # generating...
        stats = wait_idle(served.blend)
        time.sleep(0.3)
    assert stats["pool"]["pages_in_use"] == 0 and stats["finished"].get("abort", 0) >= 1
    after = metric(served, 'blendrt_requests_total{endpoint="/v1/chat/completions",status="499"}')
    assert after == before + 1
    assert not [rec for rec in caplog.records if rec.exc_info]  # no traceback logged


def test_metrics_key_and_the_bind_warning(served) -> None:
    from fastapi.testclient import TestClient

    from blendrt.cli.serve import bind_warning
    from blendrt.server.app import create_app

    client = TestClient(create_app(served.blend, api_key="api", metrics_key="scrape"))
    assert client.get("/metrics", headers={"authorization": "Bearer api"}).status_code == 401
    assert client.get("/metrics", headers={"authorization": "Bearer scrape"}).status_code == 200
    assert client.get("/v1/models", headers={"authorization": "Bearer scrape"}).status_code == 401
    assert "without an API key" in bind_warning("0.0.0.0", None)
    assert bind_warning("0.0.0.0", "key") is None
    assert bind_warning("127.0.0.1", None) is None and bind_warning("::1", None) is None
    assert bind_warning("localhost", None) is None
