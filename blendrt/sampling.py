"""SamplingParams and the vectorised sampler.

The sampler turns one member's logits [B, V] into one token per row, applying per-row
penalties, temperature, top-k, top-p and min-p in one pass over the batch. A row with a seed
draws its randomness from its own generator, so its tokens do not depend on what else is in
the batch; the other rows share one draw.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    min_p: float = 0.0
    repetition_penalty: float = 1.0  # > 1 discourages tokens seen in prompt or output
    presence_penalty: float = 0.0  # OpenAI style, over output tokens
    frequency_penalty: float = 0.0
    max_tokens: int | None = 128  # None: until the member's window is full
    stop: tuple[str, ...] = ()  # stop strings: generation ends before them, never shown
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    seed: int | None = None
    # Filled in by the blend from the member's chat format: stops it implies.
    extra_stop: tuple[str, ...] = field(default=(), repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        object.__setattr__(self, "stop", tuple(self.stop))
        object.__setattr__(self, "stop_token_ids", tuple(self.stop_token_ids))
        checks = [
            (self.temperature >= 0, "temperature must be >= 0"),
            (0 < self.top_p <= 1, "top_p must be in (0, 1]"),
            (isinstance(self.top_k, int) and self.top_k >= 0, "top_k must be an int >= 0"),
            (0 <= self.min_p <= 1, "min_p must be in [0, 1]"),
            (self.repetition_penalty > 0, "repetition_penalty must be > 0"),
            (-2 <= self.presence_penalty <= 2, "presence_penalty must be in [-2, 2]"),
            (-2 <= self.frequency_penalty <= 2, "frequency_penalty must be in [-2, 2]"),
            (
                self.max_tokens is None
                or (isinstance(self.max_tokens, int) and self.max_tokens > 0),
                "max_tokens must be a positive int or None",
            ),
            (all(isinstance(s, str) and s for s in self.stop), "stop must hold non-empty strings"),
            (
                all(isinstance(t, int) and t >= 0 for t in self.stop_token_ids),
                "stop_token_ids must hold non-negative ints",
            ),
            (self.seed is None or isinstance(self.seed, int), "seed must be an int"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"{message}, got {self!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def all_stop_strings(self) -> tuple[str, ...]:
        return self.stop + self.extra_stop


@dataclass
class SamplingRow:
    """One row of a batch: its parameters, its tokens so far, its generator if seeded."""

    params: SamplingParams
    prompt_ids: Sequence[int]
    output_ids: Sequence[int]
    generator: torch.Generator | None = None


def _column(rows: list[SamplingRow], name: str, device: torch.device) -> torch.Tensor:
    return torch.tensor([getattr(r.params, name) for r in rows], device=device)[:, None]


def _token_counts(
    seqs: list[Sequence[int]], vocab: int, device: torch.device
) -> torch.Tensor:  # [B, V] counts of each token id in each sequence
    counts = torch.zeros(len(seqs), vocab, device=device)
    width = max(map(len, seqs), default=0)
    if width == 0:
        return counts
    ids = torch.full((len(seqs), width), vocab, dtype=torch.long)  # vocab = padding column
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.as_tensor(list(s), dtype=torch.long)
    padded = torch.zeros(len(seqs), vocab + 1, device=device)
    padded.scatter_add_(1, ids.to(device), torch.ones(ids.shape, device=device))
    return padded[:, :vocab]


def apply_penalties(logits: torch.Tensor, rows: list[SamplingRow]) -> torch.Tensor:
    device, vocab = logits.device, logits.shape[-1]
    if any(r.params.repetition_penalty != 1 for r in rows):
        seen = _token_counts([[*r.prompt_ids, *r.output_ids] for r in rows], vocab, device) > 0
        penalty = _column(rows, "repetition_penalty", device).float()
        scaled = torch.where(logits > 0, logits / penalty, logits * penalty)
        logits = torch.where(seen, scaled, logits)
    if any(r.params.presence_penalty or r.params.frequency_penalty for r in rows):
        counts = _token_counts([r.output_ids for r in rows], vocab, device)
        logits = logits - _column(rows, "frequency_penalty", device) * counts
        logits = logits - _column(rows, "presence_penalty", device) * (counts > 0)
    return logits


def apply_top_k_top_p_min_p(logits: torch.Tensor, rows: list[SamplingRow]) -> torch.Tensor:
    """Masks (to -inf) tokens outside each row's top-k, top-p nucleus and min-p floor."""
    device = logits.device
    if any(r.params.min_p > 0 for r in rows):
        probs = logits.softmax(-1)
        floor = _column(rows, "min_p", device) * probs.max(-1, keepdim=True).values
        logits = logits.masked_fill(probs < floor, float("-inf"))
    if not any(r.params.top_k or r.params.top_p < 1 for r in rows):
        return logits
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    vocab = logits.shape[-1]
    top_k = _column(rows, "top_k", device)
    top_k = torch.where(top_k > 0, top_k, vocab)
    ranks = torch.arange(vocab, device=device)[None, :]
    drop = ranks >= top_k
    # Nucleus: keep the smallest prefix whose probability reaches top_p (always the first).
    cum = sorted_logits.softmax(-1).cumsum(-1)
    drop |= (cum - sorted_logits.softmax(-1)) >= _column(rows, "top_p", device)
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.empty_like(logits).scatter_(-1, order, sorted_logits)


def sample(logits: torch.Tensor, rows: list[SamplingRow]) -> torch.Tensor:
    """logits [B, V] float32 -> token ids [B] (int64, on logits' device)."""
    logits = apply_penalties(logits.float(), rows)
    greedy_ids = logits.argmax(-1)
    if all(r.params.greedy for r in rows):
        return greedy_ids
    temperature = _column(rows, "temperature", logits.device).float()
    logits = apply_top_k_top_p_min_p(logits / temperature.clamp_min(1e-5), rows)
    probs = logits.softmax(-1)
    # Exponential race: argmax(p / E) with E ~ Exp(1) draws from p; seeded rows draw their
    # own E, so their tokens depend on nothing else in the batch.
    noise = torch.empty_like(probs).exponential_()
    for i, row in enumerate(rows):
        if row.generator is not None:
            noise[i] = (
                torch.empty(probs.shape[-1], device=row.generator.device)
                .exponential_(generator=row.generator)
                .to(probs.device)
            )
    sampled = (probs / noise).argmax(-1)
    is_greedy = (temperature == 0).squeeze(-1)
    return torch.where(is_greedy, greedy_ids, sampled)
