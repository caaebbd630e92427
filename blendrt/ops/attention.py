"""The attention-backend interface and the per-step metadata every backend reads.

A backend stores the new tokens' K/V into a member's pages and computes attention of the new
queries over everything the sequence has cached plus themselves (causally). One call handles
a mixed batch: sequences prefilling many tokens after a cached prefix and sequences decoding
one token. Models never see pages: they hand q/k/v and the layer's cache views to the backend.

Two per-layer options follow transformers 5.x: a sliding `window` (query at position p sees
keys j with p - window < j <= p; 0 = none) and attention-logit soft-capping (`softcap`:
scores s = (q . k) * scale become softcap * tanh(s / softcap) before masking; 0 = off).
NOTE: with a window, pages wholly before every future query's window are released while the
sequence runs: their block-table entries become -1 and the pages may be reused. A backend
reads a sequence's table from the page of `first_visible_key(...)` on, never before it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class AttentionMetadata:
    """One step of one member, on the device. B sequences, T new tokens in all."""

    slot_mapping: torch.Tensor  # [T] int32: page_id * tokens_per_page + offset; -1 = skip
    block_tables: torch.Tensor  # [B, W] int32 page ids, -1 padded
    cu_seqlens_q: torch.Tensor  # [B + 1] int32
    context_lens: torch.Tensor  # [B] int32: cached + new tokens of each sequence
    max_query_len: int
    max_context_len: int
    # Host copies for backends that loop or size launches on the CPU (no device sync).
    cu_seqlens_q_host: tuple[int, ...]
    context_lens_host: tuple[int, ...]

    @property
    def num_seqs(self) -> int:
        return len(self.context_lens_host)

    @property
    def is_decode_only(self) -> bool:
        return self.max_query_len == 1


def first_visible_key(first_query_pos: int, window: int) -> int:
    """The first key position any query at or after `first_query_pos` can see: the page that
    holds it is the first one a backend may read (entries before it may be -1)."""
    return max(0, first_query_pos - window + 1) if window > 0 else 0


def softcap_scores(scores: torch.Tensor, softcap: float) -> torch.Tensor:
    """Gemma-2's attn_logit_softcapping on already-scaled scores; softcap <= 0: unchanged."""
    return softcap * torch.tanh(scores / softcap) if softcap > 0 else scores


class AttentionBackend(ABC):
    """Paged attention for one layer of one member."""

    name: str

    @abstractmethod
    def forward(
        self,
        q: torch.Tensor,  # [T, H_q, D]
        k: torch.Tensor,  # [T, H_kv, D] new keys, stored before attending
        v: torch.Tensor,  # [T, H_kv, D]
        k_cache: torch.Tensor,  # [num_pages, tokens_per_page, H_kv, D] view of the pool
        v_cache: torch.Tensor,  # [num_pages, tokens_per_page, H_kv, D]
        meta: AttentionMetadata,
        scale: float,
        k_scale: torch.Tensor | None = None,  # [num_pages, tokens_per_page, H_kv] float16
        v_scale: torch.Tensor | None = None,  # given: the cache is quantized (int8 / fp8)
        *,
        window: int = 0,  # > 0: each query sees only the last `window` positions
        softcap: float = 0.0,  # > 0: scores -> softcap * tanh(scores / softcap)
    ) -> torch.Tensor:  # [T, H_q, D]
        """Stores k/v at meta.slot_mapping, then attends each new query to its sequence's
        cached tokens and, causally, to the new ones (within `window`, soft-capped by
        `softcap`). With scales, the cache holds quantized rows (blendrt/ops/kv_quant.py):
        quantized on store, dequantized on load."""
