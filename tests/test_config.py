"""EngineConfig: defaults by device, every field checked, and the backend names it takes
are the ones the backend registry resolves."""

from __future__ import annotations

import pytest
import torch

from blendrt.config import ATTENTION_BACKENDS, EngineConfig
from blendrt.ops.registry import get_backend


def test_defaults_pick_the_device() -> None:
    config = EngineConfig()
    assert config.device == ("cuda" if torch.cuda.is_available() else "cpu")
    assert config.torch_device == torch.device(config.device)
    assert (config.pool_partition, config.enable_prefix_caching) == ("shared", True)


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"num_pages": 0}, "num_pages must be a positive int"),
        ({"num_pages": 2.5}, "num_pages must be a positive int"),
        ({"kv_cache_bytes": -1}, "kv_cache_bytes must be a positive int"),
        ({"page_bytes": 0}, "page_bytes must be a positive int"),
        ({"min_tokens_per_page": 0}, "min_tokens_per_page"),
        ({"max_num_batched_tokens": 0}, "max_num_batched_tokens"),
        ({"max_num_seqs": -3}, "max_num_seqs"),
        ({"max_model_len": 0}, "max_model_len"),
        ({"num_pages": 4, "kv_cache_bytes": 1 << 20}, "at most one of"),
        ({"pool_partition": "halves"}, "pool_partition must be 'shared' or 'static'"),
        ({"attention_backend": "flash"}, "attention_backend must be one of 'torch'"),
        ({"gpu_memory_utilization": 1.5, "device": "cpu"}, r"must be in \(0, 1\]"),
        ({"gpu_memory_utilization": 0.5, "device": "cpu"}, "sizes a CUDA pool"),
    ],
)
def test_bad_values_are_refused_by_name(fields: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        EngineConfig(**fields)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_refused() -> None:
    with pytest.raises(ValueError, match="CUDA is not available"):
        EngineConfig(device="cuda")


@pytest.mark.parametrize("name", [*ATTENTION_BACKENDS, None])
def test_every_backend_name_resolves(name: str | None) -> None:
    backend = get_backend(name, torch.device("cpu"))
    assert backend.name == (name or "torch")
