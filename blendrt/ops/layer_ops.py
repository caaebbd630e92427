"""The elementwise steps of a decoder layer: RMSNorm (with the residual add fused in, as
vLLM's fused_add_rms_norm), rotary embedding, SiLU-and-multiply.

Each has a torch reference here (the portable path: any device, any dtype, and the ground
truth of the kernel tests) and, for float32 on the CPU, a fused C++ kernel
(`blendrt.ops.cpu.layer_ops`): one call per step instead of 3-10 small torch ops, which is
most of a small member's forward on a CPU. The CUDA path is the torch one for now; a
Triton kernel per op slots in here the same way.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from blendrt.ops.cpu.layer_ops import rms_norm_cpu, rotary_cpu, silu_and_mul_cpu
from blendrt.ops.rope import RopeTables


def _fused_cpu(x: torch.Tensor) -> bool:
    return x.device.type == "cpu" and x.dtype is torch.float32


# ---- RMSNorm -----------------------------------------------------------------------------


def rms_norm_reference(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """As Llama does it: normalise in float32, scale in the model's dtype."""
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x32.to(x.dtype)


def rms_norm(
    x: torch.Tensor,  # [T, hidden]
    weight: torch.Tensor,  # [hidden]
    eps: float,
    residual: torch.Tensor | None = None,  # [T, hidden]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(norm(x + residual), x + residual); without a residual, (norm(x), x). The CPU
    kernel updates `residual` in place and returns it as the second value."""
    if _fused_cpu(x) and x.is_contiguous() and (residual is None or residual.is_contiguous()):
        return rms_norm_cpu(x, weight, eps, residual), x if residual is None else residual
    summed = x if residual is None else x + residual
    return rms_norm_reference(summed, weight, eps), summed


# ---- rotary embedding --------------------------------------------------------------------


def rotary_reference(x: torch.Tensor, rope: RopeTables) -> torch.Tensor:
    """x [T, H, D] -> a new tensor, its first rotary_dim dims of every head rotated."""
    dim = rope.rotary_dim
    cos, sin = rope.at_positions(x.dtype)
    rot, rest = x[..., :dim], x[..., dim:]
    if rope.interleaved:
        turned = torch.stack((-rot[..., 1::2], rot[..., ::2]), dim=-1).flatten(-2)
    else:
        half = dim // 2
        turned = torch.cat((-rot[..., half:], rot[..., :half]), dim=-1)
    rot = rot * cos + turned * sin
    return torch.cat((rot, rest), dim=-1) if rest.shape[-1] else rot


def rotary(x: torch.Tensor, rope: RopeTables) -> torch.Tensor:
    """x [T, H, D] rotated: in place by the CPU kernel, else a new tensor; use the result."""
    if _fused_cpu(x) and x.stride(2) == 1 and x.stride(1) == x.shape[2]:
        return rotary_cpu(x, rope)
    return rotary_reference(x, rope)


# ---- SiLU and multiply -------------------------------------------------------------------


def silu_and_mul_reference(x: torch.Tensor) -> torch.Tensor:
    gate, up = x.chunk(2, dim=-1)
    return F.silu(gate) * up


#: Above this many outputs torch's vectorised exp beats the kernel's scalar one (measured on
#: the development VM: the kernel ~2 ns per element, torch ~0.3 ns plus ~10 us of op calls).
SILU_KERNEL_MAX_ELEMENTS = 4096


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """[T, 2 I] (gate then up) -> silu(gate) * up [T, I]."""
    small = x.numel() <= 2 * SILU_KERNEL_MAX_ELEMENTS
    if small and _fused_cpu(x) and x.is_contiguous():
        return silu_and_mul_cpu(x)
    return silu_and_mul_reference(x)
