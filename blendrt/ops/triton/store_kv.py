"""Writes the new tokens' K and V rows into a member's pages of the shared pool.

One launch stores both K and V: program (t, h) copies token t's rows for heads
[h * BLOCK_H, (h + 1) * BLOCK_H) to slot `slot_mapping[t]` = page * tokens_per_page + offset,
or does nothing when the slot is -1.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from blendrt.ops.triton.dtypes import TL_TYPES

#: Elements one program moves per tensor (BLOCK_H * BLOCK_D); keeps registers low.
_MAX_BLOCK_ELEMS = 2048


def store_kv_config(head_dim: int, num_kv_heads: int) -> dict[str, int]:
    """Block sizes and launch options of `store_kv`; aot_targets reads the same values."""
    block_d = triton.next_power_of_2(head_dim)
    block_h = max(1, min(triton.next_power_of_2(num_kv_heads), _MAX_BLOCK_ELEMS // block_d))
    return dict(BLOCK_H=block_h, BLOCK_D=block_d, num_warps=4 if block_h * block_d >= 1024 else 2)


@triton.jit
def _store_kv_kernel(
    k_ptr,  # [T, H_kv, D] new keys (last dim contiguous)
    v_ptr,  # [T, H_kv, D] new values (last dim contiguous)
    k_cache_ptr,  # [num_pages, tokens_per_page, H_kv, D] strided view of the pool
    v_cache_ptr,  # [num_pages, tokens_per_page, H_kv, D] same strides as k_cache
    slot_ptr,  # [T] int32, -1 = skip
    stride_kt,
    stride_kh,
    stride_vt,
    stride_vh,
    stride_cp,  # cache page stride (elements); NOT tokens_per_page * H_kv * D
    stride_ct,
    stride_ch,
    tokens_per_page,
    num_kv_heads,
    D: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    t = tl.program_id(0)
    slot = tl.load(slot_ptr + t)
    if slot < 0:
        return
    # NOTE: page * stride_cp overflows int32 in pools over 2**31 elements: index in int64.
    slot = slot.to(tl.int64)
    page = slot // tokens_per_page
    offset = slot % tokens_per_page
    heads = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)  # [BLOCK_H]
    dims = tl.arange(0, BLOCK_D)  # [BLOCK_D]
    mask = (heads[:, None] < num_kv_heads) & (dims[None, :] < D)
    t64 = t.to(tl.int64)
    k = tl.load(k_ptr + t64 * stride_kt + heads[:, None] * stride_kh + dims[None, :], mask=mask)
    v = tl.load(v_ptr + t64 * stride_vt + heads[:, None] * stride_vh + dims[None, :], mask=mask)
    dst = page * stride_cp + offset * stride_ct + heads[:, None] * stride_ch + dims[None, :]
    tl.store(k_cache_ptr + dst, k.to(k_cache_ptr.dtype.element_ty), mask=mask)
    tl.store(v_cache_ptr + dst, v.to(v_cache_ptr.dtype.element_ty), mask=mask)


def _check(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor) -> None:
    if k.dim() != 3 or k.shape != v.shape:
        raise ValueError(
            f"k and v must both be [T, H_kv, D], got {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if k_cache.dim() != 4 or k_cache.shape != v_cache.shape or k_cache.shape[2:] != k.shape[1:]:
        raise ValueError(
            f"caches {tuple(k_cache.shape)}, {tuple(v_cache.shape)} do not hold rows of "
            f"shape {tuple(k.shape[1:])}"
        )
    if k_cache.stride() != v_cache.stride() or k_cache.stride(3) != 1:
        raise ValueError("k_cache and v_cache need equal strides and a contiguous head dim")


def store_kv(
    k: torch.Tensor,  # [T, H_kv, D]
    v: torch.Tensor,  # [T, H_kv, D]
    k_cache: torch.Tensor,  # [num_pages, tokens_per_page, H_kv, D]
    v_cache: torch.Tensor,  # [num_pages, tokens_per_page, H_kv, D]
    slot_mapping: torch.Tensor,  # [T] int32, -1 = skip
) -> None:
    """Stores row t of k and v at slot slot_mapping[t] of the caches (in the caches' dtype)."""
    _check(k, v, k_cache, v_cache)
    num_tokens, num_kv_heads, head_dim = k.shape
    if num_tokens == 0:
        return
    # NOTE: only the head dim must be contiguous; token/head strides of k and v may differ
    # (v is usually a view into the fused QKV projection).
    k = k if k.stride(2) == 1 else k.contiguous()
    v = v if v.stride(2) == 1 else v.contiguous()
    slot_mapping = slot_mapping.to(torch.int32)
    cfg = store_kv_config(head_dim, num_kv_heads)
    grid = (num_tokens, triton.cdiv(num_kv_heads, cfg["BLOCK_H"]))
    _store_kv_kernel[grid](
        k, v, k_cache, v_cache, slot_mapping,
        k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        k_cache.shape[1], num_kv_heads,
        D=head_dim, BLOCK_H=cfg["BLOCK_H"], BLOCK_D=cfg["BLOCK_D"],
        num_warps=cfg["num_warps"], num_stages=1,
    )  # fmt: skip


def aot_targets(head_dim: int, group: int, dtype: torch.dtype, num_kv_heads: int = 8) -> list[dict]:
    """The kernel store_kv launches at this configuration, for ahead-of-time compiles
    (`group` does not change it; k/v come in the cache dtype)."""
    del group
    cfg = store_kv_config(head_dim, num_kv_heads)
    ptr = "*" + TL_TYPES[dtype]
    ints = [
        "stride_kt", "stride_kh", "stride_vt", "stride_vh", "stride_cp", "stride_ct",
        "stride_ch", "tokens_per_page", "num_kv_heads",
    ]  # fmt: skip
    signature = {"k_ptr": ptr, "v_ptr": ptr, "k_cache_ptr": ptr, "v_cache_ptr": ptr}
    signature |= {"slot_ptr": "*i32"} | dict.fromkeys(ints, "i32")
    signature |= dict.fromkeys(("D", "BLOCK_H", "BLOCK_D"), "constexpr")
    return [
        dict(
            fn=_store_kv_kernel,
            signature=signature,
            constexprs=dict(D=head_dim, BLOCK_H=cfg["BLOCK_H"], BLOCK_D=cfg["BLOCK_D"]),
            num_warps=cfg["num_warps"],
            num_stages=1,
            divisible_by_16=["stride_kt", "stride_vt", "stride_cp", "stride_ct"],
        )
    ]
