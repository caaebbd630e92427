"""Sliding-window and soft-capped attention cases shared by the backend tests.

A case is a batch of sequences (cached prefix, new tokens) of one member in a NaN-poisoned
pool, pages in a random order. As the engine does, pages wholly before the first key any of a
sequence's new queries can see are released: their block-table entries become -1 and their
bytes are poisoned again (NaN values, and NaN scales in a quantized cache), so a kernel that
reads such an entry or page shows up as a crash or a non-finite output. The expected output
is a dense masked softmax over the sequence's contiguous K/V, computed here in float64
independently of every backend.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from blendrt.cache import KVGeometry, PagePool
from blendrt.ops.attention import AttentionMetadata
from blendrt.ops.kv_quant import dequantize_kv_reference, quantize_kv_reference
from blendrt.ops.reference import store_kv_reference

TOL = {torch.float32: 2e-5, torch.float16: 3e-3, torch.bfloat16: 2e-2}


@dataclass
class WindowCase:
    q: torch.Tensor  # [T, H_q, D]
    k: torch.Tensor  # [T, H_kv, D] the step's new keys (stored already unless store=False)
    v: torch.Tensor  # [T, H_kv, D]
    k_cache: torch.Tensor  # [num_pages, tokens_per_page, H_kv, D]
    v_cache: torch.Tensor
    k_scale: torch.Tensor | None  # [num_pages, tokens_per_page, H_kv] float16, or None
    v_scale: torch.Tensor | None
    meta: AttentionMetadata  # block tables with the released entries at -1
    expected: torch.Tensor  # [T, H_q, D] float64
    scale: float
    window: int
    softcap: float

    @property
    def scales(self) -> dict[str, torch.Tensor | None]:
        return {"k_scale": self.k_scale, "v_scale": self.v_scale}

    def check(self, out: torch.Tensor, tol: float | None = None) -> None:
        assert out.shape == self.q.shape and out.dtype == self.q.dtype
        assert torch.isfinite(out).all(), "read a released or poisoned page"
        tol = TOL[out.dtype] if tol is None else tol
        torch.testing.assert_close(out.double(), self.expected, atol=tol, rtol=tol)


def dense_attention(
    q: torch.Tensor,  # [L, H_q, D] queries at positions first_pos .. first_pos + L - 1
    keys: torch.Tensor,  # [S, H_kv, D] keys at positions 0 .. S - 1
    values: torch.Tensor,  # [S, H_kv, D]
    first_pos: int,
    scale: float,
    window: int,
    softcap: float,
) -> torch.Tensor:  # [L, H_q, D] float64
    """transformers' eager attention: scores * scale, tanh soft-cap, causal + sliding mask."""
    group = q.shape[1] // keys.shape[1]
    k = keys.double().repeat_interleave(group, 1).transpose(0, 1)  # [H_q, S, D]
    v = values.double().repeat_interleave(group, 1).transpose(0, 1)
    scores = q.double().transpose(0, 1) @ k.transpose(1, 2) * scale  # [H_q, L, S]
    if softcap > 0:
        scores = softcap * torch.tanh(scores / softcap)
    q_idx = torch.arange(first_pos, first_pos + q.shape[0])[:, None]
    kv_idx = torch.arange(keys.shape[0])[None, :]
    visible = kv_idx <= q_idx
    if window > 0:
        visible &= kv_idx > q_idx - window
    probs = scores.masked_fill(~visible.to(scores.device), float("-inf")).softmax(-1)
    return (probs @ v).transpose(0, 1)


def make_window_case(
    seqs: list[tuple[int, int]],  # (cached prefix, new tokens) per sequence
    *,
    window: int,
    softcap: float = 0.0,
    num_kv_heads: int = 1,
    group: int = 1,
    head_dim: int = 16,
    dtype: torch.dtype = torch.float32,
    tokens_per_page: int = 4,
    kv_dtype: str = "auto",
    store: bool = True,
    device: torch.device | str = "cpu",
    seed: int = 0,
) -> WindowCase:
    gen = torch.Generator().manual_seed(seed)
    geometry = KVGeometry(2, num_kv_heads, head_dim, dtype, kv_dtype)
    page_bytes = -(-geometry.bytes_per_token * tokens_per_page // 256) * 256
    ctx = [p + n for p, n in seqs]
    need = [-(-c // tokens_per_page) + 1 for c in ctx]  # +1: tpp may round up
    num_pages = sum(need) + 4
    pool = PagePool(page_bytes, num_pages=num_pages, device=device)
    pool.buffer.fill_(0xFF)  # NaN in every float type (and every scale)
    kv = pool.register_member("m", geometry)
    layer = 1  # of 2: a non-zero offset inside each page
    k_cache, v_cache = kv.k_caches[layer], kv.v_caches[layer]
    k_scale = kv.k_scales[layer] if kv.k_scales else None
    v_scale = kv.v_scales[layer] if kv.v_scales else None
    tpp = kv.tokens_per_page
    width = max(-(-c // tpp) for c in ctx) + 2
    tables = torch.full((len(seqs), width), -1, dtype=torch.int32)
    free = torch.randperm(num_pages, generator=gen).tolist()
    qs, ks, vs, slots, expected, released = [], [], [], [], [], []
    scale = head_dim**-0.5 * 1.5
    for b, ((prefix, new), c) in enumerate(zip(seqs, ctx, strict=True)):
        pages = [free.pop() for _ in range(-(-c // tpp))]
        tables[b, : len(pages)] = torch.tensor(pages, dtype=torch.int32)
        keys = torch.randn(c, num_kv_heads, head_dim, generator=gen).to(dtype)
        values = torch.randn(c, num_kv_heads, head_dim, generator=gen).to(dtype)
        q = torch.randn(new, num_kv_heads * group, head_dim, generator=gen)
        # NOTE: with a cap, scores of about +-softcap / 2, where tanh is far from linear.
        q = (q * (softcap / 3 if softcap > 0 else 1.0)).to(dtype)
        pos = torch.arange(c)
        seq_slots = (tables[b, pos // tpp] * tpp + pos % tpp).to(torch.int32)
        stored = c if store else prefix
        store_kv_reference(
            keys[:stored].to(device), values[:stored].to(device), k_cache, v_cache,
            seq_slots[:stored].to(device), k_scale, v_scale,
        )  # fmt: skip
        ks.append(keys[prefix:])
        vs.append(values[prefix:])
        if kv_dtype != "auto":  # what the kernels read back
            keys = dequantize_kv_reference(*quantize_kv_reference(keys, kv_dtype), torch.float64)
            values = dequantize_kv_reference(
                *quantize_kv_reference(values, kv_dtype), torch.float64
            )
        expected.append(dense_attention(q, keys, values, prefix, scale, window, softcap))
        qs.append(q)
        slots.append(seq_slots[prefix:])
        first = max(0, prefix - window + 1) if window > 0 else 0
        for p in range(first // tpp):  # released: the engine writes -1, the page is reused
            released.append(int(tables[b, p]))
            tables[b, p] = -1
    pages_view = pool.buffer.view(num_pages, page_bytes)
    for page in released:
        pages_view[page] = 0xFF
    cu = [0]
    for _, n in seqs:
        cu.append(cu[-1] + n)
    meta = AttentionMetadata(
        slot_mapping=torch.cat(slots).to(device),
        block_tables=tables.to(device),
        cu_seqlens_q=torch.tensor(cu, dtype=torch.int32, device=device),
        context_lens=torch.tensor(ctx, dtype=torch.int32, device=device),
        max_query_len=max(n for _, n in seqs),
        max_context_len=max(ctx),
        cu_seqlens_q_host=tuple(cu),
        context_lens_host=tuple(ctx),
    )
    return WindowCase(
        q=torch.cat(qs).to(device), k=torch.cat(ks).to(device), v=torch.cat(vs).to(device),
        k_cache=k_cache, v_cache=v_cache, k_scale=k_scale, v_scale=v_scale, meta=meta,
        expected=torch.cat(expected).to(device), scale=scale, window=window, softcap=softcap,
    )  # fmt: skip


#: (cached prefix, new tokens) batches, with a window of 6 and pages of 4 tokens: decodes
#: whose window cuts pages away, a chunked prefill after a cached prefix the window cuts
#: into, a prefill longer than the window from scratch, and a sequence shorter than it.
WINDOW_BATCHES = {
    "decode": [(20, 1), (3, 1), (5, 1), (37, 1)],
    "extend": [(17, 9), (0, 15), (2, 3), (30, 1), (9, 1)],
}
