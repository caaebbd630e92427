"""The attention-backend interface and the per-step metadata every backend reads.

A backend stores the new tokens' K/V into a member's pages and computes attention of the new
queries over everything the sequence has cached plus themselves (causally). One call handles
a mixed batch: sequences prefilling many tokens after a cached prefix and sequences decoding
one token. Models never see pages: they hand q/k/v and the layer's cache views to the backend.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

from blendrt.cache.manager import BatchMetadata


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

    @classmethod
    def from_batch(cls, batch: BatchMetadata, device: torch.device) -> AttentionMetadata:
        def dev(a: object) -> torch.Tensor:
            return torch.from_numpy(a).to(device, non_blocking=True)

        return cls(
            slot_mapping=dev(batch.slot_mapping),
            block_tables=dev(batch.block_tables),
            cu_seqlens_q=dev(batch.cu_seqlens_q),
            context_lens=dev(batch.context_lens),
            max_query_len=batch.max_query_len,
            max_context_len=batch.max_context_len,
            cu_seqlens_q_host=tuple(batch.cu_seqlens_q.tolist()),
            context_lens_host=tuple(batch.context_lens.tolist()),
        )


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
    ) -> torch.Tensor:  # [T, H_q, D]
        """Stores k/v at meta.slot_mapping, then attends each new query to its sequence's
        cached tokens and, causally, to the new ones."""


#: Backend names a config may give (None picks by device).
BACKENDS = ("torch", "triton", "reference")


def get_backend(name: str | None, device: torch.device) -> AttentionBackend:
    """ "torch" (C++ kernel and SDPA on the CPU, padded torch elsewhere), "triton", "reference"
    (the slow, obviously right torch path; for debugging), or None: Triton on CUDA, torch
    elsewhere."""
    from blendrt.ops.torch_backend import ReferenceBackend, TorchBackend

    if name is None:
        name = "triton" if device.type == "cuda" else "torch"
    if name == "torch":
        return TorchBackend()
    if name == "reference":
        return ReferenceBackend()
    if name == "triton":
        from blendrt.ops.triton_backend import TritonBackend

        return TritonBackend()
    raise ValueError(
        f"unknown attention backend {name!r}; choose one of {', '.join(map(repr, BACKENDS))}"
    )
