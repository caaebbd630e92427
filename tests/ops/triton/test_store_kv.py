"""store_kv writes each token's K and V rows at its slot of a member's pages, in one launch,
exactly as the torch reference does, skips -1 slots, and touches nothing else in the pool."""

from __future__ import annotations

import pytest
import torch

from blendrt.cache import KVGeometry, PagePool
from blendrt.ops.reference import store_kv_reference
from blendrt.ops.triton.store_kv import store_kv

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def member_views(tpp: int, geometry: KVGeometry, num_pages: int = 12, layer: int = 1):
    """Layer `layer` K/V views of a NaN-poisoned pool whose pages hold `tpp` tokens, beside
    another member that shares the bytes."""
    page_bytes = -(-tpp * geometry.bytes_per_token // 256) * 256
    pool = PagePool(page_bytes, num_pages=num_pages, device=DEVICE)
    pool.buffer.fill_(0xFF)  # NaN in every float type, whatever the alignment
    kv = pool.register_member("m", geometry)
    assert kv.tokens_per_page == tpp
    pool.register_member("other", KVGeometry(1, 1, 16, torch.float32))
    return pool, kv.k_caches[layer], kv.v_caches[layer]


@pytest.mark.parametrize(
    ("tpp", "heads", "head_dim", "dtype"),
    [
        (16, 2, 64, torch.float32),
        (48, 1, 80, torch.float16),
        (100, 3, 96, torch.float16),
        (16, 2, 128, torch.bfloat16),  # a plain copy: exact in bf16 too
        (48, 1, 256, torch.float32),
        (16, 16, 128, torch.float16),  # several head blocks per token
    ],
)
def test_matches_reference_and_skips(tpp: int, heads: int, head_dim: int, dtype) -> None:
    torch.manual_seed(tpp + head_dim)
    geometry = KVGeometry(2, heads, head_dim, dtype)
    pool, k_cache, v_cache = member_views(tpp, geometry)
    slots_total = k_cache.shape[0] * tpp
    num_tokens = 37
    slots = torch.randperm(slots_total)[:num_tokens].to(DEVICE, torch.int32)
    slots[::5] = -1
    # v is a strided view, as it comes out of the fused QKV projection.
    fused = torch.randn(num_tokens, 3 * heads, head_dim).to(DEVICE, dtype)
    k, v = fused[:, :heads], fused[:, 2 * heads :]
    before = pool.buffer.clone()
    store_kv(k, v, k_cache, v_cache, slots)
    ref_pool = before.clone()
    ref_k, ref_v = (
        ref_pool.view(dtype).as_strided(c.shape, c.stride(), c.storage_offset())
        for c in (k_cache, v_cache)
    )
    store_kv_reference(k, v, ref_k, ref_v, slots)
    # Byte-for-byte: written rows equal the reference and every other byte (NaN poison, the
    # other member's bytes, other layers) is untouched.
    assert torch.equal(pool.buffer, ref_pool)
    assert not torch.equal(pool.buffer, before), "something must have been written"


def test_all_skipped_and_empty() -> None:
    geometry = KVGeometry(1, 2, 64, torch.float16)
    pool, k_cache, v_cache = member_views(16, geometry, layer=0)
    before = pool.buffer.clone()
    k = torch.randn(5, 2, 64).half().to(DEVICE)
    store_kv(k, k, k_cache, v_cache, torch.full((5,), -1, dtype=torch.int32, device=DEVICE))
    store_kv(k[:0], k[:0], k_cache, v_cache, torch.empty(0, dtype=torch.int32, device=DEVICE))
    assert torch.equal(pool.buffer, before)


def test_casts_to_cache_dtype() -> None:
    geometry = KVGeometry(1, 1, 64, torch.float16)
    _, k_cache, v_cache = member_views(16, geometry, layer=0)
    k, v = torch.randn(3, 1, 64, device=DEVICE), torch.randn(3, 1, 64, device=DEVICE)
    store_kv(k, v, k_cache, v_cache, torch.tensor([0, 17, 40], dtype=torch.int32, device=DEVICE))
    assert torch.equal(k_cache[1, 1], k[1].half()) and torch.equal(v_cache[2, 8], v[2].half())
