"""GPT-J decoder (GPT-J 6B, Pygmalion-6B, Chai's 6B).

    x = embed(ids)
    for each layer:  h = layer_norm(x);  x = x + attn(h) + mlp(h)      (parallel residual)
    logits = lm_head(layer_norm(x)) + bias
Attention rotates the first rotary_dim dims of each head, in interleaved pairs.
"""

from __future__ import annotations

import torch
from torch import nn

from blendrt.models.config import ModelConfig
from blendrt.models.layers import (
    ForwardContext,
    PagedAttention,
    RotaryDecoder,
    gelu_new,
)
from blendrt.models.weights import WeightMap
from blendrt.ops.rope import RopeTables


class GPTJBlock(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.hidden_size, eps=config.norm_eps)
        self.attn = PagedAttention(config, layer_idx)
        self.fc_in = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc_out = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, x: torch.Tensor, rope: RopeTables, ctx: ForwardContext) -> torch.Tensor:
        h = self.ln_1(x)
        return x + self.attn(h, rope, ctx) + self.fc_out(gelu_new(self.fc_in(h)))


class GPTJModel(RotaryDecoder):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(GPTJBlock(config, i) for i in range(config.num_layers))
        self.ln_f = nn.LayerNorm(config.hidden_size, eps=config.norm_eps)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=True)
        self.build_rotary()

    def forward(self, input_ids: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        """input_ids: [T] -> final hidden states [T, hidden]."""
        x = self.wte(input_ids)
        rope = self.rotary.tables(ctx.positions)
        for layer in self.layers:
            x = layer(x, rope, ctx)
        return self.ln_f(x)

    def weight_map(self) -> WeightMap:
        """{HF checkpoint name: (parameter, row offset)}; q/k/v are fused."""
        c = self.config
        wm = WeightMap()
        # Causal-mask buffers that old GPT-J checkpoints carry.
        wm.ignore_suffix(".attn.bias")
        wm.ignore_suffix(".attn.masked_bias")
        wm.add("transformer.wte.weight", self.wte.weight)
        wm.add("transformer.ln_f.weight", self.ln_f.weight)
        wm.add("transformer.ln_f.bias", self.ln_f.bias)
        wm.add("lm_head.weight", self.lm_head.weight)
        wm.add("lm_head.bias", self.lm_head.bias)
        size = c.num_heads * c.head_dim
        for i, layer in enumerate(self.layers):
            p = f"transformer.h.{i}."
            wm.add(p + "ln_1.weight", layer.ln_1.weight)
            wm.add(p + "ln_1.bias", layer.ln_1.bias)
            for j, proj in enumerate(("q_proj", "k_proj", "v_proj")):
                wm.add_linear(f"{p}attn.{proj}", layer.attn.qkv_proj, j * size, size)
            wm.add_linear(p + "attn.out_proj", layer.attn.o_proj)
            wm.add_linear(p + "mlp.fc_in", layer.fc_in)
            wm.add_linear(p + "mlp.fc_out", layer.fc_out)
        return wm
