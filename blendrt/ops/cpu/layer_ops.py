"""Launchers of the fused layer ops of the C++ core (`csrc/cpu/cpu_layer_ops.cpp`).

Each checks the tensors behind the raw pointers it passes (CPU, float32, row-contiguous,
shapes that agree) and allocates its output; `blendrt.ops.layer_ops` decides when to call
them and holds the torch references they are tested against.
"""

from __future__ import annotations

import torch

import blendrt._core as _core
from blendrt.ops.rope import RopeTables


def _check(name: str, t: torch.Tensor, ndim: int) -> None:
    if t.device.type != "cpu" or t.dtype != torch.float32 or t.dim() != ndim:
        raise ValueError(f"{name} must be a {ndim}-D float32 CPU tensor, got {t.dtype} {t.shape}")
    if t.stride(-1) != 1 or (ndim == 2 and t.stride(0) != t.shape[1]):
        raise ValueError(f"{name} must be contiguous")


def rms_norm_cpu(
    x: torch.Tensor,  # [T, hidden]
    weight: torch.Tensor,  # [hidden]
    eps: float,
    residual: torch.Tensor | None = None,  # [T, hidden], updated in place to x + residual
) -> torch.Tensor:  # [T, hidden]
    _check("x", x, 2)
    _check("weight", weight, 1)
    rows, hidden = x.shape
    if weight.shape[0] != hidden:
        raise ValueError(f"weight has {weight.shape[0]} entries, rows have {hidden}")
    if residual is not None:
        _check("residual", residual, 2)
        if residual.shape != x.shape:
            raise ValueError(f"residual must be {tuple(x.shape)}, got {tuple(residual.shape)}")
    out = torch.empty_like(x)
    res = 0 if residual is None else residual.data_ptr()
    _core.rms_norm_f32(out.data_ptr(), x.data_ptr(), res, weight.data_ptr(), rows, hidden, eps)
    return out


def rotary_cpu(
    x: torch.Tensor,  # [T, H, D], heads contiguous in a row; rows may be strided. In place.
    rope: RopeTables,  # positions already checked against its tables
) -> torch.Tensor:
    if x.device.type != "cpu" or x.dtype != torch.float32 or x.dim() != 3:
        raise ValueError(f"x must be a 3-D float32 CPU tensor, got {x.dtype} {tuple(x.shape)}")
    rows, num_heads, head_dim = x.shape
    if x.stride(2) != 1 or x.stride(1) != head_dim:
        raise ValueError("x's heads must be contiguous within a row")
    cos, sin, positions = rope.cos, rope.sin, rope.positions
    if positions.shape != (rows,):
        raise ValueError(f"rope has {positions.shape[0]} positions, x {rows} rows")
    _check("cos", cos, 2)
    _check("sin", sin, 2)
    if rope.rotary_dim > head_dim:
        raise ValueError(f"rotary_dim {rope.rotary_dim} exceeds head_dim {head_dim}")
    _core.rotary_f32(
        x.data_ptr(), rows, x.stride(0), num_heads, head_dim, rope.rotary_dim,
        positions.data_ptr(), cos.data_ptr(), sin.data_ptr(), rope.interleaved,
    )  # fmt: skip
    return x


def silu_and_mul_cpu(x: torch.Tensor) -> torch.Tensor:  # [T, 2 I] -> [T, I]
    _check("x", x, 2)
    rows, width = x.shape
    if width % 2:
        raise ValueError(f"x's rows must hold gate and up halves, got width {width}")
    out = torch.empty(rows, width // 2)
    _core.silu_and_mul_f32(out.data_ptr(), x.data_ptr(), rows, width // 2)
    return out
