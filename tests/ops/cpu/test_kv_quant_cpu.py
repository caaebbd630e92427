"""Quantized KV on the CPU: the C++ store writes exactly the reference's values and scales
(bit for bit: int8 and fp8 e4m3, float32/16/bf16 rows, zero and extreme rows, every float16
value for the fp8 rounding), and C++ paged attention over a quantized cache equals the
reference over the same cache (dequantized)."""

from __future__ import annotations

import pytest
import torch

from blendrt.cache.pool import KVGeometry, PagePool
from blendrt.ops.cpu.attention import paged_attention_cpu
from blendrt.ops.cpu.store_kv import store_kv_cpu
from blendrt.ops.kv_quant import dequantize_kv_reference, quantize_kv_reference
from blendrt.ops.reference import paged_attention_reference, store_kv_reference

KINDS = ("int8", "fp8_e4m3")
DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _pool(kind: str, dtype: torch.dtype, heads: int, head_dim: int, pages: int = 8):
    pool = PagePool(8192, num_pages=pages)
    pool.buffer.zero_()
    return pool, pool.register_member("m", KVGeometry(1, heads, head_dim, dtype, kind))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_store_writes_the_references_bytes(kind: str, dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(7)
    heads, head_dim, rows = 3, 80, 48
    magnitudes = torch.logspace(-7, 4, rows)[:, None, None]  # tiny to large rows
    k = (torch.randn(rows, heads, head_dim, generator=g) * magnitudes).to(dtype)
    v = torch.randn(rows, heads, head_dim, generator=g).to(dtype)
    k[5] = 0  # a zero row: scale 0, values 0
    (a, va), (b, vb) = _pool(kind, dtype, heads, head_dim), _pool(kind, dtype, heads, head_dim)
    slots = torch.randperm(8 * va.tokens_per_page, generator=g)[:rows].int()
    slots[3] = -1  # skipped
    store_kv_cpu(k, v, va.k_caches[0], va.v_caches[0], slots, va.k_scales[0], va.v_scales[0])
    store_kv_reference(k, v, vb.k_caches[0], vb.v_caches[0], slots, vb.k_scales[0], vb.v_scales[0])
    assert torch.equal(a.buffer, b.buffer)
    page, offset = divmod(int(slots[5]), va.tokens_per_page)
    assert (va.k_scales[0][page, offset] == 0).all()


def test_fp8_rounding_matches_torch_for_every_float16_value() -> None:
    """Rows whose largest value is 448 have scale 1, so each value is encoded as it is: the
    C++ encoder must give torch's float8_e4m3fn for all of them (ties to even, subnormals)."""
    values = torch.arange(0, 1 << 16, dtype=torch.int32).to(torch.int16).view(torch.float16)
    values = values[values.isfinite() & (values.abs() <= 448)].float()
    width = 64
    values = torch.cat([values, torch.zeros(-len(values) % (width - 1))]).view(-1, width - 1)
    rows = torch.cat([values, torch.full((len(values), 1), 448.0)], dim=1)[:, None, :]
    _, view = _pool("fp8_e4m3", torch.float32, 1, width, pages=len(rows) // 16 + 2)
    slots = torch.arange(len(rows), dtype=torch.int32)
    caches = (view.k_caches[0], view.v_caches[0])
    store_kv_cpu(rows, rows, *caches, slots, view.k_scales[0], view.v_scales[0])
    stored = view.k_caches[0].reshape(-1, 1, width)[: len(rows)]
    expected, scales = quantize_kv_reference(rows, "fp8_e4m3")
    assert (scales == 1).all()
    assert torch.equal(stored.view(torch.uint8), expected.view(torch.uint8))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("group,query_len", [(1, 1), (4, 1), (4, 6)])
def test_attention_over_a_quantized_cache(kind, dtype, group: int, query_len: int) -> None:
    g = torch.Generator().manual_seed(group * 10 + query_len)
    heads, head_dim = 2, 80
    _, view = _pool(kind, dtype, heads, head_dim, pages=6)
    tpp = view.tokens_per_page
    lens = [2 * tpp + 5, tpp - 1]  # two sequences, the second within one page
    tables = torch.tensor([[4, 0, 2], [5, -1, -1]], dtype=torch.int32)
    for b, n in enumerate(lens):
        slots = torch.tensor(
            [int(tables[b, t // tpp]) * tpp + t % tpp for t in range(n)], dtype=torch.int32
        )
        k = torch.randn(n, heads, head_dim, generator=g).to(dtype)
        v = torch.randn(n, heads, head_dim, generator=g).to(dtype)
        store_kv_cpu(k, v, view.k_caches[0], view.v_caches[0], slots, view.k_scales[0],
                     view.v_scales[0])  # fmt: skip
    q = torch.randn(2 * query_len, heads * group, head_dim, generator=g).to(dtype)
    cu = [0, query_len, 2 * query_len]
    scales = {"k_scale": view.k_scales[0], "v_scale": view.v_scales[0]}
    got = paged_attention_cpu(
        q, view.k_caches[0], view.v_caches[0], tables, torch.tensor(cu, dtype=torch.int32),
        torch.tensor(lens, dtype=torch.int32), 0.125, **scales,
    )  # fmt: skip
    expected = paged_attention_reference(
        q, view.k_caches[0], view.v_caches[0], tables, cu, lens, 0.125, **scales
    )
    tol = 1e-5 if dtype == torch.float32 else 2e-3
    torch.testing.assert_close(got, expected, rtol=tol, atol=tol)
    # and the reference really dequantized: against a float cache of the dequantized rows
    k0 = dequantize_kv_reference(view.k_caches[0], view.k_scales[0], torch.float32)
    v0 = dequantize_kv_reference(view.v_caches[0], view.v_scales[0], torch.float32)
    plain = paged_attention_reference(q.float(), k0, v0, tables, cu, lens, 0.125)
    torch.testing.assert_close(expected.float(), plain, rtol=tol, atol=tol)


def test_launchers_refuse_a_quantized_cache_without_scales() -> None:
    _, view = _pool("int8", torch.float32, 1, 16)
    k = torch.randn(1, 1, 16)
    with pytest.raises(ValueError, match="needs k_scale"):
        store_kv_cpu(k, k, view.k_caches[0], view.v_caches[0], torch.zeros(1, dtype=torch.int32))
    with pytest.raises(ValueError, match="float16"):
        store_kv_cpu(k, k, view.k_caches[0], view.v_caches[0], torch.zeros(1, dtype=torch.int32),
                     view.k_scales[0].float(), view.v_scales[0].float())  # fmt: skip
