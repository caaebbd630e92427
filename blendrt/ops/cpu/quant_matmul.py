"""Weight-only quantized matmul on the CPU through the C++ core (`csrc/cpu/cpu_quant_matmul.cpp`).

Up to `MAX_GEMV_TOKENS` rows (decode, short extends) the kernel dequantizes each weight row
once into L1 and dots it with every row of x: a step reads each packed byte once, 4x (int8)
or ~7x (int4) fewer bytes than float32. Longer prefills dequantize the whole weight into a
float32 scratch and run a float GEMM, where arithmetic, not weight bytes, is the cost.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

import blendrt._core as _core
from blendrt.ops.quant import QuantizedWeight

MAX_GEMV_TOKENS = 16


def _check(x: torch.Tensor, qw: QuantizedWeight) -> None:
    if x.device.type != "cpu" or x.dtype != torch.float32 or x.dim() != 2:
        raise ValueError(f"x must be a 2-D float32 CPU tensor, got {x.dtype} {tuple(x.shape)}")
    if x.shape[1] != qw.in_features:
        raise ValueError(f"x has {x.shape[1]} inputs, the weight {qw.in_features}")
    n, k, s = qw.out_features, qw.in_features, qw.scheme
    want = torch.int8 if s.bits == 8 else torch.uint8
    scales = (n,) if s.bits == 8 else (n, -(-k // s.group_size))
    if qw.qweight.dtype != want or not qw.qweight.is_contiguous():
        raise ValueError(f"qweight must be a contiguous {want} tensor")
    if qw.scales.shape != scales or qw.scales.dtype != torch.float32:
        raise ValueError(
            f"scales must be float32 {scales}, got {qw.scales.dtype} {tuple(qw.scales.shape)}"
        )
    if s.bits == 4 and (
        qw.zeros is None or qw.zeros.shape != scales or qw.zeros.dtype != torch.uint8
    ):
        raise ValueError(f"int4 zeros must be uint8 {scales}")
    for t in (qw.qweight, qw.scales, qw.zeros):
        if t is not None and (t.device.type != "cpu" or not t.is_contiguous()):
            raise ValueError("the quantized weight's tensors must be contiguous CPU tensors")


def _pointers(qw: QuantizedWeight) -> tuple[int, int, int, int, int]:
    s = qw.scheme
    zeros = 0 if qw.zeros is None else qw.zeros.data_ptr()
    return qw.qweight.data_ptr(), qw.scales.data_ptr(), zeros, s.bits, s.group_size or 0


def dequantize_cpu(qw: QuantizedWeight) -> torch.Tensor:  # -> float32 [N, K]
    w = torch.empty(qw.out_features, qw.in_features)
    _core.dequantize_cpu(w.data_ptr(), *_pointers(qw)[:3], qw.out_features, qw.in_features,
                         *_pointers(qw)[3:])  # fmt: skip
    return w


def quant_matmul_cpu(x: torch.Tensor, qw: QuantizedWeight) -> torch.Tensor:
    """x [T, K] float32 -> x @ W.T [T, N] (x[:, perm] first when the weight has a perm)."""
    _check(x, qw)
    if qw.perm is not None:
        x = x[:, qw.perm.long()]
    x = x.contiguous()
    if x.shape[0] > MAX_GEMV_TOKENS:
        return F.linear(x, dequantize_cpu(qw))
    y = torch.empty(x.shape[0], qw.out_features)
    q, scales, zeros, bits, group = _pointers(qw)
    _core.quant_matmul_cpu(
        y.data_ptr(), x.data_ptr(), x.shape[0], qw.in_features, qw.out_features,
        q, scales, zeros, bits, group, torch.get_num_threads(),
    )  # fmt: skip
    return y
