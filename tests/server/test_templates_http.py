"""Members whose chat templates refuse a conversation (Llama-2's alternation check,
Mistral v0.1's "no system role") answer 400 naming the template's reason, never 500; a
template that moves the system prompt (Mistral v0.3 layout) is served, rendered whole, and
counted in stats."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from checkpoints import make_checkpoint
from conftest import run_server

from blendrt import Blend, EngineConfig, Member

TEMPLATES = Path(__file__).parents[1] / "tokenizer" / "templates"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):
    from blendrt.server.app import create_app

    root = tmp_path_factory.mktemp("templated")
    make_checkpoint(root / "llama", "LlamaConfig", seed=4, context=512)
    members = [
        Member(
            name, root / "llama", chat_options={"template": (TEMPLATES / f"{t}.jinja").read_text()}
        )
        for name, t in (
            ("two", "llama-2-chat"),
            ("mis", "mistral-v0.1"),
            ("nemo", "mistral-v0.3-nemo"),
        )
    ]
    blend = Blend(members, config=EngineConfig(device="cpu", num_pages=128))
    with blend, run_server(create_app(blend)) as url:
        yield blend, url


def chat(url: str, model: str, messages: list[dict]) -> httpx.Response:
    body = {"model": model, "messages": messages, "max_tokens": 3}
    return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60)


def test_a_templates_refusal_is_a_400(served) -> None:
    _, url = served
    two_users = [{"role": "user", "content": "hi"}, {"role": "user", "content": "again"}]
    r = chat(url, "two", two_users)
    assert r.status_code == 400
    assert (
        "chat template refused the conversation: Conversation roles must alternate"
        in r.json()["error"]["message"]
    )
    system = [{"role": "system", "content": "be nice"}, {"role": "user", "content": "hi"}]
    r = chat(url, "mis", system)
    assert r.status_code == 400 and "chat template refused" in r.json()["error"]["message"]
    assert chat(url, "mis", system[1:]).status_code == 200


def test_a_template_moving_the_system_prompt_is_served_whole(served) -> None:
    blend, url = served
    messages = [{"role": "system", "content": "be nice"}, {"role": "user", "content": "hi"}]
    for _ in range(2):
        r = chat(url, "nemo", messages)
        assert r.status_code == 200
        messages += [
            {"role": "assistant", "content": r.json()["choices"][0]["message"]["content"]},
            {"role": "user", "content": "and then?"},
        ]
    assert blend.stats()["members"]["nemo"]["whole_renders"] >= 1
