"""config.json -> ModelConfig: one small parser per family, and the checks every field gets.

config.json is untrusted: each field is type-checked here and bounded by ModelConfig before
anything is allocated. transformers 4 and 5 layouts are both read (5 moved rope settings
into `rope_parameters`, and Gemma 3 keys them by layer type).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

from blendrt.models.config import (
    ACTIVATIONS,
    ARCHITECTURES,
    LIMITS,
    MAX_LABELS,
    MODEL_TYPES,
    SEQUENCE_CLASSIFIERS,
    ModelConfig,
    serving_window,
    supported_architectures,
)
from blendrt.models.rope_config import RopeConfig
from blendrt.models.rope_hf import rope_from_hf

Hf = dict[str, Any]


def parse_hf_config(hf: Hf, *, max_model_len: int | None = None) -> ModelConfig:
    if not isinstance(hf, dict):
        raise ValueError("config.json must hold a JSON object")
    if max_model_len is not None and (not isinstance(max_model_len, int) or max_model_len < 1):
        raise ValueError(f"max_model_len must be a positive int, got {max_model_len!r}")
    arch = _architecture(hf)
    lm = SEQUENCE_CLASSIFIERS.get(arch, arch)  # a classifier: its causal LM's decoder
    eos = hf.get("eos_token_id")
    eos_ids = tuple(eos) if isinstance(eos, list) else (() if eos is None else (eos,))
    common = dict(architecture=lm, bos_token_id=hf.get("bos_token_id"), eos_token_ids=eos_ids)
    config = PARSERS[ARCHITECTURES[lm]](hf, common, max_model_len)
    pad = hf.get("pad_token_id")
    if arch not in SEQUENCE_CLASSIFIERS:
        # A causal LM never reads it: one out of range (some configs say -1) is dropped.
        if type(pad) is not int or not 0 <= pad < config.vocab_size:
            return config
        return dataclasses.replace(config, pad_token_id=pad)
    # A classifier: it scores the last non-pad token, so its pad id is checked like bos/eos.
    # transformers' score head never soft-caps (Gemma 2's final_logit_softcapping is unused).
    return dataclasses.replace(
        config, num_labels=_num_labels(hf), pad_token_id=pad, final_logit_softcap=0.0
    )


def _num_labels(hf: Hf) -> int:
    """A classifier's labels as transformers counts them: id2label's entries (config.json
    stores that map, not num_labels), else num_labels, else 2."""
    id2label = hf.get("id2label")
    if id2label is not None:
        if not isinstance(id2label, dict) or not 1 <= len(id2label) <= MAX_LABELS:
            raise ValueError(
                f"config.json: id2label must map 1 to {MAX_LABELS} labels, got {id2label!r:.80}"
            )
        return len(id2label)
    labels = hf.get("num_labels", 2)
    if type(labels) is not int or not 1 <= labels <= MAX_LABELS:
        raise ValueError(
            f"config.json: num_labels must be an int in [1, {MAX_LABELS}], got {labels!r}"
        )
    return labels


def _architecture(hf: Hf) -> str:
    archs = hf.get("architectures") or []
    for arch in archs:
        if arch in ARCHITECTURES:
            return arch
    if not archs and hf.get("model_type") in MODEL_TYPES:
        return MODEL_TYPES[hf["model_type"]]
    found = ", ".join(map(str, archs)) or f"model_type={hf.get('model_type')!r}"
    raise ValueError(f"unsupported architecture ({found}); supported: " + supported_architectures())


# ---- field readers -----------------------------------------------------------------------


def _int(hf: Hf, *keys: str, default: int | None = None) -> int:
    """A positive int field (the first of `keys` present), named in the error if not."""
    key = next((k for k in keys if hf.get(k) is not None), None)
    value = hf[key] if key is not None else default
    if value is None:
        raise ValueError(f"config.json lacks {' / '.join(keys)}")
    if type(value) is not int or value < 1:
        raise ValueError(f"config.json: {key or keys[0]} must be a positive int, got {value!r}")
    return value


def _float(hf: Hf, key: str, default: float | None) -> float | None:
    value = hf.get(key)
    if value is None:
        return default
    if type(value) not in (int, float) or not math.isfinite(value):
        raise ValueError(f"config.json: {key} must be a finite number, got {value!r}")
    return float(value)


def _bool(hf: Hf, key: str, default: bool = False) -> bool:
    value = hf.get(key, default)
    if value is None:
        return default
    if type(value) is not bool:
        raise ValueError(f"config.json: {key} must be true or false, got {value!r}")
    return value


def _activation(hf: Hf, *keys: str, default: str) -> str:
    key = next((k for k in keys if hf.get(k) is not None), None)
    name = hf[key] if key else default
    for ours, theirs in ACTIVATIONS.items():
        if name in theirs:
            return ours
    supported = ", ".join(n for names in ACTIVATIONS.values() for n in names)
    raise ValueError(f"config.json: {key} {name!r} is not supported (use one of {supported})")


def _head_dim(hf: Hf, hidden: int, heads: int) -> int:
    if hf.get("head_dim") is None and hidden % heads:
        raise ValueError(f"config.json: hidden_size {hidden} is not a multiple of {heads} heads")
    return _int(hf, "head_dim", default=hidden // heads)


def _rope_params(hf: Hf, layer_type: str | None = None) -> Hf:
    """The rope settings dict: transformers 5's rope_parameters (per layer type for Gemma
    3) or 4's rope_scaling; {} when neither is given."""
    key = "rope_parameters" if hf.get("rope_parameters") is not None else "rope_scaling"
    params = hf.get(key) or {}
    if not isinstance(params, dict):
        raise ValueError(f"config.json: {key} must be an object, got {params!r}")
    if layer_type is not None and isinstance(params.get(layer_type), dict):
        params = params[layer_type]
    return params


def _rotary_dim(hf: Hf, params: Hf, head_dim: int, *keys: str) -> int:
    factor = next((p[k] for p in (params, hf) for k in keys if p.get(k) is not None), 1.0)
    if type(factor) not in (int, float) or not 0 < factor <= 1:
        raise ValueError(f"config.json: {keys[0]} must be in (0, 1], got {factor!r}")
    dim = int(head_dim * factor)
    return dim - dim % 2


def _rope(
    params: Hf, sizes: Hf, hf: Hf, *, theta: float, rotary_dim: int, top_level: Hf | None
) -> RopeConfig:
    """The rope of these params; `sizes` holds the declared and served positions."""
    return rope_from_hf(
        params,
        theta_default=theta,
        head_dim=sizes["head_dim"],
        rotary_dim=rotary_dim,
        max_position_embeddings=sizes.pop("declared_positions"),
        serving_window=sizes["max_position_embeddings"],
        top_level=top_level,
    )


def _windows(hf: Hf, num_layers: int, context: int, default_types: list[str] | None) -> tuple:
    """{layer: window} from `layer_types` (transformers 5) or the family's default pattern;
    a window that covers the whole serving context is no window."""
    window = hf.get("sliding_window")
    if window is None:
        return ()
    if type(window) is not int or window < 1:
        raise ValueError(f"config.json: sliding_window must be a positive int, got {window!r}")
    types = hf.get("layer_types") or default_types or ["sliding_attention"] * num_layers
    if not isinstance(types, list) or len(types) != num_layers:
        raise ValueError(f"config.json: layer_types must list one type for each of {num_layers}")
    for t in types:
        if t not in ("sliding_attention", "full_attention"):
            raise ValueError(f"config.json: unknown layer type {t!r}")
    if window >= context:
        return ()
    return tuple(window if t == "sliding_attention" else 0 for t in types)


def _common_sizes(hf: Hf, max_model_len: int | None) -> dict[str, Any]:
    """ModelConfig's size fields, and the declared positions (read by `_rope`)."""
    hidden, heads = _int(hf, "hidden_size"), _int(hf, "num_attention_heads")
    declared = _int(hf, "max_position_embeddings", default=2048)
    if declared > LIMITS["max_position_embeddings"]:  # before the rope sizes tables by it
        high = LIMITS["max_position_embeddings"]
        raise ValueError(f"config field max_position_embeddings must be an int in [1, {high}]")
    return dict(
        vocab_size=_int(hf, "vocab_size"),
        hidden_size=hidden,
        num_layers=_int(hf, "num_hidden_layers"),
        num_heads=heads,
        num_kv_heads=_int(hf, "num_key_value_heads", default=heads),
        head_dim=_head_dim(hf, hidden, heads),
        intermediate_size=_int(hf, "intermediate_size"),
        max_position_embeddings=serving_window(_scaled_positions(hf, declared), max_model_len),
        declared_positions=declared,
    )


def _scaled_positions(hf: Hf, declared: int) -> int:
    """Positions a member serves by default: the declared ones, or for rope types that
    stretch them (as vLLM derives max_model_len) dynamic: declared x factor, yarn: the
    original length x factor. Bounded like any size."""
    params = _rope_params(hf, "full_attention")
    kind = params.get("rope_type", params.get("type"))
    factor = params.get("factor")
    if kind not in ("dynamic", "yarn") or type(factor) not in (int, float) or factor <= 1:
        return declared
    base = declared
    if kind == "yarn":
        base = params.get("original_max_position_embeddings") or declared
        base = base if type(base) is int and base > 0 else declared
    return min(int(base * factor), LIMITS["max_position_embeddings"])


# ---- families ----------------------------------------------------------------------------


def _llama(hf: Hf, common: Hf, max_model_len: int | None) -> ModelConfig:
    """Llama 1-3, Mistral, Qwen2/2.5, Qwen3, Phi-3: one decoder, different switches."""
    arch = common["architecture"]
    sizes = _common_sizes(hf, max_model_len)
    head_dim, n = sizes["head_dim"], sizes["num_layers"]
    params = _rope_params(hf)
    rotary = _rotary_dim(hf, params, head_dim, "partial_rotary_factor")
    types = None
    if arch.startswith("Qwen"):  # windows only past max_window_layers, when enabled
        if not _bool(hf, "use_sliding_window"):
            hf = {k: v for k, v in hf.items() if k not in ("sliding_window", "layer_types")}
        first = hf.get("max_window_layers", n)
        types = ["sliding_attention" if i >= first else "full_attention" for i in range(n)]
    bias = _bool(hf, "attention_bias")
    # Phi-3 keeps original_max_position_embeddings at the top level (its default: 4096).
    top = {"original_max_position_embeddings": 4096} | hf if arch.startswith("Phi3") else hf
    rope = _rope(params, sizes, hf, theta=10000.0, rotary_dim=rotary, top_level=top)
    return ModelConfig(
        **common,
        **sizes,
        rope=rope,
        norm_eps=_float(hf, "rms_norm_eps", 1e-6),
        tie_word_embeddings=_bool(hf, "tie_word_embeddings"),
        qkv_bias=bias or arch == "Qwen2ForCausalLM",
        o_proj_bias=bias,
        mlp_bias=_bool(hf, "mlp_bias"),
        hidden_act=_activation(hf, "hidden_act", default="silu"),
        qk_norm=arch == "Qwen3ForCausalLM",
        layer_windows=_windows(hf, n, sizes["max_position_embeddings"], types),
    )


#: transformers' defaults for the keys a Gemma config.json may leave out, where the generic
#: readers' defaults differ (Gemma 2 soft-caps unless told otherwise; null turns a cap off).
_GEMMA2_DEFAULTS: Hf = dict(
    num_key_value_heads=4, head_dim=256, max_position_embeddings=8192, sliding_window=4096,
    query_pre_attn_scalar=256, attn_logit_softcapping=50.0, final_logit_softcapping=30.0,
)  # fmt: skip
_GEMMA3_DEFAULTS: Hf = dict(
    num_key_value_heads=4, head_dim=256, max_position_embeddings=131072, sliding_window=4096,
    query_pre_attn_scalar=256,
)  # fmt: skip


def _gemma(hf: Hf, common: Hf, max_model_len: int | None) -> ModelConfig:
    """Gemma 2 and Gemma 3 text: local (sliding) and global layers, soft-capping (2),
    q/k norms and a separate local rotary base (3)."""
    gemma3 = common["architecture"] == "Gemma3ForCausalLM"
    if _bool(hf, "use_bidirectional_attention"):
        raise ValueError("config.json: use_bidirectional_attention (not causal) is not supported")
    hf = (_GEMMA3_DEFAULTS if gemma3 else _GEMMA2_DEFAULTS) | hf  # transformers' defaults
    sizes = _common_sizes(hf, max_model_len)
    n, head_dim = sizes["num_layers"], sizes["head_dim"]
    every = _int(hf, "sliding_window_pattern", default=6) if gemma3 else 2
    types = ["sliding_attention" if (i + 1) % every else "full_attention" for i in range(n)]
    global_theta = 1e6 if gemma3 else 10000.0
    params = _rope_params(hf, "full_attention")
    local_rope = None
    if gemma3:  # local layers rotate with their own base, unscaled
        local = _rope_params(hf, "sliding_attention")
        local = local if "sliding_attention" in (hf.get("rope_parameters") or {}) else {}
        local_theta = _float(hf, "rope_local_base_freq", 10000.0)
        local_rope = _rope(
            local, dict(sizes), hf, theta=local_theta, rotary_dim=head_dim, top_level=None
        )
    rope = _rope(params, sizes, hf, theta=global_theta, rotary_dim=head_dim, top_level=hf)
    context = sizes["max_position_embeddings"]
    windows = _windows(hf, n, context, types)
    if gemma3 and not windows:  # a window covering the context still marks the local layers
        windows = _windows(hf | {"sliding_window": context}, n, context + 1, types)
    return ModelConfig(
        **common,
        **sizes,
        rope=rope,
        local_rope=local_rope,
        norm_eps=_float(hf, "rms_norm_eps", 1e-6),
        tie_word_embeddings=_bool(hf, "tie_word_embeddings", True),
        qkv_bias=_bool(hf, "attention_bias"),
        o_proj_bias=_bool(hf, "attention_bias"),
        hidden_act=_activation(hf, "hidden_activation", "hidden_act", default="gelu_pytorch_tanh"),
        qk_norm=gemma3,
        layer_windows=windows,  # 0: global
        # transformers' Gemma 3 never soft-caps attention, whatever the config says
        attn_logit_softcap=0.0 if gemma3 else _float(hf, "attn_logit_softcapping", None) or 0.0,
        final_logit_softcap=_float(hf, "final_logit_softcapping", None) or 0.0,
        query_pre_attn_scalar=_float(hf, "query_pre_attn_scalar", float(head_dim)),
    )


def _gptj(hf: Hf, common: Hf, max_model_len: int | None) -> ModelConfig:
    hidden = _int(hf, "n_embd", "hidden_size")
    heads = _int(hf, "n_head", "num_attention_heads")
    if hidden % heads:
        raise ValueError(f"config.json: n_embd {hidden} is not a multiple of {heads} heads")
    head_dim = hidden // heads
    return ModelConfig(
        **common,
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
        hidden_act=_activation(hf, "activation_function", default="gelu_new"),
    )


def _gpt_neox(hf: Hf, common: Hf, max_model_len: int | None) -> ModelConfig:
    """GPT-NeoX / Pythia: partial rotary (halves), biases everywhere, parallel residual."""
    sizes = _common_sizes(hf, max_model_len)
    params, head_dim = _rope_params(hf), sizes["head_dim"]
    keys = ("partial_rotary_factor", "rotary_pct")  # transformers 5's name, then 4's
    # absent, the fraction is 0.25 (as transformers reads it)
    pct = next((p[k] for p in (params, hf) for k in keys if p.get(k) is not None), 0.25)
    rotary = _rotary_dim(hf, {"partial_rotary_factor": pct}, head_dim, *keys)
    if rotary == 0:
        raise ValueError("config.json: rotary_pct leaves no rotary dims")
    if rotary != int(head_dim * pct):  # transformers turns one more dim, at odd frequencies
        raise ValueError(
            f"config.json: rotary_pct {pct} gives an odd {int(head_dim * pct)} rotary dims "
            f"of {head_dim}; blendrt rotates an even number"
        )
    theta = _float(hf, "rotary_emb_base", 10000.0)
    top = {k: v for k, v in hf.items() if k not in ("partial_rotary_factor", "rotary_pct")}
    rope = _rope(params, sizes, hf, theta=theta, rotary_dim=rotary, top_level=top)
    return ModelConfig(
        **common,
        **sizes,
        rope=rope,
        norm_eps=_float(hf, "layer_norm_eps", 1e-5),
        tie_word_embeddings=_bool(hf, "tie_word_embeddings"),
        qkv_bias=_bool(hf, "attention_bias", True),
        o_proj_bias=_bool(hf, "attention_bias", True),
        mlp_bias=True,
        hidden_act=_activation(hf, "hidden_act", default="gelu"),
        parallel_residual=_bool(hf, "use_parallel_residual", True),
    )


def _gpt2(hf: Hf, common: Hf, max_model_len: int | None) -> ModelConfig:
    """GPT-2: learned absolute positions, no rotary, biases everywhere, tied lm_head."""
    for key, ok in (("scale_attn_by_inverse_layer_idx", False), ("scale_attn_weights", True)):
        if _bool(hf, key, ok) != ok:
            raise ValueError(f"config.json: GPT-2 with {key}={not ok} is not supported")
    hidden, heads = _int(hf, "n_embd", "hidden_size"), _int(hf, "n_head", "num_attention_heads")
    if hidden % heads:
        raise ValueError(f"config.json: n_embd {hidden} is not a multiple of {heads} heads")
    return ModelConfig(
        **common,
        vocab_size=_int(hf, "vocab_size"),
        hidden_size=hidden,
        num_layers=_int(hf, "n_layer", "num_hidden_layers"),
        num_heads=heads,
        num_kv_heads=heads,
        head_dim=hidden // heads,
        intermediate_size=_int(hf, "n_inner", default=4 * hidden),
        max_position_embeddings=serving_window(
            _int(hf, "n_positions", default=1024), max_model_len
        ),
        rope=None,
        norm_eps=_float(hf, "layer_norm_epsilon", 1e-5),
        tie_word_embeddings=_bool(hf, "tie_word_embeddings", True),
        qkv_bias=True,
        o_proj_bias=True,
        mlp_bias=True,
        hidden_act=_activation(hf, "activation_function", default="gelu_new"),
    )


#: {family: parser}
PARSERS: dict[str, Callable[[Hf, Hf, int | None], ModelConfig]] = {
    "llama": _llama,
    "gemma": _gemma,
    "gptj": _gptj,
    "gpt_neox": _gpt_neox,
    "gpt2": _gpt2,
}
