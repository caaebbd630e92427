"""ModelConfig: one dataclass for every supported architecture, read from a HF config.json."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from blendrt.models.rope import RopeConfig

#: {HF architecture name: blendrt family (one model file each)}
ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "llama",
    "Qwen2ForCausalLM": "llama",
    "Qwen3ForCausalLM": "llama",
    "Phi3ForCausalLM": "llama",
    "Gemma2ForCausalLM": "gemma",
    "Gemma3ForCausalLM": "gemma",
    "GPTJForCausalLM": "gptj",
    "GPTNeoXForCausalLM": "gpt_neox",
    "GPT2LMHeadModel": "gpt2",
}
#: {config.json model_type: HF architecture}, for configs that name no architecture
MODEL_TYPES = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "phi3": "Phi3ForCausalLM",
    "gemma2": "Gemma2ForCausalLM",
    "gemma3_text": "Gemma3ForCausalLM",
    "gptj": "GPTJForCausalLM",
    "gpt_neox": "GPTNeoXForCausalLM",
    "gpt2": "GPT2LMHeadModel",
}
#: {activation name as blendrt spells it: what transformers calls it in config.json}
ACTIVATIONS = {
    "silu": ("silu", "swish"),
    "gelu": ("gelu",),  # exact erf GELU
    "gelu_tanh": ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"),  # tanh approximation
}


#: {ModelConfig field: largest value accepted}: config.json is untrusted, and these size
#: allocations; anything beyond is refused before a byte is allocated.
LIMITS = {
    "vocab_size": 1 << 22,
    "hidden_size": 1 << 16,
    "num_layers": 1024,
    "num_heads": 1024,
    "num_kv_heads": 1024,
    "head_dim": 1024,
    "intermediate_size": 1 << 20,
    "max_position_embeddings": 1 << 24,
}


@dataclass(frozen=True)
class ModelConfig:
    """One member's architecture, read from config.json by `hf_config.parse_hf_config`.

    Fields past `rope` default to Llama's choices; each family's parser sets what differs."""

    architecture: str  # a key of ARCHITECTURES
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    max_position_embeddings: int  # the serving window (declared, capped by max_model_len)
    rope: RopeConfig | None  # None: learned absolute positions (GPT-2)
    norm_eps: float
    tie_word_embeddings: bool = False
    qkv_bias: bool = False
    o_proj_bias: bool = False
    mlp_bias: bool = False
    hidden_act: str = "silu"  # a key of ACTIVATIONS
    qk_norm: bool = False  # RMSNorm over each head of q and k before rotary (Qwen3, Gemma3)
    layer_windows: tuple[int, ...] = ()  # {layer: sliding window, 0 = global}; () = none
    local_rope: RopeConfig | None = None  # rotary of the windowed layers, when it differs
    attn_logit_softcap: float = 0.0  # 0 = off (Gemma 2)
    final_logit_softcap: float = 0.0
    query_pre_attn_scalar: float | None = None  # softmax scale = its -1/2 (Gemma)
    parallel_residual: bool = False  # x + attn(ln(x)) + mlp(ln'(x)) (GPT-J, GPT-NeoX)
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    family: str = field(init=False)  # a value of ARCHITECTURES: picks the model class
    softmax_scale: float = field(init=False)
    #: Tokens back from a query that any layer can still see (0: unbounded). Pages wholly
    #: before every layer's window are released while a sequence runs.
    release_window: int = field(init=False)

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ValueError(
                f"unsupported architecture {self.architecture!r}; supported: "
                + ", ".join(sorted(ARCHITECTURES))
            )
        for name, high in LIMITS.items():
            value = getattr(self, name)
            if type(value) is not int or not 1 <= value <= high:
                raise ValueError(
                    f"config field {name} must be an int in [1, {high}], got {value!r}"
                )
        if self.num_kv_heads > self.num_heads:
            raise ValueError(
                f"num_kv_heads ({self.num_kv_heads}) exceeds num_heads ({self.num_heads})"
            )
        if not (math.isfinite(self.norm_eps) and 0 < self.norm_eps < 1):
            raise ValueError(f"the norm epsilon must be in (0, 1), got {self.norm_eps!r}")
        for t in (
            *self.eos_token_ids,
            *([self.bos_token_id] if self.bos_token_id is not None else []),
        ):
            if type(t) is not int or not 0 <= t < self.vocab_size:
                raise ValueError(
                    f"bos/eos token ids must be ints in [0, {self.vocab_size}), got {t!r}"
                )
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads ({self.num_heads}) must be a multiple of "
                f"num_kv_heads ({self.num_kv_heads})"
            )
        for rope in (self.rope, self.local_rope):
            if rope is not None and rope.rotary_dim > self.head_dim:
                raise ValueError(f"rotary_dim {rope.rotary_dim} exceeds head_dim {self.head_dim}")
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(
                f"hidden_act {self.hidden_act!r} is not supported: use one of "
                + ", ".join(sorted(ACTIVATIONS))
            )
        self._check_windows()
        for name in ("attn_logit_softcap", "final_logit_softcap"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        scalar = self.query_pre_attn_scalar
        if scalar is not None and not (math.isfinite(scalar) and scalar > 0):
            raise ValueError(f"query_pre_attn_scalar must be positive, got {scalar!r}")
        object.__setattr__(self, "family", ARCHITECTURES[self.architecture])
        object.__setattr__(self, "softmax_scale", (scalar or self.head_dim) ** -0.5)
        windows = self.layer_windows
        bounded = bool(windows) and all(windows)
        object.__setattr__(self, "release_window", max(windows) if bounded else 0)

    def _check_windows(self) -> None:
        if self.layer_windows and len(self.layer_windows) != self.num_layers:
            raise ValueError(
                f"{len(self.layer_windows)} layer windows for {self.num_layers} layers"
            )
        for w in self.layer_windows:
            if type(w) is not int or not 0 <= w <= LIMITS["max_position_embeddings"]:
                raise ValueError(f"a sliding window must be an int >= 0, got {w!r}")

    def window(self, layer_idx: int) -> int:
        """The layer's sliding window in tokens (0: it sees the whole sequence)."""
        return self.layer_windows[layer_idx] if self.layer_windows else 0


def serving_window(declared: int, max_model_len: int | None) -> int:
    """The serving window: the declared positions, capped by max_model_len (the one place
    the cap is applied: model configs at load, the engine for members loaded without it)."""
    return min(declared, max_model_len) if max_model_len else declared
