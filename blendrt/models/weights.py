"""Checkpoint weights: safetensors only, memory-mapped, loaded tensor by tensor into
parameters allocated once on the target device and dtype (never two copies of the model)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import safe_open
from torch import nn

from blendrt.models.layouts import Transform
from blendrt.models.quantize import LinearPiece

if TYPE_CHECKING:
    from blendrt.models.quant_checkpoints import CheckpointQuant

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


@dataclass
class _Target:
    param: torch.Tensor
    offset: int  # first row of the parameter this checkpoint tensor fills
    rows: int  # rows it fills (fused projections hold several checkpoint tensors)
    transform: Transform | None = None  # checkpoint layout -> the parameter's

    def stored_shape(self) -> tuple[int, ...]:
        shape = (self.rows, *self.param.shape[1:])
        return self.transform.stored_shape(shape) if self.transform else shape


@dataclass
class WeightMap:
    """{checkpoint tensor name: slice of a model parameter}, and {checkpoint projection
    prefix: rows of a linear layer} for the layers that may be stored quantized."""

    targets: dict[str, _Target] = field(default_factory=dict)
    linears: dict[str, LinearPiece] = field(default_factory=dict)  # {prefix: its rows}
    ignored: set[str] = field(default_factory=set)
    ignored_suffixes: list[str] = field(default_factory=list)
    # How the checkpoint stores those linears: None (float), or GPTQ / AWQ packing.
    checkpoint: CheckpointQuant | None = None

    def add(
        self,
        name: str,
        param: torch.Tensor,
        offset: int = 0,
        rows: int | None = None,
        transform: Transform | None = None,
    ) -> None:
        rows = param.shape[0] - offset if rows is None else rows
        self.targets[name] = _Target(param, offset, rows, transform)

    def add_linear(
        self,
        prefix: str,
        module: nn.Module,
        offset: int = 0,
        rows: int | None = None,
        transform: Transform | None = None,
    ) -> None:
        """Rows of a linear layer filled by checkpoint projection `prefix` (its `.weight`, or
        its GPTQ/AWQ tensors) and its `.bias` if the layer has one."""
        rows = module.out_features - offset if rows is None else rows
        shard = sum(p.module is module for p in self.linears.values())
        self.linears[prefix] = LinearPiece(module, offset, rows, shard, transform=transform)
        if module.bias is not None:
            bias_transform = Transform(qkv_per_head=transform.qkv_per_head) if transform else None
            self.add(prefix + ".bias", module.bias, offset, rows, bias_transform)

    def ignore(self, name: str) -> None:
        self.ignored.add(name)

    def ignore_suffix(self, suffix: str) -> None:
        self.ignored_suffixes.append(suffix)

    def _linear_names(self) -> dict[str, tuple[str, LinearPiece]]:
        """{checkpoint tensor name: (prefix, piece)} of every linear's tensors."""
        return {
            name: (prefix, piece)
            for prefix, piece in self.linears.items()
            for name in piece.names(prefix, self.checkpoint)
        }

    def _linear_shape(self, name: str, shape: tuple[int, ...], prefix: str, piece) -> None:
        want = tuple(piece.shapes(prefix, self.checkpoint)[name])
        if tuple(shape) != want:
            raise ValueError(
                f"weight {name} has shape {tuple(shape)}, expected {want} from config.json"
            )

    def check(self, shapes: dict[str, tuple[int, ...]]) -> None:
        """Checks a checkpoint's tensor names and shapes ({name: shape}, from its headers)
        against the model's, before anything is allocated for them."""
        linear = self._linear_names()
        unexpected: list[str] = []
        for name, shape in shapes.items():
            if name in linear:
                self._linear_shape(name, shape, *linear[name])
            else:
                self._target(name, shape, unexpected)
        self._refuse((set(self.targets) | set(linear)) - set(shapes), unexpected)

    def load(self, tensors: Iterator[tuple[str, torch.Tensor]]) -> None:
        """Copies each checkpoint tensor into its slice (quantizing or converting those of
        quantized linears as they come); checks names and shapes."""
        linear = self._linear_names()
        missing = set(self.targets) | set(linear)
        unexpected: list[str] = []
        for name, tensor in tensors:
            if name in linear:
                prefix, piece = linear[name]
                self._linear_shape(name, tuple(tensor.shape), prefix, piece)
                piece.fill(prefix, name, tensor, self.checkpoint)
                missing.discard(name)
                continue
            target = self._target(name, tuple(tensor.shape), unexpected)
            if target is None:
                continue
            if target.transform is not None:
                tensor = target.transform(tensor)
            with torch.no_grad():
                target.param[target.offset : target.offset + target.rows].copy_(tensor)
            missing.discard(name)
        self._refuse(missing, unexpected)

    def _target(self, name: str, shape: tuple[int, ...], unexpected: list[str]) -> _Target | None:
        """The slice a checkpoint tensor fills (None: ignored, or noted as unexpected);
        raises ValueError if its shape is not the model's."""
        target = self.targets.get(name)
        if target is None:
            if name not in self.ignored and not name.endswith(tuple(self.ignored_suffixes)):
                unexpected.append(name)
            return None
        expected = target.stored_shape()
        if tuple(shape) != expected:
            raise ValueError(
                f"weight {name} has shape {tuple(shape)}, expected {expected} from config.json"
            )
        return target

    @staticmethod
    def _refuse(missing: set[str], unexpected: list[str]) -> None:
        if missing:
            raise ValueError(
                f"checkpoint lacks {len(missing)} weights, e.g. " + ", ".join(sorted(missing)[:5])
            )
        if unexpected:
            raise ValueError(
                f"checkpoint has {len(unexpected)} weights this architecture does "
                "not use (wrong architecture in config.json?), e.g. "
                + ", ".join(sorted(unexpected)[:5])
            )


def materialize(model: nn.Module, device: torch.device, dtype: torch.dtype) -> None:
    """Replaces the (meta) parameters and buffers of `model` by uninitialised ones on
    `device` (floating ones in `dtype`, quantized weights keep theirs), keeping tied
    parameters tied. Rotary tables are recomputed by the caller."""
    new: dict[int, nn.Parameter] = {}  # {id(old parameter): new parameter}
    for module in model.modules():
        for name, param in list(module._parameters.items()):
            if param is None:
                continue
            if id(param) not in new:
                new[id(param)] = nn.Parameter(
                    torch.empty(param.shape, dtype=dtype, device=device), requires_grad=False
                )
            module._parameters[name] = new[id(param)]
        for name, buf in list(module._buffers.items()):  # quantized weights, scales, zeros
            if buf is not None and buf.is_meta:
                kind = dtype if buf.is_floating_point() else buf.dtype
                module._buffers[name] = torch.empty(buf.shape, dtype=kind, device=device)


def safetensors_files(folder: Path) -> list[Path]:
    """The checkpoint's safetensors files (one, or the shards an index names). Pickled
    weights are refused: unpickling a file can run arbitrary code."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (ValueError, KeyError) as e:
            raise ValueError(f"{index} is not a valid safetensors index: {e}") from e
        files = [folder / name for name in sorted(set(weight_map.values()))]
        absent = [f.name for f in files if not f.is_file()]
        if absent:
            raise FileNotFoundError(
                f"{folder}: shards named by the index are missing: " + ", ".join(absent)
            )
        return files
    files = sorted(folder.glob("*.safetensors"))
    if files:
        return files
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise ValueError(
            f"{folder} holds only pickled weights ({', '.join(pickles)}); blendrt refuses them "
            "because unpickling can execute arbitrary code. Convert them to safetensors "
            "(e.g. transformers' save_pretrained(..., safe_serialization=True)) in a trusted "
            "environment."
        )
    raise FileNotFoundError(f"{folder}: no model weights (*.safetensors) found")


def _open(path: Path) -> Any:  # safetensors' handle type is private
    try:
        return safe_open(str(path), framework="pt", device="cpu")
    except Exception as e:  # safetensors raises its own error type for a bad header
        raise ValueError(f"{path} is not a readable safetensors file: {e}") from e


def tensor_shapes(files: list[Path]) -> dict[str, tuple[int, ...]]:
    """{tensor name: shape} of every tensor in the files, read from their headers only."""
    shapes = {}
    for path in files:
        with _open(path) as f:
            for name in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                shapes[name] = tuple(f.get_slice(name).get_shape())
    return shapes


_LAYER = re.compile(r"(?:^|\.)(?:layers|h)\.(\d+)\.")  # GPT-2 hub names start "h.N."


def check_layer_count(shapes: dict[str, tuple[int, ...]], num_layers: int) -> None:
    """config.json's layer count against the checkpoint's, before any module is built."""
    found = {int(m.group(1)) for name in shapes if (m := _LAYER.search(name))}
    if found != set(range(num_layers)):
        held = (
            f"{len(found)} layers"
            if found == set(range(len(found)))
            else f"layers {sorted(found)[:8]}"
        )
        raise ValueError(
            f"config.json declares {num_layers} layers but the checkpoint holds {held}"
        )


def iter_safetensors(files: list[Path]) -> Iterator[tuple[str, torch.Tensor]]:
    """Yields (name, tensor) one at a time from memory-mapped files."""
    for path in files:
        with _open(path) as f:
            for name in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                yield name, f.get_tensor(name)
