"""The Triton attention backend: store_kv, then split-KV decode or extend attention.

A decode-only step (one new token per sequence) runs `decode_attention`, which splits long
contexts across the machine; anything else, prefills and mixed prefill + decode batches,
runs `extend_attention` once for the whole batch. With a quantized KV cache (int8 or
fp8_e4m3: `k_scale`/`v_scale` given), store_kv quantizes rows as it writes them and the
attention kernels dequantize tiles as they load them; no separate pass over the cache. A
sliding window and soft-capped scores go to both kernels, which read each sequence's pages
from its first visible key's page on (earlier table entries may be -1: released).
"""

from __future__ import annotations

import torch

from blendrt.ops.attention import AttentionBackend, AttentionMetadata
from blendrt.ops.triton.extend_attention import extend_attention
from blendrt.ops.triton.store_kv import store_kv


class TritonBackend(AttentionBackend):
    name = "triton"

    def forward(
        self,
        q: torch.Tensor,  # [T, H_q, D]
        k: torch.Tensor,  # [T, H_kv, D]
        v: torch.Tensor,  # [T, H_kv, D]
        k_cache: torch.Tensor,  # [num_pages, tokens_per_page, H_kv, D]
        v_cache: torch.Tensor,  # [num_pages, tokens_per_page, H_kv, D]
        meta: AttentionMetadata,
        scale: float,
        k_scale: torch.Tensor | None = None,  # [num_pages, tokens_per_page, H_kv] float16
        v_scale: torch.Tensor | None = None,  # [num_pages, tokens_per_page, H_kv] float16
        *,
        window: int = 0,
        softcap: float = 0.0,
    ) -> torch.Tensor:  # [T, H_q, D]
        store_kv(k, v, k_cache, v_cache, meta.slot_mapping, k_scale, v_scale)
        # NOTE: decode rows are [B, H_q, D]: one token per sequence, so T must equal B.
        if meta.is_decode_only and q.shape[0] == meta.num_seqs:
            # Imported here: the decode kernel is a separate module with its own tuning.
            from blendrt.ops.triton.decode_attention import decode_attention

            return decode_attention(
                q, k_cache, v_cache, meta.block_tables, meta.context_lens, scale,
                max_context_len=meta.max_context_len, k_scale=k_scale, v_scale=v_scale,
                window=window, softcap=softcap,
            )  # fmt: skip
        return extend_attention(
            q, k_cache, v_cache, meta.block_tables, meta.cu_seqlens_q, meta.context_lens,
            scale, max_query_len=meta.max_query_len, k_scale=k_scale, v_scale=v_scale,
            window=window, softcap=softcap,
        )  # fmt: skip
