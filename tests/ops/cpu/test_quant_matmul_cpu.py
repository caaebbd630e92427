"""The C++ quantized matmul against the torch reference (blendrt.ops.quant): int8 and int4
(each group size, with and without zero points, a short last group), rows not a multiple of
the kernel's row block, one token to a long prefill (the dequantize-then-GEMM path), an
act-order permutation; and the launcher's refusals."""

from __future__ import annotations

import pytest
import torch

from blendrt.ops.cpu.quant_matmul import MAX_GEMV_TOKENS, dequantize_cpu, quant_matmul_cpu
from blendrt.ops.quant import (
    QuantizedWeight,
    QuantScheme,
    dequantize_reference,
    quant_matmul_reference,
    quantize_rows,
)

SCHEMES = ("int8", "int4-g32", "int4-g64-zp", "int4-g128", "int4-g128-zp")


def _weight(name: str, n: int, k: int, seed: int) -> QuantizedWeight:
    scheme = QuantScheme.parse(name)
    w = torch.randn(n, k, generator=torch.Generator().manual_seed(seed))
    return QuantizedWeight(scheme, *quantize_rows(w, scheme, torch.float32))


@pytest.mark.parametrize("name", SCHEMES)
@pytest.mark.parametrize("n,k", [(37, 256), (8, 172), (130, 640)])
@pytest.mark.parametrize("tokens", [1, 2, 3, 5, MAX_GEMV_TOKENS, MAX_GEMV_TOKENS + 3])
def test_matches_reference(name: str, n: int, k: int, tokens: int) -> None:
    qw = _weight(name, n, k, seed=n + k)
    x = torch.randn(tokens, k, generator=torch.Generator().manual_seed(tokens))
    expected = quant_matmul_reference(x, qw)
    got = quant_matmul_cpu(x, qw)
    scale = expected.abs().max()
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5 * float(scale) + 1e-6)


@pytest.mark.parametrize("name", SCHEMES)
def test_dequantize_matches_reference(name: str) -> None:
    qw = _weight(name, 19, 172, seed=3)
    torch.testing.assert_close(dequantize_cpu(qw), dequantize_reference(qw), rtol=0, atol=0)


def test_act_order_permutation() -> None:
    qw = _weight("int4-g32", 24, 128, seed=5)
    qw.perm = torch.randperm(128, generator=torch.Generator().manual_seed(1)).int()
    x = torch.randn(3, 128, generator=torch.Generator().manual_seed(2))
    expected = x[:, qw.perm.long()] @ dequantize_reference(qw).T
    scale = float(expected.abs().max())
    torch.testing.assert_close(quant_matmul_cpu(x, qw), expected, rtol=0, atol=1e-5 * scale + 1e-6)


def test_refusals() -> None:
    qw = _weight("int4-g32", 8, 64, seed=0)
    with pytest.raises(ValueError, match="float32"):
        quant_matmul_cpu(torch.randn(2, 64, dtype=torch.float64), qw)
    with pytest.raises(ValueError, match="inputs"):
        quant_matmul_cpu(torch.randn(2, 32), qw)
    bad = QuantizedWeight(qw.scheme, qw.qweight, qw.scales.double(), qw.zeros)
    with pytest.raises(ValueError, match="scales"):
        quant_matmul_cpu(torch.randn(2, 64), bad)
    bad = QuantizedWeight(qw.scheme, qw.qweight, qw.scales, None)
    with pytest.raises(ValueError, match="zeros"):
        quant_matmul_cpu(torch.randn(2, 64), bad)
