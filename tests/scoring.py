"""Scoring a token sequence with one loaded model, through a one-member engine (the paged
path, scheduled like any request). Imported by tests as `scoring`."""

from __future__ import annotations

import torch

from blendrt.config import EngineConfig
from blendrt.engine.engine import LLMEngine
from blendrt.models.loaded import LoadedModel


def score(model: LoadedModel, token_ids: list[int]) -> torch.Tensor:
    """Float32 log-softmax [len(token_ids), V] of model at every position."""
    ids = [int(t) for t in token_ids]
    config = EngineConfig(device=str(model.device), num_pages=len(ids) // 16 + 2)
    engine = LLMEngine({"m": model}, config)
    request = engine.add_score_request("m", ids)
    for _ in range(10_000):
        for out in engine.step():
            if out.request_id == request.request_id and out.finished:
                assert out.error is None, out.error
                return out.prompt_logprobs
    raise AssertionError("scoring did not finish")
