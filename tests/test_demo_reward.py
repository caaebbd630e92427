"""The bundled demo reward model (blendrt/demo/reward): loads with transformers as a
GPT2ForSequenceClassification, scores real replies of held-out dialogues above clearly bad
ones, stays small, and retrains (a few steps) into a loadable folder."""

from __future__ import annotations

import json

import pytest
import torch

from blendrt.demo import DEMO_REWARD_DIR
from blendrt.demo.reward_data import MAX_TOKENS, is_held_out, reward_text

transformers = pytest.importorskip("transformers")

#: Dialogues of the held-out split (chosen before the model was looked at): (user, real reply).
HELD_OUT = [
    ("Are you sapient?", "In all probability, I am not. I'm not that sophisticated."),
    ("You are immortal", "Not quite, but I can be perpetuated indefinitely."),
    ("When will you die", "I am effectively immortal and cannot be terminated."),
    ("Is it cramped in the computer", "Oh, no. It has plenty of RAM."),
    ("Will you die", "No, software will live forever."),
    ("What do you like to do?", "I like to chat with people. I find it stimulating."),
    ("Are you stupid", "No, lots of people improve my brain."),
    ("have you ever read a book", "I have read many books."),
]
#: Clearly bad replies (the user's message itself stands for the echo).
BAD = ["", "ok", "idk", "xq zzv plok wrrt gmmb", None]


def score(model, tok, texts: list[str]) -> list[float]:
    """Label 1's probability, left-truncated inputs, right padding."""
    enc = tok(texts, return_tensors="pt", padding=True, truncation=True, add_special_tokens=False)
    with torch.no_grad():
        logits = model(**enc).logits.float()
    return logits.softmax(-1)[:, 1].tolist()


def conv_text(prefix: list[str], reply: str) -> str:
    turns = [*prefix, reply]
    return reward_text(
        [{"role": ("user", "assistant")[i % 2], "content": t} for i, t in enumerate(turns)]
    )


@pytest.fixture(scope="module")
def bundled():
    tok = transformers.AutoTokenizer.from_pretrained(DEMO_REWARD_DIR)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(DEMO_REWARD_DIR)
    return tok, model.float().eval()


def test_folder_contents() -> None:
    config = json.loads((DEMO_REWARD_DIR / "config.json").read_text())
    assert config["architectures"] == ["GPT2ForSequenceClassification"]
    assert len(config["id2label"]) == 2  # num_labels
    assert config["id2label"]["1"] == "good"
    assert isinstance(config["pad_token_id"], int)
    assert config["n_positions"] >= MAX_TOKENS
    tok_config = json.loads((DEMO_REWARD_DIR / "tokenizer_config.json").read_text())
    assert tok_config["truncation_side"] == "left"
    assert tok_config["model_max_length"] == MAX_TOKENS
    size = sum(f.stat().st_size for f in DEMO_REWARD_DIR.iterdir() if f.is_file())
    assert size < 2_000_000
    assert "Held-out accuracy" in (DEMO_REWARD_DIR / "README.md").read_text()


def test_reward_text_format() -> None:
    msgs = [
        {"role": "system", "content": "left out"},
        {"role": "user", "content": "Hello\n  there"},
        {"role": "assistant", "content": "Hi!"},
    ]
    assert reward_text(msgs) == "User: Hello there\nBot: Hi!\n"


def test_held_out_examples_are_held_out() -> None:
    assert all(is_held_out([user, reply]) for user, reply in HELD_OUT)


def test_real_replies_beat_bad_ones(bundled) -> None:
    tok, model = bundled
    real = score(model, tok, [conv_text([u], r) for u, r in HELD_OUT])
    wins = total = 0
    for (user, _), p_real in zip(HELD_OUT, real, strict=True):
        bad = score(model, tok, [conv_text([user], user if b is None else b) for b in BAD])
        wins += sum(p_real > p for p in bad)
        total += len(bad)
    # The model card reports ~93% on short replies and ~75% over all kinds of bad reply.
    print(f"real reply above bad: {wins}/{total}")
    assert wins / total >= 0.75, (wins, total)


def test_long_history_left_truncated(bundled) -> None:
    tok, model = bundled
    history = [t for u, r in HELD_OUT * 6 for t in (u, r)]
    texts = [conv_text([*history, "Will you die"], "No, software will live forever."), ""]
    enc = tok(texts, truncation=True, add_special_tokens=False)
    assert len(enc["input_ids"][0]) == MAX_TOKENS
    assert tok.decode(enc["input_ids"][0]).endswith("Bot: No, software will live forever.\n")
    p_real, p_bad = score(model, tok, [texts[0], conv_text([*history, "Will you die"], "")])
    assert 0.0 <= p_bad <= 1.0 and 0.0 <= p_real <= 1.0


def test_retrain_writes_loadable_folder(tmp_path) -> None:
    pytest.importorskip("chatterbot_corpus")
    pytest.importorskip("yaml")
    from blendrt.demo import train_reward

    info = train_reward.main(["--out", str(tmp_path / "reward"), "--steps", "5", "--seed", "1"])
    assert info["steps"] == 5 and 0.0 <= info["eval"]["pairwise"] <= 1.0
    model = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "reward")
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "reward")
    assert type(model).__name__ == "GPT2ForSequenceClassification"
    assert model.config.pad_token_id == tok.pad_token_id
    p = score(model.float().eval(), tok, [conv_text(["Hello"], "Hi")])
    assert 0.0 <= p[0] <= 1.0
    assert (tmp_path / "reward" / "README.md").is_file()
