"""Reward-model scoring of replies: Chai's production loop (best-of-N ranked by a sequence
classifier) and the reward router (each member probed with a short reply, the best-scored
member answers).

The scorer is one more model in the engine (`REWARD_MEMBER`), sharing the pool: its inputs
run as classify requests, batched together, their pages cached like any prompt's (a repeated
input, e.g. the same history scored again, is not recomputed).

Input format (Chai's reward model card, and blendrt's demo reward model,
blendrt/demo/train_reward.py): the conversation as text, one line per user or assistant
message, "User: {text}" / "Bot: {text}" (system messages left out), the candidate as the
last "Bot:" line, tokenized with the scorer's tokenizer and truncated from the LEFT to
`max_tokens` (256) tokens. The score is the
probability of `label` (1: a good reply) for a classifier with several labels, the raw
logit for a one-label regressor.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch

REWARD_MEMBER = "<reward>"  # the scorer's name in the engine (not a member name users give)


@dataclass(frozen=True)
class RewardOptions:
    max_tokens: int = 256  # inputs keep their last max_tokens tokens (left truncation)
    user_prefix: str = "User: "
    bot_prefix: str = "Bot: "
    label: int = 1  # the label whose probability is the score (classifiers)
    probe_tokens: int = 16  # the reward policy's short candidate per member

    def __post_init__(self) -> None:
        for name in ("max_tokens", "probe_tokens"):
            value = getattr(self, name)
            if type(value) is not int or not 1 <= value <= 1 << 16:
                raise ValueError(f"reward option {name} must be an int in [1, 65536]")
        if type(self.label) is not int or self.label < 0:
            raise ValueError(f"reward option label must be an int >= 0, got {self.label!r}")
        for name in ("user_prefix", "bot_prefix"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"reward option {name} must be a string")

    @classmethod
    def from_mapping(cls, options: Mapping[str, Any] | None) -> RewardOptions:
        known = {f.name for f in fields(cls)}
        unknown = set(options or {}) - known
        if unknown:
            raise ValueError(
                f"unknown reward options {sorted(unknown)}; known: {', '.join(sorted(known))}"
            )
        return cls(**dict(options or {}))


def render_for_scoring(
    conversation: Sequence[Mapping[str, Any]], reply: str, options: RewardOptions
) -> str:
    """The scorer's text for `reply` as the next assistant turn of `conversation`: user and
    assistant messages as prefixed lines (each message's whitespace collapsed, so it stays
    one line), other roles left out, the reply last."""
    prefixes = {"user": options.user_prefix, "assistant": options.bot_prefix}
    lines = []
    for message in [*conversation, {"role": "assistant", "content": reply}]:
        prefix = prefixes.get(message.get("role"))
        if prefix is None:
            continue
        content = message.get("content")
        text = content if isinstance(content, str) else _text_of(content)
        lines.append(f"{prefix}{' '.join(text.split())}\n")
    return "".join(lines)


def _text_of(content: Any) -> str:
    """Text parts of an OpenAI-style content list (other parts have no text to score)."""
    if not isinstance(content, list):
        return ""
    return "".join(p.get("text", "") for p in content if isinstance(p, dict))


class RewardScorer:
    """Scores candidate replies with the classifier member; `classify` runs token
    sequences through the engine (EngineLoop.classify bound to REWARD_MEMBER)."""

    def __init__(
        self,
        tokenizer: Any,
        num_labels: int,
        pad_token_id: int | None,
        classify: Callable[[list[list[int]]], list[torch.Tensor]],
        options: RewardOptions,
    ) -> None:
        if num_labels > 1 and options.label >= num_labels:
            raise ValueError(
                f"reward option label {options.label} is not one of the scorer's "
                f"{num_labels} labels"
            )
        self.tokenizer = tokenizer
        self.num_labels = num_labels
        self.pad_token_id = pad_token_id
        self.classify = classify
        self.options = options

    def input_ids(self, conversation: Sequence[Mapping[str, Any]], reply: str) -> list[int]:
        text = render_for_scoring(conversation, reply, self.options)
        ids = list(self.tokenizer.encode(text, add_special_tokens=False))
        ids = ids[-self.options.max_tokens :]  # left truncation
        while len(ids) > 1 and ids[-1] == self.pad_token_id:  # the last non-pad token scores
            ids.pop()
        return ids or [0 if self.pad_token_id is None else self.pad_token_id]

    def score(
        self, conversation: Sequence[Mapping[str, Any]], replies: Sequence[str]
    ) -> list[float]:
        """One score per reply (higher is better), all scored in one batch."""
        rows = self.classify([self.input_ids(conversation, r) for r in replies])
        return [self.value(row) for row in rows]

    def value(self, row: torch.Tensor) -> float:
        if self.num_labels == 1:
            return float(row[0])
        return float(torch.softmax(row.float(), dim=-1)[self.options.label])


class RewardRouter:
    """The "reward" member policy: each eligible member writes a short probe reply (in
    parallel, from its own prompt: those pages stay cached for the real reply), the scorer
    scores the probes, the best-scored member answers. A cheap stand-in for a learned
    router; `probe(member, conversation, seed) -> text` is supplied by the Blend."""

    def __init__(
        self, scorer: RewardScorer, probe: Callable[[Sequence[str], Sequence, int], list[str]]
    ) -> None:
        self.scorer = scorer
        self.probe = probe
        self.last_scores: dict[str, float] = {}  # {member: its probe's score}, last choice

    def choose(self, conversation: Sequence, members: Sequence[str], rng: random.Random) -> str:
        if len(members) == 1:
            return members[0]
        texts = self.probe(members, conversation, rng.getrandbits(31))
        scores = self.scorer.score(conversation, texts)
        self.last_scores = dict(zip(members, scores, strict=True))
        return max(members, key=lambda m: self.last_scores[m])
