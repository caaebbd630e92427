"""Attention backends by the names EngineConfig.attention_backend takes.

"torch"      on the CPU the C++ kernels (and SDPA for long prefills), elsewhere the
             portable torch path
"triton"     the Triton kernels (CUDA)
"reference"  the slow, obviously right torch path (for checking the others)
None         Triton on CUDA, torch elsewhere
"""

from __future__ import annotations

import torch

from blendrt.config import ATTENTION_BACKENDS
from blendrt.ops.attention import AttentionBackend
from blendrt.ops.cpu.backend import CpuBackend
from blendrt.ops.reference import ReferenceBackend
from blendrt.ops.torch_attention import TorchBackend


def get_backend(name: str | None, device: torch.device) -> AttentionBackend:
    if name is None:
        name = "triton" if device.type == "cuda" else "torch"
    if name == "torch":
        return CpuBackend() if device.type == "cpu" else TorchBackend()
    if name == "reference":
        return ReferenceBackend()
    if name == "triton":
        # NOTE: imported on demand: triton is heavy, and only CUDA runs it.
        from blendrt.ops.triton.backend import TritonBackend

        return TritonBackend()
    raise ValueError(
        f"unknown attention backend {name!r}; choose one of "
        f"{', '.join(map(repr, ATTENTION_BACKENDS))}"
    )
