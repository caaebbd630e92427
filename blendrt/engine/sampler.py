"""One member's logits to one token (with its log-probability) per request that needs one.

The requests' own parameters decide: penalties, bias, temperature and filters through the
vectorised sampler; EOS masked under ignore_eos; stop tokens masked before min_tokens.
NOTE (isolation): if sampling the batch raises, each request is sampled alone, so one bad
request fails alone.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

from blendrt.engine.request import Request, TokenLogprob
from blendrt.sampling import SamplingRow, sample, token_logprobs

logger = logging.getLogger("blendrt.engine")

#: (candidate, its row of the member's logits)
Target = tuple[Request, int]


def stop_token_ids(request: Request, eos_ids: Sequence[int]) -> set[int]:
    """The ids that end this request's reply: its stop_token_ids and, unless ignored, EOS."""
    params = request.sampling
    return set(params.stop_token_ids) | (set() if params.ignore_eos else set(eos_ids))


def sampling_row(request: Request, eos_ids: Sequence[int]) -> SamplingRow:
    params = request.sampling
    banned: set[int] = set()
    if params.ignore_eos:  # EOS can neither end the reply nor appear in it
        banned |= set(eos_ids)
    if request.num_output_tokens < params.min_tokens:
        banned |= stop_token_ids(request, eos_ids)
    return SamplingRow(
        params, request.prompt_token_ids, request.output_token_ids, request.generator,
        tuple(sorted(banned)),
    )  # fmt: skip


def sample_targets(
    logits: torch.Tensor, targets: list[Target], eos_ids: Sequence[int]
) -> list[TokenLogprob]:
    """One pick per target, with its log-probability (and top alternatives) when asked for."""
    at = [i for _, i in targets]
    # The usual batch samples every row once, in order: no gather needed.
    rows_logits = logits if at == list(range(len(logits))) else logits[at]
    requests = [r for r, _ in targets]
    token_ids = sample(rows_logits, [sampling_row(r, eos_ids) for r in requests])
    if not any(r.sampling.logprobs is not None or r.sampling.best_of for r in requests):
        return [TokenLogprob(t, 0.0) for t in token_ids.tolist()]
    num_top = max((r.sampling.logprobs or 0) for r in requests)
    chosen, top_ids, top_lps = token_logprobs(rows_logits, token_ids, num_top)
    picks = []
    for j, r in enumerate(requests):
        k = r.sampling.logprobs or 0
        top = tuple(zip(top_ids[j, :k].tolist(), top_lps[j, :k].tolist(), strict=True))
        picks.append(TokenLogprob(int(token_ids[j]), float(chosen[j]), top))
    return picks


def sample_isolated(
    logits: torch.Tensor, targets: list[Target], eos_ids: Sequence[int]
) -> list[TokenLogprob | Exception]:
    """As sample_targets; a target whose sampling raises gets its exception instead."""
    if not targets:  # a batch with nothing to sample (classify requests)
        return []
    try:
        return list(sample_targets(logits, targets, eos_ids))
    except Exception:
        logger.exception("sampling a batch failed; sampling its rows one by one")
    picks: list[TokenLogprob | Exception] = []
    for target in targets:
        try:
            picks += sample_targets(logits, [target], eos_ids)
        except Exception as e:
            picks.append(e)
    return picks
