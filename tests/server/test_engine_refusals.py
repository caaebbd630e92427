"""A request the engine refuses after the turn was prepared (here: it needs more pages than
the whole pool has) is a 400 when not streamed, and an error event then [DONE] when the
stream had already started; the server goes on serving."""

from __future__ import annotations

import json

import httpx
import pytest
from checkpoints import make_checkpoint
from conftest import run_server

from blendrt import Blend, EngineConfig, Member


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory):
    from blendrt.server.app import create_app

    root = tmp_path_factory.mktemp("tiny-pool")
    make_checkpoint(root / "ann", "GPTJConfig", seed=1, context=1024)
    members = [Member("ann", root / "ann", chat_format="pygmalion")]
    blend = Blend(members, config=EngineConfig(device="cpu", num_pages=2))
    with blend, run_server(create_app(blend)) as url:
        yield url


def test_a_request_larger_than_the_pool_is_refused_cleanly(base_url: str) -> None:
    long = [{"role": "user", "content": "hello there " * 40}]
    body = {"model": "ann", "messages": long, "max_tokens": 4}
    response = httpx.post(f"{base_url}/v1/chat/completions", json=body, timeout=30)
    assert response.status_code == 400
    assert "pages" in response.json()["error"]["message"]
    streamed = httpx.post(
        f"{base_url}/v1/chat/completions", json={**body, "stream": True}, timeout=30
    )
    assert streamed.status_code == 200
    events = [line[6:] for line in streamed.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    error = json.loads(events[-2])["error"]
    assert "pages" in error["message"] and error["type"] == "invalid_request_error"
    short = {"model": "ann", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    assert httpx.post(f"{base_url}/v1/chat/completions", json=short, timeout=30).is_success
