"""GPT-2 decoder (GPT-2 small to XL, DistilGPT2, and the models fine-tuned from them).

    x = wte(ids) + wpe(positions)                  (learned absolute positions, no rotary)
    for each layer:  x = x + attn(ln_1(x));  x = x + mlp(ln_2(x))
    logits = lm_head(ln_f(x))                      (lm_head tied to wte)
where mlp(h) = c_proj(gelu_new(c_fc(h))) and every linear has a bias.

The checkpoint's linears are Conv1D, weights stored [in, out]: `Transform(transpose=True)`
turns each into blendrt's [out, in] as it loads (before quantizing it, when quantized).
c_attn already fuses q, k, v as blendrt does: all q heads, then k, then v.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from blendrt.models.config import ModelConfig
from blendrt.models.layers import ACTIVATION_FNS, ForwardContext, PagedAttention
from blendrt.models.layouts import Transform
from blendrt.models.weights import WeightMap

POSITIONS = "transformer.wpe.weight"


class GPT2MLP(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.hidden_size, config.intermediate_size)
        self.c_proj = nn.Linear(config.intermediate_size, config.hidden_size)
        self.act = ACTIVATION_FNS[config.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(self.act(self.c_fc(x)))


class GPT2Block(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.hidden_size, eps=config.norm_eps)
        self.attn = PagedAttention(config, layer_idx)
        self.ln_2 = nn.LayerNorm(config.hidden_size, eps=config.norm_eps)
        self.mlp = GPT2MLP(config)

    def forward(self, x: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), None, ctx)
        return x + self.mlp(self.ln_2(x))


class GPT2Model(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.hidden_size)
        self.wpe = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.layers = nn.ModuleList(GPT2Block(config, i) for i in range(config.num_layers))
        self.ln_f = nn.LayerNorm(config.hidden_size, eps=config.norm_eps)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.wte.weight

    def build_rotary(self) -> None:
        """Nothing to build: positions are learned weights."""

    def ensure_positions(self, num_positions: int) -> None:
        limit = self.wpe.num_embeddings
        if num_positions > limit:
            raise ValueError(
                f"position {num_positions - 1} is beyond the model's {limit} learned positions "
                "(n_positions, capped by max_model_len)"
            )

    def forward(self, input_ids: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        """input_ids: [T] -> final hidden states [T, hidden]."""
        x = self.wte(input_ids) + self.wpe(ctx.positions)
        for layer in self.layers:
            x = layer(x, ctx)
        return self.ln_f(x)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden)

    def weight_map(self) -> WeightMap:
        """{HF checkpoint name: parameter}; every Conv1D weight transposed."""
        wm = GPT2WeightMap()
        wm.ignore_suffix(".attn.bias")  # causal-mask buffers of older checkpoints
        wm.ignore_suffix(".attn.masked_bias")
        wm.add("transformer.wte.weight", self.wte.weight)
        wm.add(POSITIONS, self.wpe.weight)
        wm.add("transformer.ln_f.weight", self.ln_f.weight)
        wm.add("transformer.ln_f.bias", self.ln_f.bias)
        if self.config.tie_word_embeddings:
            wm.ignore("lm_head.weight")  # a tied checkpoint may still store a copy
        else:
            wm.add("lm_head.weight", self.lm_head.weight)
        conv1d = Transform(transpose=True)
        for i, layer in enumerate(self.layers):
            p = f"transformer.h.{i}."
            for norm in ("ln_1", "ln_2"):
                wm.add(f"{p}{norm}.weight", getattr(layer, norm).weight)
                wm.add(f"{p}{norm}.bias", getattr(layer, norm).bias)
            wm.add_linear(p + "attn.c_attn", layer.attn.qkv_proj, transform=conv1d)
            wm.add_linear(p + "attn.c_proj", layer.attn.o_proj, transform=conv1d)
            wm.add_linear(p + "mlp.c_fc", layer.mlp.c_fc, transform=conv1d)
            wm.add_linear(p + "mlp.c_proj", layer.mlp.c_proj, transform=conv1d)
        return wm


def _full_name(name: str) -> str:
    """Checkpoints saved from GPT2Model (openai-community/gpt2's among them) name tensors
    without the `transformer.` prefix."""
    return name if name.startswith(("transformer.", "lm_head.")) else "transformer." + name


class GPT2WeightMap(WeightMap):
    """GPT-2's weight map, reading two habits of its checkpoints: names without the
    `transformer.` prefix, and a position table longer than the positions served (a member
    loaded with max_model_len below n_positions): only its first rows are kept."""

    def check(self, shapes: dict[str, tuple[int, ...]]) -> None:
        shapes = {_full_name(name): shape for name, shape in shapes.items()}
        served, stored = self.targets[POSITIONS].rows, shapes.get(POSITIONS)
        if stored is not None and len(stored) == 2 and stored[0] > served:
            shapes[POSITIONS] = (served, stored[1])
        super().check(shapes)

    def load(self, tensors: Iterator[tuple[str, torch.Tensor]]) -> None:
        served = self.targets[POSITIONS].rows

        def renamed() -> Iterator[tuple[str, torch.Tensor]]:
            for name, tensor in tensors:
                name = _full_name(name)
                yield name, tensor[:served] if name == POSITIONS else tensor

        super().load(renamed())
