"""The C++ CPU store of new K/V rows against the torch reference."""

from __future__ import annotations

import pytest
import torch

from blendrt.cache import KVGeometry, PagePool
from blendrt.ops.cpu.store_kv import store_kv_cpu
from blendrt.ops.reference import store_kv_reference


def caches(dtype: torch.dtype, num_kv_heads: int = 3, head_dim: int = 24) -> tuple:
    """Two pools' K/V views of layer 1 (so the page stride spans other layers)."""
    out = []
    for _ in range(2):
        pool = PagePool(8192, num_pages=6)
        pool.buffer.fill_(0x3C)
        kv = pool.register_member("m", KVGeometry(2, num_kv_heads, head_dim, dtype))
        out.append((pool, kv.k_caches[1], kv.v_caches[1]))
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_matches_reference_with_strided_rows_and_skips(dtype: torch.dtype) -> None:
    (pool_a, k_a, v_a), (pool_b, k_b, v_b) = caches(dtype)
    gen = torch.Generator().manual_seed(1)
    num_slots = k_a.shape[0] * k_a.shape[1]
    slots = torch.randperm(num_slots, generator=gen)[:9].int()
    slots[[2, 5]] = -1
    qkv = torch.randn(9, 10, 24, generator=gen).to(dtype)  # as a fused projection's output
    k, v = qkv[:, 4:7], qkv[:, 7:10]  # [9, 3, 24] views with a row stride of 240
    store_kv_cpu(k, v, k_a, v_a, slots)
    store_kv_reference(k, v, k_b, v_b, slots)
    assert torch.equal(pool_a.buffer, pool_b.buffer)  # skipped slots and other layers intact


def test_refuses_bad_input_before_writing() -> None:
    (pool, k_cache, v_cache), _ = caches(torch.float32)
    before = pool.buffer.clone()
    k = torch.randn(2, 3, 24)
    num_slots = k_cache.shape[0] * k_cache.shape[1]
    with pytest.raises(ValueError, match=f"slot {num_slots} out of range"):
        store_kv_cpu(k, k, k_cache, v_cache, torch.tensor([0, num_slots], dtype=torch.int32))
    assert torch.equal(pool.buffer, before)
    with pytest.raises(ValueError, match="k must be a CPU"):
        store_kv_cpu(k.half(), k, k_cache, v_cache, torch.tensor([0, 1], dtype=torch.int32))
    with pytest.raises(ValueError, match="v must be"):
        store_kv_cpu(k, k[:1], k_cache, v_cache, torch.tensor([0, 1], dtype=torch.int32))
    with pytest.raises(ValueError, match="heads must be contiguous"):
        wide = torch.randn(2, 24, 3).transpose(1, 2)
        store_kv_cpu(wide, k, k_cache, v_cache, torch.tensor([0, 1], dtype=torch.int32))
    with pytest.raises(ValueError, match="slot_mapping must be int32"):
        store_kv_cpu(k, k, k_cache, v_cache, torch.tensor([0, 1]))
