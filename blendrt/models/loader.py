"""Builds a member's model from a Hugging Face folder: config.json + safetensors."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from blendrt.models.config import ModelConfig
from blendrt.models.gptj import GPTJModel
from blendrt.models.layers import RotaryEmbedding
from blendrt.models.llama import LlamaModel
from blendrt.models.weights import iter_safetensors, materialize, safetensors_files

MODEL_CLASSES: dict[str, type[nn.Module]] = {"llama": LlamaModel, "gptj": GPTJModel}
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def read_config(folder: str | Path, *, max_model_len: int | None = None) -> ModelConfig:
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"model folder {folder} does not exist")
    path = folder / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: config.json not found")
    try:
        hf = json.loads(path.read_text())
    except ValueError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e
    return ModelConfig.from_hf(hf, max_model_len=max_model_len)


def resolve_dtype(
    folder: str | Path, device: torch.device, dtype: torch.dtype | str | None
) -> torch.dtype:
    """The requested dtype; by default float32 on CPU, and on GPUs the checkpoint's half
    precision type (bfloat16 for float32 checkpoints)."""
    if isinstance(dtype, str):
        if dtype not in _DTYPES:
            raise ValueError(f"dtype {dtype!r} not supported; choose one of {sorted(_DTYPES)}")
        dtype = _DTYPES[dtype]
    if dtype is not None:
        if dtype not in _DTYPES.values():
            raise ValueError(f"dtype {dtype} not supported; choose one of {sorted(_DTYPES)}")
        return dtype
    if device.type == "cpu":
        return torch.float32
    hf = json.loads((Path(folder) / "config.json").read_text())
    saved = hf.get("dtype") or hf.get("torch_dtype")
    return _DTYPES[saved] if saved in ("float16", "bfloat16") else torch.bfloat16


def load_weights(
    folder: str | Path,
    config: ModelConfig,
    *,
    device: torch.device,
    dtype: torch.dtype,
) -> nn.Module:
    """The model with its weights, built without ever holding two copies of them."""
    folder = Path(folder)
    files = safetensors_files(folder)
    with torch.device("meta"):
        model = MODEL_CLASSES[config.family](config)
    materialize(model, device, dtype)
    model.weight_map().load(iter_safetensors(files))
    with torch.device(device):
        model.rotary = RotaryEmbedding(config.rope, config.max_position_embeddings)
    return model.eval()
