"""Weight-only quantization: the formats every kernel reads, and their torch references.

A quantized linear layer of N outputs and K inputs (y = x @ W.T, W [N, K]) holds:

int8, per output channel (symmetric)
    qweight  int8  [N, K]         q = round(W / scale) in [-127, 127]
    scales   [N]   (the activation dtype)   scale[n] = max|W[n, :]| / 127
    W[n, k] = qweight[n, k] * scales[n]

int4, group-wise along K (groups of G = 32, 64 or 128 inputs; K even; when G does not
divide K the last group is shorter, so small members quantize too)
    qweight  uint8 [N, K // 2]     two 4-bit values per byte: input 2j in the low nibble,
                                   2j + 1 in the high one; values in [0, 15]
    scales   [N, ceil(K / G)]  (the activation dtype)
    zeros    uint8 [N, ceil(K / G)]  zero points in [0, 15]; all 8 when symmetric
    W[n, k] = (q[n, k] - zeros[n, k // G]) * scales[n, k // G]
    perm     int32 [K] or None     GPTQ act-order: the layer computes x[:, perm] @ W.T, W's
                                   inputs permuted so each group is contiguous

Checkpoints in GPTQ or AWQ packing are converted to this at load (models/quant_checkpoints);
fp32/fp16/bf16 checkpoints are quantized at load, a few rows at a time (`quantize_rows`).
Kernels: the C++ core on the CPU, Triton on CUDA; `quant_matmul_reference` is the ground
truth both are tested against.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

GROUP_SIZES = (32, 64, 128)


@dataclass(frozen=True)
class QuantScheme:
    """How a member's linear weights are stored: `int8`, or `int4` with a group size and
    symmetric (zero point 8) or with per-group zero points."""

    bits: int  # 8 or 4
    group_size: int | None = None  # int4: 32, 64 or 128; int8: None (per channel)
    zero_point: bool = False  # int4: per-group zero points (asymmetric)

    def __post_init__(self) -> None:
        if self.bits == 8:
            if self.group_size is not None or self.zero_point:
                raise ValueError("int8 is per output channel and symmetric")
        elif self.bits == 4:
            if self.group_size not in GROUP_SIZES:
                raise ValueError(f"int4 group size must be one of {GROUP_SIZES}")
        else:
            raise ValueError(f"bits must be 8 or 4, got {self.bits}")

    @property
    def name(self) -> str:
        if self.bits == 8:
            return "int8"
        return f"int4-g{self.group_size}" + ("-zp" if self.zero_point else "")

    @classmethod
    def parse(cls, name: str) -> QuantScheme:
        """`int8`, `int4` (group 128, symmetric), `int4-g32|g64|g128`, with `-zp` for zero
        points: e.g. `int4-g64-zp`."""
        m = re.fullmatch(r"int(8|4)(?:-g(\d+))?(-zp)?", name.strip().lower())
        if m is None or (m.group(1) == "8" and (m.group(2) or m.group(3))):
            raise ValueError(
                f"unknown quantization {name!r}: use int8, int4, int4-g32, int4-g64, "
                "int4-g128, optionally with -zp (zero points), e.g. int4-g64-zp"
            )
        if m.group(1) == "8":
            return cls(8)
        return cls(4, int(m.group(2) or 128), bool(m.group(3)))


@dataclass
class QuantizedWeight:
    """One linear layer's weight in the format above (tensors on one device)."""

    scheme: QuantScheme
    qweight: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor | None = None  # int4 only
    perm: torch.Tensor | None = None  # int4 act-order only

    @property
    def out_features(self) -> int:
        return self.qweight.shape[0]

    @property
    def in_features(self) -> int:
        return self.qweight.shape[1] * (2 if self.scheme.bits == 4 else 1)

    @property
    def nbytes(self) -> int:
        tensors = (self.qweight, self.scales, self.zeros, self.perm)
        return sum(t.numel() * t.element_size() for t in tensors if t is not None)


# ---- quantizing (at load, a block of rows at a time) ---------------------------------------


def quantize_rows(w: torch.Tensor, scheme: QuantScheme, scale_dtype: torch.dtype):
    """Rows of a float weight [n, K] -> (qweight, scales, zeros) rows in the format above.
    Rows are independent, so a fused projection is quantized checkpoint tensor by tensor."""
    w = w.float()
    if scheme.bits == 8:
        scales = (w.abs().amax(dim=1) / 127).clamp_min(torch.finfo(torch.float32).tiny)
        q = torch.round(w / scales[:, None]).clamp_(-127, 127).to(torch.int8)
        return q, scales.to(scale_dtype), None
    n, k = w.shape
    g = scheme.group_size
    if k % 2:
        raise ValueError(f"int4 packs two inputs per byte: needs an even input count, got {k}")
    num_groups = -(-k // g)
    # The last group may be short: pad it with zeros, which change neither its max |w| nor,
    # as the range is widened to include 0 anyway, its min and max.
    groups = torch.nn.functional.pad(w, (0, num_groups * g - k)).view(n, num_groups, g)
    scales, zeros = _int4_grid(groups, scheme.zero_point)
    q = torch.round(groups / scales[..., None] + zeros[..., None]).clamp_(0, 15)
    q = q.view(n, num_groups * g)[:, :k]
    return pack_int4(q.to(torch.uint8)), scales.to(scale_dtype), zeros.to(torch.uint8)


#: Ranges tried per int4 group, as fractions of its full range: clipping the largest weights
#: a little often lowers the group's squared error (as llama.cpp's k-quants and AWQ search).
CLIP_RATIOS = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7)


def _int4_grid(groups: torch.Tensor, zero_point: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(scales, zeros) [n, groups] of the int4 grid with the least squared error per group,
    over the ranges CLIP_RATIOS of the full one."""
    tiny = torch.finfo(torch.float32).tiny
    best = None
    for ratio in CLIP_RATIOS:
        if zero_point:
            low = groups.amin(dim=2).clamp(max=0) * ratio
            high = groups.amax(dim=2).clamp(min=0) * ratio
            scales = ((high - low) / 15).clamp_min(tiny)
            zeros = torch.round(-low / scales).clamp_(0, 15)
        else:
            scales = (groups.abs().amax(dim=2) * ratio / 7).clamp_min(tiny)
            zeros = torch.full_like(scales, 8)
        q = torch.round(groups / scales[..., None] + zeros[..., None]).clamp_(0, 15)
        err = ((q - zeros[..., None]) * scales[..., None] - groups).square_().sum(dim=2)
        if best is None:
            best = (err, scales, zeros)
        else:
            better = err < best[0]
            best = (
                torch.where(better, err, best[0]),
                torch.where(better, scales, best[1]),
                torch.where(better, zeros, best[2]),
            )
    return best[1], best[2]


def pack_int4(q: torch.Tensor) -> torch.Tensor:  # [N, K] values 0..15 -> [N, K // 2] uint8
    q = q.to(torch.uint8)
    return q[:, 0::2] | (q[:, 1::2] << 4)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:  # [N, K // 2] -> [N, K] uint8
    low, high = packed & 0xF, packed >> 4
    return torch.stack((low, high), dim=-1).view(packed.shape[0], -1)


# ---- the references ------------------------------------------------------------------------


def dequantize_reference(qw: QuantizedWeight, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The float weight [N, K] the quantized one stands for (inputs in `perm` order)."""
    if qw.scheme.bits == 8:
        return (qw.qweight.float() * qw.scales.float()[:, None]).to(dtype)
    q = unpack_int4(qw.qweight).float()
    g, k = qw.scheme.group_size, q.shape[1]
    scales = qw.scales.float().repeat_interleave(g, dim=1)[:, :k]
    zeros = qw.zeros.float().repeat_interleave(g, dim=1)[:, :k]
    return ((q - zeros) * scales).to(dtype)


def quant_matmul_reference(x: torch.Tensor, qw: QuantizedWeight) -> torch.Tensor:
    """x [T, K] -> x @ W.T [T, N] in x's dtype, through the dequantized weight (float32)."""
    if qw.perm is not None:
        x = x[:, qw.perm.long()]
    return (x.float() @ dequantize_reference(qw).T).to(x.dtype)
