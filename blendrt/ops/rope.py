"""RopeTables: one step's rotary angles, checked once per forward and read by every layer."""

from __future__ import annotations

import torch


class RopeTables:
    """The step's positions and a member's cos/sin tables ([P, rotary_dim] each, halves
    duplicated, or neighbours when interleaved).

    NOTE: CPU positions are checked against the tables once, here; each layer's rotation
    then trusts them (the CPU kernel indexes the tables with them)."""

    __slots__ = ("_gathered", "cos", "interleaved", "positions", "sin")

    def __init__(
        self, positions: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleaved: bool
    ) -> None:
        if positions.dtype != torch.int64 or positions.dim() != 1:
            raise ValueError(f"positions must be 1-D int64, got {positions.dtype}")
        if cos.shape != sin.shape or cos.dim() != 2 or cos.shape[1] % 2:
            raise ValueError("cos and sin must share a shape [P, even rotary_dim]")
        # On the CPU the kernel indexes the tables with raw positions; on a GPU the check
        # would cost a device sync per step, and torch's indexing checks there.
        cpu = positions.device.type == "cpu"
        if cpu and positions.numel() and not 0 <= positions.min() <= positions.max() < len(cos):
            raise ValueError(f"positions must lie in [0, {len(cos)})")
        self.positions = positions.contiguous()  # [T]
        self.cos, self.sin = cos, sin  # [P, rotary_dim]
        self.interleaved = interleaved
        self._gathered: dict[torch.dtype, tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def rotary_dim(self) -> int:
        return self.cos.shape[1]

    def at_positions(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin at the step's positions, [T, 1, rotary_dim] in dtype (gathered once)."""
        pair = self._gathered.get(dtype)
        if pair is None:
            pair = self._gathered[dtype] = (
                self.cos[self.positions].to(dtype)[:, None, :],
                self.sin[self.positions].to(dtype)[:, None, :],
            )
        return pair
