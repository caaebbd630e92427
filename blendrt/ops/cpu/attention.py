"""Paged attention on the CPU through the C++ core (`csrc/cpu/cpu_attention.cpp`).

The launcher checks every tensor behind the raw pointers it hands to C++ (device, dtype,
shape, strides) so that bad input raises here, never reads out of bounds there. The kernel
reads each sequence's pages in place, without gathering them into a padded copy; the torch
reference it is tested against is `blendrt.ops.reference.paged_attention_reference`. With a
sliding window it reads from the first visible key's page on (earlier table entries may be
-1: released pages), and soft-capped scores pass through softcap * tanh(s / softcap).
"""

from __future__ import annotations

import torch

import blendrt._core as _core

#: Storage codes of `_core.paged_attention_cpu` for q, out and unquantized caches.
STORAGE_TYPES = {
    torch.float32: _core.StorageType.float32,
    torch.float16: _core.StorageType.float16,
    torch.bfloat16: _core.StorageType.bfloat16,
}
SUPPORTED_DTYPES = frozenset(STORAGE_TYPES)
#: Codes of quantized caches (one byte per value, a float16 scale per (token, head) row).
QUANTIZED_TYPES = {
    torch.int8: _core.StorageType.int8,
    torch.float8_e4m3fn: _core.StorageType.fp8_e4m3,
}


def cache_layout(
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    op: str,
    k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None,
) -> dict[str, int]:
    """Checks a layer's K/V cache views (and a quantized cache's scale views) for the C++
    kernels and returns the `_core` arguments that describe them (pointers, page geometry,
    strides in elements, the cache's storage code)."""
    dtype = k_cache.dtype
    quantized = dtype in QUANTIZED_TYPES
    if dtype not in STORAGE_TYPES and not quantized:
        raise ValueError(f"CPU {op} supports {[*STORAGE_TYPES, *QUANTIZED_TYPES]}, got {dtype}")
    if quantized != (k_scale is not None) or (k_scale is None) != (v_scale is None):
        raise ValueError(f"a {dtype} cache needs k_scale and v_scale; a float cache neither")
    for name, t in (("k_cache", k_cache), ("v_cache", v_cache)):
        if t.device.type != "cpu" or t.dtype != dtype or t.dim() != 4:
            raise ValueError(
                f"{name} must be a CPU {dtype} tensor of 4 dims, "
                f"got {t.device} {t.dtype} {tuple(t.shape)}"
            )
    if v_cache.shape != k_cache.shape or v_cache.stride() != k_cache.stride():
        raise ValueError("v_cache must have k_cache's shape and strides")
    if k_cache.stride(3) != 1:
        raise ValueError("the cache's head dim must be contiguous")
    num_pages, tokens_per_page, num_kv_heads, head_dim = k_cache.shape
    layout = dict(
        k_cache=k_cache.data_ptr(),
        v_cache=v_cache.data_ptr(),
        num_pages=num_pages,
        page_stride=k_cache.stride(0),
        token_stride=k_cache.stride(1),
        head_stride=k_cache.stride(2),
        num_kv_heads=num_kv_heads,
        head_dim=head_dim,
        tokens_per_page=tokens_per_page,
        cache_dtype=QUANTIZED_TYPES[dtype] if quantized else STORAGE_TYPES[dtype],
    )
    if quantized:
        for name, t in (("k_scale", k_scale), ("v_scale", v_scale)):
            if (
                t.device.type != "cpu" or t.dtype != torch.float16
                or t.shape != (num_pages, tokens_per_page, num_kv_heads) or t.stride(2) != 1
                or t.stride() != k_scale.stride()
            ):  # fmt: skip
                raise ValueError(
                    f"{name} must be a CPU float16 [{num_pages}, {tokens_per_page}, "
                    f"{num_kv_heads}] view, heads contiguous, got {t.dtype} {tuple(t.shape)}"
                )
        layout |= dict(
            k_scale=k_scale.data_ptr(),
            v_scale=v_scale.data_ptr(),
            scale_page_stride=k_scale.stride(0),
            scale_token_stride=k_scale.stride(1),
        )
    return layout


def _check_int32_cpu(name: str, t: torch.Tensor, ndim: int) -> None:
    if t.device.type != "cpu" or t.dtype != torch.int32 or t.dim() != ndim:
        raise ValueError(f"{name} must be a {ndim}-D int32 CPU tensor, got {t.dtype} {t.shape}")


def paged_attention_cpu(
    q: torch.Tensor,  # [T, H_q, D]
    k_cache: torch.Tensor,  # [num_pages, tokens_per_page, H_kv, D]
    v_cache: torch.Tensor,  # [num_pages, tokens_per_page, H_kv, D], k_cache's strides
    block_tables: torch.Tensor,  # [B, W] int32 page ids
    cu_seqlens_q: torch.Tensor,  # [B + 1] int32
    context_lens: torch.Tensor,  # [B] int32
    scale: float,
    seq_indices: torch.Tensor | None = None,  # [N] int32: the sequences to compute; None: all
    out: torch.Tensor | None = None,  # [T, H_q, D]; rows of other sequences are kept
    k_scale: torch.Tensor | None = None,  # [num_pages, tokens_per_page, H_kv] float16:
    v_scale: torch.Tensor | None = None,  # the cache is int8 / fp8 (blendrt/ops/kv_quant.py)
    *,
    window: int = 0,  # > 0: query p sees keys p - window < j <= p
    softcap: float = 0.0,  # > 0: scores s -> softcap * tanh(s / softcap)
) -> torch.Tensor:  # [T, H_q, D]
    """Query i of sequence b sits at position p = context_lens[b] - query_len_b + i and
    attends to keys 0..p (p - window + 1..p with a window). float32, float16 or bfloat16
    (the cache in q's dtype, or quantized and dequantized as its pages are read);
    accumulates in float32."""
    if window < 0 or not 0.0 <= softcap < float("inf"):
        raise ValueError(f"window must be >= 0 and softcap finite, >= 0: {window}, {softcap}")
    layout = cache_layout(k_cache, v_cache, "paged attention", k_scale, v_scale)
    num_kv_heads, head_dim = layout["num_kv_heads"], layout["head_dim"]
    dtype = q.dtype if k_scale is not None else k_cache.dtype
    if q.device.type != "cpu" or q.dtype != dtype or dtype not in STORAGE_TYPES or q.dim() != 3:
        raise ValueError(
            f"q must be a CPU {dtype} tensor of 3 dims, got {q.device} {q.dtype} {tuple(q.shape)}"
        )
    if layout["head_stride"] != head_dim:
        raise ValueError("the cache's heads must be contiguous within a token (as pool views are)")
    num_q_heads = q.shape[1]
    if q.shape[2] != head_dim or num_q_heads % num_kv_heads:
        raise ValueError(
            f"q {tuple(q.shape)} does not fit a cache of {num_kv_heads} KV heads x {head_dim}"
        )
    _check_int32_cpu("block_tables", block_tables, 2)
    _check_int32_cpu("cu_seqlens_q", cu_seqlens_q, 1)
    _check_int32_cpu("context_lens", context_lens, 1)
    num_seqs = block_tables.shape[0]
    if seq_indices is None:
        seq_indices = torch.arange(num_seqs, dtype=torch.int32)
    _check_int32_cpu("seq_indices", seq_indices, 1)
    if cu_seqlens_q[-1].item() != q.shape[0]:
        raise ValueError(f"cu_seqlens_q ends at {cu_seqlens_q[-1].item()}, q has {q.shape[0]} rows")
    q = q.contiguous()
    if out is None:
        out = torch.empty_like(q)
    elif out.shape != q.shape or out.dtype != dtype or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous {dtype} tensor of shape {tuple(q.shape)}")
    _core.paged_attention_cpu(
        out=out.data_ptr(),
        q=q.data_ptr(),
        block_tables=block_tables.numpy(),
        cu_seqlens_q=cu_seqlens_q.numpy(),
        context_lens=context_lens.numpy(),
        seq_indices=seq_indices.numpy(),
        num_q_heads=num_q_heads,
        scale=float(scale),
        num_threads=torch.get_num_threads(),
        dtype=STORAGE_TYPES[dtype],
        window=int(window),
        softcap=float(softcap),
        **layout,
    )
    return out
