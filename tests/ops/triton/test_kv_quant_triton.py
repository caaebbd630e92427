"""The Triton kernels on a quantized KV cache (int8, fp8_e4m3; blendrt/ops/kv_quant.py).

store_kv quantizes inside the kernel, bit for bit what `quantize_kv_reference` writes (values
and float16 scales), and touches no other byte of the pool. extend and decode attention read
the one-byte caches and their scales, and match the torch paged reference run on the cache
dequantized by `dequantize_kv_reference`.

Without a GPU the kernels run in Triton's interpreter (tests/conftest.py): shapes stay small,
and only float32/float16 activations run there (the interpreter computes bf16 wrongly). Pools
are NaN-poisoned (every byte 0xFF, so every unwritten scale is NaN) and sequences take pages
in a random order, so a read of a page, slot or scale a sequence does not own shows up as a
non-finite output.
"""

from __future__ import annotations

import pytest
import torch

from blendrt.cache import KVGeometry, PagePool
from blendrt.ops.attention import AttentionMetadata
from blendrt.ops.kv_quant import dequantize_kv_reference, quantize_kv_reference
from blendrt.ops.reference import paged_attention_reference
from blendrt.ops.triton import decode_attention as da
from blendrt.ops.triton import extend_attention as ea
from blendrt.ops.triton import store_kv as sk
from blendrt.ops.triton.backend import TritonBackend

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
CACHE_DTYPES = ("int8", "fp8_e4m3")
TOL = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
LAYER = 1  # of 2: the layer's values and scales both sit at non-zero offsets in a page


def quantized_pool(geometry: KVGeometry, tpp: int, num_pages: int) -> tuple[PagePool, object]:
    """A NaN-poisoned pool whose member "m" (quantized) gets exactly `tpp` tokens per page,
    beside another member that shares the bytes."""
    page_bytes = -(-tpp * geometry.bytes_per_token // 256) * 256
    pool = PagePool(page_bytes, num_pages=num_pages, device=DEVICE)
    pool.buffer.fill_(0xFF)  # NaN in every float type (scales too), whatever the alignment
    kv = pool.register_member("m", geometry)
    assert kv.tokens_per_page == tpp and kv.k_scales is not None
    pool.register_member("other", KVGeometry(1, 1, 16, torch.float32))
    return pool, kv


def layer_views(kv, layer: int = LAYER) -> tuple[torch.Tensor, ...]:
    """(k_cache, v_cache, k_scale, v_scale) of one layer."""
    return kv.k_caches[layer], kv.v_caches[layer], kv.k_scales[layer], kv.v_scales[layer]


def store_reference(
    x: torch.Tensor,  # [T, H_kv, D]
    cache: torch.Tensor,  # [num_pages, tpp, H_kv, D] int8 | float8_e4m3fn
    scales: torch.Tensor,  # [num_pages, tpp, H_kv] float16
    slots: torch.Tensor,  # [T], -1 = skip
    cache_dtype: str,
) -> None:
    keep = slots >= 0
    q, s = quantize_kv_reference(x[keep], cache_dtype)
    slots = slots[keep].long()
    pages, offsets = slots // cache.shape[1], slots % cache.shape[1]
    # NOTE: through byte views: index_put has no float8 kernel.
    cache.view(torch.uint8)[pages, offsets] = q.view(torch.uint8)
    scales[pages, offsets] = s


def dequantized(cache: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return dequantize_kv_reference(cache, scales, dtype)  # [num_pages, tpp, H_kv, D]


def spread_rows(num_tokens: int, heads: int, head_dim: int, gen: torch.Generator) -> torch.Tensor:
    """Rows whose elements span 2^-20..2^1 (every fp8 exponent, its subnormals and values
    that round to zero) and a normal distribution's signs."""
    mag = torch.exp2(torch.randint(-20, 2, (num_tokens, heads, head_dim), generator=gen).float())
    return torch.randn(num_tokens, heads, head_dim, generator=gen) * mag


# Rows hitting exact ties of the rounding (their scale is exactly 1: amax = qmax), -0.0 and
# the carry out of the mantissa (fp8: 248 -> 256, 15 * 2^-10 -> 2^-6, subnormal to normal).
TIES = {
    "int8": [127.0, 0.5, 1.5, 2.5, -2.5, -0.5, 126.5, -0.0, 3.5, -125.5],
    "fp8_e4m3": [448.0, 17.0, 19.0, 2**-10, 3 * 2**-10, 1.0625, 1.1875, 248.0, 15 * 2**-10,
                 -17.0, -0.0, -(2**-11), 232.0, 5 * 2**-10],
}  # fmt: skip


@pytest.mark.parametrize("cache_dtype", CACHE_DTYPES)
@pytest.mark.parametrize(
    ("tpp", "heads", "head_dim", "dtype"),
    [
        (16, 2, 64, torch.float32),
        (48, 1, 80, torch.float16),
        (20, 3, 96, torch.float32),
        (16, 24, 128, torch.float16),  # two head blocks, the second half masked
    ],
)
def test_store_matches_reference_bit_for_bit(cache_dtype, tpp, heads, head_dim, dtype) -> None:
    gen = torch.Generator().manual_seed(tpp * heads + head_dim)
    geometry = KVGeometry(2, heads, head_dim, dtype, cache_dtype)
    pool, kv = quantized_pool(geometry, tpp, num_pages=6)
    k_cache, v_cache, k_scale, v_scale = layer_views(kv)
    num_tokens = 23
    slots = torch.randperm(6 * tpp, generator=gen)[:num_tokens].to(torch.int32)
    slots[3::7] = -1
    k = spread_rows(num_tokens, heads, head_dim, gen)
    ties = torch.tensor(TIES[cache_dtype])
    k[0, 0, : len(ties)], k[0, 0, len(ties) :] = ties, 0.0
    k[1, 0] = 0.0  # a row of zeros: scale 0, values 0
    if dtype == torch.float32:
        k[2, 0, 5] = 1e9  # amax / qmax past float16: the scale saturates at 65504
    # v is a strided view, as it comes out of the fused QKV projection.
    fused = torch.cat([k, torch.randn(num_tokens, 2 * heads, head_dim, generator=gen)], 1)
    fused = fused.to(DEVICE, dtype)
    k, v = fused[:, :heads], fused[:, 2 * heads :]
    slots = slots.to(DEVICE)
    assert slots[:3].min() >= 0 and not v.is_contiguous()

    before = pool.buffer.clone()
    sk.store_kv(k, v, k_cache, v_cache, slots, k_scale, v_scale)
    ref = before.clone()
    ref_views = [
        ref.view(t.dtype).as_strided(t.shape, t.stride(), t.storage_offset())
        for t in (k_cache, v_cache, k_scale, v_scale)
    ]
    store_reference(k, ref_views[0], ref_views[2], slots, cache_dtype)
    store_reference(v, ref_views[1], ref_views[3], slots, cache_dtype)
    # Byte for byte: values and scales equal the reference's; every other byte (NaN poison,
    # other layers, the other member's bytes) is untouched.
    assert torch.equal(pool.buffer, ref)
    assert not torch.equal(pool.buffer, before), "something must have been written"
    page, off = divmod(int(slots[1]), tpp)
    assert k_scale[page, off, 0].item() == 0.0
    assert not k_cache[page, off, 0].view(torch.uint8).any()
    page, off = divmod(int(slots[0]), tpp)
    assert k_scale[page, off, 0].item() == 1.0  # the tie row's amax is qmax


def test_store_rejects_mismatched_arguments() -> None:
    geometry = KVGeometry(2, 2, 64, torch.float16, "int8")
    _, kv = quantized_pool(geometry, 16, num_pages=2)
    k_cache, v_cache, k_scale, v_scale = layer_views(kv)
    k = torch.randn(3, 2, 64, device=DEVICE, dtype=torch.float16)
    slots = torch.arange(3, dtype=torch.int32, device=DEVICE)
    with pytest.raises(ValueError, match="needs its k_scale"):
        sk.store_kv(k, k, k_cache, v_cache, slots)
    with pytest.raises(ValueError, match="both"):
        sk.store_kv(k, k, k_cache, v_cache, slots, k_scale, None)
    with pytest.raises(ValueError, match="float16"):
        sk.store_kv(k, k, k_cache, v_cache, slots, k_scale.float(), v_scale.float())
    with pytest.raises(ValueError, match="int8 or float8"):
        plain = torch.zeros(k_cache.shape, dtype=torch.float16, device=DEVICE)
        sk.store_kv(k, k, plain, plain, slots, k_scale, v_scale)
    with pytest.raises(ValueError, match="do not fit"):
        sk.store_kv(k, k, k_cache, v_cache, slots, k_scale[:, :8], v_scale[:, :8])


class QuantBatch:
    """Sequences of one quantized member stored (by the reference) into scattered pages of
    layer LAYER; the block tables are padded with a page nobody writes."""

    def __init__(self, seqs, cache_dtype, head_dim, group, tpp, dtype, num_kv_heads, seed):
        gen = torch.Generator().manual_seed(seed)
        ctx = [p + n for p, n in seqs]
        needed = [-(-c // tpp) for c in ctx]
        num_pages = sum(needed) + 4
        geometry = KVGeometry(2, num_kv_heads, head_dim, dtype, cache_dtype)
        self.pool, kv = quantized_pool(geometry, tpp, num_pages)
        self.k_cache, self.v_cache, self.k_scale, self.v_scale = layer_views(kv)
        pages = torch.randperm(num_pages, generator=gen)
        pad_page, pages = int(pages[-1]), pages[:-1]
        self.block_tables = torch.full((len(seqs), max(needed) + 2), pad_page, dtype=torch.int32)
        queries = []
        for b, (c, n) in enumerate(zip(ctx, needed, strict=True)):
            self.block_tables[b, :n], pages = pages[:n], pages[n:]
            pos = torch.arange(c)
            slots = (self.block_tables[b, pos // tpp] * tpp + pos % tpp).to(DEVICE, torch.int32)
            for cache, scales in ((self.k_cache, self.k_scale), (self.v_cache, self.v_scale)):
                x = spread_rows(c, num_kv_heads, head_dim, gen) + torch.randn(
                    c, num_kv_heads, head_dim, generator=gen
                )
                store_reference(x.to(DEVICE, dtype), cache, scales, slots, cache_dtype)
            queries.append(torch.randn(seqs[b][1], num_kv_heads * group, head_dim, generator=gen))
        self.q = torch.cat(queries).to(DEVICE, dtype)  # [T, H_q, D]
        self.seqs, self.ctx, self.dtype = seqs, ctx, dtype
        lens = torch.tensor([n for _, n in seqs])
        self.cu = torch.cat([torch.zeros(1, dtype=torch.long), lens.cumsum(0)]).to(torch.int32)
        self.cu, self.block_tables = self.cu.to(DEVICE), self.block_tables.to(DEVICE)
        self.context_lens = torch.tensor(ctx, dtype=torch.int32, device=DEVICE)
        self.scale = 1.5 * head_dim**-0.5

    def scales(self) -> dict[str, torch.Tensor]:
        return dict(k_scale=self.k_scale, v_scale=self.v_scale)

    def reference(self, q: torch.Tensor | None = None) -> torch.Tensor:
        """Paged attention over the dequantized caches (in the activations' dtype)."""
        q = self.q if q is None else q
        k = dequantized(self.k_cache, self.k_scale, self.dtype)
        v = dequantized(self.v_cache, self.v_scale, self.dtype)
        return paged_attention_reference(
            q, k, v, self.block_tables, self.cu.tolist(), self.ctx, self.scale
        )


def check(out: torch.Tensor, ref: torch.Tensor) -> None:
    assert torch.isfinite(out).all(), "read a poisoned (unwritten) byte"
    tol = TOL[out.dtype]
    torch.testing.assert_close(out.float(), ref.float(), atol=tol, rtol=tol)


#: (cached prefix, new tokens): decodes, a prefill from scratch, prefixes ending mid-page and
#: on a page boundary, an empty query, an extend over several pages.
SEQS = [(0, 1), (0, 21), (13, 1), (16, 17), (0, 0), (35, 30)]
#: head_dim, group, tokens_per_page, dtype, num_kv_heads: odd head dims, GQA 1 and 4.
ATTENTION_CASES = [
    (80, 1, 16, torch.float16, 2),
    (96, 4, 16, torch.float32, 2),
    (80, 4, 20, torch.float32, 1),
    (96, 1, 48, torch.float16, 1),
    (256, 2, 16, torch.float16, 1),  # extend's quantized-only tiles at D = 256
]


@pytest.mark.parametrize("cache_dtype", CACHE_DTYPES)
@pytest.mark.parametrize(("head_dim", "group", "tpp", "dtype", "kv_heads"), ATTENTION_CASES)
def test_extend_attention(cache_dtype, head_dim, group, tpp, dtype, kv_heads) -> None:
    batch = QuantBatch(SEQS, cache_dtype, head_dim, group, tpp, dtype, kv_heads, seed=tpp + group)
    out = ea.extend_attention(
        batch.q, batch.k_cache, batch.v_cache, batch.block_tables, batch.cu,
        batch.context_lens, batch.scale, max_query_len=30, **batch.scales(),
    )  # fmt: skip
    assert out.shape == batch.q.shape and out.dtype == dtype
    check(out, batch.reference())


@pytest.mark.parametrize("cache_dtype", CACHE_DTYPES)
@pytest.mark.parametrize("head_dim", [128, 256])
def test_extend_attention_sm80_tiles(monkeypatch, cache_dtype, head_dim) -> None:
    """The tiles extend_config picks for quantized caches on sm_80 (8 warps; 32x32 at 256)."""
    monkeypatch.setattr(ea, "_capability", lambda device: 80)
    cfg = ea.extend_config(head_dim, 4, torch.float16, 80, quantized=True)
    assert cfg != ea.extend_config(head_dim, 4, torch.float16, 80)
    batch = QuantBatch(SEQS, cache_dtype, head_dim, 4, 16, torch.float16, 1, seed=head_dim)
    out = ea.extend_attention(
        batch.q, batch.k_cache, batch.v_cache, batch.block_tables, batch.cu,
        batch.context_lens, batch.scale, max_query_len=30, **batch.scales(),
    )  # fmt: skip
    check(out, batch.reference())


@pytest.mark.parametrize("cache_dtype", CACHE_DTYPES)
@pytest.mark.parametrize(("head_dim", "group", "tpp", "dtype", "kv_heads"), ATTENTION_CASES)
def test_decode_attention(cache_dtype, head_dim, group, tpp, dtype, kv_heads) -> None:
    seqs = [(0, 1), (36, 1), (47, 1), (99, 1)]  # one token; ending mid-page; on a page end
    batch = QuantBatch(seqs, cache_dtype, head_dim, group, tpp, dtype, kv_heads, seed=tpp)
    ref = batch.reference()
    for num_splits in (None, 3):  # one split per sequence, and splits of whole blocks
        out = da.decode_attention(
            batch.q, batch.k_cache, batch.v_cache, batch.block_tables, batch.context_lens,
            batch.scale, max_context_len=100, num_splits=num_splits, **batch.scales(),
        )  # fmt: skip
        assert out.shape == batch.q.shape and out.dtype == dtype
        check(out, ref)


def test_attention_reads_the_scales() -> None:
    """Doubling one token's K scale changes the outputs that see it, and only those."""
    batch = QuantBatch([(0, 3), (20, 1)], "int8", 64, 2, 16, torch.float32, 1, seed=3)
    page = int(batch.block_tables[0, 0])
    batch.k_scale[page, 1] *= 2  # sequence 0, position 1
    extend = ea.extend_attention(
        batch.q, batch.k_cache, batch.v_cache, batch.block_tables, batch.cu,
        batch.context_lens, batch.scale, max_query_len=3, **batch.scales(),
    )  # fmt: skip
    check(extend, batch.reference())
    before = QuantBatch([(0, 3), (20, 1)], "int8", 64, 2, 16, torch.float32, 1, seed=3)
    assert torch.equal(before.q, batch.q)
    untouched = before.reference()
    check(extend[0], untouched[0])  # position 0 does not see position 1
    assert (extend[1:3] - untouched[1:3]).abs().amax() > 1e-2
    check(extend[3], untouched[3])  # another sequence's pages


def test_attention_rejects_mismatched_arguments() -> None:
    batch = QuantBatch([(0, 1)], "fp8_e4m3", 64, 1, 16, torch.float16, 1, seed=0)
    args = (batch.q, batch.k_cache, batch.v_cache, batch.block_tables)
    with pytest.raises(ValueError, match="needs its k_scale"):
        ea.extend_attention(*args, batch.cu, batch.context_lens, 1.0, max_query_len=1)
    with pytest.raises(ValueError, match="needs its k_scale"):
        da.decode_attention(*args, batch.context_lens, 1.0, max_context_len=1)
    with pytest.raises(ValueError, match="both"):
        da.decode_attention(
            *args, batch.context_lens, 1.0, max_context_len=1, k_scale=batch.k_scale
        )


@pytest.mark.parametrize("cache_dtype", CACHE_DTYPES)
def test_backend_stores_then_attends(cache_dtype) -> None:
    """TritonBackend.forward hands the scales to store_kv and to both attention kernels:
    a prefill (extend) and a decode step, against the reference on what was stored."""
    gen = torch.Generator().manual_seed(9)
    heads, group, head_dim, tpp, dtype = 2, 2, 80, 16, torch.float16
    geometry = KVGeometry(2, heads, head_dim, dtype, cache_dtype)
    _, kv = quantized_pool(geometry, tpp, num_pages=8)
    k_cache, v_cache, k_scale, v_scale = layer_views(kv)
    backend = TritonBackend()
    # Page 4 pads sequence 0's row and is never written.
    block_tables = torch.tensor([[5, 2, 4], [0, 3, 6]], dtype=torch.int32, device=DEVICE)
    lens = [19, 33]  # prefill both, then decode one token each
    for step, (cached, new) in enumerate([((0, 0), (19, 33)), ((19, 33), (1, 1))]):
        context = [c + n for c, n in zip(cached, new, strict=True)]
        slots = []
        for b, (c, n) in enumerate(zip(cached, new, strict=True)):
            pos = torch.arange(c, c + n, device=DEVICE)
            slots.append(block_tables[b, pos // tpp] * tpp + pos % tpp)
        slots = torch.cat(slots).to(torch.int32)
        num_tokens = sum(new)
        q = torch.randn(num_tokens, heads * group, head_dim, generator=gen).to(DEVICE, dtype)
        k = spread_rows(num_tokens, heads, head_dim, gen).to(DEVICE, dtype)
        v = torch.randn(num_tokens, heads, head_dim, generator=gen).to(DEVICE, dtype)
        cu = [0, new[0], num_tokens]
        meta = AttentionMetadata(
            slot_mapping=slots, block_tables=block_tables,
            cu_seqlens_q=torch.tensor(cu, dtype=torch.int32, device=DEVICE),
            context_lens=torch.tensor(context, dtype=torch.int32, device=DEVICE),
            max_query_len=max(new), max_context_len=max(context),
            cu_seqlens_q_host=tuple(cu), context_lens_host=tuple(context),
        )  # fmt: skip
        assert meta.is_decode_only == (step == 1)
        out = backend.forward(q, k, v, k_cache, v_cache, meta, 0.1, k_scale, v_scale)
        want_k, want_s = quantize_kv_reference(k, cache_dtype)
        pages, offsets = (slots // tpp).long(), (slots % tpp).long()
        assert torch.equal(k_cache.view(torch.uint8)[pages, offsets], want_k.view(torch.uint8))
        assert torch.equal(k_scale[pages, offsets], want_s)
        ref = paged_attention_reference(
            q, dequantized(k_cache, k_scale, dtype), dequantized(v_cache, v_scale, dtype),
            block_tables, cu, context, 0.1,
        )  # fmt: skip
        check(out, ref)
    assert context == [n + 1 for n in lens]


@pytest.mark.parametrize(
    "module", [sk, ea, da], ids=["store_kv", "extend_attention", "decode_attention"]
)
def test_aot_targets_include_quantized_caches(module) -> None:
    """The kernels each module's aot_targets lists for blendrt.ops.aot (which passes the
    capability where the function takes one): every argument typed, the cache as int8 or
    uint8 (fp8 bits) beside fp16 scales, and the unquantized kernel without scales."""
    kwargs = {} if module is sk else dict(capability=80)
    targets = module.aot_targets(96, 4, torch.float16, **kwargs)
    by_dtype = {t["constexprs"].get("KV_DTYPE"): t for t in targets}
    assert {"auto", "int8", "fp8_e4m3"} <= set(by_dtype)
    for t in targets:
        assert list(t["signature"]) == t["fn"].arg_names
        consts = {n for n, ty in t["signature"].items() if ty == "constexpr"}
        assert consts == set(t["constexprs"])
    cache = "k_cache_ptr" if module is not da else "k_ptr"
    assert by_dtype["auto"]["signature"][cache] == "*fp16"
    assert by_dtype["auto"]["constexprs"]["k_scale_ptr"] is None
    for kv_dtype, ptr in (("int8", "*i8"), ("fp8_e4m3", "*u8")):
        signature = by_dtype[kv_dtype]["signature"]
        assert signature[cache] == ptr and signature["k_scale_ptr"] == "*fp16"
