"""Torch reference paged attention: gather each sequence's pages, then plain attention.

Slow but obviously right: the ground truth the Triton kernels and the CPU backend are tested
against, and, as ReferenceBackend, a backend for checking them inside a whole model.
"""

from __future__ import annotations

from collections.abc import Collection

import torch
import torch.nn.functional as F

from blendrt.ops.attention import AttentionBackend, AttentionMetadata


def store_kv_reference(
    k: torch.Tensor,  # [T, H_kv, D]
    v: torch.Tensor,  # [T, H_kv, D]
    k_cache: torch.Tensor,  # [num_pages, tokens_per_page, H_kv, D]
    v_cache: torch.Tensor,  # [num_pages, tokens_per_page, H_kv, D]
    slot_mapping: torch.Tensor,  # [T] int, -1 = skip
) -> None:
    keep = slot_mapping >= 0
    slots = slot_mapping[keep].long()
    tokens_per_page = k_cache.shape[1]
    pages, offsets = slots // tokens_per_page, slots % tokens_per_page
    k_cache[pages, offsets] = k[keep].to(k_cache.dtype)
    v_cache[pages, offsets] = v[keep].to(v_cache.dtype)


def gather_pages(
    cache: torch.Tensor,  # [num_pages, tokens_per_page, H_kv, D]
    block_table: torch.Tensor,  # [W] page ids
    num_tokens: int,
) -> torch.Tensor:  # [num_tokens, H_kv, D]
    tokens_per_page = cache.shape[1]
    num_pages = -(-num_tokens // tokens_per_page)
    pages = cache[block_table[:num_pages].long()]  # [num_pages, tokens_per_page, H_kv, D]
    return pages.reshape(-1, *cache.shape[2:])[:num_tokens]


def paged_attention_reference(
    q: torch.Tensor,  # [T, H_q, D]
    k_cache: torch.Tensor,  # [num_pages, tokens_per_page, H_kv, D]
    v_cache: torch.Tensor,  # [num_pages, tokens_per_page, H_kv, D]
    block_tables: torch.Tensor,  # [B, W]
    cu_seqlens_q: list[int] | tuple[int, ...],  # B + 1
    context_lens: list[int] | tuple[int, ...],  # B
    scale: float,
    skip: Collection[int] = (),
) -> torch.Tensor:  # [T, H_q, D]
    """Query i of sequence b sits at position context_lens[b] - query_len_b + i and attends
    to keys 0..that position. Computed in float32. Rows of sequences in `skip` are left
    unwritten (the caller fills them)."""
    out = torch.empty_like(q)
    group = q.shape[1] // k_cache.shape[2]
    for b, context_len in enumerate(context_lens):
        start, end = cu_seqlens_q[b], cu_seqlens_q[b + 1]
        if end == start or b in skip:
            continue
        keys = gather_pages(k_cache, block_tables[b], context_len).float()
        values = gather_pages(v_cache, block_tables[b], context_len).float()
        keys = keys.repeat_interleave(group, dim=1).transpose(0, 1)  # [H_q, S, D]
        values = values.repeat_interleave(group, dim=1).transpose(0, 1)
        queries = q[start:end].float().transpose(0, 1)  # [H_q, Lq, D]
        query_pos = torch.arange(context_len - (end - start), context_len, device=q.device)
        mask = torch.arange(context_len, device=q.device)[None, :] <= query_pos[:, None]
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
    ) -> torch.Tensor:  # [T, H_q, D]
        store_kv_reference(k, v, k_cache, v_cache, meta.slot_mapping)
        return paged_attention_reference(
            q,
            k_cache,
            v_cache,
            meta.block_tables,
            meta.cu_seqlens_q_host,
            meta.context_lens_host,
            scale,
        )
