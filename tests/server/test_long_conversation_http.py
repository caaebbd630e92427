"""A 60-turn conversation over HTTP, streaming and not, on members with different windows:
truncation "auto" (the default) fits every turn in the chosen member's window and reports
what it dropped in usage; "disabled" is a 400 `context_length_exceeded`; a max_tokens that
can never fit is a 400; an absent max_tokens fills what the window leaves, up to the
server's limit."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
from conftest import run_server, wait_idle
from windowed_members import SYSTEM, WINDOWS, make_windowed_members, user_line

from blendrt import Blend, EngineConfig

DEFAULT_MAX_TOKENS = 20


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from blendrt.server.app import create_app

    members = make_windowed_members(tmp_path_factory.mktemp("windowed"))
    config = EngineConfig(device="cpu", num_pages=256)
    with Blend(members, seed=5, config=config, default_max_tokens=DEFAULT_MAX_TOKENS) as blend:
        with run_server(create_app(blend)) as url:
            yield url
        assert wait_idle(blend)["pool"]["pages_in_use"] == 0


def post(base_url: str, body: dict, **kw: object) -> httpx.Response:
    return httpx.post(f"{base_url}/v1/chat/completions", json=body, timeout=60, **kw)


def sse_events(response: httpx.Response) -> list:
    lines = [line for line in response.text.splitlines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    return [json.loads(line[6:]) for line in lines[:-1]]


def chat_turn(base_url: str, messages: list, stream: bool) -> tuple[str, str, dict]:
    """(member, reply text, usage) of one turn sent as a stateless client sends it."""
    body = {"model": "blend", "messages": messages, "max_tokens": 10, "seed": len(messages)}
    if not stream:
        response = post(base_url, body)
        assert response.status_code == 200, response.text
        reply = response.json()
        return reply["model"], reply["choices"][0]["message"]["content"], reply["usage"]
    body |= {"stream": True, "stream_options": {"include_usage": True}}
    response = post(base_url, body)
    assert response.status_code == 200, response.text
    events = sse_events(response)
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events if e["choices"])
    return events[0]["model"], text, events[-1]["usage"]


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_sixty_turns_over_http(base_url: str, stream: bool) -> None:
    messages = [{"role": "system", "content": SYSTEM}]
    usages = []
    for turn in range(60):
        messages.append({"role": "user", "content": user_line(turn)})
        member, text, usage = chat_turn(base_url, messages, stream)
        assert usage["prompt_tokens"] + 10 <= WINDOWS[member]
        usages.append(usage)
        messages.append({"role": "assistant", "content": text})
    truncated = [u for u in usages if u["truncated_messages"]]
    assert len(truncated) >= 40 and all(u["truncated_tokens"] > 0 for u in truncated)
    late = usages[20:]
    cached = sum(u["prompt_tokens_details"]["cached_tokens"] for u in late)
    assert cached / sum(u["prompt_tokens"] for u in late) > 0.3


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_disabled_truncation_is_a_400_context_length_exceeded(base_url, stream) -> None:
    messages = [{"role": "system", "content": SYSTEM}]
    for turn in range(30):
        messages += [
            {"role": "user", "content": user_line(turn)},
            {"role": "assistant", "content": "how lovely, tell me more about it"},
        ]
    messages.append({"role": "user", "content": "and then?"})
    body = {"model": "blend", "messages": messages, "truncation": "disabled", "stream": stream}
    response = post(base_url, body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "context_length_exceeded" and error["param"] == "messages"
    assert "no member's window fits" in error["message"]
    # The same history with truncation auto (the default) is served.
    del body["truncation"]
    assert post(base_url, body).status_code == 200


def test_a_max_tokens_that_can_never_fit_is_a_400(base_url: str) -> None:
    hello = [{"role": "user", "content": "hello"}]
    response = post(base_url, {"model": "ann", "messages": hello, "max_tokens": 256})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "max_tokens" and "can never fit" in error["message"]
    assert error["code"] == "context_length_exceeded"
    one_long = [{"role": "user", "content": "word " * 400}]
    response = post(base_url, {"model": "blend", "messages": one_long, "max_tokens": 8})
    assert response.status_code == 400
    assert "message 0 (user) alone takes" in response.json()["error"]["message"]


def test_an_absent_max_tokens_fills_the_window_up_to_the_limit(base_url: str) -> None:
    hello = [{"role": "user", "content": "hello"}]
    reply = post(base_url, {"model": "vic", "messages": hello, "ignore_eos": True}).json()
    assert reply["usage"]["completion_tokens"] == DEFAULT_MAX_TOKENS
    # A prompt that leaves fewer tokens than the limit gets exactly what is left.
    long = [{"role": "user", "content": "hello there " * 16}]
    body = {"model": "max", "messages": long, "ignore_eos": True, "truncation": "disabled"}
    reply = post(base_url, body).json()
    usage = reply["usage"]
    assert usage["prompt_tokens"] + usage["completion_tokens"] == WINDOWS["max"]
    assert usage["completion_tokens"] < DEFAULT_MAX_TOKENS
    assert reply["choices"][0]["finish_reason"] == "length"
