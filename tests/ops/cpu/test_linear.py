"""PackedLinear (oneDNN, weight reordered once) against F.linear, and pack_linears: every
float32 CPU linear packed, a linear tied to the embedding left alone, results kept."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from blendrt.ops.cpu.linear import PackedLinear, onednn_available, pack_linears

pytestmark = pytest.mark.skipif(not onednn_available(), reason="torch built without oneDNN")


@pytest.mark.parametrize("rows", [1, 3, 64])
@pytest.mark.parametrize("bias", [False, True])
def test_packed_linear_matches_f_linear(rows: int, bias: bool) -> None:
    torch.manual_seed(rows)
    linear = nn.Linear(96, 130, bias=bias)
    x = torch.randn(rows, 96)
    expected = F.linear(x, linear.weight, linear.bias)
    packed = PackedLinear(linear)
    torch.testing.assert_close(packed(x), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(packed(x.t().contiguous().t()), expected, rtol=1e-5, atol=1e-5)
    assert packed.weight_bytes == 96 * 130 * 4


class Tiny(nn.Module):
    def __init__(self, tie: bool) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, 16)
        self.proj = nn.Linear(16, 16)
        self.wide = nn.Linear(16, 16).to(torch.float64)
        self.head = nn.Linear(16, 50, bias=False)
        if tie:
            self.head.weight = self.embed.weight


@pytest.mark.parametrize("tie", [False, True])
def test_pack_linears_replaces_float32_untied_linears(tie: bool) -> None:
    model = Tiny(tie)
    x = torch.randn(4, 16)
    before = model.head(model.proj(x))
    assert pack_linears(model) == (1 if tie else 2)
    assert isinstance(model.proj, PackedLinear)
    assert isinstance(model.wide, nn.Linear)  # float64: not packed
    assert isinstance(model.head, nn.Linear) == tie  # tied to the embedding: not duplicated
    torch.testing.assert_close(model.head(model.proj(x)), before, rtol=1e-5, atol=1e-5)
