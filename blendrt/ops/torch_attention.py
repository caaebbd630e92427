"""The portable torch path, on any device: decode rows in one padded, masked attention over
gathered pages; a long prefill over its gathered pages through torch's fused SDPA; the rest
through the reference. What the "torch" backend runs where the C++ CPU kernels do not
(`blendrt.ops.cpu.backend` builds on it). Tested against
`blendrt.ops.reference.paged_attention_reference`.

A sliding window gathers only the pages from each sequence's first visible key on (entries
before it may be -1, released); soft-capped scores take an explicit float32 softmax, in
chunks of query rows, since SDPA has no logit cap.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from blendrt.ops.attention import (
    AttentionBackend,
    AttentionMetadata,
    first_visible_key,
    softcap_scores,
)
from blendrt.ops.reference import (
    gather_pages,
    paged_attention_reference,
    store_kv_reference,
    visible_mask,
)

#: Score elements one chunk of a soft-capped prefill materialises (64 MiB of float32).
SOFTCAP_CHUNK_SCORES = 1 << 24


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
    *,
    window: int = 0,
    softcap: float = 0.0,
) -> torch.Tensor:  # [B, H_q, D]
    batch, num_q_heads, head_dim = q.shape
    tokens_per_page, num_kv_heads = k_cache.shape[1], k_cache.shape[2]
    num_pages = -(-max_context_len // tokens_per_page)
    context_lens = context_lens.to(q.device).long()
    if window > 0:  # each sequence's pages from its first visible key's on
        first_page = (context_lens - window).clamp_min(0) // tokens_per_page  # [B]
        num_pages = min(num_pages, (window - 1) // tokens_per_page + 2)
    else:
        first_page = torch.zeros_like(context_lens)
    page_idx = first_page[:, None] + torch.arange(num_pages, device=q.device)  # [B, P]
    # NOTE: entries past a sequence's pages (-1 padding, or past the table) read page 0;
    # every position outside a sequence's visible keys is masked out of the scores and
    # zeroed in the values, whatever those pages hold.
    width = block_tables.shape[1]
    table = block_tables.long().gather(1, page_idx.clamp_max(width - 1)).clamp_min(0)  # [B, P]
    positions = page_idx[:, :, None] * tokens_per_page + torch.arange(
        tokens_per_page, device=q.device
    )
    positions = positions.flatten(1)  # [B, S]
    keys = k_cache[table].flatten(1, 2).float()  # [B, S, H_kv, D]
    values = v_cache[table].flatten(1, 2).float()
    if k_scale is not None:  # dequantize what was gathered
        keys = keys * k_scale[table].flatten(1, 2)[..., None].float()
        values = values * v_scale[table].flatten(1, 2)[..., None].float()
    valid = positions < context_lens[:, None]  # [B, S]
    if window > 0:
        valid &= positions >= context_lens[:, None] - window
    values = values.masked_fill(~valid[:, :, None, None], 0.0)
    queries = q.float().view(batch, num_kv_heads, num_q_heads // num_kv_heads, head_dim)
    scores = torch.einsum("bhgd,bshd->bhgs", queries, keys) * scale  # [B, H_kv, G, S]
    scores = softcap_scores(scores, softcap)
    scores = scores.masked_fill(~valid[:, None, None, :], float("-inf"))
    out = torch.einsum("bhgs,bshd->bhgd", scores.softmax(dim=-1), values)
    return out.reshape(batch, num_q_heads, head_dim).to(q.dtype)


def _softcapped_attention(
    queries: torch.Tensor,  # [H_q, L, D] float32
    keys: torch.Tensor,  # [H_kv, S, D] float32
    values: torch.Tensor,  # [H_kv, S, D] float32
    mask: torch.Tensor,  # [L, S] bool: visible
    scale: float,
    softcap: float,
) -> torch.Tensor:  # [H_q, L, D] float32
    num_q_heads, query_len, head_dim = queries.shape
    num_kv_heads, num_keys = keys.shape[0], keys.shape[1]
    grouped = queries.view(num_kv_heads, -1, query_len, head_dim)  # [H_kv, G, L, D]
    out = torch.empty_like(grouped)
    rows = max(1, SOFTCAP_CHUNK_SCORES // max(1, num_q_heads * num_keys))
    for r0 in range(0, query_len, rows):
        chunk = slice(r0, r0 + rows)
        scores = torch.einsum("hgld,hsd->hgls", grouped[:, :, chunk], keys) * scale
        scores = softcap_scores(scores, softcap).masked_fill(~mask[chunk], float("-inf"))
        out[:, :, chunk] = torch.einsum("hgls,hsd->hgld", scores.softmax(dim=-1), values)
    return out.view(num_q_heads, query_len, head_dim)


def prefill_attention_torch(
    q: torch.Tensor,  # [L, H_q, D] the sequence's new queries
    k_cache: torch.Tensor,  # [num_pages, tokens_per_page, H_kv, D]
    v_cache: torch.Tensor,
    block_table: torch.Tensor,  # [W] page ids
    context_len: int,
    scale: float,
    k_scale: torch.Tensor | None = None,  # [num_pages, tokens_per_page, H_kv]: quantized
    v_scale: torch.Tensor | None = None,
    *,
    window: int = 0,
    softcap: float = 0.0,
) -> torch.Tensor:  # [L, H_q, D]
    """One sequence's new queries over its gathered pages, causal from its cached prefix
    (and within `window`), from the first visible key's page on."""
    query_len = q.shape[0]
    first = first_visible_key(context_len - query_len, window)
    keys = gather_pages(k_cache, block_table, context_len, k_scale, first).transpose(0, 1)
    values = gather_pages(v_cache, block_table, context_len, v_scale, first).transpose(0, 1)
    positions = torch.arange(context_len - query_len, context_len, device=q.device)
    key_pos = torch.arange(first, context_len, device=q.device)
    mask = visible_mask(positions, key_pos, window)  # [L, S]
    if softcap > 0:
        out = _softcapped_attention(
            q.transpose(0, 1).float(), keys.float(), values.float(), mask, scale, softcap
        )  # [H_q, L, D]
        return out.transpose(0, 1).to(q.dtype)
    if k_scale is not None:  # dequantized to float32: attend in q's dtype
        keys, values = keys.to(q.dtype), values.to(q.dtype)
    # NOTE: 4-D inputs, as SDPA's fused CPU kernel requires; 3-D ones fall back to its
    # unfused math path, 3x slower here.
    out = F.scaled_dot_product_attention(
        q.transpose(0, 1)[None].to(keys.dtype),
        keys[None],
        values[None],
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
        *,
        window: int = 0,
        softcap: float = 0.0,
    ) -> torch.Tensor:  # [T, H_q, D]
        store_kv_reference(k, v, k_cache, v_cache, meta.slot_mapping, k_scale, v_scale)
        options = {"k_scale": k_scale, "v_scale": v_scale, "window": window, "softcap": softcap}
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
                **options,
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
            **options,
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
                **options,
            )
        return out
