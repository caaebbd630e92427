"""Gemma 2 and Gemma 3 (text) decoders: local (sliding-window) layers between global ones,
four norms per layer, GeGLU, soft-capped attention scores (Gemma 2) and logits, per-head
q/k norms and a local rotary base of its own (Gemma 3).

x = embed(ids) * sqrt(hidden)                       (the factor rounded to the model dtype)
for each layer:
    x = x + post_attention_norm(attn(input_norm(x)))     local layers: window, local rope
    x = x + post_feedforward_norm(mlp(pre_feedforward_norm(x)))
logits = lm_head(norm(x))                           (lm_head tied to embed by default)
logits = cap * tanh(logits / cap)                   (final soft-cap, when set)

Every Gemma norm scales by 1 + w: the 1 is added to the checkpoint's w at load, in float32
as transformers adds it (then stored in the model dtype), so the norms are plain RMSNorms.
Attention scores are scaled by query_pre_attn_scalar ** -0.5 and soft-capped by the
backend (PagedAttention). The residual add before input_norm and pre_feedforward_norm is
fused into them (as in llama.py).
"""

from __future__ import annotations

import torch
from torch import nn

from blendrt.models.config import ModelConfig
from blendrt.models.layers import (
    ForwardContext,
    PagedAttention,
    RMSNorm,
    RotaryEmbedding,
    act_and_mul,
)
from blendrt.models.layouts import Transform
from blendrt.models.weights import WeightMap
from blendrt.ops.rope import RopeTables

#: A Gemma norm's checkpoint weight w scales by 1 + w.
ONE_PLUS = Transform(offset=1.0)


class GemmaMLP(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.act = config.hidden_act  # gelu_tanh: GeGLU
        self.gate_up_proj = nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(act_and_mul(self.gate_up_proj(x), self.act))


class GemmaBlock(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        size, eps = config.hidden_size, config.norm_eps
        self.local = config.window(layer_idx) > 0  # sliding layer: Gemma 3's local rope
        self.input_layernorm = RMSNorm(size, eps)
        self.self_attn = PagedAttention(config, layer_idx)
        self.post_attention_layernorm = RMSNorm(size, eps)
        self.pre_feedforward_layernorm = RMSNorm(size, eps)
        self.mlp = GemmaMLP(config)
        self.post_feedforward_layernorm = RMSNorm(size, eps)

    def forward(
        self,
        x: torch.Tensor,  # [T, hidden]: the previous layer's output (or the embeddings)
        residual: torch.Tensor | None,  # [T, hidden]: the residual stream before it
        rope: RopeTables,
        ctx: ForwardContext,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(this layer's output, the residual stream before it)."""
        h, residual = self.input_layernorm(x, residual)
        h = self.post_attention_layernorm(self.self_attn(h, rope, ctx))[0]
        h, residual = self.pre_feedforward_layernorm(h, residual)
        return self.post_feedforward_layernorm(self.mlp(h))[0], residual


class GemmaModel(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(GemmaBlock(config, i) for i in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.norm_eps)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        self.build_rotary()

    def build_rotary(self) -> None:
        """The global layers' tables, and Gemma 3's local ones (None: the same tables)."""
        c = self.config
        self.rotary = RotaryEmbedding(c.rope, c.max_position_embeddings)
        self.local_rotary = (
            RotaryEmbedding(c.local_rope, c.max_position_embeddings) if c.local_rope else None
        )

    def ensure_positions(self, num_positions: int) -> None:
        self.rotary.ensure(num_positions)
        if self.local_rotary is not None:
            self.local_rotary.ensure(num_positions)

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """[T] -> [T, hidden]: the embeddings times sqrt(hidden), the factor rounded to the
        model dtype first as transformers rounds it (sqrt(3072) = 55.4256 -> 55.5 in
        bfloat16)."""
        x = self.embed_tokens(input_ids)
        return x * torch.tensor(self.config.hidden_size**0.5, dtype=x.dtype).item()

    def forward(self, input_ids: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        """input_ids: [T] -> final hidden states [T, hidden]."""
        x, residual = self.embed(input_ids), None
        rope = self.rotary.tables(ctx.positions)
        local = self.local_rotary.tables(ctx.positions) if self.local_rotary else rope
        for layer in self.layers:
            x, residual = layer(x, residual, local if layer.local else rope, ctx)
        return self.norm(x, residual)[0]

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self.lm_head(hidden)
        cap = self.config.final_logit_softcap
        return torch.tanh(logits / cap) * cap if cap else logits

    def weight_map(self) -> WeightMap:
        """{HF checkpoint name: (parameter, row offset)}: q/k/v and gate/up are fused, and
        every norm weight gets its + 1 (ONE_PLUS)."""
        c = self.config
        wm = WeightMap()
        wm.ignore_suffix(".rotary_emb.inv_freq")
        wm.add("model.embed_tokens.weight", self.embed_tokens.weight)
        wm.add("model.norm.weight", self.norm.weight, transform=ONE_PLUS)
        if c.tie_word_embeddings:
            wm.ignore("lm_head.weight")  # some tied checkpoints still store a copy
        else:
            wm.add("lm_head.weight", self.lm_head.weight)
        q, kv = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
        inter = c.intermediate_size
        for i, layer in enumerate(self.layers):
            p = f"model.layers.{i}."
            attn, mlp = layer.self_attn, layer.mlp
            for norm in (
                "input_layernorm", "post_attention_layernorm",
                "pre_feedforward_layernorm", "post_feedforward_layernorm",
            ):  # fmt: skip
                wm.add(f"{p}{norm}.weight", getattr(layer, norm).weight, transform=ONE_PLUS)
            if attn.q_norm is not None:  # Gemma 3: 1 + w as well
                wm.add(p + "self_attn.q_norm.weight", attn.q_norm.weight, transform=ONE_PLUS)
                wm.add(p + "self_attn.k_norm.weight", attn.k_norm.weight, transform=ONE_PLUS)
            wm.add_linear(f"{p}self_attn.q_proj", attn.qkv_proj, 0, q)
            wm.add_linear(f"{p}self_attn.k_proj", attn.qkv_proj, q, kv)
            wm.add_linear(f"{p}self_attn.v_proj", attn.qkv_proj, q + kv, kv)
            wm.add_linear(f"{p}self_attn.o_proj", attn.o_proj)
            wm.add_linear(f"{p}mlp.gate_proj", mlp.gate_up_proj, 0, inter)
            wm.add_linear(f"{p}mlp.up_proj", mlp.gate_up_proj, inter, inter)
            wm.add_linear(f"{p}mlp.down_proj", mlp.down_proj)
        return wm
