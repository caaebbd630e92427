"""What fits before anyone loads weights (`blendrt plan`), part 1: a member's shapes, and from
them its weight bytes at each precision and its KV bytes per token.

Only config.json and safetensors HEADERS are read. The member's model is built on the meta
device and its weight map names every checkpoint tensor with its shape; a folder with weights
has its headers checked against that (as the loader does), one with only config.json is
planned from the config alone.

Bytes (blendrt/ops/quant.py's formats; scales in the model dtype, bf16 on a GPU), for a linear
weight of N outputs and K inputs:
    bf16      2 N K
    int8      N K + 2 N                      (qweight, scales [N])
    int4-gG   N K / 2 + 3 N K/G              (qweight, scales [N, K/G] bf16, zeros uint8)
              + 4 K per piece for a GPTQ act-order checkpoint (perm int32 [K])
What is quantized is what the loader quantizes (blendrt/models/quantize.py): the linear
pieces of the weight map, every decoder projection (q/k/v/o and gate/up/down, GPT-J's
q/k/v/out and fc_in/fc_out); embeddings, norms, biases and lm_head stay bf16. A GPTQ or AWQ
folder counts as the int4 scheme the loader converts it to (models/quant_checkpoints.py:
group_size -1 is carried as groups of 128).

Sizing a mix on a device, and the search for the cheapest mix that fits: plan_search.py.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch

from blendrt.cache.pool import KVGeometry
from blendrt.models.config import ModelConfig
from blendrt.models.loader import build_model, checkpoint_quantization, read_config
from blendrt.models.quantize import quantize_linears
from blendrt.models.weights import check_layer_count, safetensors_files, tensor_shapes
from blendrt.ops.quant import QuantScheme

GiB = 1 << 30
_UNITS = {"mb": 10**6, "mib": 1 << 20, "gb": 10**9, "gib": 1 << 30}
MAX_DEVICE_BYTES = 1 << 50
MODEL_DTYPE = torch.bfloat16  # what members run in on a GPU (fp16 is the same size)
PRECISIONS = ("bf16", "int8", "int4-g32", "int4-g64", "int4-g128")


def parse_size(text: str) -> int:
    """'24GiB', '24 GB', '80000MiB', '1.5GiB' -> bytes (GB/MB decimal, GiB/MiB binary)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-z]+)\s*", str(text).lower())
    if m is None or m.group(2) not in _UNITS:
        raise ValueError(f"memory size {text!r}: give a number and GiB, GB, MiB or MB (24GiB)")
    size = int(float(m.group(1)) * _UNITS[m.group(2)])
    if not 0 < size <= MAX_DEVICE_BYTES:
        raise ValueError(f"memory size {text!r} is out of range (0, {MAX_DEVICE_BYTES} bytes]")
    return size


def local_gpu_memory() -> int:
    """The local CUDA device's total memory; ValueError when there is none."""
    if not torch.cuda.is_available():
        raise ValueError("no CUDA device here: give the device's memory, e.g. --gpu-memory 24GiB")
    return torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory


@dataclass(frozen=True)
class MemberShapes:
    """A member's weights as shapes: what every precision's byte count is computed from."""

    name: str
    config: ModelConfig
    linears: tuple[tuple[str, int, int], ...]  # quantized pieces: (checkpoint prefix, N, K)
    other_params: int  # embeddings, norms, biases, lm_head: kept in bf16
    checkpoint: str | None = None  # GPTQ/AWQ: the int4 scheme it loads as; None: float
    checkpoint_act_order: bool = False  # GPTQ act-order: a perm int32 [K] per piece
    source: str = "config"  # "headers": checked against the safetensors headers

    @property
    def params(self) -> int:
        return self.other_params + sum(n * k for _, n, k in self.linears)

    @property
    def precision(self) -> str:
        """What the member loads as with no --quantization."""
        return self.checkpoint or "bf16"


def read_member(name: str, folder: str | Path) -> MemberShapes:
    """A member's shapes from config.json and (if any) its safetensors headers, never weights:
    the linear pieces are those the loader quantizes (its weight map's `linears`)."""
    folder = Path(folder)
    config = read_config(folder)
    checkpoint = checkpoint_quantization(folder)  # GPTQ / AWQ, validated as the loader does
    with torch.device("meta"):
        model = build_model(config)
    pieces = model.weight_map().linears.items()
    linears = tuple((prefix, p.rows, p.module.in_features) for prefix, p in pieces)
    quantized = {id(p.module.weight) for _, p in pieces}
    other = sum(p.numel() for p in model.parameters() if id(p) not in quantized)
    source = "config"
    has_index = (folder / "model.safetensors.index.json").is_file()
    if has_index or any(folder.glob("*.safetensors")):
        shapes = tensor_shapes(safetensors_files(folder))
        check_layer_count(shapes, config.num_layers)
        if checkpoint is not None:  # as the loader builds it: packed layers expected
            quantize_linears(model, checkpoint.scheme, checkpoint)
        wm = model.weight_map()
        wm.checkpoint = checkpoint
        wm.check(shapes)  # every name and shape, GPTQ/AWQ tensors included
        source = "headers"
    return MemberShapes(
        name,
        config,
        linears,
        other,
        checkpoint.scheme.name if checkpoint is not None else None,
        checkpoint is not None and checkpoint.desc_act,
        source,
    )


def linear_bytes(n: int, k: int, bits: int, group: int | None = None) -> int:
    """Bytes of one [N, K] linear weight stored at `bits` (16, 8, or 4 with `group`)."""
    if bits == 16:
        return 2 * n * k
    if bits == 8:
        return n * k + 2 * n
    if group is None or k % group:
        raise ValueError(f"int4 needs inputs divisible by the group size, got K={k}, G={group}")
    return n * k // 2 + 3 * n * (k // group)


def precision_ok(member: MemberShapes, precision: str) -> bool:
    """Whether `precision` applies: a float checkpoint, and K divisible by the int4 group."""
    if member.checkpoint is not None:
        return precision == member.checkpoint
    bits, group = _bits(precision)
    return bits != 4 or all(k % group == 0 for _, _, k in member.linears)


def _bits(precision: str) -> tuple[int, int | None]:
    if precision == "bf16":
        return 16, None
    scheme = QuantScheme.parse(precision)
    return scheme.bits, scheme.group_size


def weight_bytes(member: MemberShapes, precision: str | None = None) -> int:
    """The member's weight bytes at `precision` (None: as its checkpoint loads)."""
    precision = member.precision if precision is None else precision
    if not precision_ok(member, precision):
        raise ValueError(f"member {member.name!r} cannot load as {precision}")
    bits, group = _bits(precision)
    perm = 4 if member.checkpoint_act_order else 0
    return 2 * member.other_params + sum(
        linear_bytes(n, k, bits, group) + perm * k for _, n, k in member.linears
    )


def kv_geometry(member: MemberShapes, cache_dtype: str = "auto") -> KVGeometry:
    c = member.config
    return KVGeometry(c.num_layers, c.num_kv_heads, c.head_dim, MODEL_DTYPE, cache_dtype)
