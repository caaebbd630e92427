"""The shared page pool: one byte allocation, per-member zero-copy views."""

from __future__ import annotations

import pytest
import torch

from blendrt.cache import KVGeometry, PagePool, page_bytes_for

# Three members of different geometries, as in a real blend (scaled down).
GPTJ_LIKE = KVGeometry(num_layers=4, num_kv_heads=4, head_dim=16, dtype=torch.float16)
LLAMA_LIKE = KVGeometry(num_layers=3, num_kv_heads=2, head_dim=24, dtype=torch.float32)
TINY = KVGeometry(num_layers=2, num_kv_heads=1, head_dim=8, dtype=torch.bfloat16)


def test_geometry_bytes_per_token() -> None:
    assert GPTJ_LIKE.bytes_per_token == 2 * 4 * 4 * 16 * 2
    assert LLAMA_LIKE.bytes_per_token == 2 * 3 * 2 * 24 * 4
    with pytest.raises(ValueError, match="num_kv_heads"):
        KVGeometry(num_layers=1, num_kv_heads=0, head_dim=8, dtype=torch.float16)
    with pytest.raises(ValueError, match="dtype"):
        KVGeometry(num_layers=1, num_kv_heads=1, head_dim=8, dtype=torch.int32)


def test_page_bytes_for_gives_every_member_min_tokens() -> None:
    page_bytes = page_bytes_for([GPTJ_LIKE, LLAMA_LIKE, TINY], min_tokens_per_page=16)
    assert page_bytes % 256 == 0
    pool = PagePool(page_bytes, num_pages=4)
    for g in (GPTJ_LIKE, LLAMA_LIKE, TINY):
        assert pool.tokens_per_page(g) >= 16
    # The largest member gets exactly 16 or barely more: pages are not oversized.
    assert min(pool.tokens_per_page(g) for g in (GPTJ_LIKE, LLAMA_LIKE)) < 17


def test_three_members_view_the_same_bytes() -> None:
    pool = PagePool(4096, num_pages=6)
    views = [
        pool.register_member(name, g)
        for name, g in [("gptj", GPTJ_LIKE), ("llama", LLAMA_LIKE), ("tiny", TINY)]
    ]
    base = pool.buffer.data_ptr()
    for view in views:
        g = view.geometry
        assert view.tokens_per_page == 4096 // g.bytes_per_token
        assert view.wasted_bytes_per_page == 4096 - view.tokens_per_page * g.bytes_per_token
        assert len(view.k_caches) == len(view.v_caches) == g.num_layers
        for cache in (*view.k_caches, *view.v_caches):
            assert cache.shape == (6, view.tokens_per_page, g.num_kv_heads, g.head_dim)
            assert cache.dtype == g.dtype
            # Zero-copy: every view lies inside the pool's one allocation.
            assert cache.untyped_storage().data_ptr() == base
            start = cache.data_ptr() - base
            assert 0 <= start < 4096
    # Tokens per page need not be powers of two.
    assert views[1].tokens_per_page == 3  # 4096 // 1152


def test_pages_are_disjoint_and_views_alias() -> None:
    pool = PagePool(2048, num_pages=4)
    a = pool.register_member("a", GPTJ_LIKE)
    b = pool.register_member("b", LLAMA_LIKE)
    pool.buffer.zero_()
    # Fill every byte member a can use in page 2, through its views.
    for cache in (*a.k_caches, *a.v_caches):
        cache[2].fill_(1.0)
    written = (pool.buffer.view(torch.float16).view(4, 1024) == 1.0).sum(dim=1).tolist()
    assert written == [0, 0, a.tokens_per_page * GPTJ_LIKE.bytes_per_token // 2, 0]
    # Member b sees the same physical page: its view of page 2 is non-zero, page 1 is zero.
    assert b.k_caches[0][2].abs().sum() > 0
    assert b.k_caches[0][1].abs().sum() == 0
    # Layer blocks inside a page do not overlap: writing layer 1's V leaves layer 0's K alone.
    pool.buffer.zero_()
    a.v_caches[1][3].fill_(2.0)
    assert a.k_caches[0][3].abs().sum() == 0
    assert a.k_caches[1][3].abs().sum() == 0
    assert a.v_caches[1][3].sum() == 2.0 * a.v_caches[1][3].numel()


def test_sizing_options() -> None:
    assert PagePool(512, pool_bytes=512 * 10 + 100).num_pages == 10
    assert PagePool(512, num_pages=3).pool_bytes == 1536
    with pytest.raises(ValueError, match="exactly one"):
        PagePool(512, num_pages=3, pool_bytes=4096)
    with pytest.raises(ValueError, match="multiple of 256"):
        PagePool(500, num_pages=3)
    with pytest.raises(ValueError, match="smaller than one page"):
        PagePool(512, pool_bytes=100)


def test_member_larger_than_a_page_is_refused() -> None:
    pool = PagePool(256, num_pages=2)
    with pytest.raises(ValueError, match="bytes per token"):
        pool.register_member("big", GPTJ_LIKE)
    pool.register_member("tiny", TINY)
    with pytest.raises(ValueError, match="already registered"):
        pool.register_member("tiny", TINY)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_pool() -> None:
    pool = PagePool(1 << 16, pool_bytes=(1 << 16) * 8 + 5, device="cuda")
    assert pool.buffer.is_cuda and pool.num_pages == 8
