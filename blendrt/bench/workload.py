"""The benchmark workload: K conversations x T turns over a blend, fully determined by a seed.

Each conversation has a persona (several conversations share each persona, as on a chat
platform); each turn is a user message answered by the member the blend picks for that turn
(drawn once here, so every system serves exactly the same turns). Replies have a fixed length
(max_tokens with EOS ignored) so systems are comparable; the text of a conversation's earlier
replies is whatever the serving system generated.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

WORDS = tuple(
    "the a you I we it is are was do like love music movies books food games weather today "
    "tomorrow friends family work school travel city sea mountain coffee tea dog cat story "
    "joke question answer think feel know want need happy sad funny strange good great "
    "small big old new red blue green morning night weekend holiday song dance".split()
)


@dataclass(frozen=True)
class Conversation:
    persona: str
    user_messages: tuple[str, ...]  # one per turn
    members: tuple[str, ...]  # who answers each turn
    arrival: float  # seconds after the start


@dataclass(frozen=True)
class Workload:
    conversations: tuple[Conversation, ...]
    max_tokens: int  # reply length, EOS ignored
    member_names: tuple[str, ...]
    weights: tuple[float, ...]
    seed: int
    extra: dict = field(default_factory=dict)

    @property
    def num_turns(self) -> int:
        return len(self.conversations[0].user_messages)


def _sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + "."


def make_workload(
    member_names: list[str],
    *,
    num_conversations: int = 32,
    num_turns: int = 8,
    weights: list[float] | None = None,
    num_personas: int = 4,
    persona_words: int = 120,
    user_words: int = 12,
    max_tokens: int = 16,
    arrival_rate: float | None = None,  # conversations per second (Poisson); None: all at 0
    seed: int = 0,
) -> Workload:
    if num_conversations <= 0 or num_turns <= 0 or num_personas <= 0 or max_tokens <= 0:
        raise ValueError("conversations, turns, personas and max_tokens must be positive")
    weights = weights or [1.0] * len(member_names)
    if len(weights) != len(member_names):
        raise ValueError(f"{len(weights)} weights for {len(member_names)} members")
    rng = random.Random(seed)
    personas = [
        " ".join(_sentence(rng, 12) for _ in range(max(1, persona_words // 12)))
        for _ in range(num_personas)
    ]
    conversations, clock = [], 0.0
    for i in range(num_conversations):
        if arrival_rate:
            clock += rng.expovariate(arrival_rate)
        conversations.append(
            Conversation(
                persona=personas[i % num_personas],
                user_messages=tuple(_sentence(rng, user_words) for _ in range(num_turns)),
                members=tuple(rng.choices(member_names, weights=weights, k=num_turns)),
                arrival=clock,
            )
        )
    return Workload(tuple(conversations), max_tokens, tuple(member_names), tuple(weights), seed)


def messages_for_turn(conv: Conversation, turn: int, replies: list[tuple[str, str]]) -> list[dict]:
    """The history a system sends for `turn`: persona, then alternating user / assistant
    messages; replies[i] = (member, text) of turn i."""
    messages: list[dict] = [{"role": "system", "content": conv.persona}]
    for i in range(turn):
        messages.append({"role": "user", "content": conv.user_messages[i]})
        member, text = replies[i]
        messages.append({"role": "assistant", "content": text, "member": member})
    messages.append({"role": "user", "content": conv.user_messages[turn]})
    return messages
