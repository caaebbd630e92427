"""A blend's turn: who may answer (Member), what was prepared (PreparedTurn), what came back
(Reply, Candidate, Usage), and the one loop that folds the engine's outputs into a Reply,
used by both `Blend.chat` and `BlendStream`."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from blendrt.engine.request import RequestOutput, TokenLogprob
from blendrt.ops.quant import QuantScheme
from blendrt.sampling import SamplingParams

#: What `sampling=` may be: explicit parameters, {field: value} over the member's defaults,
#: or None (the member's defaults).
SamplingSpec = SamplingParams | Mapping[str, Any] | None
MAX_REMEMBERED_REPLIES = 65536


class EngineError(RuntimeError):
    """The engine failed a request (a member's forward or sampling raised); the message
    says which. Not the caller's fault: the server answers 500."""


@dataclass(frozen=True)
class Member:
    name: str
    path: str | Path
    weight: float = 1.0
    chat_format: str | None = None  # a built-in name; None: the folder's chat_template
    chat_options: dict[str, Any] = field(default_factory=dict)  # e.g. {"bot_name": "Ann"}
    # Weight-only quantization at load: "int8", "int4", "int4-g64-zp", ... (see
    # blendrt.ops.quant.QuantScheme); None: full precision (a GPTQ/AWQ folder loads as is).
    quantization: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name or self.name == "blend":
            raise ValueError(
                f"member name must be a non-empty string other than 'blend', got {self.name!r}"
            )
        if self.weight < 0:
            raise ValueError(f"member {self.name!r}: weight must be >= 0, got {self.weight}")
        if self.quantization is not None:
            try:
                QuantScheme.parse(self.quantization)
            except (ValueError, AttributeError) as e:
                raise ValueError(f"member {self.name!r}: {e}") from None


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    cached_prompt_tokens: int
    completion_tokens: int  # every candidate's, when several were sampled
    truncated_messages: int = 0  # oldest messages dropped to fit the member's window
    truncated_tokens: int = 0  # prompt tokens the history lost by it


@dataclass(frozen=True)
class Candidate:
    """One sampled reply of a turn."""

    text: str
    token_ids: list[int]  # the reply proper (no stop token)
    finish_reason: str
    cumulative_logprob: float  # of every generated token, under the raw model
    logprobs: tuple[TokenLogprob, ...] = ()  # per generated token, when asked for
    score: float | None = None  # the reward model's, when the blend ranks by one


@dataclass(frozen=True)
class Reply:
    text: str
    member: str
    token_ids: list[int]  # the reply's ids (no stop token): pass back in the message to reuse
    finish_reason: str
    usage: Usage
    time_to_first_token: float  # seconds
    total_time: float  # seconds
    # Every candidate returned (n of them; with best_of, the n most likely; with a reward
    # model, all best_of of them, best-scored first); `text` is candidates[0]'s.
    candidates: tuple[Candidate, ...] = ()


@dataclass(frozen=True)
class PreparedTurn:
    member: str
    prompt_ids: list[int]
    sampling: SamplingParams  # max_tokens resolved
    num_truncated_messages: int = 0
    num_truncated_tokens: int = 0
    chat: bool = True  # a chat reply (its leading spaces belong to the format) or raw text
    # Candidates ranked by the blend's reward model (all are collected, then scored against
    # this conversation), not by their log-probability.
    rank_by_reward: bool = False
    conversation: tuple[Mapping[str, Any], ...] = ()


class ReplyMemory:
    """{(member, reply text): the ids it generated}: lets stateless callers, who send back
    only text, hit the member's cache on its own replies. Thread-safe, bounded (LRU)."""

    def __init__(self, capacity: int = MAX_REMEMBERED_REPLIES) -> None:
        self._ids: OrderedDict[tuple[str, str], tuple[int, ...]] = OrderedDict()
        self._capacity = capacity
        self._lock = threading.Lock()

    def remember(self, member: str, text: str, token_ids: Sequence[int]) -> None:
        with self._lock:
            self._ids[(member, text)] = tuple(token_ids)
            self._ids.move_to_end((member, text))
            while len(self._ids) > self._capacity:
                self._ids.popitem(last=False)

    def recall(self, member: str, text: str) -> tuple[int, ...] | None:
        with self._lock:
            return self._ids.get((member, text))


class TurnCollector:
    """Folds one turn's RequestOutputs into its Reply: text per candidate (a chat reply's
    leading spaces stripped), first-token time, usage; remembers the replies' ids."""

    def __init__(self, turn: PreparedTurn, memory: ReplyMemory) -> None:
        self.turn = turn
        self.memory = memory
        self.start = time.perf_counter()
        self.first_token: float | None = None
        n = turn.sampling.num_candidates
        self._parts: list[list[str]] = [[] for _ in range(n)]
        self._logprobs: list[list[TokenLogprob]] = [[] for _ in range(n)]
        self._finals: list[RequestOutput | None] = [None] * n
        self.reply: Reply | None = None

    def add(self, out: RequestOutput) -> str:
        """Takes one output; returns the new text it adds to its candidate. Raises
        EngineError for an output that carries an error."""
        if out.error:
            raise EngineError(out.error)
        if self.first_token is None and out.new_token_ids:
            self.first_token = time.perf_counter()
        parts = self._parts[out.index]
        delta = out.delta_text if parts or not self.turn.chat else out.delta_text.lstrip(" ")
        if delta:
            parts.append(delta)
        self._logprobs[out.index] += out.logprobs
        if out.finished:
            self._finals[out.index] = out
        if out.done:
            self.reply = self._reply()
        return delta

    def _reply(self) -> Reply:
        turn, end = self.turn, time.perf_counter()
        candidates = []
        for i, final in enumerate(self._finals):
            if final is None:  # aborted before it was forked
                continue
            text = "".join(self._parts[i])
            ids = list(final.reply_token_ids or ())
            candidates.append(
                Candidate(
                    text,
                    ids,
                    final.finish_reason or "abort",
                    final.cumulative_logprob,
                    tuple(self._logprobs[i]),
                )
            )
        generated = sum(f.num_output_tokens for f in self._finals if f is not None)
        # A reward-ranked turn keeps every candidate (Blend.rank scores and orders them all);
        # otherwise best_of keeps the n most likely.
        if not turn.rank_by_reward:
            if turn.sampling.best_of and turn.sampling.best_of > turn.sampling.n:
                candidates.sort(key=lambda c: -c.cumulative_logprob)
            candidates = candidates[: turn.sampling.n]
        for c in candidates:
            self.memory.remember(turn.member, c.text, c.token_ids)
        first = next(f for f in self._finals if f is not None)
        best = candidates[0]
        return Reply(
            text=best.text,
            member=turn.member,
            token_ids=best.token_ids,
            finish_reason=best.finish_reason,
            usage=Usage(
                first.num_prompt_tokens,
                first.num_cached_tokens,
                generated,
                turn.num_truncated_messages,
                turn.num_truncated_tokens,
            ),
            time_to_first_token=(self.first_token or end) - self.start,
            total_time=end - self.start,
            candidates=tuple(candidates),
        )
