"""Linear layers on the CPU through oneDNN, with weights reordered once at load.

`F.linear` hands each call to a GEMM that takes the weight as stored, row-major [out, in];
for the few rows of a decode step or a short prefill that GEMM runs far below what the CPU
can do (measured on the development VM, 4-64 rows, hidden 256-640: 2-3x slower, and slower
with 2 threads than 1). oneDNN's inner-product primitive with the weight reordered into its
blocked layout once, at load (what torch.compile's CPU freezing pass does), keeps both
cores busy and reads each weight block once per call.

`pack_linears(model)` swaps every float32 `nn.Linear` of a loaded model for a
`PackedLinear` holding only the reordered weight (the row-major copy is freed, so weights
cost no more memory); a linear tied to the embedding (a tied lm_head) keeps F.linear, as
packing it would duplicate the vocabulary matrix. Results equal F.linear's to float32
rounding (another summation order), not bit for bit.
"""

from __future__ import annotations

import torch
from torch import nn


def onednn_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


class PackedLinear(nn.Module):
    """y = x @ W.T + b with W held in oneDNN's blocked layout (an opaque tensor: not a
    parameter; `weight_bytes` says what it costs)."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight = linear.weight.detach()
        self.weight_bytes = weight.numel() * weight.element_size()
        self.packed_weight = torch.ops.mkldnn._reorder_linear_weight(weight)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach(), False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [T, in] -> [T, out]
        return torch.ops.mkldnn._linear_pointwise(
            x.contiguous(), self.packed_weight, self.bias, "none", [], ""
        )

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, onednn"


def pack_linears(model: nn.Module) -> int:
    """Replaces the model's float32 CPU linears by PackedLinear; returns how many."""
    if not onednn_available():
        return 0
    tied = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    count = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if (
                type(child) is nn.Linear
                and child.weight.device.type == "cpu"
                and child.weight.dtype == torch.float32
                and id(child.weight) not in tied
            ):
                setattr(parent, name, PackedLinear(child))
                count += 1
    return count
