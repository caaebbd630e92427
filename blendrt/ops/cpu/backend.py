"""The CPU attention backend: the C++ kernels for the K/V store and for short rows, torch's
fused SDPA for long prefills.

Sequences with at most `MAX_KERNEL_QUERY_LEN` new tokens (decode, short extends) go through
`paged_attention_cpu`, which reads their pages in place; longer prefills gather their pages
and go through SDPA, whose matmuls beat a scalar loop. Dtypes the kernels do not take fall
back to the portable torch path. A sliding window and soft-capped scores go to both paths;
each reads a sequence's pages from its first visible key's page on.
"""

from __future__ import annotations

import torch

from blendrt.ops.attention import AttentionMetadata
from blendrt.ops.cpu.attention import SUPPORTED_DTYPES, paged_attention_cpu
from blendrt.ops.cpu.store_kv import store_kv_cpu
from blendrt.ops.torch_attention import TorchBackend, prefill_attention_torch

#: Measured on the development VM (head dim 32, 700 cached tokens): the C++ kernel wins up to
#: about 8 query rows per sequence, SDPA over the gathered pages beyond.
MAX_KERNEL_QUERY_LEN = 8


class CpuBackend(TorchBackend):
    """What the "torch" backend is on the CPU."""

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
        quantized = k_scale is not None
        options = {"window": window, "softcap": softcap}
        if q.device.type != "cpu" or (k_cache.dtype not in SUPPORTED_DTYPES and not quantized):
            return super().forward(
                q, k, v, k_cache, v_cache, meta, scale, k_scale, v_scale, **options
            )
        if quantized:
            store_kv_cpu(k, v, k_cache, v_cache, meta.slot_mapping, k_scale, v_scale)
        else:
            k, v = k.to(k_cache.dtype), v.to(k_cache.dtype)
            store_kv_cpu(k, v, k_cache, v_cache, meta.slot_mapping)
        return self._forward_cpu(q, k_cache, v_cache, meta, scale, k_scale, v_scale, **options)

    def _forward_cpu(
        self,
        q: torch.Tensor,  # [T, H_q, D]
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
        options = {"window": window, "softcap": softcap}
        cu = meta.cu_seqlens_q_host
        short = [b for b in range(meta.num_seqs) if cu[b + 1] - cu[b] <= MAX_KERNEL_QUERY_LEN]
        out = torch.empty_like(q)
        for b in sorted(set(range(meta.num_seqs)) - set(short)):
            out[cu[b] : cu[b + 1]] = prefill_attention_torch(
                q[cu[b] : cu[b + 1]],
                k_cache,
                v_cache,
                meta.block_tables[b],
                meta.context_lens_host[b],
                scale,
                k_scale,
                v_scale,
                **options,
            )
        if short:
            paged_attention_cpu(
                q,
                k_cache,
                v_cache,
                meta.block_tables,
                meta.cu_seqlens_q,
                meta.context_lens,
                scale,
                seq_indices=torch.tensor(short, dtype=torch.int32),
                out=out,
                k_scale=k_scale,
                v_scale=v_scale,
                **options,
            )
        return out
