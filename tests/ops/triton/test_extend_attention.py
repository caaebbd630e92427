"""extend_attention against the torch paged reference and against SDPA on contiguous K/V.

Pages come in a random order from a pool larger than needed; every byte not written is NaN
(unused pages, the tails of last pages, and the page the block tables are padded with), so
any read past a sequence's tokens or pages shows up as a non-finite output.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from blendrt.cache import KVGeometry, PagePool
from blendrt.ops.reference import paged_attention_reference, store_kv_reference
from blendrt.ops.triton.extend_attention import extend_attention

#: (cached prefix, new tokens) per sequence: decodes, prefills from scratch, prefixes ending
#: mid-page and on page boundaries, an empty query, and a long one.
MIXED = [(0, 1), (0, 45), (23, 1), (37, 64), (0, 0), (100, 300)]
#: The same mix, shorter, where the interpreter's small tiles would make 300 tokens slow.
SHORT = [(0, 1), (0, 45), (23, 1), (37, 64), (0, 0), (50, 120)]
#: On a GPU the kernels are compiled; without one they run in Triton's interpreter.
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def pool_for(geometries: dict[str, KVGeometry], tpp: int, num_pages: int) -> PagePool:
    """A NaN-poisoned pool whose first member gets exactly `tpp` tokens per page."""
    first = next(iter(geometries.values()))
    pool = PagePool(
        -(-tpp * first.bytes_per_token // 256) * 256, num_pages=num_pages, device=DEVICE
    )
    pool.buffer.fill_(0xFF)  # NaN in every float type, whatever the alignment
    for name, geometry in geometries.items():
        pool.register_member(name, geometry)
    assert pool.members[next(iter(geometries))].tokens_per_page == tpp
    return pool


class PagedBatch:
    """Sequences of one member stored into scattered pages, and their contiguous K/V/Q."""

    def __init__(self, seqs, k_cache, v_cache, pages, group, pad_page, seed=0):
        gen = torch.Generator().manual_seed(seed)
        _, tpp, heads, dim = k_cache.shape
        dtype = k_cache.dtype
        self.k_cache, self.v_cache, self.seqs = k_cache, v_cache, seqs
        self.ctx = [p + n for p, n in seqs]
        needed = [-(-c // tpp) for c in self.ctx]
        width = max(needed) + 2
        self.block_tables = torch.full((len(seqs), width), int(pad_page), dtype=torch.int32)
        self.keys, self.values, queries = [], [], []
        for b, (c, n) in enumerate(zip(self.ctx, needed, strict=True)):
            mine, pages = pages[:n], pages[n:]
            self.block_tables[b, :n] = mine
            k = torch.randn(c, heads, dim, generator=gen).to(DEVICE, dtype)
            v = torch.randn(c, heads, dim, generator=gen).to(DEVICE, dtype)
            pos = torch.arange(c)
            slots = (self.block_tables[b, pos // tpp] * tpp + pos % tpp).to(DEVICE, torch.int32)
            store_kv_reference(k, v, k_cache, v_cache, slots)
            self.keys.append(k)
            self.values.append(v)
            queries.append(torch.randn(seqs[b][1], heads * group, dim, generator=gen))
        self.q = torch.cat(queries).to(DEVICE, dtype)  # [T, H_q, D]
        lens = torch.tensor([n for _, n in seqs])
        self.cu = torch.cat([torch.zeros(1, dtype=torch.long), lens.cumsum(0)]).to(torch.int32)
        self.cu = self.cu.to(DEVICE)
        self.context_lens = torch.tensor(self.ctx, dtype=torch.int32, device=DEVICE)
        self.block_tables = self.block_tables.to(DEVICE)
        self.scale = dim**-0.5

    def run(self) -> torch.Tensor:
        return extend_attention(
            self.q, self.k_cache, self.v_cache, self.block_tables, self.cu,
            self.context_lens, self.scale, max_query_len=max(n for _, n in self.seqs),
        )  # fmt: skip

    def reference(self) -> torch.Tensor:
        return paged_attention_reference(
            self.q, self.k_cache, self.v_cache, self.block_tables, self.cu.tolist(),
            self.ctx, self.scale,
        )  # fmt: skip

    def sdpa(self) -> torch.Tensor:
        """Plain causal attention with the query block aligned to the end of the keys."""
        out = torch.zeros(self.q.shape, dtype=torch.float32, device=DEVICE)
        group = self.q.shape[1] // self.k_cache.shape[2]
        for b, (prefix, n) in enumerate(self.seqs):
            if n == 0:
                continue
            rows = slice(int(self.cu[b]), int(self.cu[b + 1]))
            q = self.q[rows].float().transpose(0, 1)  # [H_q, n, D]
            k, v = (
                t.float().repeat_interleave(group, dim=1).transpose(0, 1)
                for t in (self.keys[b], self.values[b])
            )  # [H_q, ctx, D]
            mask = torch.ones(n, prefix + n, dtype=torch.bool, device=DEVICE).tril(prefix)
            attn = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale)
            out[rows] = attn.transpose(0, 1)
        return out


def check(batch: PagedBatch, out: torch.Tensor) -> None:
    assert torch.isfinite(out).all(), "read a poisoned (unwritten) byte"
    tol = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}[out.dtype]
    torch.testing.assert_close(out.float(), batch.reference().float(), atol=tol, rtol=tol)
    torch.testing.assert_close(out.float(), batch.sdpa(), atol=tol, rtol=tol)


CUDA_ONLY = pytest.mark.skipif(DEVICE == "cpu", reason="bf16 is wrong in the interpreter")


@pytest.mark.parametrize(
    ("head_dim", "group", "tpp", "dtype", "seqs"),
    [
        (64, 1, 16, torch.float32, SHORT),
        (80, 2, 48, torch.float16, MIXED),
        (96, 4, 100, torch.float32, SHORT),
        (128, 8, 16, torch.float16, MIXED),
        (256, 3, 48, torch.float16, SHORT),
        (64, 5, 100, torch.float16, SHORT),
        pytest.param(128, 4, 16, torch.bfloat16, MIXED, marks=CUDA_ONLY),
        pytest.param(256, 2, 48, torch.bfloat16, MIXED, marks=CUDA_ONLY),
    ],
)
def test_mixed_batch(head_dim: int, group: int, tpp: int, dtype: torch.dtype, seqs) -> None:
    geometry = KVGeometry(2, 1, head_dim, dtype)
    num_pages = sum(-(-(p + n) // tpp) for p, n in seqs) + 6
    pool = pool_for({"m": geometry}, tpp, num_pages)
    kv = pool.members["m"]
    pages = torch.randperm(num_pages, generator=torch.Generator().manual_seed(tpp))
    # The last page id stays unwritten (all NaN) and pads the block tables.
    batch = PagedBatch(seqs, kv.k_caches[1], kv.v_caches[1], pages[:-1], group, pages[-1])
    check(batch, batch.run())


def test_gqa_with_two_kv_heads() -> None:
    """Heads of the second KV group read their own KV head (offset by the head stride)."""
    geometry = KVGeometry(1, 2, 64, torch.float32)
    pool = pool_for({"m": geometry}, 16, 12)
    kv = pool.members["m"]
    pages = torch.randperm(12, generator=torch.Generator().manual_seed(1))
    batch = PagedBatch([(5, 20), (30, 1)], kv.k_caches[0], kv.v_caches[0], pages[:-1], 4,
                       pages[-1])  # fmt: skip
    check(batch, batch.run())


def test_two_members_share_one_pool() -> None:
    """Members of different geometry (dtype, heads, head dim, tokens per page) take
    interleaved pages of the same buffer; each computes its own attention correctly."""
    a = KVGeometry(2, 2, 80, torch.float16)
    b = KVGeometry(1, 1, 128, torch.float32)
    pool = pool_for({"a": a, "b": b}, 16, 24)
    kv_a, kv_b = pool.members["a"], pool.members["b"]
    assert kv_a.tokens_per_page != kv_b.tokens_per_page
    pages = torch.randperm(24, generator=torch.Generator().manual_seed(2))
    seqs_a, seqs_b = [(20, 13), (0, 40)], [(7, 30), (50, 1)]
    batch_a = PagedBatch(seqs_a, kv_a.k_caches[1], kv_a.v_caches[1], pages[0:-1:2], 2,
                         pages[-1], seed=3)  # fmt: skip
    batch_b = PagedBatch(seqs_b, kv_b.k_caches[0], kv_b.v_caches[0], pages[1:-1:2], 3,
                         pages[-1], seed=4)  # fmt: skip
    check(batch_a, batch_a.run())
    check(batch_b, batch_b.run())
