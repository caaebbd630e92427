"""ModelConfig: one dataclass for every supported architecture, read from a HF config.json."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

#: {HF architecture name: blendrt family}
ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "llama",
    "GPTJForCausalLM": "gptj",
}
_MODEL_TYPES = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "gptj": "GPTJForCausalLM",
}


@dataclass(frozen=True)
class RopeConfig:
    """Rotary embedding: which dims rotate, how pairs are formed, how frequencies scale."""

    theta: float = 10000.0
    rotary_dim: int = 0  # dims of each head that rotate (GPT-J: a prefix of the head)
    interleaved: bool = False  # pairs (0,1),(2,3).. (GPT-J) or halves (0,D/2).. (Llama)
    scaling: str = "default"  # "default" | "linear" | "llama3"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192

    def __post_init__(self) -> None:
        if self.scaling not in ("default", "linear", "llama3"):
            raise ValueError(
                f"unsupported rope scaling {self.scaling!r}: blendrt supports "
                "default, linear and llama3"
            )
        if self.rotary_dim <= 0 or self.rotary_dim % 2:
            raise ValueError(f"rotary_dim must be a positive even number, got {self.rotary_dim}")
        if self.factor <= 0:
            raise ValueError(f"rope scaling factor must be positive, got {self.factor}")


@dataclass(frozen=True)
class ModelConfig:
    architecture: str  # a key of ARCHITECTURES
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    max_position_embeddings: int
    rope: RopeConfig
    norm_eps: float
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    family: str = field(init=False)  # "llama" | "gptj"
    softmax_scale: float = field(init=False)

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ValueError(
                f"unsupported architecture {self.architecture!r}; supported: "
                + ", ".join(sorted(ARCHITECTURES))
            )
        for name in (
            "vocab_size",
            "hidden_size",
            "num_layers",
            "num_heads",
            "num_kv_heads",
            "head_dim",
            "intermediate_size",
            "max_position_embeddings",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"config field {name} must be a positive int, got {value!r}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads ({self.num_heads}) must be a multiple of "
                f"num_kv_heads ({self.num_kv_heads})"
            )
        if self.rope.rotary_dim > self.head_dim:
            raise ValueError(f"rotary_dim {self.rope.rotary_dim} exceeds head_dim {self.head_dim}")
        object.__setattr__(self, "family", ARCHITECTURES[self.architecture])
        object.__setattr__(self, "softmax_scale", 1.0 / math.sqrt(self.head_dim))

    @classmethod
    def from_hf(cls, hf: dict[str, Any], *, max_model_len: int | None = None) -> ModelConfig:
        """Reads a Hugging Face config.json dict (transformers 4 or 5 layout)."""
        arch = _architecture(hf)
        eos = hf.get("eos_token_id")
        eos_ids = tuple(eos) if isinstance(eos, list) else (() if eos is None else (eos,))
        common = dict(bos_token_id=hf.get("bos_token_id"), eos_token_ids=eos_ids)
        if max_model_len is not None and (not isinstance(max_model_len, int) or max_model_len < 1):
            raise ValueError(f"max_model_len must be a positive int, got {max_model_len!r}")
        if ARCHITECTURES[arch] == "gptj":
            return _gptj_config(hf, arch, common, max_model_len)
        return _llama_config(hf, arch, common, max_model_len)


def _architecture(hf: dict[str, Any]) -> str:
    archs = hf.get("architectures") or []
    for arch in archs:
        if arch in ARCHITECTURES:
            return arch
    if not archs and hf.get("model_type") in _MODEL_TYPES:
        return _MODEL_TYPES[hf["model_type"]]
    found = ", ".join(archs) or f"model_type={hf.get('model_type')!r}"
    raise ValueError(
        f"unsupported architecture ({found}); supported: " + ", ".join(sorted(ARCHITECTURES))
    )


def _require(hf: dict[str, Any], *keys: str) -> Any:
    for key in keys:
        if hf.get(key) is not None:
            return hf[key]
    raise ValueError(f"config.json lacks {' / '.join(keys)}")


def _llama_rope(hf: dict[str, Any], head_dim: int) -> RopeConfig:
    # transformers 5 writes rope_parameters (theta inside); 4.x writes rope_theta + rope_scaling.
    params = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
    theta = params.get("rope_theta", hf.get("rope_theta", 10000.0))
    kind = params.get("rope_type", params.get("type", "default"))
    if hf.get("partial_rotary_factor", 1.0) != 1.0:
        raise ValueError("partial_rotary_factor != 1 is not supported for Llama-family models")
    return RopeConfig(
        theta=float(theta),
        rotary_dim=head_dim,
        scaling=kind,
        factor=float(params.get("factor", 1.0)),
        low_freq_factor=float(params.get("low_freq_factor", 1.0)),
        high_freq_factor=float(params.get("high_freq_factor", 4.0)),
        original_max_position_embeddings=int(params.get("original_max_position_embeddings", 8192)),
    )


def _llama_config(
    hf: dict[str, Any], arch: str, common: dict[str, Any], max_model_len: int | None
) -> ModelConfig:
    hidden = _require(hf, "hidden_size")
    heads = _require(hf, "num_attention_heads")
    head_dim = hf.get("head_dim") or hidden // heads
    context = _context(int(hf.get("max_position_embeddings", 2048)), max_model_len)
    window = hf.get("sliding_window")
    if window is not None and window < context:
        raise ValueError(
            f"{arch}: sliding_window={window} is below the context length {context}, and "
            f"sliding-window attention is not supported yet; load with max_model_len <= {window}"
        )
    if hf.get("hidden_act", "silu") != "silu":
        raise ValueError(f"{arch}: hidden_act {hf['hidden_act']!r} is not supported (silu only)")
    return ModelConfig(
        architecture=arch,
        vocab_size=_require(hf, "vocab_size"),
        hidden_size=hidden,
        num_layers=_require(hf, "num_hidden_layers"),
        num_heads=heads,
        num_kv_heads=hf.get("num_key_value_heads") or heads,
        head_dim=head_dim,
        intermediate_size=_require(hf, "intermediate_size"),
        max_position_embeddings=context,
        rope=_llama_rope(hf, head_dim),
        norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        attention_bias=bool(hf.get("attention_bias", False)),
        mlp_bias=bool(hf.get("mlp_bias", False)),
        **common,
    )


def _context(declared: int, max_model_len: int | None) -> int:
    """The serving window: the declared positions, capped by max_model_len."""
    return min(declared, max_model_len) if max_model_len else declared


def _gptj_config(
    hf: dict[str, Any], arch: str, common: dict[str, Any], max_model_len: int | None
) -> ModelConfig:
    hidden = _require(hf, "n_embd", "hidden_size")
    heads = _require(hf, "n_head", "num_attention_heads")
    head_dim = hidden // heads
    if hf.get("activation_function", "gelu_new") != "gelu_new":
        raise ValueError(f"{arch}: activation {hf['activation_function']!r} is not supported")
    return ModelConfig(
        architecture=arch,
        vocab_size=_require(hf, "vocab_size"),
        hidden_size=hidden,
        num_layers=_require(hf, "n_layer", "num_hidden_layers"),
        num_heads=heads,
        num_kv_heads=heads,
        head_dim=head_dim,
        intermediate_size=hf.get("n_inner") or 4 * hidden,
        max_position_embeddings=_context(int(hf.get("n_positions", 2048)), max_model_len),
        rope=RopeConfig(rotary_dim=hf.get("rotary_dim") or head_dim, interleaved=True),
        norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)),
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        **common,
    )
