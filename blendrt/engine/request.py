"""A request's state: plain counters over its token list, no phase flags.

all_token_ids = prompt_token_ids + output_token_ids
|------ num_computed_tokens ------|-- to compute --|
prefill while num_computed_tokens < num_prompt_tokens; a step whose tokens reach
num_tokens yields logits for the next token, which is sampled and appended.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from blendrt.sampling import SamplingParams


@dataclass
class Request:
    request_id: int
    member: str
    prompt_token_ids: list[int]
    sampling: SamplingParams
    output_token_ids: list[int] = field(default_factory=list)
    num_computed_tokens: int = 0  # tokens whose KV is in the pool
    num_cached_tokens: int = 0  # prompt tokens served by the prefix cache at first admission
    num_preemptions: int = 0
    generator: torch.Generator | None = None  # set when sampling.seed is given
    arrival_time: float = field(default_factory=time.perf_counter)
    first_token_time: float | None = None
    finish_reason: str | None = None  # "stop" | "length" | "abort"

    def __post_init__(self) -> None:
        if self.sampling.seed is not None:
            self.generator = torch.Generator().manual_seed(self.sampling.seed)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    @property
    def all_token_ids(self) -> list[int]:
        return self.prompt_token_ids + self.output_token_ids

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_token_ids)

    @property
    def is_finished(self) -> bool:
        return self.finish_reason is not None


@dataclass(frozen=True)
class RequestOutput:
    """What one step produced for one request (streamed to its caller)."""

    request_id: int
    new_token_ids: tuple[int, ...]
    delta_text: str
    finish_reason: str | None
    num_prompt_tokens: int
    num_cached_tokens: int
    num_output_tokens: int
    # Set once finished: the ids of the reply proper (no stop token, nothing past a stop
    # string), which a later turn can render verbatim for the same member.
    reply_token_ids: tuple[int, ...] | None = None
    error: str | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None
