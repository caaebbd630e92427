"""LoadedModel: a member's model, tokenizer and geometry.

`blendrt.load_model(path)` returns one; an engine runs it over its views of the shared pool
(one member alone: a one-member engine, e.g. `LLMEngine({"m": model}, config)`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from blendrt.cache.pool import KVGeometry
from blendrt.models.config import ModelConfig
from blendrt.models.loader import (
    load_weights,
    read_config,
    read_generation_defaults,
    resolve_dtype,
)
from blendrt.models.score_head import scoring_length
from blendrt.ops.quant import QuantScheme
from blendrt.ops.quant_linear import quantized_linears
from blendrt.ops.registry import get_backend
from blendrt.tokenizer.tokenizer import Tokenizer, load_tokenizer


class LoadedModel:
    def __init__(
        self,
        path: Path,
        config: ModelConfig,
        model: nn.Module,
        tokenizer: Tokenizer,
        attention_backend: str | None = None,
        generation_defaults: dict[str, Any] | None = None,
    ) -> None:
        self.path = path
        self.config = config
        self.model = model
        self.tokenizer = tokenizer
        # {SamplingParams field: value} from the folder's generation_config.json
        self.generation_defaults = dict(generation_defaults or {})
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self.backend = get_backend(attention_backend, self.device)

    @property
    def is_classifier(self) -> bool:
        """A sequence classifier (reward model): the runner's logits are its num_labels
        scores, read at the last non-pad token (blendrt.models.score_head.scoring_length)."""
        return self.config.num_labels > 0

    @property
    def num_labels(self) -> int:
        """The classifier's scores per sequence (0: a causal LM)."""
        return self.config.num_labels

    def scoring_length(self, token_ids: list[int] | np.ndarray) -> int:
        """How many of token_ids a classifier feeds: through its last non-pad token."""
        return scoring_length(token_ids, self.config.pad_token_id)

    @property
    def quantization(self) -> QuantScheme | None:
        """How the decoder's linear weights are stored (None: the model dtype)."""
        linears = quantized_linears(self.model)
        return linears[0].scheme if linears else None

    @property
    def weight_format(self) -> str:
        """ ", int4-g128 weights" for a quantized member, "" otherwise (for messages)."""
        scheme = self.quantization
        return "" if scheme is None else f", {scheme.name} weights"

    @property
    def weight_bytes(self) -> int:
        """Bytes of the weights as allocated: parameters, quantized weights (values, scales,
        zeros) and oneDNN-packed ones; tied tensors once."""
        params = {id(p): p for p in self.model.parameters()}
        total = sum(p.numel() * p.element_size() for p in params.values())
        for m in self.model.modules():
            total += getattr(m, "weight_bytes", 0)
        return total

    @property
    def geometry(self) -> KVGeometry:
        c = self.config
        return KVGeometry(c.num_layers, c.num_kv_heads, c.head_dim, self.dtype)

    def check_token_ids(self, token_ids: list[int] | np.ndarray) -> np.ndarray:
        ids = np.asarray(token_ids)
        if ids.ndim != 1 or ids.size == 0 or not np.issubdtype(ids.dtype, np.integer):
            raise ValueError("token_ids must be a non-empty 1-D sequence of ints")
        if ids.min() < 0 or ids.max() >= self.config.vocab_size:
            raise ValueError(
                f"token ids must lie in [0, {self.config.vocab_size}), got "
                f"[{ids.min()}, {ids.max()}]"
            )
        if ids.size > self.config.max_position_embeddings:
            raise ValueError(
                f"{ids.size} tokens exceed the context length {self.config.max_position_embeddings}"
            )
        return ids.astype(np.int32)

    def __repr__(self) -> str:
        c = self.config
        return (
            f"LoadedModel({self.path.name}: {c.hf_architecture}, {c.num_layers} layers, "
            f"{self.dtype}, {self.device})"
        )


def load_model(
    path: str | Path,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | str | None = None,
    max_model_len: int | None = None,
    attention_backend: str | None = None,
    progress: bool | None = None,
    quantization: QuantScheme | str | None = None,
) -> LoadedModel:
    """Loads a Hugging Face folder (config.json, safetensors, tokenizer files, and the
    sampling defaults of generation_config.json). `max_model_len` caps the context;
    `progress` shows a loading bar on stderr (None: when stderr is a terminal);
    `quantization` ("int8", "int4", "int4-g64-zp", ... or a QuantScheme) stores the decoder's
    linear weights quantized (a GPTQ or AWQ folder is read as it is packed)."""
    folder = Path(path)
    device = torch.device(device)
    config = read_config(folder, max_model_len=max_model_len)
    tokenizer = load_tokenizer(folder)
    defaults = read_generation_defaults(folder)
    model = load_weights(
        folder,
        config,
        device=device,
        dtype=resolve_dtype(folder, device, dtype),
        progress=progress,
        quantization=quantization,
    )
    return LoadedModel(folder, config, model, tokenizer, attention_backend, defaults)
