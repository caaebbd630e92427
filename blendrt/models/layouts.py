"""How a checkpoint tensor's layout maps onto blendrt's parameter layout."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Transform:
    """A checkpoint tensor's layout differs from the parameter's: GPT-2's Conv1D stores
    linear weights transposed ([in, out]); GPT-NeoX fuses q/k/v per head ([H, 3, D])
    where blendrt fuses them per kind ([3, H, D]); Gemma's norms store w for a scale of
    1 + w (offset 1: the sum is taken in float32, as transformers does, then stored)."""

    transpose: bool = False
    qkv_per_head: int = 0  # H: rows regrouped from [H, 3, D, ...] to [3, H, D, ...]
    offset: float = 0.0  # added to every value, in float32

    def stored_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        return (shape[1], shape[0], *shape[2:]) if self.transpose else shape

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        if self.transpose:
            t = t.transpose(0, 1)
        if self.qkv_per_head:
            h = self.qkv_per_head
            t = t.reshape(h, 3, -1, *t.shape[1:]).transpose(0, 1).reshape(t.shape)
        if self.offset:
            t = t.float() + self.offset
        return t
