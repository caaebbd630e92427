"""The fused CPU layer ops against their torch references (blendrt.ops.layer_ops): odd
widths, partial and interleaved rotary, strided rows, the residual updated in place; and
the launchers refuse what their raw pointers could not safely read."""

from __future__ import annotations

import pytest
import torch

from blendrt.ops import layer_ops
from blendrt.ops.cpu.layer_ops import rms_norm_cpu, rotary_cpu, silu_and_mul_cpu
from blendrt.ops.rope import RopeTables


def _tables(positions: int, rotary_dim: int, interleaved: bool) -> tuple[torch.Tensor, ...]:
    inv = 1.0 / (10000 ** (torch.arange(0, rotary_dim, 2).float() / rotary_dim))
    freqs = torch.outer(torch.arange(positions).float(), inv)
    freqs = freqs.repeat_interleave(2, -1) if interleaved else torch.cat([freqs, freqs], -1)
    return freqs.cos(), freqs.sin()


@pytest.mark.parametrize("rows,hidden", [(1, 7), (5, 96), (33, 257)])
def test_rms_norm_matches_reference(rows: int, hidden: int) -> None:
    g = torch.Generator().manual_seed(rows)
    x, w = torch.randn(rows, hidden, generator=g), torch.randn(hidden, generator=g)
    torch.testing.assert_close(
        rms_norm_cpu(x, w, 1e-5), layer_ops.rms_norm_reference(x, w, 1e-5), rtol=1e-6, atol=1e-6
    )
    residual = torch.randn(rows, hidden, generator=g)
    summed = x + residual
    out = rms_norm_cpu(x, w, 1e-5, residual)
    torch.testing.assert_close(residual, summed, rtol=0, atol=0)  # updated in place
    torch.testing.assert_close(out, layer_ops.rms_norm_reference(summed, w, 1e-5))


@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("head_dim,rotary_dim", [(64, 64), (80, 32), (48, 48), (256, 64)])
def test_rotary_matches_reference(interleaved: bool, head_dim: int, rotary_dim: int) -> None:
    g = torch.Generator().manual_seed(head_dim)
    cos, sin = _tables(300, rotary_dim, interleaved)
    positions = torch.randint(0, 300, (9,), generator=g)
    rope = RopeTables(positions, cos, sin, interleaved)
    # q and k heads inside a wider fused row (v follows): rows strided, heads contiguous.
    qkv = torch.randn(9, 7 * head_dim, generator=g)
    qk = qkv[:, : 5 * head_dim].view(9, 5, head_dim)
    expected = layer_ops.rotary_reference(qk.clone(), rope)
    v_before = qkv[:, 5 * head_dim :].clone()
    got = rotary_cpu(qk, rope)
    assert got.data_ptr() == qkv.data_ptr()  # in place
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(qkv[:, 5 * head_dim :], v_before, rtol=0, atol=0)  # v untouched


@pytest.mark.parametrize("rows,inter", [(1, 5), (3, 1024), (17, 172)])
def test_silu_and_mul_matches_reference(rows: int, inter: int) -> None:
    x = torch.randn(rows, 2 * inter, generator=torch.Generator().manual_seed(inter)) * 4
    torch.testing.assert_close(
        silu_and_mul_cpu(x), layer_ops.silu_and_mul_reference(x), rtol=1e-6, atol=1e-6
    )


def test_dispatch_takes_the_torch_path_off_float32() -> None:
    x = torch.randn(4, 64, dtype=torch.float64)
    out, summed = layer_ops.rms_norm(x, torch.ones(64, dtype=torch.float64), 1e-5)
    assert out.dtype == torch.float64 and summed is x
    assert layer_ops.silu_and_mul(x).shape == (4, 32)


def test_launchers_refuse_bad_tensors() -> None:
    x = torch.randn(4, 64)
    with pytest.raises(ValueError, match="float32"):
        rms_norm_cpu(x.double(), torch.ones(64), 1e-5)
    with pytest.raises(ValueError, match="contiguous"):
        rms_norm_cpu(x[:, ::2], torch.ones(32), 1e-5)
    with pytest.raises(ValueError, match="entries"):
        rms_norm_cpu(x, torch.ones(63), 1e-5)
    with pytest.raises(ValueError, match="residual"):
        rms_norm_cpu(x, torch.ones(64), 1e-5, torch.randn(3, 64))
    with pytest.raises(ValueError, match="gate and up"):
        silu_and_mul_cpu(torch.randn(2, 7))
    cos, sin = _tables(8, 16, False)
    with pytest.raises(ValueError, match="positions must lie"):
        RopeTables(torch.tensor([0, 8]), cos, sin, False)
    rope = RopeTables(torch.tensor([0, 7]), cos, sin, False)
    with pytest.raises(ValueError, match="positions"):
        rotary_cpu(torch.randn(3, 2, 16), rope)  # 3 rows, 2 positions
    with pytest.raises(ValueError, match="rotary_dim"):
        rotary_cpu(torch.randn(2, 2, 8), rope)  # head_dim 8 < rotary_dim 16
    with pytest.raises(ValueError, match="heads must be contiguous"):
        rotary_cpu(torch.randn(2, 16, 2).transpose(1, 2), rope)
