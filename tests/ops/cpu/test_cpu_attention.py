"""The C++ CPU paged-attention kernel against the torch reference; with a sliding window and
soft-capped scores (also through CpuBackend) against a dense masked softmax, released pages
(-1 in the table, NaN in the pool) never read."""

from __future__ import annotations

import pytest
import torch
from ops.window_cases import WINDOW_BATCHES, make_window_case

from blendrt.cache import KVGeometry, PagePool
from blendrt.ops.cpu.attention import paged_attention_cpu
from blendrt.ops.cpu.backend import MAX_KERNEL_QUERY_LEN, CpuBackend
from blendrt.ops.reference import paged_attention_reference

TOLERANCE = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}


def make_case(
    query_lens: list[int],
    *,
    num_kv_heads: int,
    group: int,
    head_dim: int,
    dtype: torch.dtype,
    tokens_per_page: int = 7,
    min_prefix: int = 0,
    seed: int = 0,
) -> tuple[torch.Tensor, ...]:
    """A pool poisoned with NaN, each sequence's pages drawn at random from it and filled up
    to its context; returns (q, k_cache, v_cache, block_tables, cu_seqlens_q, context_lens)."""
    gen = torch.Generator().manual_seed(seed)
    geometry = KVGeometry(1, num_kv_heads, head_dim, dtype)
    context = [n + min_prefix + int(torch.randint(0, 40, (), generator=gen)) for n in query_lens]
    num_pages = sum(-(-c // tokens_per_page) for c in context) + 8
    page_bytes = -(-geometry.bytes_per_token * tokens_per_page // 256) * 256
    pool = PagePool(page_bytes, num_pages=num_pages)
    pool.buffer.fill_(0xFF)  # NaN in every float type: only written slots may be read
    kv = pool.register_member("m", geometry)
    k_cache, v_cache = kv.k_caches[0], kv.v_caches[0]
    tpp = kv.tokens_per_page
    width = max(-(-c // tpp) for c in context) + 2
    tables = torch.full((len(context), width), -1, dtype=torch.int32)
    free = torch.randperm(num_pages, generator=gen).tolist()
    for b, c in enumerate(context):
        pages = [free.pop() for _ in range(-(-c // tpp))]
        tables[b, : len(pages)] = torch.tensor(pages, dtype=torch.int32)
        for cache in (k_cache, v_cache):
            values = torch.randn(len(pages) * tpp, num_kv_heads, head_dim, generator=gen)
            values = values.to(dtype).view(len(pages), tpp, num_kv_heads, head_dim)
            cache[pages[:-1]] = values[:-1]
            tail = c - (len(pages) - 1) * tpp  # the last page's written slots
            cache[pages[-1], :tail] = values[-1, :tail]
    q = torch.randn(sum(query_lens), num_kv_heads * group, head_dim, generator=gen).to(dtype)
    cu = torch.tensor([0, *query_lens], dtype=torch.int32).cumsum(0, dtype=torch.int32)
    return q, k_cache, v_cache, tables, cu, torch.tensor(context, dtype=torch.int32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize(
    ("num_kv_heads", "group", "head_dim"), [(2, 1, 16), (1, 4, 40), (3, 2, 24), (2, 3, 80)]
)
@pytest.mark.parametrize("query_lens", [[1], [1, 1, 1, 1, 1], [3, 1, 8, 1], [0, 2, 1]])
def test_matches_reference(
    dtype: torch.dtype, num_kv_heads: int, group: int, head_dim: int, query_lens: list[int]
) -> None:
    q, k_cache, v_cache, tables, cu, context = make_case(
        query_lens, num_kv_heads=num_kv_heads, group=group, head_dim=head_dim, dtype=dtype
    )
    scale = head_dim**-0.5
    out = paged_attention_cpu(q, k_cache, v_cache, tables, cu, context, scale)
    ref = paged_attention_reference(
        q, k_cache, v_cache, tables, cu.tolist(), context.tolist(), scale
    )
    assert out.dtype == dtype
    assert torch.isfinite(out).all()
    tol = TOLERANCE[dtype]
    torch.testing.assert_close(out.float(), ref.float(), atol=tol, rtol=tol)


def test_computes_only_the_given_sequences() -> None:
    q, k_cache, v_cache, tables, cu, context = make_case(
        [1, 2, 1], num_kv_heads=2, group=2, head_dim=16, dtype=torch.float32
    )
    out = torch.full_like(q, 7.0)
    paged_attention_cpu(
        q, k_cache, v_cache, tables, cu, context, 0.25,
        seq_indices=torch.tensor([1], dtype=torch.int32), out=out,
    )  # fmt: skip
    ref = paged_attention_reference(
        q, k_cache, v_cache, tables, cu.tolist(), context.tolist(), 0.25
    )
    torch.testing.assert_close(out[1:3], ref[1:3], atol=1e-5, rtol=1e-5)
    assert (out[0] == 7.0).all() and (out[3] == 7.0).all()


def test_many_threads_match_one() -> None:
    # Enough work (4 x ~1100 tokens x 16 heads x 128 dims) for the kernel to add threads.
    q, k_cache, v_cache, tables, cu, context = make_case(
        [1, 1, 2, 1], num_kv_heads=4, group=4, head_dim=128, dtype=torch.float32,
        tokens_per_page=16, min_prefix=1100, seed=3,
    )  # fmt: skip
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = paged_attention_cpu(q, k_cache, v_cache, tables, cu, context, 0.125)
        torch.set_num_threads(4)
        many = paged_attention_cpu(q, k_cache, v_cache, tables, cu, context, 0.125)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, many)


def test_bad_input_is_refused_before_reading_the_pool() -> None:
    q, k_cache, v_cache, tables, cu, context = make_case(
        [1, 1], num_kv_heads=2, group=1, head_dim=16, dtype=torch.float32
    )
    bad = tables.clone()
    bad[0, 0] = k_cache.shape[0]
    with pytest.raises(ValueError, match=f"page id {k_cache.shape[0]} out of range"):
        paged_attention_cpu(q, k_cache, v_cache, bad, cu, context, 1.0)
    too_long = context.clone()
    too_long[1] = tables.shape[1] * k_cache.shape[1] + 1
    with pytest.raises(ValueError, match="block table has"):
        paged_attention_cpu(q, k_cache, v_cache, tables, cu, too_long, 1.0)
    with pytest.raises(ValueError, match="query rows but context"):
        paged_attention_cpu(q, k_cache, v_cache, tables, cu, torch.zeros_like(context), 1.0)
    with pytest.raises(ValueError, match="sequence id 5 out of range"):
        five = torch.tensor([5], dtype=torch.int32)
        paged_attention_cpu(q, k_cache, v_cache, tables, cu, context, 1.0, seq_indices=five)
    with pytest.raises(ValueError, match=r"q must be a CPU torch\.float32"):
        paged_attention_cpu(q.half(), k_cache, v_cache, tables, cu, context, 1.0)
    with pytest.raises(ValueError, match="block_tables must be a 2-D int32"):
        paged_attention_cpu(q, k_cache, v_cache, tables.long(), cu, context, 1.0)
    with pytest.raises(ValueError, match="heads must be contiguous"):
        spread = k_cache.transpose(1, 2).contiguous().transpose(1, 2)  # [P, tpp, H, D], H outer
        paged_attention_cpu(q, spread, spread, tables, cu, context, 1.0)
    with pytest.raises(ValueError, match="cu_seqlens_q ends at"):
        paged_attention_cpu(q[:1], k_cache, v_cache, tables, cu, context, 1.0)


#: (H_kv, GQA group, head dim): GQA ratios 1, 2 and 4, odd head dims.
WINDOW_HEADS = [(2, 1, 80), (1, 2, 96), (2, 4, 16)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize(("num_kv_heads", "group", "head_dim"), WINDOW_HEADS)
@pytest.mark.parametrize("batch", sorted(WINDOW_BATCHES))
@pytest.mark.parametrize(("window", "softcap"), [(6, 0.0), (6, 30.0), (1, 50.0), (1000, 50.0)])
def test_window_and_softcap(dtype, num_kv_heads, group, head_dim, batch, window, softcap) -> None:
    """Pages before each sequence's first visible key are released (-1 in the table, NaN in
    the pool): the kernel never reads them and matches a dense masked softmax."""
    case = make_window_case(
        WINDOW_BATCHES[batch], window=window, softcap=softcap, num_kv_heads=num_kv_heads,
        group=group, head_dim=head_dim, dtype=dtype, seed=window + head_dim,
    )  # fmt: skip
    meta = case.meta
    out = paged_attention_cpu(
        case.q, case.k_cache, case.v_cache, meta.block_tables, meta.cu_seqlens_q,
        meta.context_lens, case.scale, window=window, softcap=softcap,
    )  # fmt: skip
    case.check(out, tol={torch.bfloat16: 3e-2}.get(dtype))


@pytest.mark.parametrize("kv_dtype", ["int8", "fp8_e4m3"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("batch", sorted(WINDOW_BATCHES))
def test_window_and_softcap_over_a_quantized_cache(kv_dtype, dtype, batch) -> None:
    case = make_window_case(
        WINDOW_BATCHES[batch], window=6, softcap=30.0, num_kv_heads=2, group=2, head_dim=80,
        dtype=dtype, kv_dtype=kv_dtype, seed=9,
    )  # fmt: skip
    meta = case.meta
    out = paged_attention_cpu(
        case.q, case.k_cache, case.v_cache, meta.block_tables, meta.cu_seqlens_q,
        meta.context_lens, case.scale, **case.scales, window=6, softcap=30.0,
    )  # fmt: skip
    case.check(out)


@pytest.mark.parametrize("kv_dtype", ["auto", "int8"])
@pytest.mark.parametrize(("window", "softcap"), [(7, 0.0), (7, 50.0), (0, 30.0)])
def test_backend_windows_kernel_rows_and_long_prefills(kv_dtype, window, softcap) -> None:
    """CpuBackend: decode and short rows through the C++ kernel, a prefill of more than
    MAX_KERNEL_QUERY_LEN rows through SDPA (or the soft-capped softmax), a chunk of it
    after a cached prefix that the window cuts into."""
    seqs = [(25, 1), (3, MAX_KERNEL_QUERY_LEN + 12), (19, 5), (14, 20), (40, 1)]
    case = make_window_case(
        seqs, window=window, softcap=softcap, num_kv_heads=2, group=2, head_dim=32,
        kv_dtype=kv_dtype, store=False, seed=4,
    )  # fmt: skip
    out = CpuBackend().forward(
        case.q, case.k, case.v, case.k_cache, case.v_cache, case.meta, case.scale,
        **case.scales, window=window, softcap=softcap,
    )  # fmt: skip
    case.check(out, tol=2e-5 if kv_dtype == "auto" else 1e-4)


def test_windowed_threads_match_one() -> None:
    case = make_window_case(
        [(1100, 1), (900, 2), (1200, 1), (1000, 1)], window=300, softcap=50.0,
        num_kv_heads=4, group=4, head_dim=128, tokens_per_page=16, seed=3,
    )  # fmt: skip
    meta = case.meta
    args = (case.q, case.k_cache, case.v_cache, meta.block_tables, meta.cu_seqlens_q,
            meta.context_lens, case.scale)  # fmt: skip
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = paged_attention_cpu(*args, window=300, softcap=50.0)
        torch.set_num_threads(4)
        many = paged_attention_cpu(*args, window=300, softcap=50.0)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, many)
    case.check(one, tol=1e-4)


def test_released_entries_inside_the_window_are_refused() -> None:
    case = make_window_case([(20, 1)], window=6, seed=1)
    meta = case.meta
    args = (case.q, case.k_cache, case.v_cache, meta.block_tables, meta.cu_seqlens_q,
            meta.context_lens, case.scale)  # fmt: skip
    paged_attention_cpu(*args, window=6)
    with pytest.raises(ValueError, match="page id -1 out of range"):
        paged_attention_cpu(*args, window=10)  # needs a page the window of 6 released
    with pytest.raises(ValueError, match="page id -1 out of range"):
        paged_attention_cpu(*args)
    with pytest.raises(ValueError, match="window must be"):
        paged_attention_cpu(*args, window=-1)
    with pytest.raises(ValueError, match="softcap finite"):
        paged_attention_cpu(*args, softcap=float("nan"))
