"""The torch backend against the per-sequence reference: on the CPU (C++ kernel for short rows,
SDPA for long ones) and its device-generic padded decode."""

from __future__ import annotations

import pytest
import torch

from blendrt.cache import KVGeometry, PagePool
from blendrt.ops.attention import AttentionMetadata
from blendrt.ops.reference import paged_attention_reference
from blendrt.ops.torch_attention import TorchBackend, decode_attention_torch


@pytest.mark.parametrize(
    "query_lens", [[1, 1, 1, 1], [1, 7, 1, 3, 1], [5, 1], [1], [1, 12, 1, 9], [20]]
)
@pytest.mark.parametrize("group", [1, 4])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_matches_reference_on_mixed_batches(
    query_lens: list[int], group: int, dtype: torch.dtype
) -> None:
    gen = torch.Generator().manual_seed(len(query_lens) * group)
    num_kv_heads, head_dim, tpp = 2, 16, 5
    pool = PagePool(2 * 2 * tpp * num_kv_heads * head_dim * dtype.itemsize, num_pages=40)
    pool.buffer.fill_(0xFF)  # NaN in every float type: unwritten memory must never leak
    kv = pool.register_member("m", KVGeometry(2, num_kv_heads, head_dim, dtype))
    k_cache, v_cache = kv.k_caches[1], kv.v_caches[1]
    free = torch.randperm(40, generator=gen).tolist()
    prior = [int(torch.randint(0, 30, (), generator=gen)) for _ in query_lens]
    context = [p + n for p, n in zip(prior, query_lens, strict=True)]
    width = max(-(-c // tpp) for c in context) + 1
    tables = torch.full((len(context), width), -1, dtype=torch.int32)
    slots = []
    for b, c in enumerate(context):
        pages = [free.pop() for _ in range(-(-c // tpp))]
        tables[b, : len(pages)] = torch.tensor(pages)
        slots += [pages[p // tpp] * tpp + p % tpp for p in range(c - query_lens[b], c)]
        for p in range(c - query_lens[b]):  # the cached prefix
            for cache in (k_cache, v_cache):
                row = torch.randn(num_kv_heads, head_dim, generator=gen)
                cache[pages[p // tpp], p % tpp] = row.to(dtype)
    total = sum(query_lens)
    q = torch.randn(total, num_kv_heads * group, head_dim, generator=gen).to(dtype)
    k = torch.randn(total, num_kv_heads, head_dim, generator=gen).to(dtype)
    v = torch.randn(total, num_kv_heads, head_dim, generator=gen).to(dtype)
    cu = [0]
    for n in query_lens:
        cu.append(cu[-1] + n)
    meta = AttentionMetadata(
        slot_mapping=torch.tensor(slots, dtype=torch.int32), block_tables=tables,
        cu_seqlens_q=torch.tensor(cu, dtype=torch.int32),
        context_lens=torch.tensor(context, dtype=torch.int32), max_query_len=max(query_lens),
        max_context_len=max(context), cu_seqlens_q_host=tuple(cu),
        context_lens_host=tuple(context),
    )  # fmt: skip
    out = TorchBackend().forward(q, k, v, k_cache, v_cache, meta, 0.25)
    ref = paged_attention_reference(q, k_cache, v_cache, tables, cu, context, 0.25)
    assert out.dtype == dtype and torch.isfinite(out).all()
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(out.float(), ref.float(), atol=tol, rtol=tol)
    # The padded decode that serves the backend off the CPU.
    if max(query_lens) == 1 and dtype == torch.float32:
        padded = decode_attention_torch(
            q, k_cache, v_cache, tables, meta.context_lens, max(context), 0.25
        )
        assert torch.isfinite(padded).all()
        torch.testing.assert_close(padded, ref, atol=1e-5, rtol=1e-5)
