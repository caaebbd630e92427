"""Torch reference paged attention: gather each sequence's pages, then plain attention.

Slow but obviously right: the ground truth the Triton kernels and the CPU backend are tested
against, and, as ReferenceBackend, a backend for checking them inside a whole model.
"""

from __future__ import annotations

from collections.abc import Collection

import torch
import torch.nn.functional as F

from blendrt.ops.attention import (
    AttentionBackend,
    AttentionMetadata,
    first_visible_key,
    softcap_scores,
)
from blendrt.ops.kv_quant import cache_dtype_of, dequantize_kv_reference, quantize_kv_reference


def store_kv_reference(
    k: torch.Tensor,  # [T, H_kv, D]
    v: torch.Tensor,  # [T, H_kv, D]
    k_cache: torch.Tensor,  # [num_pages, tokens_per_page, H_kv, D]
    v_cache: torch.Tensor,  # [num_pages, tokens_per_page, H_kv, D]
    slot_mapping: torch.Tensor,  # [T] int, -1 = skip
    k_scale: torch.Tensor | None = None,  # [num_pages, tokens_per_page, H_kv] float16
    v_scale: torch.Tensor | None = None,  # quantized caches (blendrt/ops/kv_quant.py)
) -> None:
    keep = slot_mapping >= 0
    slots = slot_mapping[keep].long()
    tokens_per_page = k_cache.shape[1]
    pages, offsets = slots // tokens_per_page, slots % tokens_per_page
    if k_scale is None:
        k_cache[pages, offsets] = k[keep].to(k_cache.dtype)
        v_cache[pages, offsets] = v[keep].to(v_cache.dtype)
        return
    kind = cache_dtype_of(k_cache)
    for rows, cache, scales in ((k, k_cache, k_scale), (v, v_cache, v_scale)):
        values, row_scales = quantize_kv_reference(rows[keep], kind)
        cache[pages, offsets] = values
        scales[pages, offsets] = row_scales


def gather_pages(
    cache: torch.Tensor,  # [num_pages, tokens_per_page, H_kv, D]
    block_table: torch.Tensor,  # [W] page ids
    num_tokens: int,
    scales: torch.Tensor | None = None,  # [num_pages, tokens_per_page, H_kv]: dequantize
    first_token: int = 0,
) -> torch.Tensor:  # [num_tokens - first_token, H_kv, D] (float32 when dequantized)
    """Tokens [first_token, num_tokens) of one sequence. NOTE: only the table's entries from
    the page of `first_token` on are read (those before may be -1: released pages)."""
    tokens_per_page = cache.shape[1]
    first_page = first_token // tokens_per_page
    num_pages = -(-num_tokens // tokens_per_page)
    table = block_table[first_page:num_pages].long()
    skip = first_token - first_page * tokens_per_page
    rows = cache[table].reshape(-1, *cache.shape[2:])  # [pages * tokens_per_page, H_kv, D]
    rows = rows[skip : num_tokens - first_page * tokens_per_page]
    if scales is None:
        return rows
    row_scales = scales[table].reshape(-1, cache.shape[2])
    row_scales = row_scales[skip : num_tokens - first_page * tokens_per_page]
    return dequantize_kv_reference(rows, row_scales, torch.float32)


def visible_mask(
    query_pos: torch.Tensor,  # [Lq] absolute positions
    key_pos: torch.Tensor,  # [S] absolute positions
    window: int = 0,
) -> torch.Tensor:  # [Lq, S] bool: causal, and within the window when window > 0
    mask = key_pos[None, :] <= query_pos[:, None]
    if window > 0:
        mask &= key_pos[None, :] > query_pos[:, None] - window
    return mask


def paged_attention_reference(
    q: torch.Tensor,  # [T, H_q, D]
    k_cache: torch.Tensor,  # [num_pages, tokens_per_page, H_kv, D]
    v_cache: torch.Tensor,  # [num_pages, tokens_per_page, H_kv, D]
    block_tables: torch.Tensor,  # [B, W]
    cu_seqlens_q: list[int] | tuple[int, ...],  # B + 1
    context_lens: list[int] | tuple[int, ...],  # B
    scale: float,
    skip: Collection[int] = (),
    k_scale: torch.Tensor | None = None,  # [num_pages, tokens_per_page, H_kv]: quantized
    v_scale: torch.Tensor | None = None,
    *,
    window: int = 0,
    softcap: float = 0.0,
) -> torch.Tensor:  # [T, H_q, D]
    """Query i of sequence b sits at position p = context_lens[b] - query_len_b + i and
    attends to keys j <= p (and p - window < j with a window), its scores soft-capped when
    softcap > 0. Computed in float32. Rows of sequences in `skip` are left unwritten (the
    caller fills them). Reads no block-table entry before the first visible key's page."""
    out = torch.empty_like(q)
    group = q.shape[1] // k_cache.shape[2]
    for b, context_len in enumerate(context_lens):
        start, end = cu_seqlens_q[b], cu_seqlens_q[b + 1]
        if end == start or b in skip:
            continue
        first = first_visible_key(context_len - (end - start), window)
        keys = gather_pages(k_cache, block_tables[b], context_len, k_scale, first).float()
        values = gather_pages(v_cache, block_tables[b], context_len, v_scale, first).float()
        keys = keys.repeat_interleave(group, dim=1).transpose(0, 1)  # [H_q, S, D]
        values = values.repeat_interleave(group, dim=1).transpose(0, 1)
        queries = q[start:end].float().transpose(0, 1)  # [H_q, Lq, D]
        query_pos = torch.arange(context_len - (end - start), context_len, device=q.device)
        key_pos = torch.arange(first, context_len, device=q.device)
        mask = visible_mask(query_pos, key_pos, window)  # [Lq, S]
        if softcap > 0:
            scores = softcap_scores(queries @ keys.transpose(1, 2) * scale, softcap)
            probs = scores.masked_fill(~mask, float("-inf")).softmax(dim=-1)
            attn = probs @ values  # [H_q, Lq, D]
        else:
            attn = F.scaled_dot_product_attention(
                queries, keys, values, attn_mask=mask, scale=scale
            )  # [H_q, Lq, D]
        out[start:end] = attn.transpose(0, 1).to(q.dtype)
    return out


class ReferenceBackend(AttentionBackend):
    """The torch reference as a backend: gather each sequence's pages, then attention.
    Slow; for checking the other backends inside a whole engine."""

    name = "reference"

    def forward(
        self,
        q: torch.Tensor,  # [T, H_q, D]
        k: torch.Tensor,  # [T, H_kv, D]
        v: torch.Tensor,  # [T, H_kv, D]
        k_cache: torch.Tensor,  # [num_pages, tokens_per_page, H_kv, D]
        v_cache: torch.Tensor,
        meta: AttentionMetadata,
        scale: float,
        k_scale: torch.Tensor | None = None,
        v_scale: torch.Tensor | None = None,
        *,
        window: int = 0,
        softcap: float = 0.0,
    ) -> torch.Tensor:  # [T, H_q, D]
        store_kv_reference(k, v, k_cache, v_cache, meta.slot_mapping, k_scale, v_scale)
        return paged_attention_reference(
            q,
            k_cache,
            v_cache,
            meta.block_tables,
            meta.cu_seqlens_q_host,
            meta.context_lens_host,
            scale,
            k_scale=k_scale,
            v_scale=v_scale,
            window=window,
            softcap=softcap,
        )
