"""What a system run produces, and the summary statistics the report prints."""

from __future__ import annotations

import itertools
import statistics
from dataclasses import dataclass, field


@dataclass
class TurnRecord:
    conversation: int
    turn: int
    member: str
    switched: bool  # the member differs from the previous turn's
    prompt_tokens: int
    computed_prompt_tokens: int  # prompt tokens this system actually prefilled
    output_tokens: int
    submit_time: float  # seconds since the run started
    token_times: list[float] = field(default_factory=list)  # when each output token came

    @property
    def ttft(self) -> float:
        return self.token_times[0] - self.submit_time

    @property
    def itls(self) -> list[float]:
        t = self.token_times
        return [b - a for a, b in itertools.pairwise(t)]


@dataclass
class SystemResult:
    name: str
    turns: list[TurnRecord]
    wall_seconds: float
    peak_kv_bytes: int | None = None  # peak KV memory in use (pool pages or cache tensors)
    pool_bytes: int | None = None
    prefix_hit_rate: float | None = None
    num_preemptions: int | None = None
    max_concurrent_without_preemption: int | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def output_tokens(self) -> int:
        return sum(t.output_tokens for t in self.turns)

    @property
    def output_tokens_per_second(self) -> float:
        return self.output_tokens / self.wall_seconds

    def ttfts(self, turn: int | None = None, switched: bool | None = None) -> list[float]:
        return [
            t.ttft
            for t in self.turns
            if t.token_times
            and (turn is None or t.turn == turn)
            and (switched is None or t.switched == switched)
        ]

    def all_itls(self) -> list[float]:
        return [x for t in self.turns for x in t.itls]

    def computed_per_turn(self) -> list[float]:
        """Mean prompt tokens prefilled at each turn index."""
        by_turn: dict[int, list[int]] = {}
        for t in self.turns:
            by_turn.setdefault(t.turn, []).append(t.computed_prompt_tokens)
        return [statistics.mean(by_turn[i]) for i in sorted(by_turn)]


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)
