"""Quantized members: which linear layers become QuantLinear, and filling them at load.

A member is quantized one of two ways:
* from a float checkpoint with a `QuantScheme` (int8, int4-gG[-zp]): every decoder linear
  (attention and MLP projections; not the embeddings, the norms or lm_head, whose
  precision the logits depend on most) is quantized as its checkpoint tensors stream in, row
  block by row block, so host memory holds one tensor at a time, never the float model;
* from a GPTQ or AWQ checkpoint (`quantization_config` in config.json): the packed tensors of
  each projection are converted to the same format (blendrt/models/quant_checkpoints.py).

Fused projections (q/k/v, gate/up) take several checkpoint pieces; each fills its rows. With
GPTQ act-order each piece permutes the inputs its own way, so it keeps a shard of its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import nn

from blendrt.models.layouts import Transform
from blendrt.ops.quant import QuantizedWeight, QuantScheme, quantize_rows
from blendrt.ops.quant_linear import QuantLinear

if TYPE_CHECKING:
    from blendrt.models.quant_checkpoints import CheckpointQuant


@dataclass
class LinearPiece:
    """Rows [offset, offset + rows) of a linear layer, filled by one checkpoint projection."""

    module: nn.Module
    offset: int
    rows: int
    shard: int = 0  # act-order: the piece's own shard
    pending: dict[str, torch.Tensor] = field(default_factory=dict)  # GPTQ/AWQ parts so far
    transform: Transform | None = None  # the float checkpoint's layout -> [rows, in]

    def packed(self, checkpoint: CheckpointQuant | None) -> bool:
        """Whether the checkpoint stores this piece packed (GPTQ/AWQ), not as a float weight
        (a float checkpoint, or a module AWQ left unconverted)."""
        return checkpoint is not None and isinstance(self.module, QuantLinear)

    def names(self, prefix: str, checkpoint: CheckpointQuant | None) -> list[str]:
        if not self.packed(checkpoint):
            return [prefix + ".weight"]
        from blendrt.models.quant_checkpoints import linear_tensor_names

        return linear_tensor_names(prefix, checkpoint)

    def shapes(self, prefix: str, checkpoint: CheckpointQuant | None) -> dict[str, tuple]:
        k = self.module.in_features
        if not self.packed(checkpoint):
            shape = (self.rows, k)
            if self.transform is not None:
                shape = self.transform.stored_shape(shape)
            return {prefix + ".weight": shape}
        if self.transform is not None:
            raise ValueError(f"{prefix}: GPTQ/AWQ packing of this architecture is not supported")
        from blendrt.models.quant_checkpoints import expected_shapes

        return expected_shapes(prefix, k, self.rows, checkpoint)

    def fill(self, prefix: str, name: str, tensor: torch.Tensor, checkpoint) -> bool:
        """Takes one checkpoint tensor of this piece; True once the piece is complete."""
        if not self.packed(checkpoint):
            if self.transform is not None:
                tensor = self.transform(tensor)
            if isinstance(self.module, QuantLinear):
                self._write(quantize_rows(tensor, self.module.scheme, self._scale_dtype()))
            else:
                with torch.no_grad():
                    self.module.weight[self.offset : self.offset + self.rows].copy_(tensor)
            return True
        from blendrt.models.quant_checkpoints import awq_to_canonical, gptq_to_canonical

        self.pending[name[len(prefix) + 1 :]] = tensor
        if len(self.pending) < len(self.names(prefix, checkpoint)):
            return False
        parts, self.pending = self.pending, {}
        dtype = self._scale_dtype()
        if checkpoint.method == "gptq":
            qw = gptq_to_canonical(
                parts["qweight"], parts["qzeros"], parts["scales"], parts.get("g_idx"),
                checkpoint, scale_dtype=dtype,
            )  # fmt: skip
        else:
            qw = awq_to_canonical(
                parts["qweight"], parts["qzeros"], parts["scales"], checkpoint, scale_dtype=dtype
            )
        self._write((qw.qweight, qw.scales, qw.zeros), qw.perm)
        return True

    def _scale_dtype(self) -> torch.dtype:
        return self.module.shard(0).scales.dtype

    def _write(self, rows: tuple, perm: torch.Tensor | None = None) -> None:
        m: QuantLinear = self.module
        act_order = m.act_order
        if perm is not None and not act_order:
            raise ValueError(
                "the checkpoint's g_idx permutes a layer's inputs but its quantization_config "
                "has desc_act false; blendrt keeps a permutation only for desc_act checkpoints"
            )
        at = slice(None) if act_order else slice(self.offset, self.offset + self.rows)
        shard = m.shard(self.shard if act_order else 0)
        with torch.no_grad():
            for dst, src in zip((shard.qweight, shard.scales, shard.zeros), rows, strict=True):
                if dst is not None:
                    dst[at].copy_(src)
            if act_order:
                if perm is None:  # a trivial g_idx in an act-order checkpoint
                    perm = torch.arange(m.in_features, dtype=torch.int32)
                shard.perm.copy_(perm)


def quantize_linears(
    model: nn.Module, scheme: QuantScheme, checkpoint: CheckpointQuant | None = None
) -> int:
    """Swaps the decoder's linear layers (every one the weight map fills by pieces) for
    QuantLinear, on the meta device before allocation; returns how many."""
    pieces: dict[int, list[LinearPiece]] = {}
    skipped = checkpoint.modules_to_not_convert if checkpoint is not None else ()
    for prefix, piece in model.weight_map().linears.items():
        if any(part in prefix for part in skipped):  # AWQ left it in float
            continue
        pieces.setdefault(id(piece.module), []).append(piece)
    act_order = checkpoint is not None and checkpoint.desc_act
    swapped = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is not nn.Linear or id(child) not in pieces:
                continue
            rows = tuple(p.rows for p in sorted(pieces[id(child)], key=lambda p: p.offset))
            shards = rows if act_order else None
            setattr(parent, name, QuantLinear.like(child, scheme, shards, act_order))
            swapped += 1
    return swapped


def quantized_bytes(model: nn.Module) -> int:
    """Bytes of the model's quantized weights as allocated (packed values, scales, zeros)."""
    return sum(m.weight_bytes for m in model.modules() if isinstance(m, QuantLinear))


__all__ = ["LinearPiece", "QuantizedWeight", "quantize_linears", "quantized_bytes"]
