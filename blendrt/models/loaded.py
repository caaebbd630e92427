"""LoadedModel: a member's model, tokenizer and geometry, runnable on its own.

`blendrt.load_model(path)` returns one. Inside a blend the engine gives the model views of the
shared pool; standalone, `logprobs()` runs it through the same paged path over a small
private pool.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from blendrt.cache.manager import KVCacheManager
from blendrt.cache.pool import KVGeometry, PagePool, page_bytes_for
from blendrt.models.config import ModelConfig
from blendrt.models.loader import (
    load_weights,
    read_config,
    read_generation_defaults,
    resolve_dtype,
)
from blendrt.models.runner import ModelRunner
from blendrt.ops.attention import get_backend
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
        self._runner: ModelRunner | None = None  # private pool, sized on demand
        self._manager: KVCacheManager | None = None

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

    def _private_pool(self, num_tokens: int) -> tuple[ModelRunner, KVCacheManager]:
        page_bytes = page_bytes_for([self.geometry])
        tokens_per_page = page_bytes // self.geometry.bytes_per_token
        num_pages = -(-num_tokens // tokens_per_page)
        if self._manager is None or self._manager.num_pages < num_pages:
            pool = PagePool(page_bytes, num_pages=num_pages, device=self.device)
            kv = pool.register_member("self", self.geometry)
            self._manager = KVCacheManager(num_pages)
            self._manager.register_member("self", kv.tokens_per_page)
            self._runner = ModelRunner(self.model, kv, self.backend)
        assert self._runner is not None
        return self._runner, self._manager

    def logprobs(self, token_ids: list[int] | np.ndarray) -> torch.Tensor:
        """Float32 log-softmax over the vocabulary at each position: [len(token_ids), V].
        Row i is the distribution of the token after token_ids[: i + 1]."""
        ids = self.check_token_ids(token_ids)
        runner, manager = self._private_pool(ids.size)
        manager.add_sequence(0, "self", ids)
        try:
            if not manager.allocate(0, ids.size):
                raise RuntimeError("private pool too small")  # sized above: cannot happen
            logits = runner.forward(manager.build_batch([0], [ids.size]), all_logits=True)
        finally:
            manager.free(0)
            manager.clear_prefix_cache()
        return torch.log_softmax(logits, dim=-1)

    def __repr__(self) -> str:
        c = self.config
        return (
            f"LoadedModel({self.path.name}: {c.architecture}, {c.num_layers} layers, "
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
) -> LoadedModel:
    """Loads a Hugging Face folder (config.json, safetensors, tokenizer files, and the
    sampling defaults of generation_config.json). `max_model_len` caps the context;
    `progress` shows a loading bar on stderr (None: when stderr is a terminal)."""
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
    )
    return LoadedModel(folder, config, model, tokenizer, attention_backend, defaults)
