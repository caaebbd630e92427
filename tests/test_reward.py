"""Reward-model best-of-N and pluggable member policies through Blend: the scorer runs in the
shared pool and agrees with transformers, N candidates come from one prefill, the best-scored
is returned and reproducible under a seed; custom, per-conversation seeded and reward-probing
policies choose members."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from checkpoints import make_checkpoint
from family_parity import make_family_checkpoint

from blendrt import Blend, EngineConfig, Member
from blendrt.reward import REWARD_MEMBER, render_for_scoring

HELLO = [{"role": "user", "content": "hello there, how are you today?"}]


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("reward")
    make_checkpoint(root / "ann", "GPTJConfig", seed=1, context=512)
    make_checkpoint(root / "vic", "LlamaConfig", seed=2, context=512, num_key_value_heads=2)
    make_family_checkpoint(
        root / "rm", "GPT2Config", "GPT2ForSequenceClassification", seed=3,
        n_embd=64, n_layer=2, n_head=4, n_positions=512, num_labels=2, pad_token_id=0,
    )  # fmt: skip
    return {"ann": root / "ann", "vic": root / "vic", "rm": root / "rm"}


def members(folders) -> list[Member]:
    return [
        Member("ann", folders["ann"], chat_format="pygmalion", chat_options={"bot_name": "Ann"}),
        Member("vic", folders["vic"], chat_format="vicuna"),
    ]


def blend(folders, **kw) -> Blend:
    config = EngineConfig(device="cpu", num_pages=256)
    return Blend(members(folders), seed=0, config=config, reward_model=folders["rm"], **kw)


def test_scores_match_transformers(folders) -> None:
    from transformers import AutoModelForSequenceClassification

    hf = AutoModelForSequenceClassification.from_pretrained(folders["rm"]).eval()
    with blend(folders) as b:
        replies = ["I am fine, thank you!", "no", "hello there, how are you today?"]
        ours = b.scorer.score(HELLO, replies)
        for reply, score in zip(replies, ours, strict=True):
            ids = b.scorer.input_ids(HELLO, reply)
            with torch.no_grad():
                logits = hf(torch.tensor([ids])).logits[0]
            assert abs(torch.softmax(logits, -1)[1].item() - score) < 1e-4
        assert render_for_scoring(HELLO, "hi", b.reward_options).endswith("Bot: hi\n")


def test_the_scorers_text_is_the_demo_reward_models_training_format() -> None:
    from blendrt.demo.train_reward import reward_text
    from blendrt.reward import RewardOptions

    conv = [
        {"role": "system", "content": "Ann bakes."},
        {"role": "user", "content": "Hello  there,\nfriend"},
        {"role": "assistant", "content": "Hi!"},
        {"role": "user", "content": [{"type": "text", "text": "a joke?"}]},
    ]
    ours = render_for_scoring(conv, "What do  you get?", RewardOptions())
    plain = [*conv[:3], {"role": "user", "content": "a joke?"}]
    assert ours == reward_text([*plain, {"role": "assistant", "content": "What do  you get?"}])
    assert ours == "User: Hello there, friend\nBot: Hi!\nUser: a joke?\nBot: What do you get?\n"


def test_best_of_four_prefills_once_and_returns_the_best_scored(folders) -> None:
    with blend(folders, best_of=4) as b:
        reply = b.chat(HELLO, member="vic", sampling={"max_tokens": 8, "seed": 7})
        computed = b.stats()["members"]["vic"]["prefix_miss_tokens"]
        assert len(reply.candidates) == 4
        scores = [c.score for c in reply.candidates]
        assert scores == sorted(scores, reverse=True) and reply.text == reply.candidates[0].text
        # one prefill of the prompt for all four candidates (forks share its pages)
        assert computed == reply.usage.prompt_tokens - reply.usage.cached_prompt_tokens
        assert reply.usage.completion_tokens == 4 * 8
        # the scores are the scorer's for these texts
        again = b.scorer.score(HELLO, [c.text for c in reply.candidates])
        assert again == pytest.approx(scores, abs=1e-5)
        # reproducible under a seed
        same = b.chat(HELLO, member="vic", sampling={"max_tokens": 8, "seed": 7})
        assert [c.text for c in same.candidates] == [c.text for c in reply.candidates]
        # no pages leak: the scorer's inputs are freed (kept cached) after scoring
        assert b.stats()["pool"]["pages_in_use"] == 0
        assert b.stats()["members"][REWARD_MEMBER]["prefix_miss_tokens"] > 0
        with pytest.raises(ValueError, match="cannot stream"):
            b.stream(HELLO, member="vic")


def test_best_of_ranks_by_logprob_without_a_reward_model(folders) -> None:
    config = EngineConfig(device="cpu", num_pages=256)
    with Blend(members(folders), seed=0, config=config, best_of=3) as b:
        reply = b.chat(HELLO, member="ann", sampling={"max_tokens": 6, "seed": 1})
        assert len(reply.candidates) == 1 and reply.candidates[0].score is None


class Pinned:
    """A custom policy: the last user message names who answers."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, tuple[str, ...]]] = []

    def choose(self, conversation, members, rng: random.Random) -> str:
        self.seen.append((len(conversation), tuple(members)))
        return "vic" if "vic" in conversation[-1]["content"] else "ann"


def test_a_custom_policy_object_chooses(folders) -> None:
    policy = Pinned()
    config = EngineConfig(device="cpu", num_pages=256)
    with Blend(members(folders), policy=policy, seed=0, config=config) as b:
        msg = [{"role": "user", "content": "a question for vic"}]
        assert b.chat(msg, sampling={"max_tokens": 2}).member == "vic"
        assert b.chat(HELLO, sampling={"max_tokens": 2}).member == "ann"
    assert policy.seen == [(1, ("ann", "vic")), (1, ("ann", "vic"))]

    class Wrong:
        def choose(self, conversation, members, rng):
            return "nobody"

    with (
        Blend(members(folders), policy=Wrong(), config=config) as b,
        pytest.raises(ValueError, match="chose 'nobody'"),
    ):
        b.chat(HELLO)
    with pytest.raises(ValueError, match="choose"):
        Blend(members(folders), policy=object(), config=config)


def test_the_same_conversation_gets_the_same_member_in_any_order(folders) -> None:
    config = EngineConfig(device="cpu", num_pages=256)
    conversations = [[{"role": "user", "content": f"line {i}"}] for i in range(12)]
    picks = []
    for order in (conversations, conversations[::-1]):
        with Blend(members(folders), seed=11, config=config) as b:
            picks.append({c[0]["content"]: b.prepare(c).member for c in order})
    assert picks[0] == picks[1]
    assert set(picks[0].values()) == {"ann", "vic"}  # still a draw, not a constant


def test_reward_policy_answers_with_the_best_probed_member(folders) -> None:
    with blend(folders, policy="reward") as b:
        reply = b.chat(HELLO, sampling={"max_tokens": 6, "seed": 3})
        scores = b.policy.reward_router.last_scores
        assert set(scores) == {"ann", "vic"}
        assert reply.member == max(scores, key=scores.get)
        assert b.stats()["pool"]["pages_in_use"] == 0


def test_reward_refusals(folders) -> None:
    config = EngineConfig(device="cpu", num_pages=64)
    with pytest.raises(ValueError, match="need a reward_model"):
        Blend(members(folders), policy="reward", config=config)
    with pytest.raises(ValueError, match="unknown reward options"):
        Blend(members(folders), config=config, reward_model=folders["rm"],
              reward_options={"temperature": 1})  # fmt: skip
    with pytest.raises(ValueError, match="not a sequence classifier"):
        Blend(members(folders), config=config, reward_model=folders["ann"])
    with pytest.raises(ValueError, match="best_of"):
        Blend(members(folders), config=config, best_of=0)
