"""The OpenAI-compatible server over real HTTP: the official openai client, streaming and
not, a re-sent conversation hitting the cache, 50 concurrent streams, dropped clients,
malformed requests, limits, and metrics."""

from __future__ import annotations

import asyncio
import itertools
import json
import time

import httpx
import pytest
from conftest import API_KEY, run_server, wait_idle

openai = pytest.importorskip("openai")

HELLO = [{"role": "user", "content": "Hello there!"}]


def client(served, key: str = API_KEY):
    return openai.OpenAI(base_url=served.base_url + "/v1", api_key=key, max_retries=0)


def test_chat_completion_with_the_openai_client(served) -> None:
    raw = client(served).chat.completions.with_raw_response.create(
        model="blend", messages=HELLO, max_tokens=6, temperature=0
    )
    reply = raw.parse()
    assert reply.model in ("ann", "vic")
    assert raw.headers["x-blendrt-member"] == reply.model
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage.completion_tokens == 6
    assert reply.usage.prompt_tokens > 0
    pinned = client(served).chat.completions.create(model="vic", messages=HELLO, max_tokens=3)
    assert pinned.model == "vic"


def test_streaming_with_usage(served) -> None:
    chunks = list(
        client(served).chat.completions.create(
            model="ann",
            messages=HELLO,
            max_tokens=5,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert {c.model for c in chunks} == {"ann"}
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    final = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(final) == 1 and final[0].choices[0].finish_reason == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 5
    plain = client(served).chat.completions.create(
        model="ann", messages=HELLO, max_tokens=5, temperature=0
    )
    assert text == plain.choices[0].message.content  # same greedy reply either way


def test_resent_conversation_hits_the_cache_more_each_turn(served) -> None:
    c = client(served)
    messages = [{"role": "system", "content": "Ann is a friendly barista in a small town."}]
    cached = []
    for line in ["Hi!", "What do you recommend?", "Is it sweet?", "Great, thanks."]:
        messages.append({"role": "user", "content": line})
        reply = c.chat.completions.create(
            model="ann", messages=messages, max_tokens=8, temperature=0
        )
        cached.append(reply.usage.prompt_tokens_details.cached_tokens)
        # A stateless client sends back only the text: the server maps it to Ann's own ids.
        messages.append({"role": "assistant", "content": reply.choices[0].message.content})
    assert cached[0] == 0
    assert all(b > a for a, b in itertools.pairwise(cached)), cached


def test_fifty_concurrent_streams_complete_and_leave_no_pages(served, capsys) -> None:
    async def one(i: int, aclient) -> int:
        stream = await aclient.chat.completions.create(
            model="blend",
            messages=[{"role": "user", "content": f"Hello number {i}"}],
            max_tokens=8,
            stream=True,
            stream_options={"include_usage": True},
        )
        usage = None
        async for chunk in stream:
            usage = chunk.usage or usage
        return usage.completion_tokens

    async def main() -> list[int]:
        async with openai.AsyncOpenAI(
            base_url=served.base_url + "/v1", api_key=API_KEY, max_retries=0, timeout=120
        ) as aclient:
            return await asyncio.gather(*(one(i, aclient) for i in range(50)))

    start = time.perf_counter()
    tokens = asyncio.run(main())
    elapsed = time.perf_counter() - start
    stats = wait_idle(served.blend)
    assert len(tokens) == 50 and all(1 <= t <= 8 for t in tokens)  # sampled: EOS may end one
    assert stats["pool"]["pages_in_use"] == 0
    with capsys.disabled():
        print(
            f"\n50 concurrent streams: {len(tokens)} completed in {elapsed:.2f} s; pages in "
            f"use afterwards: {stats['pool']['pages_in_use']}"
        )


def test_dropped_clients_free_their_pages(served) -> None:
    body = {
        "model": "vic",
        "messages": HELLO,
        "max_tokens": 400,
        "stream": True,
        "ignore_eos": True,
    }
    headers = {"authorization": f"Bearer {API_KEY}"}
    for _ in range(3):
        with (
            httpx.Client(base_url=served.base_url, headers=headers, timeout=30) as h,
            h.stream("POST", "/v1/chat/completions", json=body) as r,
        ):
            assert r.status_code == 200
            lines = (line for line in r.iter_lines() if line.startswith("data: "))
            next(lines)  # the role chunk
            assert '"content"' in next(lines)  # a generated token: then hang up mid-stream
    stats = wait_idle(served.blend)
    assert stats["pool"]["pages_in_use"] == 0
    assert stats["requests_running"] == 0 and stats["finished"].get("abort", 0) >= 3


MALFORMED = [
    ("bad json", b"{not json", 400, None),
    ("missing messages", {"model": "blend"}, 400, "messages"),
    ("messages not a list", {"model": "blend", "messages": "hi"}, 400, "messages"),
    ("wrong type", {"model": "blend", "messages": HELLO, "temperature": "hot"}, 400, "temperature"),
    (
        "unknown role",
        {"model": "blend", "messages": [{"role": "wizard", "content": "x"}]},
        400,
        "messages.0.role",
    ),
    (
        "negative max_tokens",
        {"model": "blend", "messages": HELLO, "max_tokens": -5},
        400,
        "max_tokens",
    ),
    ("n beyond 16", {"model": "blend", "messages": HELLO, "n": 17}, 400, "n"),
    ("empty messages", {"model": "blend", "messages": []}, 400, "messages"),
    (
        "oversized body",
        {"model": "blend", "messages": [{"role": "user", "content": "x" * 100_000}]},
        413,
        None,
    ),
    ("unknown model", {"model": "gpt-9", "messages": HELLO}, 404, "model"),
    (
        "prompt beyond context",
        {"model": "vic", "messages": [{"role": "user", "content": "word " * 3000}]},
        400,
        None,
    ),
]


@pytest.mark.parametrize(
    ("case", "body", "status", "param"), MALFORMED, ids=[m[0] for m in MALFORMED]
)
def test_malformed_requests_get_4xx_and_the_server_keeps_serving(
    served, case, body, status, param
) -> None:
    headers = {"authorization": f"Bearer {API_KEY}", "content-type": "application/json"}
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = httpx.post(
        served.base_url + "/v1/chat/completions", content=data, headers=headers, timeout=30
    )
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["message"] and error["type"]
    if param:
        assert error["param"] == param
    good = client(served).chat.completions.create(model="blend", messages=HELLO, max_tokens=2)
    assert good.usage.completion_tokens == 2


@pytest.mark.parametrize("key", [None, "wrong-key"])
def test_api_key_is_required(served, key) -> None:
    headers = {} if key is None else {"authorization": f"Bearer {key}"}
    r = httpx.post(
        served.base_url + "/v1/chat/completions",
        headers=headers,
        timeout=30,
        json={"model": "blend", "messages": HELLO},
    )
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(served.base_url + "/v1/models", timeout=30).status_code == 401


def test_completions_models_health_and_metrics(served) -> None:
    c = client(served)
    done = c.completions.create(model="ann", prompt="Once upon a time", max_tokens=4)
    assert done.model == "ann" and done.usage.completion_tokens == 4
    with pytest.raises(openai.BadRequestError, match="needs a member"):
        c.completions.create(model="blend", prompt="Once upon a time", max_tokens=4)
    assert {m.id for m in c.models.list()} == {"blend", "ann", "vic"}
    assert httpx.get(served.base_url + "/health", timeout=30).json() == {"status": "ok"}
    # /metrics is behind the API key too (request counts and members are not public).
    assert httpx.get(served.base_url + "/metrics", timeout=30).status_code == 401
    auth = {"authorization": f"Bearer {API_KEY}"}
    text = httpx.get(served.base_url + "/metrics", headers=auth, timeout=30).text
    for name in (
        "blendrt_requests_total",
        "blendrt_prompt_tokens_total",
        "blendrt_completion_tokens_total",
        "blendrt_time_to_first_token_seconds",
        "blendrt_inter_token_seconds",
        "blendrt_pool_pages",
        "blendrt_prefix_hit_rate",
        "blendrt_preemptions",
    ):
        assert name in text, name
    assert 'blendrt_pool_pages{member="ann",state="in_use"}' in text


def test_a_full_queue_answers_429(served) -> None:
    from blendrt.server.app import create_app

    body = {
        "model": "vic",
        "messages": HELLO,
        "max_tokens": 300,
        "stream": True,
        "ignore_eos": True,
    }
    with (
        run_server(create_app(served.blend, max_in_flight=1)) as url,
        httpx.Client(base_url=url, timeout=30) as h,
        h.stream("POST", "/v1/chat/completions", json=body) as first,
    ):
        lines = (line for line in first.iter_lines() if line.startswith("data: "))
        next(lines)
        assert '"content"' in next(lines)  # the first request is generating
        second = h.post("/v1/chat/completions", json={**body, "stream": False})
        assert (first.status_code, second.status_code) == (200, 429)
        assert second.json()["error"]["type"] == "rate_limit_error"
        assert second.headers["retry-after"] == "1"
    wait_idle(served.blend)
