"""Triton's names for the torch element types the kernels take (pointer signatures)."""

from __future__ import annotations

import torch

TL_TYPES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}
