"""QuantLinear: a linear layer whose weight is stored quantized (blendrt/ops/quant.py).

Its weight is one shard over all outputs, or, when fused pieces need different input orders
(GPTQ act-order: q, k and v each permute the inputs their own way), one shard per piece,
computed separately and concatenated. Buffers are allocated by the loader, which fills them
checkpoint tensor by checkpoint tensor (quantizing float rows, or converting GPTQ/AWQ).

The matmul goes to the C++ core for float32 on the CPU, to Triton on CUDA, and to the torch
reference otherwise.
"""

from __future__ import annotations

import torch
from torch import nn

from blendrt.ops.quant import QuantizedWeight, QuantScheme, quant_matmul_reference


def quant_matmul(x: torch.Tensor, qw: QuantizedWeight) -> torch.Tensor:
    """x [T, K] -> x @ W.T [T, N] in x's dtype, on the fastest path for x's device."""
    if x.device.type == "cpu" and x.dtype == torch.float32:
        from blendrt.ops.cpu.quant_matmul import quant_matmul_cpu

        return quant_matmul_cpu(x, qw)
    if x.device.type == "cuda":
        from blendrt.ops.triton.quant_matmul import quant_matmul_triton

        return quant_matmul_triton(x, qw)
    return quant_matmul_reference(x, qw)


class QuantLinear(nn.Module):
    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        bias: bool,
        scheme: QuantScheme,
        shard_rows: tuple[int, ...] | None = None,  # outputs of each shard; None: one
        act_order: bool = False,  # shards carry an input permutation each
    ) -> None:
        super().__init__()
        shard_rows = shard_rows or (out_features,)
        if sum(shard_rows) != out_features:
            raise ValueError(f"shards of {shard_rows} rows do not make {out_features} outputs")
        if scheme.bits == 4 and in_features % 2:
            raise ValueError(f"int4 needs an even number of inputs, got {in_features}")
        self.in_features, self.out_features = in_features, out_features
        self.scheme, self.shard_rows, self.act_order = scheme, shard_rows, act_order
        k = in_features
        for i, n in enumerate(shard_rows):  # meta tensors; the loader allocates them
            if scheme.bits == 8:
                self.register_buffer(f"qweight{i}", torch.empty(n, k, dtype=torch.int8))
                self.register_buffer(f"scales{i}", torch.empty(n))
            else:
                groups = -(-k // scheme.group_size)
                self.register_buffer(f"qweight{i}", torch.empty(n, k // 2, dtype=torch.uint8))
                self.register_buffer(f"scales{i}", torch.empty(n, groups))
                self.register_buffer(f"zeros{i}", torch.empty(n, groups, dtype=torch.uint8))
            if act_order:
                self.register_buffer(f"perm{i}", torch.empty(k, dtype=torch.int32))
        self.bias = nn.Parameter(torch.empty(out_features), requires_grad=False) if bias else None

    @classmethod
    def like(
        cls, linear: nn.Linear, scheme: QuantScheme, shard_rows=None, act_order=False
    ) -> QuantLinear:
        return cls(
            linear.in_features, linear.out_features, bias=linear.bias is not None,
            scheme=scheme, shard_rows=shard_rows, act_order=act_order,
        )  # fmt: skip

    def shard(self, i: int) -> QuantizedWeight:
        return QuantizedWeight(
            self.scheme,
            getattr(self, f"qweight{i}"),
            getattr(self, f"scales{i}"),
            getattr(self, f"zeros{i}", None),
            getattr(self, f"perm{i}", None),
        )

    @property
    def weight_bytes(self) -> int:
        return sum(self.shard(i).nbytes for i in range(len(self.shard_rows)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [T, in] -> [T, out]
        outs = [quant_matmul(x, self.shard(i)) for i in range(len(self.shard_rows))]
        y = outs[0] if len(outs) == 1 else torch.cat(outs, dim=-1)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        shards = f", shards={self.shard_rows}" if len(self.shard_rows) > 1 else ""
        return f"in={self.in_features}, out={self.out_features}, {self.scheme.name}{shards}"


def quantized_linears(model: nn.Module) -> list[QuantLinear]:
    return [m for m in model.modules() if isinstance(m, QuantLinear)]
