"""Stores a step's new K/V rows into a member's pages on the CPU, through the C++ core.

The CPU counterpart of `store_kv.py` (Triton); the torch reference is
`blendrt.ops.reference.store_kv_reference`. The launcher checks the tensors behind the raw
pointers; the C++ side checks every slot against the pool before writing.
"""

from __future__ import annotations

import torch

import blendrt._core as _core
from blendrt.ops.cpu.attention import STORAGE_TYPES, cache_layout


def store_kv_cpu(
    k: torch.Tensor,  # [T, H_kv, D] heads contiguous in a row; rows may be strided
    v: torch.Tensor,  # [T, H_kv, D]
    k_cache: torch.Tensor,  # [num_pages, tokens_per_page, H_kv, D]
    v_cache: torch.Tensor,  # [num_pages, tokens_per_page, H_kv, D], k_cache's strides
    slot_mapping: torch.Tensor,  # [T] int32: page * tokens_per_page + offset; -1 = skip
    k_scale: torch.Tensor | None = None,  # [num_pages, tokens_per_page, H_kv] float16: the
    v_scale: torch.Tensor | None = None,  # cache is int8 / fp8, rows quantized on store
) -> None:
    layout = cache_layout(k_cache, v_cache, "store_kv", k_scale, v_scale)
    num_kv_heads, head_dim = layout["num_kv_heads"], layout["head_dim"]
    dtype = k.dtype if k_scale is not None else k_cache.dtype
    for name, t in (("k", k), ("v", v)):
        if t.device.type != "cpu" or t.dtype != dtype or dtype not in STORAGE_TYPES:
            raise ValueError(f"{name} must be a CPU {dtype} tensor, got {t.device} {t.dtype}")
        if t.shape != (slot_mapping.shape[0], num_kv_heads, head_dim):
            raise ValueError(
                f"{name} must be [{slot_mapping.shape[0]}, {num_kv_heads}, {head_dim}], "
                f"got {tuple(t.shape)}"
            )
        if t.stride(2) != 1 or t.stride(1) != head_dim:
            raise ValueError(f"{name}'s heads must be contiguous within a token's row")
    if slot_mapping.device.type != "cpu" or slot_mapping.dtype != torch.int32:
        raise ValueError(f"slot_mapping must be int32 on the CPU, got {slot_mapping.dtype}")
    _core.store_kv_cpu(
        k=k.data_ptr(),
        v=v.data_ptr(),
        k_row_stride=k.stride(0),
        v_row_stride=v.stride(0),
        slot_mapping=slot_mapping.numpy(),
        dtype=STORAGE_TYPES[dtype],
        **layout,
    )
