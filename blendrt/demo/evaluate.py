"""Checks and model cards of demo members: loss over the corpus, greedy replies (with
transformers), and the README.md written beside each member's weights."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import torch

from blendrt.demo.data import (
    CORPUS_ATTRIBUTION,
    CORPUS_LICENSE,
    DEFAULT_SKIP,
    MAX_CONVS,
    Conversation,
    Renderer,
    to_messages,
)
from blendrt.tokenizer.chat_format import ChatFormat

LossFn = Callable[[torch.nn.Module, list[tuple[list[int], list[int]]]], torch.Tensor]


@torch.no_grad()
def corpus_loss(
    model: torch.nn.Module,
    render: Renderer,
    convs: list[Conversation],
    loss_fn: LossFn,
    max_len: int = 256,
) -> float:
    """Mean loss over the target tokens of every conversation on its own."""
    model.eval()
    items = [render(to_messages(c), max_len) for c in convs]
    total = count = 0.0
    for i in range(0, len(items), 64):
        batch = items[i : i + 64]
        n = sum(sum(t[1:]) for _, t in batch)
        total, count = total + loss_fn(model, batch).item() * n, count + n
    return total / count


@torch.no_grad()
def greedy_reply(
    model: torch.nn.Module, fmt: ChatFormat, messages: list[dict], max_new_tokens: int = 48
) -> tuple[str, list[int]]:
    """Greedy reply with transformers, cut at the format's stop tokens and strings; returns
    (text, generated ids less the stop token)."""
    from transformers import StoppingCriteria, StoppingCriteriaList

    prompt = fmt.render(messages)

    class StopText(StoppingCriteria):
        def __call__(self, ids: torch.Tensor, scores: Any, **kw: Any) -> torch.Tensor:
            text = fmt.tokenizer.decode(ids[0, len(prompt) :].tolist())
            return torch.tensor([any(s in text for s in fmt.stop_strings)])

    model.eval()
    out = model.generate(
        torch.tensor([prompt]),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=sorted(fmt.stop_token_ids),
        pad_token_id=0,
        stopping_criteria=StoppingCriteriaList([StopText()]),
    )
    new = [t for t in out[0, len(prompt) :].tolist() if t not in fmt.stop_token_ids]
    text = fmt.tokenizer.decode(new)
    for s in fmt.stop_strings:
        text = text.split(s)[0]
    return text.strip(), new


def model_card(spec: Any, info: dict[str, Any]) -> str:
    """README.md of a member folder."""
    samples = "\n".join(f"    You: {p}\n    {spec.persona_name}: {r}\n" for p, r in info["samples"])
    tokenizer = {
        "tokenizers": "GPT-2 style byte-level BPE tokenizer (`tokenizer.json`)",
        "sentencepiece": "sentencepiece BPE tokenizer with byte fallback (`tokenizer.model`)",
    }[info["tokenizer"]]
    skipped = ", ".join(f"`{s}.yml`" for s in DEFAULT_SKIP)
    return f"""# blendrt demo member `{spec.name}`

A tiny `{info["architecture"]}` ({info["params"] / 1e6:.2f}M parameters, float16 weights)
with its own {tokenizer} of {info["vocab"]} tokens, trained from scratch to chat in the
`{spec.chat_format}` format as "{spec.persona_name}", {spec.style}. A toy for trying blendrt
with nothing downloaded: it answers greetings and simple questions, and garbles longer replies.

## Training

`python -m blendrt.demo.train --seed {info["seed"]}`: {info["steps"]} AdamW steps (lr
{spec.lr}, cosine schedule) of {info["batch"]} sessions of 1-{MAX_CONVS} corpus conversations each,
rendered with blendrt's `{spec.chat_format}` chat format, loss on the reply tokens only;
{info["seconds"]:.0f} s on 2 CPU cores. Final training loss (EMA) {info["train_loss"]:.3f};
loss over the corpus conversations {info["corpus_loss"]:.3f}. Model config:
`{json.dumps(spec.model)}`.

## Greedy replies (each a new conversation)

{samples}
## Data and licence

Trained on the English dialogues of {CORPUS_ATTRIBUTION} (`data/english/*.yml` but
{skipped}, duplicates removed), plus a few persona lines written for this member. The corpus
licence:

{CORPUS_LICENSE}"""
