"""SamplingParams and the vectorised sampler.

The sampler turns one member's logits [B, V] into one token per row, applying per-row
penalties, temperature, top-k, top-p and min-p in one pass over the batch. A row with a seed
draws its randomness from its own generator, so its tokens do not depend on what else is in
the batch; the other rows share one draw.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

#: {field: (low, high)}: the inclusive range of every numeric sampling parameter, checked
#: here and published in the server's schema. Floats must also be finite.
RANGES: dict[str, tuple[float, float]] = {
    "temperature": (0.0, 10.0),  # 0 = greedy
    "top_p": (1e-9, 1.0),  # (0, 1]
    "top_k": (0, 1 << 20),  # 0 = off
    "min_p": (0.0, 1.0),
    "repetition_penalty": (0.01, 100.0),  # 1 = off
    "presence_penalty": (-2.0, 2.0),
    "frequency_penalty": (-2.0, 2.0),
    "max_tokens": (1, 1 << 20),
    "min_tokens": (0, 1 << 20),
    "n": (1, 16),
    "best_of": (1, 16),
    "logprobs": (0, 20),  # top alternatives per token, besides the chosen one
    "seed": (0, (1 << 64) - 1),
    "logit_bias": (-100.0, 100.0),  # each bias
}
INT_FIELDS = {"top_k", "max_tokens", "min_tokens", "n", "best_of", "logprobs", "seed"}
MAX_STOPS, MAX_STOP_CHARS = 16, 1024  # stop strings per request, characters each
MAX_STOP_TOKEN_IDS = MAX_LOGIT_BIAS = 1024  # entries
MAX_TOKEN_ID = (1 << 31) - 1


def _check_number(name: str, value: object) -> None:
    low, high = RANGES[name]
    if name in INT_FIELDS:
        ok = type(value) is int  # not a bool, not a float
    else:
        ok = type(value) in (int, float) and math.isfinite(value)
    if not ok or not low <= value <= high:
        kind = "an int" if name in INT_FIELDS else "a finite number"
        raise ValueError(f"{name} must be {kind} in [{low}, {high}], got {value!r}")


@dataclass(frozen=True)
class SamplingParams:
    """How one request samples. Every field has a range (RANGES); bad values raise
    ValueError naming the field.

    ignore_eos: EOS (the model's and the chat format's stop tokens) neither ends the reply nor
    is sampled, and the format's stop strings do not apply; the request's own `stop` and
    `stop_token_ids` still do. min_tokens: until that many tokens are generated, stop tokens
    are not sampled and stop strings are not looked for. n: candidates returned, best_of:
    candidates sampled (the n with the highest cumulative log-probability are returned); all
    share the prompt's pages. logprobs: return each chosen token's log-probability under the
    model (raw logits) and that many top alternatives."""

    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    min_p: float = 0.0
    repetition_penalty: float = 1.0  # > 1 discourages tokens seen in prompt or output
    presence_penalty: float = 0.0  # OpenAI style, over output tokens
    frequency_penalty: float = 0.0
    max_tokens: int | None = 128  # None: until the member's window is full
    min_tokens: int = 0
    stop: tuple[str, ...] = ()  # stop strings: generation ends before them, never shown
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    seed: int | None = None
    n: int = 1
    best_of: int | None = None  # None: n
    logprobs: int | None = None  # None: none returned
    # {token id: bias added to its logit}, kept as sorted (id, bias) pairs so params hash.
    logit_bias: tuple[tuple[int, float], ...] = ()
    # Filled in by the blend from the member's chat format: stops it implies.
    extra_stop: tuple[str, ...] = field(default=(), repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        if isinstance(self.logit_bias, Mapping):
            object.__setattr__(self, "logit_bias", tuple(sorted(self.logit_bias.items())))
        for name in ("stop", "stop_token_ids", "logit_bias", "extra_stop"):
            value = getattr(self, name)
            if isinstance(value, str | bytes) or not isinstance(value, Sequence):
                raise ValueError(f"{name} must be a list, got {type(value).__name__}")
            object.__setattr__(self, name, tuple(value))
        for name in RANGES:
            value = getattr(self, name)
            if name == "logit_bias" or (value is None and name in _OPTIONAL):
                continue
            _check_number(name, value)
        if type(self.ignore_eos) is not bool:
            raise ValueError(f"ignore_eos must be a bool, got {self.ignore_eos!r}")
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise ValueError(f"min_tokens {self.min_tokens} exceeds max_tokens {self.max_tokens}")
        if self.best_of is not None and self.best_of < self.n:
            raise ValueError(f"best_of ({self.best_of}) must be >= n ({self.n})")
        if len(self.stop) > MAX_STOPS or not all(
            isinstance(s, str) and 0 < len(s) <= MAX_STOP_CHARS for s in self.stop
        ):
            raise ValueError(
                f"stop takes up to {MAX_STOPS} non-empty strings of at most {MAX_STOP_CHARS} "
                f"characters, got {self.stop!r}"
            )
        ids = self.stop_token_ids
        if len(ids) > MAX_STOP_TOKEN_IDS or not all(_is_token_id(t) for t in ids):
            raise ValueError(
                f"stop_token_ids takes up to {MAX_STOP_TOKEN_IDS} token ids in "
                f"[0, {MAX_TOKEN_ID}], got {ids!r}"
            )
        bias = self.logit_bias
        if len(bias) > MAX_LOGIT_BIAS:
            raise ValueError(f"logit_bias takes up to {MAX_LOGIT_BIAS} entries, got {len(bias)}")
        for pair in bias:
            if not (isinstance(pair, tuple) and len(pair) == 2 and _is_token_id(pair[0])):
                raise ValueError(f"logit_bias maps token ids in [0, {MAX_TOKEN_ID}] to biases")
            _check_number("logit_bias", pair[1])

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def num_candidates(self) -> int:
        """Candidates sampled per request: best_of, else n."""
        return self.best_of or self.n

    @property
    def all_stop_strings(self) -> tuple[str, ...]:
        return self.stop + self.extra_stop


_OPTIONAL = {"max_tokens", "seed", "best_of", "logprobs"}  # may be None


def _is_token_id(t: object) -> bool:
    return type(t) is int and 0 <= t <= MAX_TOKEN_ID


@dataclass
class SamplingRow:
    """One row of a batch: its parameters, its tokens so far, its generator if seeded, and
    the token ids it may not sample now (EOS under ignore_eos, stops before min_tokens)."""

    params: SamplingParams
    prompt_ids: Sequence[int]
    output_ids: Sequence[int]
    generator: torch.Generator | None = None
    banned_ids: Sequence[int] = ()


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


def apply_bias_and_bans(logits: torch.Tensor, rows: list[SamplingRow]) -> torch.Tensor:
    """Adds each row's logit_bias and masks (to -inf) its banned ids, for the whole batch in
    two indexed writes; ids past the vocabulary are refused earlier (the engine knows the
    vocabulary)."""
    biased = [(i, t, b) for i, r in enumerate(rows) for t, b in r.params.logit_bias]
    banned = [(i, t) for i, r in enumerate(rows) for t in r.banned_ids]
    if not biased and not banned:
        return logits
    logits = logits.clone()
    if biased:
        at = torch.tensor([(i, t) for i, t, _ in biased], device=logits.device).T
        bias = torch.tensor([b for _, _, b in biased], dtype=logits.dtype, device=logits.device)
        logits.index_put_((at[0], at[1]), bias, accumulate=True)
    if banned:
        at = torch.tensor(banned, device=logits.device).T
        logits[at[0], at[1]] = float("-inf")
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
    logits = apply_bias_and_bans(apply_penalties(logits.float(), rows), rows)
    num_greedy = sum(r.params.greedy for r in rows)
    greedy_ids = logits.argmax(-1) if num_greedy else None
    if num_greedy == len(rows):
        return greedy_ids
    temperature = _column(rows, "temperature", logits.device).float()
    logits = apply_top_k_top_p_min_p(logits / temperature.clamp_min(1e-5), rows)
    probs = logits.softmax(-1)
    # Inverse CDF: each row draws one uniform u and takes the first token whose cumulative
    # probability exceeds u (a token of probability 0 never does). One draw per row, not
    # one per vocabulary entry; seeded rows draw theirs from their own generator, so their
    # tokens depend on nothing else in the batch.
    cdf = probs.cumsum(-1)  # [B, V]
    u = torch.rand(len(rows), 1, device=probs.device)
    for i, row in enumerate(rows):
        if row.generator is not None:
            u[i] = torch.rand(1, device=row.generator.device, generator=row.generator).to(u)
    total = cdf[:, -1:]
    # NOTE: the draw stays strictly below the total (u * total can round up to it), so a
    # token is always found and it has probability > 0.
    draw = torch.minimum(u * total, torch.nextafter(total, torch.zeros_like(total)))
    sampled = torch.searchsorted(cdf, draw, right=True).squeeze(-1)
    if greedy_ids is None:
        return sampled
    return torch.where((temperature == 0).squeeze(-1), greedy_ids, sampled)


def token_logprobs(
    logits: torch.Tensor, token_ids: torch.Tensor, num_top: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Log-probabilities under the model (raw logits [B, V]): of each row's chosen token
    [B], and the num_top most likely ids [B, num_top] with theirs [B, num_top]."""
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    chosen = logprobs.gather(-1, token_ids.view(-1, 1).to(logprobs.device)).squeeze(-1)
    top = logprobs.topk(num_top, dim=-1) if num_top else None
    empty = logprobs.new_empty(logprobs.shape[0], 0)
    return (
        chosen,
        top.indices if top else empty.long(),
        top.values if top else empty,
    )
