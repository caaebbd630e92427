"""Builds a member's model from a Hugging Face folder: config.json + safetensors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from tqdm import tqdm

from blendrt.models.config import ModelConfig
from blendrt.models.gemma import GemmaModel
from blendrt.models.gpt2 import GPT2Model
from blendrt.models.gpt_neox import GPTNeoXModel
from blendrt.models.gptj import GPTJModel
from blendrt.models.hf_config import parse_hf_config
from blendrt.models.llama import LlamaModel
from blendrt.models.quantize import quantize_linears
from blendrt.models.score_head import attach_score_head
from blendrt.models.weights import (
    WeightMap,
    check_layer_count,
    iter_safetensors,
    materialize,
    safetensors_files,
    tensor_shapes,
)
from blendrt.ops.cpu.linear import pack_linears
from blendrt.ops.quant import QuantScheme
from blendrt.sampling import SamplingParams

if TYPE_CHECKING:
    from blendrt.models.quant_checkpoints import CheckpointQuant

MODEL_CLASSES: dict[str, type[nn.Module]] = {
    "llama": LlamaModel,
    "gemma": GemmaModel,
    "gptj": GPTJModel,
    "gpt_neox": GPTNeoXModel,
    "gpt2": GPT2Model,
}


def build_model(config: ModelConfig) -> nn.Module:
    """The family's model of `config` (on the current default device: meta to size it
    without memory), with a score head in place of lm_head for a classifier (num_labels >
    0; blendrt/models/score_head.py)."""
    model = MODEL_CLASSES[config.family](config)
    if config.num_labels > 0:
        attach_score_head(model, config.num_labels)
    return model


_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def read_hf_config(folder: str | Path) -> dict[str, Any]:
    """config.json as a dict."""
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
    if not isinstance(hf, dict):
        raise ValueError(f"{path} must hold a JSON object")
    return hf


def read_config(folder: str | Path, *, max_model_len: int | None = None) -> ModelConfig:
    return parse_hf_config(read_hf_config(folder), max_model_len=max_model_len)


def checkpoint_quantization(folder: str | Path) -> CheckpointQuant | None:
    """How the folder's weights are already quantized (GPTQ, AWQ), None for float ones;
    raises ValueError naming any other quantization_config."""
    hf = read_hf_config(folder)
    if "quantization_config" not in hf:
        return None
    from blendrt.models.quant_checkpoints import checkpoint_quantization as parse

    return parse(hf)


def weight_scheme(folder: str | Path, quantization: QuantScheme | str | None):
    """(scheme, checkpoint quant) for a folder: its own GPTQ/AWQ packing, or the requested
    scheme for float weights (None: full precision)."""
    checkpoint = checkpoint_quantization(folder)
    if isinstance(quantization, str):
        quantization = QuantScheme.parse(quantization)
    if checkpoint is not None:
        if quantization is not None:
            raise ValueError(
                f"{folder} is already quantized ({checkpoint.method}, "
                f"{checkpoint.scheme.name}); it cannot also be quantized as {quantization.name}"
            )
        return checkpoint.scheme, checkpoint
    return quantization, None


#: {generation_config.json key: SamplingParams field}: the sampling defaults a folder may
#: set, the keys vLLM's `--generation-config auto` reads (it ignores do_sample, as we do).
GENERATION_KEYS = {
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "min_p": "min_p",
    "repetition_penalty": "repetition_penalty",
    "max_new_tokens": "max_tokens",
}


def read_generation_defaults(folder: str | Path) -> dict[str, Any]:
    """{SamplingParams field: value} from the folder's generation_config.json ({} if none).
    Raises ValueError naming the file and field for a value SamplingParams would refuse."""
    path = Path(folder) / "generation_config.json"
    if not path.is_file():
        return {}
    try:
        hf = json.loads(path.read_text())
    except ValueError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(hf, dict):
        raise ValueError(f"{path} must hold a JSON object")
    defaults = {field: hf[key] for key, field in GENERATION_KEYS.items() if hf.get(key) is not None}
    for field, value in defaults.items():
        try:
            SamplingParams(**{field: value})
        except (ValueError, TypeError) as e:
            raise ValueError(f"{path}: {field} = {value!r} is not a valid default: {e}") from e
    return defaults


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
    progress: bool | None = None,
    quantization: QuantScheme | str | None = None,
) -> nn.Module:
    """The model with its weights, built without ever holding two copies of them.
    `progress`: a tqdm bar over the checkpoint's tensors on stderr (None: on a terminal).
    `quantization`: store the decoder's linear weights as int8 / int4 (see
    blendrt/models/quantize.py); a GPTQ or AWQ folder is read as it is quantized."""
    folder = Path(folder)
    files = safetensors_files(folder)
    scheme, checkpoint = weight_scheme(folder, quantization)
    # NOTE: config.json is checked against the checkpoint's headers first (layers, then
    # every name and shape), so a config that lies sizes nothing.
    shapes = tensor_shapes(files)
    check_layer_count(shapes, config.num_layers)
    with torch.device("meta"):
        model = build_model(config)
    if scheme is not None:  # decoder linears only: never lm_head, nor a score head
        quantize_linears(model, scheme, checkpoint)

    def weight_map() -> WeightMap:
        wm = model.weight_map()
        wm.checkpoint = checkpoint
        return wm

    weight_map().check(shapes)
    materialize(model, device, dtype)
    tensors = iter_safetensors(files)
    with tqdm(
        tensors,
        total=len(shapes),
        desc=f"loading {folder.name}",
        unit=" tensors",
        disable=None if progress is None else not progress,
        leave=False,
    ) as bar:
        weight_map().load(bar)
    with torch.device(device):
        model.build_rotary()  # tables are not weights: built on the device, not loaded
    pack_linears(model)  # CPU float32: weights reordered once for oneDNN
    return model.eval()
