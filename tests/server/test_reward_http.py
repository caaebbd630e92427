"""best_of with a reward model over HTTP: the top n of best_of candidates, each with its
reward_score (a blendrt extension field), best first; streaming such a request is a 400."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from checkpoints import make_checkpoint
from conftest import run_server
from family_parity import make_family_checkpoint

from blendrt import Blend, EngineConfig, Member

HELLO = [{"role": "user", "content": "hello there, how are you today?"}]


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from blendrt.server.app import create_app

    root = tmp_path_factory.mktemp("reward-http")
    make_checkpoint(root / "vic", "LlamaConfig", seed=2, context=512, num_key_value_heads=2)
    make_family_checkpoint(
        root / "rm", "GPT2Config", "GPT2ForSequenceClassification", seed=3,
        n_embd=64, n_layer=2, n_head=4, n_positions=512, num_labels=2, pad_token_id=0,
    )  # fmt: skip
    members = [Member("vic", root / "vic", chat_format="vicuna")]
    config = EngineConfig(device="cpu", num_pages=256)
    blend = Blend(members, seed=0, config=config, reward_model=root / "rm")
    with blend, run_server(create_app(blend)) as url:
        yield url


def test_best_of_returns_the_top_n_by_reward(base_url: str) -> None:
    body = {"model": "vic", "messages": HELLO, "max_tokens": 6, "best_of": 4, "n": 2, "seed": 5}
    done = httpx.post(f"{base_url}/v1/chat/completions", json=body, timeout=60)
    assert done.status_code == 200, done.text
    out = done.json()
    scores = [c["reward_score"] for c in out["choices"]]
    assert len(scores) == 2 and scores == sorted(scores, reverse=True)
    assert all(0.0 <= s <= 1.0 for s in scores)
    assert out["usage"]["completion_tokens"] == 4 * 6  # every candidate was sampled
    again = httpx.post(f"{base_url}/v1/chat/completions", json=body, timeout=60).json()
    assert [c["message"]["content"] for c in again["choices"]] == [
        c["message"]["content"] for c in out["choices"]
    ]  # seeded: reproducible
    plain = httpx.post(
        f"{base_url}/v1/chat/completions", json={**body, "best_of": None, "n": 1}, timeout=60
    ).json()
    assert plain["choices"][0]["reward_score"] is None  # nothing to rank


def test_streaming_a_reward_ranked_request_is_refused(base_url: str) -> None:
    body = {"model": "vic", "messages": HELLO, "max_tokens": 4, "best_of": 2, "stream": True}
    refused = httpx.post(f"{base_url}/v1/chat/completions", json=body, timeout=60)
    assert refused.status_code == 400
    assert refused.json()["error"]["param"] == "best_of"
