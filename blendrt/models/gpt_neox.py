"""GPT-NeoX decoder (Pythia, GPT-NeoX-20B, and the models fine-tuned from them).

    x = embed_in(ids)
    for each layer:
        if parallel residual:  x = x + attn(ln_1(x)) + mlp(ln_2(x))
        else:                  x = x + attn(ln_1(x));  x = x + mlp(ln_2(x))
    logits = embed_out(final_layer_norm(x))      (embed_out may be tied to embed_in)
where mlp(h) = dense_4h_to_h(gelu(dense_h_to_4h(h))), every linear with a bias, the norms
LayerNorms. Attention rotates the first rotary_dim = rotary_pct * head_dim dims of each head,
in pairs of halves (as Llama, over that prefix).

The checkpoint fuses q/k/v per head (rows [H, 3, D]); blendrt's fused projection holds all
the q heads, then k, then v ([3, H, D]): `Transform(qkv_per_head=H)` regroups the rows.
"""

from __future__ import annotations

import torch
from torch import nn

from blendrt.models.config import ModelConfig
from blendrt.models.layers import (
    ACTIVATION_FNS,
    ForwardContext,
    PagedAttention,
    RotaryDecoder,
)
from blendrt.models.layouts import Transform
from blendrt.models.weights import WeightMap
from blendrt.ops.rope import RopeTables


class GPTNeoXMLP(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.dense_h_to_4h = nn.Linear(config.hidden_size, config.intermediate_size)
        self.dense_4h_to_h = nn.Linear(config.intermediate_size, config.hidden_size)
        self.act = ACTIVATION_FNS[config.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense_4h_to_h(self.act(self.dense_h_to_4h(x)))


class GPTNeoXLayer(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.parallel_residual = config.parallel_residual
        self.input_layernorm = nn.LayerNorm(config.hidden_size, eps=config.norm_eps)
        self.attention = PagedAttention(config, layer_idx)
        self.post_attention_layernorm = nn.LayerNorm(config.hidden_size, eps=config.norm_eps)
        self.mlp = GPTNeoXMLP(config)

    def forward(self, x: torch.Tensor, rope: RopeTables, ctx: ForwardContext) -> torch.Tensor:
        attn = self.attention(self.input_layernorm(x), rope, ctx)
        if self.parallel_residual:
            return x + attn + self.mlp(self.post_attention_layernorm(x))
        x = x + attn
        return x + self.mlp(self.post_attention_layernorm(x))


class GPTNeoXModel(RotaryDecoder):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embed_in = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(GPTNeoXLayer(config, i) for i in range(config.num_layers))
        self.final_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.norm_eps)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.embed_in.weight
        self.build_rotary()

    def forward(self, input_ids: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        """input_ids: [T] -> final hidden states [T, hidden]."""
        x = self.embed_in(input_ids)
        rope = self.rotary.tables(ctx.positions)
        for layer in self.layers:
            x = layer(x, rope, ctx)
        return self.final_layer_norm(x)

    def weight_map(self) -> WeightMap:
        """{HF checkpoint name: parameter}; query_key_value's rows regrouped per kind."""
        c = self.config
        wm = WeightMap()
        # Buffers older checkpoints carry: the causal mask and the rotary frequencies.
        for suffix in (".attention.bias", ".attention.masked_bias", ".rotary_emb.inv_freq"):
            wm.ignore_suffix(suffix)
        wm.add("gpt_neox.embed_in.weight", self.embed_in.weight)
        wm.add("gpt_neox.final_layer_norm.weight", self.final_layer_norm.weight)
        wm.add("gpt_neox.final_layer_norm.bias", self.final_layer_norm.bias)
        if c.tie_word_embeddings:
            wm.ignore("embed_out.weight")  # a tied checkpoint may still store a copy
        else:
            wm.add("embed_out.weight", self.lm_head.weight)
        per_head = Transform(qkv_per_head=c.num_heads)
        for i, layer in enumerate(self.layers):
            p = f"gpt_neox.layers.{i}."
            for norm in ("input_layernorm", "post_attention_layernorm"):
                wm.add(f"{p}{norm}.weight", getattr(layer, norm).weight)
                wm.add(f"{p}{norm}.bias", getattr(layer, norm).bias)
            attn = layer.attention
            wm.add_linear(p + "attention.query_key_value", attn.qkv_proj, transform=per_head)
            wm.add_linear(p + "attention.dense", attn.o_proj)
            wm.add_linear(p + "mlp.dense_h_to_4h", layer.mlp.dense_h_to_4h)
            wm.add_linear(p + "mlp.dense_4h_to_h", layer.mlp.dense_4h_to_h)
        return wm
