"""The torch backend against the per-sequence reference: on the CPU (C++ kernel for short rows,
SDPA for long ones) and its device-generic padded decode; with a sliding window and soft-capped
scores, it and the reference against a dense masked softmax (tests/ops/window_cases.py)."""

from __future__ import annotations

import pytest
import torch
from ops.window_cases import WINDOW_BATCHES, make_window_case

from blendrt.cache import KVGeometry, PagePool
from blendrt.ops import torch_attention
from blendrt.ops.attention import AttentionMetadata
from blendrt.ops.reference import ReferenceBackend, paged_attention_reference
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


#: (H_kv, GQA group, head dim): odd head dims, GQA ratios 1, 2 and 4.
HEADS = [(2, 1, 80), (1, 2, 96), (2, 4, 16)]


@pytest.mark.parametrize("backend", [TorchBackend, ReferenceBackend])
@pytest.mark.parametrize("batch", sorted(WINDOW_BATCHES))
@pytest.mark.parametrize(("num_kv_heads", "group", "head_dim"), HEADS)
@pytest.mark.parametrize(
    ("window", "softcap"), [(6, 0.0), (6, 30.0), (1, 0.0), (1000, 50.0), (0, 50.0)]
)
def test_window_and_softcap_match_dense_attention(
    backend, batch: str, num_kv_heads: int, group: int, head_dim: int, window: int, softcap: float
) -> None:
    """Released pages (-1 in the table, NaN in the pool) are never read; a window longer
    than every sequence is no window."""
    case = make_window_case(
        WINDOW_BATCHES[batch], window=window, softcap=softcap, num_kv_heads=num_kv_heads,
        group=group, head_dim=head_dim, store=False, seed=head_dim + window,
    )  # fmt: skip
    out = backend().forward(
        case.q, case.k, case.v, case.k_cache, case.v_cache, case.meta, case.scale,
        window=window, softcap=softcap,
    )  # fmt: skip
    case.check(out)


@pytest.mark.parametrize("kv_dtype", ["auto", "int8", "fp8_e4m3"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("batch", sorted(WINDOW_BATCHES))
def test_window_and_softcap_in_half_and_quantized_caches(kv_dtype, dtype, batch) -> None:
    case = make_window_case(
        WINDOW_BATCHES[batch], window=6, softcap=30.0, num_kv_heads=2, group=2, head_dim=32,
        dtype=dtype, kv_dtype=kv_dtype, store=False, seed=5,
    )  # fmt: skip
    out = TorchBackend().forward(
        case.q, case.k, case.v, case.k_cache, case.v_cache, case.meta, case.scale,
        **case.scales, window=6, softcap=30.0,
    )  # fmt: skip
    case.check(out, tol=3e-2 if dtype == torch.bfloat16 else 3e-3)


def test_long_softcapped_prefill_in_chunks(monkeypatch) -> None:
    """A prefill's soft-capped scores are materialised a few query rows at a time."""
    monkeypatch.setattr(torch_attention, "SOFTCAP_CHUNK_SCORES", 2 * 4 * 40)
    case = make_window_case(
        [(12, 28)], window=9, softcap=50.0, num_kv_heads=2, group=2, head_dim=16, seed=2
    )
    meta = case.meta
    out = torch_attention.prefill_attention_torch(
        case.q, case.k_cache, case.v_cache, meta.block_tables[0], meta.context_lens_host[0],
        case.scale, window=9, softcap=50.0,
    )  # fmt: skip
    case.check(out)
