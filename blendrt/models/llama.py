"""Llama-family decoder: Llama 1/2/3, Vicuna, Mistral (sliding window), Qwen2/2.5 (q/k/v
biases), Qwen3 (per-head q/k norms), Phi-3 (checkpoints with fused qkv and gate/up).

x = embed(ids)
for each layer:  x = x + attn(rms_norm(x));  x = x + mlp(rms_norm(x))
logits = lm_head(rms_norm(x))      (lm_head may be tied to embed)

Each residual add is done inside the norm after it (vLLM's fused add + RMSNorm), so a layer
takes and returns (its output, the residual stream before it).
"""

from __future__ import annotations

import torch
from torch import nn

from blendrt.models.config import ModelConfig
from blendrt.models.layers import (
    ForwardContext,
    PagedAttention,
    RMSNorm,
    RotaryDecoder,
    act_and_mul,
)
from blendrt.models.weights import WeightMap
from blendrt.ops.rope import RopeTables


class LlamaMLP(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.intermediate_size = config.intermediate_size
        self.act = config.hidden_act
        self.gate_up_proj = nn.Linear(
            config.hidden_size, 2 * config.intermediate_size, bias=config.mlp_bias
        )
        self.down_proj = nn.Linear(
            config.intermediate_size, config.hidden_size, bias=config.mlp_bias
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(act_and_mul(self.gate_up_proj(x), self.act))


class LlamaBlock(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.norm_eps)
        self.self_attn = PagedAttention(config, layer_idx)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.norm_eps)
        self.mlp = LlamaMLP(config)

    def forward(
        self,
        x: torch.Tensor,  # [T, hidden]: the previous layer's output (or the embeddings)
        residual: torch.Tensor | None,  # [T, hidden]: the residual stream before it
        rope: RopeTables,
        ctx: ForwardContext,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(this layer's output, the residual stream before it): each residual add happens
        inside the norm that follows it."""
        h, residual = self.input_layernorm(x, residual)
        h = self.self_attn(h, rope, ctx)
        h, residual = self.post_attention_layernorm(h, residual)
        return self.mlp(h), residual


class LlamaModel(RotaryDecoder):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(LlamaBlock(config, i) for i in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.norm_eps)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        self.build_rotary()

    def forward(self, input_ids: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        """input_ids: [T] -> final hidden states [T, hidden]."""
        x, residual = self.embed_tokens(input_ids), None
        rope = self.rotary.tables(ctx.positions)
        for layer in self.layers:
            x, residual = layer(x, residual, rope, ctx)
        return self.norm(x, residual)[0]

    def weight_map(self) -> WeightMap:
        """{HF checkpoint name: (parameter, row offset)}, and the rows of each linear layer
        each checkpoint projection fills (q/k/v and gate/up are fused)."""
        c = self.config
        wm = WeightMap()
        wm.ignore_suffix(".rotary_emb.inv_freq")
        wm.add("model.embed_tokens.weight", self.embed_tokens.weight)
        wm.add("model.norm.weight", self.norm.weight)
        if c.tie_word_embeddings:
            wm.ignore("lm_head.weight")  # some tied checkpoints still store a copy
        else:
            wm.add("lm_head.weight", self.lm_head.weight)
        q, kv = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
        fused = c.architecture == "Phi3ForCausalLM"  # Phi-3 stores qkv and gate/up fused
        for i, layer in enumerate(self.layers):
            p = f"model.layers.{i}."
            attn, mlp = layer.self_attn, layer.mlp
            wm.add(p + "input_layernorm.weight", layer.input_layernorm.weight)
            wm.add(p + "post_attention_layernorm.weight", layer.post_attention_layernorm.weight)
            if attn.q_norm is not None:
                wm.add(p + "self_attn.q_norm.weight", attn.q_norm.weight)
                wm.add(p + "self_attn.k_norm.weight", attn.k_norm.weight)
            if fused:
                wm.add_linear(f"{p}self_attn.qkv_proj", attn.qkv_proj)
                wm.add_linear(f"{p}mlp.gate_up_proj", mlp.gate_up_proj)
            else:
                wm.add_linear(f"{p}self_attn.q_proj", attn.qkv_proj, 0, q)
                wm.add_linear(f"{p}self_attn.k_proj", attn.qkv_proj, q, kv)
                wm.add_linear(f"{p}self_attn.v_proj", attn.qkv_proj, q + kv, kv)
                inter = c.intermediate_size
                wm.add_linear(f"{p}mlp.gate_proj", mlp.gate_up_proj, 0, inter)
                wm.add_linear(f"{p}mlp.up_proj", mlp.gate_up_proj, inter, inter)
            wm.add_linear(f"{p}self_attn.o_proj", attn.o_proj)
            wm.add_linear(f"{p}mlp.down_proj", mlp.down_proj)
        return wm
