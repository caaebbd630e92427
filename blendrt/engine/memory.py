"""How big the KV pool is: `pool_pages` reads the config (num_pages, kv_cache_bytes, or on a
GPU vLLM's `gpu_memory_utilization`, else a CPU default) and the pool's page size.

On a GPU the blend may use ``utilization * total`` bytes of the device in all; the pool gets
what is left of that after the weights (and anything else this process holds through
torch's allocator) and a reserve for the activations of the largest step. It never takes
more than is free now (other processes may share the card).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from blendrt.cache.pool import num_pages_for
from blendrt.config import EngineConfig
from blendrt.models.loaded import LoadedModel

CPU_DEFAULT_POOL_BYTES = 256 << 20

_GiB = float(1 << 30)


def activation_reserve_bytes(
    models: Iterable[LoadedModel], max_num_batched_tokens: int, max_num_seqs: int
) -> int:
    """An upper estimate of one step's transient memory: the widest member's hidden states
    for a full token budget (residual, q/k/v/o and the MLP's gate, up and product), and
    float32 logits for every running sequence (plus the sampler's copies of them)."""
    reserve = 0
    for m in models:
        c, size = m.config, m.dtype.itemsize
        qkv = (c.num_heads + 2 * c.num_kv_heads) * c.head_dim
        hidden = max_num_batched_tokens * (3 * c.hidden_size + qkv + 3 * c.intermediate_size)
        logits = max_num_seqs * c.vocab_size * 4 * 4
        reserve = max(reserve, hidden * size + logits)
    return reserve


def kv_cache_bytes_for_utilization(
    utilization: float, *, total: int, free: int, used: int, reserve: int
) -> int:
    """Pool bytes: utilization * total less what this process uses (`used`: weights...) and
    the activation `reserve`, at most what is free less the reserve. Raises ValueError when
    nothing is left for the pool."""
    budget = int(utilization * total) - used - reserve
    pool = min(budget, free - reserve)
    if pool <= 0:
        raise ValueError(
            f"gpu_memory_utilization {utilization} of {total / _GiB:.1f} GiB leaves no room for "
            f"the KV cache: the weights use {used / _GiB:.2f} GiB, the activation reserve "
            f"{reserve / _GiB:.2f} GiB, and {free / _GiB:.2f} GiB is free; raise "
            "gpu_memory_utilization or give kv_cache_bytes"
        )
    return pool


def cuda_kv_cache_bytes(device: torch.device, utilization: float, reserve: int) -> int:
    """`kv_cache_bytes_for_utilization` on the live device."""
    free, total = torch.cuda.mem_get_info(device)
    used = torch.cuda.memory_reserved(device)
    return kv_cache_bytes_for_utilization(
        utilization, total=total, free=free, used=used, reserve=reserve
    )


def pool_pages(config: EngineConfig, page_bytes: int, models: Iterable[LoadedModel]) -> int:
    """The pool's pages in all, as the config asks."""
    if config.num_pages is not None:
        return num_pages_for(page_bytes, num_pages=config.num_pages)
    if config.kv_cache_bytes is not None:
        pool_bytes = config.kv_cache_bytes
    elif config.torch_device.type == "cuda":
        reserve = activation_reserve_bytes(
            models, config.max_num_batched_tokens, config.max_num_seqs
        )
        utilization = config.gpu_memory_utilization or 0.9
        pool_bytes = cuda_kv_cache_bytes(config.torch_device, utilization, reserve)
    else:
        pool_bytes = CPU_DEFAULT_POOL_BYTES
    return num_pages_for(page_bytes, pool_bytes=pool_bytes)
