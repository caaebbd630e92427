"""The portable torch path, on any device: decode rows in one padded, masked attention over
gathered pages; a long prefill over its gathered pages through torch's fused SDPA; the rest
through the reference. What the "torch" backend runs where the C++ CPU kernels do not
(`blendrt.ops.cpu.backend` builds on it). Tested against
`blendrt.ops.reference.paged_attention_reference`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from blendrt.ops.attention import AttentionBackend, AttentionMetadata
from blendrt.ops.reference import gather_pages, paged_attention_reference, store_kv_reference


def decode_attention_torch(
    q: torch.Tensor,  # [B, H_q, D] one query per sequence
    k_cache: torch.Tensor,  # [num_pages, tokens_per_page, H_kv, D]
    v_cache: torch.Tensor,  # [num_pages, tokens_per_page, H_kv, D]
    block_tables: torch.Tensor,  # [B, W] page ids, -1 padded
    context_lens: torch.Tensor,  # [B]
    max_context_len: int,
    scale: float,
    k_scale: torch.Tensor | None = None,  # [num_pages, tokens_per_page, H_kv]: quantized
    v_scale: torch.Tensor | None = None,
) -> torch.Tensor:  # [B, H_q, D]
    batch, num_q_heads, head_dim = q.shape
    tokens_per_page, num_kv_heads = k_cache.shape[1], k_cache.shape[2]
    num_pages = -(-max_context_len // tokens_per_page)
    # NOTE: padding entries (-1) read page 0; every position past a sequence's context is
    # masked out of the scores and zeroed in the values, whatever those pages hold.
    table = block_tables[:, :num_pages].long().clamp_min(0)  # [B, P]
    keys = k_cache[table].flatten(1, 2)[:, :max_context_len].float()  # [B, S, H_kv, D]
    values = v_cache[table].flatten(1, 2)[:, :max_context_len].float()
    if k_scale is not None:  # dequantize what was gathered
        keys = keys * k_scale[table].flatten(1, 2)[:, :max_context_len, :, None].float()
        values = values * v_scale[table].flatten(1, 2)[:, :max_context_len, :, None].float()
    valid = torch.arange(max_context_len, device=q.device)[None, :] < context_lens[:, None]
    values = values.masked_fill(~valid[:, :, None, None], 0.0)
    queries = q.float().view(batch, num_kv_heads, num_q_heads // num_kv_heads, head_dim)
    scores = torch.einsum("bhgd,bshd->bhgs", queries, keys) * scale  # [B, H_kv, G, S]
    scores = scores.masked_fill(~valid[:, None, None, :], float("-inf"))
    out = torch.einsum("bhgs,bshd->bhgd", scores.softmax(dim=-1), values)
    return out.reshape(batch, num_q_heads, head_dim).to(q.dtype)


def prefill_attention_torch(
    q: torch.Tensor,  # [L, H_q, D] the sequence's new queries
    k_cache: torch.Tensor,  # [num_pages, tokens_per_page, H_kv, D]
    v_cache: torch.Tensor,
    block_table: torch.Tensor,  # [W] page ids
    context_len: int,
    scale: float,
    k_scale: torch.Tensor | None = None,  # [num_pages, tokens_per_page, H_kv]: quantized
    v_scale: torch.Tensor | None = None,
) -> torch.Tensor:  # [L, H_q, D]
    """One sequence's new queries over its gathered pages, causal from its cached prefix."""
    query_len = q.shape[0]
    # NOTE: 4-D inputs, as SDPA's fused CPU kernel requires; 3-D ones fall back to its
    # unfused math path, 3x slower here.
    keys = gather_pages(k_cache, block_table, context_len, k_scale).transpose(0, 1)[None]
    values = gather_pages(v_cache, block_table, context_len, v_scale).transpose(0, 1)[None]
    if k_scale is not None:  # dequantized to float32: attend in q's dtype
        keys, values = keys.to(q.dtype), values.to(q.dtype)
    positions = torch.arange(context_len - query_len, context_len, device=q.device)
    mask = torch.arange(context_len, device=q.device)[None, :] <= positions[:, None]
    out = F.scaled_dot_product_attention(
        q.transpose(0, 1)[None].to(keys.dtype),
        keys,
        values,
        attn_mask=mask,
        scale=scale,
        enable_gqa=True,
    )  # [1, H_q, L, D]
    return out[0].transpose(0, 1).to(q.dtype)


class TorchBackend(AttentionBackend):
    """Gathered pages and torch ops: any device, any dtype."""

    name = "torch"

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
    ) -> torch.Tensor:  # [T, H_q, D]
        store_kv_reference(k, v, k_cache, v_cache, meta.slot_mapping, k_scale, v_scale)
        scales = {"k_scale": k_scale, "v_scale": v_scale}
        cu = meta.cu_seqlens_q_host
        decode = [b for b in range(meta.num_seqs) if cu[b + 1] - cu[b] == 1]
        if len(decode) == meta.num_seqs:
            return decode_attention_torch(
                q,
                k_cache,
                v_cache,
                meta.block_tables,
                meta.context_lens,
                meta.max_context_len,
                scale,
                **scales,
            )
        batched = decode if len(decode) > 1 else []  # a mixed batch's decode rows, batched
        out = paged_attention_reference(
            q,
            k_cache,
            v_cache,
            meta.block_tables,
            cu,
            meta.context_lens_host,
            scale,
            skip=set(batched),
            **scales,
        )
        if batched:
            rows = torch.tensor([cu[b] for b in batched], device=q.device)
            seqs = torch.tensor(batched, device=q.device)
            out[rows] = decode_attention_torch(
                q[rows],
                k_cache,
                v_cache,
                meta.block_tables[seqs],
                meta.context_lens[seqs],
                max(meta.context_lens_host[b] for b in batched),
                scale,
                **scales,
            )
        return out
