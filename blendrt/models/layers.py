"""Building blocks shared by the architectures: norms, rotary embeddings, paged attention."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from blendrt.cache.pool import MemberKV
from blendrt.models.config import ModelConfig
from blendrt.models.rope import RopeConfig, rope_attention_factor, rope_inv_freq
from blendrt.ops import layer_ops
from blendrt.ops.attention import AttentionBackend, AttentionMetadata
from blendrt.ops.rope import RopeTables


@dataclass(frozen=True)
class ForwardContext:
    """Everything one member's forward pass needs for one step, passed down explicitly."""

    positions: torch.Tensor  # [T] int64
    attn: AttentionMetadata
    kv: MemberKV  # this member's views of the shared pool
    backend: AttentionBackend


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(
        self, x: torch.Tensor, residual: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(norm(x + residual), x + residual): the residual add before each norm is fused
        into it (see blendrt.ops.layer_ops.rms_norm); without a residual, (norm(x), x)."""
        return layer_ops.rms_norm(x, self.weight, self.eps, residual)


class RotaryEmbedding(nn.Module):
    """A member's cos/sin tables: the first rotary_dim dims of each head rotate, in pairs of
    halves (Llama) or neighbours (GPT-J); `tables` hands a step's angles to every layer.

    NOTE: the cos/sin tables cover the positions used so far (grown by doubling through
    `ensure`, up to max_positions), not the declared maximum: models declare 128k-10M
    positions, and a table for all of them would cost memory no conversation uses."""

    INITIAL_POSITIONS = 2048

    def __init__(self, rope: RopeConfig, max_positions: int) -> None:
        super().__init__()
        self.rotary_dim = rope.rotary_dim
        self.interleaved = rope.interleaved
        self.max_positions = max_positions
        self.attention_factor = rope_attention_factor(rope)  # scales cos and sin (yarn...)
        self.register_buffer("inv_freq", rope_inv_freq(rope), persistent=False)
        self.register_buffer("cos", torch.empty(0, self.rotary_dim), persistent=False)
        self.register_buffer("sin", torch.empty(0, self.rotary_dim), persistent=False)
        self.ensure(min(max_positions, self.INITIAL_POSITIONS))

    def ensure(self, num_positions: int) -> None:
        """Tables for positions [0, num_positions) at least (callers pass the longest
        context of a step, a host-side int: no device sync)."""
        if num_positions <= self.cos.shape[0]:
            return
        if num_positions > self.max_positions:
            raise ValueError(
                f"position {num_positions - 1} is beyond the model's {self.max_positions}"
            )
        size = min(self.max_positions, max(num_positions, 2 * self.cos.shape[0]))
        positions = torch.arange(size, device=self.inv_freq.device).float()
        freqs = torch.outer(positions, self.inv_freq)
        if self.interleaved:
            freqs = freqs.repeat_interleave(2, dim=-1)
        else:
            freqs = torch.cat([freqs, freqs], dim=-1)
        scale = self.attention_factor
        self.cos, self.sin = freqs.cos() * scale, freqs.sin() * scale  # [size, rotary_dim]

    def tables(self, positions: torch.Tensor) -> RopeTables:
        """The step's angles for every layer (positions [T] int64, checked once here)."""
        return RopeTables(positions, self.cos, self.sin, self.interleaved)


class RotaryDecoder(nn.Module):
    """What the rotary member models share beyond their layers: tables built on the device
    at load (not weights) and grown as positions are used, and logits from `lm_head`.
    Subclasses set `config`, `lm_head` and call `build_rotary()` in __init__."""

    config: ModelConfig

    def build_rotary(self) -> None:
        self.rotary = RotaryEmbedding(self.config.rope, self.config.max_position_embeddings)

    def ensure_positions(self, num_positions: int) -> None:
        self.rotary.ensure(num_positions)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden)


class PagedAttention(nn.Module):
    """Fused QKV projection, optional per-head q/k RMSNorm (Qwen3, Gemma 3), rotary
    embedding, paged attention through the backend (with the layer's sliding window and
    logit soft-cap), output projection."""

    def __init__(self, config: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = config.num_heads
        self.num_kv_heads = config.num_kv_heads
        self.head_dim = config.head_dim
        self.scale = config.softmax_scale
        self.window = config.window(layer_idx)  # 0: global
        self.softcap = config.attn_logit_softcap  # 0: off
        q_size = self.num_heads * self.head_dim
        kv_size = self.num_kv_heads * self.head_dim
        self.split = (q_size, kv_size, kv_size)
        self.qkv_proj = nn.Linear(config.hidden_size, q_size + 2 * kv_size, bias=config.qkv_bias)
        self.o_proj = nn.Linear(q_size, config.hidden_size, bias=config.o_proj_bias)
        self.q_norm = RMSNorm(self.head_dim, config.norm_eps) if config.qk_norm else None
        self.k_norm = RMSNorm(self.head_dim, config.norm_eps) if config.qk_norm else None

    def forward(
        self, x: torch.Tensor, rope: RopeTables | None, ctx: ForwardContext
    ) -> torch.Tensor:
        """x [T, hidden] -> [T, hidden]; rope None: positions are not rotary (GPT-2)."""
        qkv = self.qkv_proj(x)  # [T, (H_q + 2 H_kv) * D]
        num_qk = self.num_heads + self.num_kv_heads
        # q and k rotate together (in place on the CPU): one call for both.
        qk = qkv[:, : num_qk * self.head_dim].view(-1, num_qk, self.head_dim)
        if self.q_norm is not None:  # over each head's D values
            q, k = qk.split((self.num_heads, self.num_kv_heads), dim=1)
            q = self.q_norm(q.reshape(-1, self.head_dim))[0].view(q.shape)
            k = self.k_norm(k.reshape(-1, self.head_dim))[0].view(k.shape)
            qk = torch.cat([q, k], dim=1)
        if rope is not None:
            qk = layer_ops.rotary(qk, rope)
        q, k = qk.split((self.num_heads, self.num_kv_heads), dim=1)
        v = qkv[:, num_qk * self.head_dim :].view(-1, self.num_kv_heads, self.head_dim)
        kv, i = ctx.kv, self.layer_idx
        # NOTE: a windowed layer reads only the pages its window reaches; the scheduler
        # releases pages before every layer's window (ModelConfig.release_window).
        out = ctx.backend.forward(
            q, k, v, kv.k_caches[i], kv.v_caches[i], ctx.attn, self.scale,
            None if kv.k_scales is None else kv.k_scales[i],
            None if kv.v_scales is None else kv.v_scales[i],
            window=self.window, softcap=self.softcap,
        )  # fmt: skip
        return self.o_proj(out.reshape(-1, self.num_heads * self.head_dim))


def gelu_new(x: torch.Tensor) -> torch.Tensor:
    """GPT-J's activation: GELU with the tanh approximation."""
    return F.gelu(x, approximate="tanh")


#: {ModelConfig.hidden_act: the activation}
ACTIVATION_FNS = {
    "silu": F.silu,
    "gelu": F.gelu,
    "gelu_tanh": gelu_new,
}


def act_and_mul(x: torch.Tensor, act: str) -> torch.Tensor:
    """[T, 2I] (gate, up) -> act(gate) * up [T, I]: SwiGLU (fused on the CPU) or GeGLU."""
    if act == "silu":
        return layer_ops.silu_and_mul(x)
    gate, up = x.chunk(2, dim=-1)
    return ACTIVATION_FNS[act](gate) * up


def rotary_for(rope: RopeConfig | None, max_positions: int) -> RotaryEmbedding | None:
    """The member's rotary tables, None for learned positions."""
    return None if rope is None else RotaryEmbedding(rope, max_positions)
