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
    """One candidate reply. A request asking for several (n, best_of) is a group: the first
    candidate (index 0) is scheduled alone; when its prompt is computed the others are
    forked from it, sharing the prompt's pages. Callers know the group by its first
    candidate's id (`group_id`)."""

    request_id: int
    member: str
    prompt_token_ids: list[int]
    sampling: SamplingParams
    index: int = 0  # candidate index within the group
    group_id: int = -1  # -1: request_id (the first candidate)
    output_token_ids: list[int] = field(default_factory=list)
    num_computed_tokens: int = 0  # tokens whose KV is in the pool
    num_cached_tokens: int = 0  # prompt tokens served by the prefix cache at first admission
    num_preemptions: int = 0
    cumulative_logprob: float = 0.0  # of the output tokens, under the raw model
    # Candidates to fork from this one once its prompt is computed (first candidate only).
    pending_forks: list[Request] = field(default_factory=list, repr=False)
    score: bool = False  # score the prompt (log-probabilities at every token), sample nothing
    classify: bool = False  # a classifier member's scores at the last token, sample nothing
    # A scoring request's log-softmax rows so far: {first position: [n, V]} (recomputed
    # chunks after a preemption overwrite theirs).
    score_rows: dict[int, torch.Tensor] = field(default_factory=dict, repr=False)
    generator: torch.Generator | None = None  # set when sampling.seed is given
    arrival_time: float = field(default_factory=time.perf_counter)
    first_token_time: float | None = None
    finish_reason: str | None = None  # "stop" | "length" | "abort"

    def __post_init__(self) -> None:
        if self.group_id < 0:
            self.group_id = self.request_id
        if self.sampling.seed is not None:
            # NOTE: candidate i draws from its own stream of the seed, so a seeded request's
            # candidates are reproducible and differ from one another.
            seed = (self.sampling.seed + self.index * 0x9E3779B97F4A7C15) % (1 << 64)
            self.generator = torch.Generator().manual_seed(seed)

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
class TokenLogprob:
    """A generated token's log-probability under the model, and the top alternatives."""

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()  # (token id, logprob), most likely first


@dataclass(frozen=True)
class RequestOutput:
    """What one step produced for one candidate of a request (streamed to its caller)."""

    request_id: int  # the request's (group's) id
    new_token_ids: tuple[int, ...]
    delta_text: str
    finish_reason: str | None  # this candidate's
    num_prompt_tokens: int
    num_cached_tokens: int
    num_output_tokens: int
    # Set once finished: the ids of the reply proper (no stop token, nothing past a stop
    # string), which a later turn can render verbatim for the same member.
    reply_token_ids: tuple[int, ...] | None = None
    error: str | None = None
    index: int = 0  # candidate index
    done: bool = False  # every candidate of the request has finished
    logprobs: tuple[TokenLogprob, ...] = ()  # of new_token_ids, when asked for
    cumulative_logprob: float = 0.0
    prompt_logprobs: torch.Tensor | None = None  # a scoring request's [N, V] log-softmax
    scores: torch.Tensor | None = None  # a classify request's [num_labels] float32 scores

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None
