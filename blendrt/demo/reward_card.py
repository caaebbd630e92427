"""The demo reward model's card (README.md), written by `blendrt.demo.train_reward`."""

from __future__ import annotations

import json
from typing import Any

from blendrt.demo.data import CORPUS_ATTRIBUTION, CORPUS_LICENSE, DEFAULT_SKIP
from blendrt.demo.reward_data import (
    FILLERS,
    HELD_OUT_MOD,
    HISTORY_P,
    MAX_HISTORY,
    MAX_TOKENS,
    NEGATIVE_KINDS,
    reward_text,
)


def model_card(info: dict[str, Any], *, lr: float, batch: int, pair_weight: float) -> str:
    """The reward folder's README.md: what it was trained on, its input format, how to
    reproduce it, its held-out accuracy."""
    ev = info["eval"]
    kinds = "\n".join(
        f"| {k} | {ev[f'accuracy_{k}']:.1%} | "
        + (f"{ev[f'pairwise_{k}']:.1%} |" if k != "real" else "- |")
        for k in ("real", *NEGATIVE_KINDS)
    )
    skipped = ", ".join(f"`{s}.yml`" for s in DEFAULT_SKIP)
    example = reward_text(
        [
            {"role": "user", "content": "Hello"},
            {"role": "assistant", "content": "Hi! How are you?"},
            {"role": "user", "content": "Tell me a joke"},
            {"role": "assistant", "content": "What do you get when you cross a cow and a duck?"},
        ]
    )
    example = "\n".join(f"    {line}" for line in example.splitlines())
    if info["embed_from"]:
        tokenizer = (
            f"the byte-level BPE tokenizer of demo member `{info['embed_from']}` (`tokenizer.json`)"
        )
        init = (
            f" token embeddings initialized from `{info['embed_from']}`'s input embeddings "
            f"reduced to {info['model']['n_embd']} dimensions by PCA, the rest at random;"
        )
    else:
        tokenizer, init = "its own GPT-2 style byte-level BPE tokenizer (`tokenizer.json`)", ""
    return f"""# blendrt demo reward model

A tiny `GPT2ForSequenceClassification` ({info["params"] / 1e6:.2f}M parameters, float16
weights, 2 labels: 1 = "good reply", 0 = "bad reply") with {tokenizer} of {info["vocab"]}
tokens, trained in seconds on the CPU to score a candidate chat reply in its conversation: the
reward model of blendrt's best-of-N demo. A weak toy (see the held-out figures): it mostly
tells a real reply from an empty or noncommittal one, often from an echoed or garbled one, and
barely from an off-topic one.

## Input format

The conversation as text, one line per message (user and assistant messages only, each
message's whitespace collapsed to single spaces), the candidate reply as the last `Bot:` line:

{example}

i.e. `User: {{text}}\\n` and `Bot: {{text}}\\n` (`blendrt.demo.train_reward.reward_text`),
tokenized with no special tokens and truncated from the LEFT to {MAX_TOKENS} tokens (the
tokenizer's `truncation_side` is "left", `model_max_length` {MAX_TOKENS}). The score is the
output at the last token (batches are right-padded with `<|padding|>`, `pad_token_id`
{info["pad_token_id"]}): label 1's probability, `softmax(logits)[1]`.

## Training signal

Chai's reward models learn from "retry" and "end of conversation": a reply that makes the
user retry it or leave is bad. Here the good replies are the real next replies of the
chatterbot-corpus dialogues, and each is paired (same conversation prefix) with one reply
that would end the conversation, the kinds in turn:

* `off_topic`: a real reply from another dialogue (fluent, beside the point);
* `short`: an empty or noncommittal reply ({", ".join(repr(f) for f in FILLERS)});
* `echo`: the user's last message repeated back;
* `mangled`: the real reply with its words shuffled, its letters scrambled, one of its words
  looped, or random letters.

{HISTORY_P:.0%} of the prefixes follow 1-{MAX_HISTORY} random other dialogues, as in a long,
mixed blend history.

## Training

`python -m blendrt.demo.train_reward --seed {info["seed"]}`: {info["steps"]} AdamW steps (lr
{lr}, cosine schedule) of {batch} inputs ({batch // 2} real/bad pairs, new bad replies and
histories every pass over the dialogues), loss cross-entropy + {pair_weight} x the pairwise
loss -log sigmoid(r_real - r_bad) of the reward r = logit(good) - logit(bad);{init}
{info["train_examples"]} training inputs; {info["seconds"]:.0f} s on 2 CPU cores. Final
training loss (EMA) {info["train_loss"]:.3f}. Model config: `{json.dumps(info["model"])}`,
{MAX_TOKENS} positions.

## Held-out accuracy

On {ev["n"]} inputs (half real replies, half bad) built from the dialogues whose first user
message hashes to 0 mod {HELD_OUT_MOD} (`zlib.crc32`, fixed whatever the seed; none of their
questions is trained on): accuracy {ev["accuracy"]:.1%} at a 0.5 threshold; the real reply
scores above its bad one in {ev["pairwise"]:.1%} of pairs.

| kind | accuracy | real reply scored higher |
|---|---|---|
{kinds}

## Data and licence

Trained on the English dialogues of {CORPUS_ATTRIBUTION} (`data/english/*.yml` but
{skipped}, duplicates removed). The corpus licence:

{CORPUS_LICENSE}"""
