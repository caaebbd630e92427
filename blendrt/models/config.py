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
        if not (math.isfinite(self.theta) and self.theta > 0):
            raise ValueError(f"rope_theta must be a positive number, got {self.theta}")
        if self.scaling == "llama3" and not 0 < self.low_freq_factor < self.high_freq_factor:
            raise ValueError(
                "llama3 rope scaling needs 0 < low_freq_factor < high_freq_factor, got "
                f"{self.low_freq_factor} and {self.high_freq_factor}"
            )


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
        if self.rope.rotary_dim > self.head_dim:
            raise ValueError(f"rotary_dim {self.rope.rotary_dim} exceeds head_dim {self.head_dim}")
        object.__setattr__(self, "family", ARCHITECTURES[self.architecture])
        object.__setattr__(self, "softmax_scale", 1.0 / math.sqrt(self.head_dim))

    @classmethod
    def from_hf(cls, hf: dict[str, Any], *, max_model_len: int | None = None) -> ModelConfig:
        """Reads a Hugging Face config.json dict (transformers 4 or 5 layout)."""
        if not isinstance(hf, dict):
            raise ValueError("config.json must hold a JSON object")
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


def _int(hf: dict[str, Any], *keys: str, default: int | None = None) -> int:
    """A positive int field (the first of `keys` present), named in the error if not."""
    key = next((k for k in keys if hf.get(k) is not None), None)
    value = hf[key] if key is not None else default
    if value is None:
        raise ValueError(f"config.json lacks {' / '.join(keys)}")
    if type(value) is not int or value < 1:
        raise ValueError(f"config.json: {key or keys[0]} must be a positive int, got {value!r}")
    return value


def _float(hf: dict[str, Any], key: str, default: float) -> float:
    value = hf.get(key, default)
    if type(value) not in (int, float) or not math.isfinite(value):
        raise ValueError(f"config.json: {key} must be a finite number, got {value!r}")
    return float(value)


def _bool(hf: dict[str, Any], key: str, default: bool = False) -> bool:
    value = hf.get(key, default)
    if value is None:
        return default
    if type(value) is not bool:
        raise ValueError(f"config.json: {key} must be true or false, got {value!r}")
    return value


def _llama_rope(hf: dict[str, Any], head_dim: int) -> RopeConfig:
    # transformers 5 writes rope_parameters (theta inside); 4.x writes rope_theta + rope_scaling.
    key = "rope_parameters" if hf.get("rope_parameters") is not None else "rope_scaling"
    params = hf.get(key) or {}
    if not isinstance(params, dict):
        raise ValueError(f"config.json: {key} must be an object, got {params!r}")
    theta = _float(params, "rope_theta", _float(hf, "rope_theta", 10000.0))
    kind = params.get("rope_type", params.get("type", "default"))
    if hf.get("partial_rotary_factor", 1.0) != 1.0:
        raise ValueError("partial_rotary_factor != 1 is not supported for Llama-family models")
    return RopeConfig(
        theta=theta,
        rotary_dim=head_dim,
        scaling=kind,
        factor=_float(params, "factor", 1.0),
        low_freq_factor=_float(params, "low_freq_factor", 1.0),
        high_freq_factor=_float(params, "high_freq_factor", 4.0),
        original_max_position_embeddings=_int(
            params, "original_max_position_embeddings", default=8192
        ),
    )


def _llama_config(
    hf: dict[str, Any], arch: str, common: dict[str, Any], max_model_len: int | None
) -> ModelConfig:
    hidden = _int(hf, "hidden_size")
    heads = _int(hf, "num_attention_heads")
    if hf.get("head_dim") is None and hidden % heads:
        raise ValueError(f"config.json: hidden_size {hidden} is not a multiple of {heads} heads")
    head_dim = _int(hf, "head_dim", default=hidden // heads)
    context = serving_window(_int(hf, "max_position_embeddings", default=2048), max_model_len)
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
        vocab_size=_int(hf, "vocab_size"),
        hidden_size=hidden,
        num_layers=_int(hf, "num_hidden_layers"),
        num_heads=heads,
        num_kv_heads=_int(hf, "num_key_value_heads", default=heads),
        head_dim=head_dim,
        intermediate_size=_int(hf, "intermediate_size"),
        max_position_embeddings=context,
        rope=_llama_rope(hf, head_dim),
        norm_eps=_float(hf, "rms_norm_eps", 1e-6),
        tie_word_embeddings=_bool(hf, "tie_word_embeddings"),
        attention_bias=_bool(hf, "attention_bias"),
        mlp_bias=_bool(hf, "mlp_bias"),
        **common,
    )


def serving_window(declared: int, max_model_len: int | None) -> int:
    """The serving window: the declared positions, capped by max_model_len (the one place
    the cap is applied: model configs at load, the engine for members loaded without it)."""
    return min(declared, max_model_len) if max_model_len else declared


def _gptj_config(
    hf: dict[str, Any], arch: str, common: dict[str, Any], max_model_len: int | None
) -> ModelConfig:
    hidden = _int(hf, "n_embd", "hidden_size")
    heads = _int(hf, "n_head", "num_attention_heads")
    if hidden % heads:
        raise ValueError(f"config.json: n_embd {hidden} is not a multiple of {heads} heads")
    head_dim = hidden // heads
    if hf.get("activation_function", "gelu_new") != "gelu_new":
        raise ValueError(f"{arch}: activation {hf['activation_function']!r} is not supported")
    return ModelConfig(
        architecture=arch,
        vocab_size=_int(hf, "vocab_size"),
        hidden_size=hidden,
        num_layers=_int(hf, "n_layer", "num_hidden_layers"),
        num_heads=heads,
        num_kv_heads=heads,
        head_dim=head_dim,
        intermediate_size=_int(hf, "n_inner", default=4 * hidden),
        max_position_embeddings=serving_window(
            _int(hf, "n_positions", default=2048), max_model_len
        ),
        rope=RopeConfig(rotary_dim=_int(hf, "rotary_dim", default=head_dim), interleaved=True),
        norm_eps=_float(hf, "layer_norm_epsilon", 1e-5),
        tie_word_embeddings=_bool(hf, "tie_word_embeddings"),
        **common,
    )
