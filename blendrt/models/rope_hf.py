"""config.json's `rope_scaling` (transformers 4.x) or `rope_parameters` (transformers 5) ->
RopeConfig: the rope fields read, type-checked and defaulted as transformers does."""

from __future__ import annotations

import math
from typing import Any

from blendrt.models.rope_config import (
    _YARN_BETA_FAST,
    _YARN_BETA_SLOW,
    SCALING_ALIASES,
    SCALING_TYPES,
    RopeConfig,
    _check_positions,
    _is_number,
)


def _get_number(params: dict[str, Any], key: str, default: Any, where: str) -> Any:
    value = params.get(key)
    if value is None:
        return default
    if not _is_number(value) or not math.isfinite(value):
        raise ValueError(f"config.json: {where}.{key} must be a finite number, got {value!r}")
    return float(value)


def _get_int(params: dict[str, Any], key: str, where: str) -> int | None:
    value = params.get(key)
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not (isinstance(value, int) and not isinstance(value, bool)):
        raise ValueError(f"config.json: {where}.{key} must be an int, got {value!r}")
    return value


def _get_factors(
    params: dict[str, Any], key: str, rotary_dim: int, where: str
) -> tuple[float, ...]:
    values = params.get(key)
    if not isinstance(values, list):
        raise ValueError(f"config.json: {where}.{key} must be a list of numbers, got {values!r}")
    if len(values) != rotary_dim // 2:  # checked before anything is read from it
        raise ValueError(
            f"config.json: {where}.{key} must hold rotary_dim / 2 = {rotary_dim // 2} numbers, "
            f"got {len(values)}"
        )
    if not all(_is_number(v) and math.isfinite(v) for v in values):
        raise ValueError(f"config.json: {where}.{key} must be a list of finite numbers")
    return tuple(float(v) for v in values)


def rope_from_hf(
    params: dict[str, Any] | None,
    *,
    theta_default: float,
    head_dim: int,
    rotary_dim: int,
    max_position_embeddings: int,
    serving_window: int,
    interleaved: bool = False,
    top_level: dict[str, Any] | None = None,
) -> RopeConfig:
    """A RopeConfig from config.json's `rope_scaling` (transformers 4.x) or `rope_parameters`
    (transformers 5) object, `params` (None or {} = default rope).

    `max_position_embeddings` is the length config.json declares (not capped: dynamic's
    formula and the default longrope/yarn factor use it); `serving_window` is the number of
    positions this member serves (declared, capped by max_model_len). `top_level` is the whole
    config.json, for keys some configs keep outside the rope object: `rope_theta` (4.x) and
    `original_max_position_embeddings` (Phi-3), which as in transformers 5 takes priority over
    the one inside the rope object for llama3 / yarn / longrope. `partial_rotary_factor` is the
    caller's business (it picks rotary_dim); one found here must agree with rotary_dim."""
    where = "rope_parameters"
    top = top_level or {}
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise ValueError(f"config.json: {where} must be an object, got {params!r}")
    if not isinstance(top, dict):
        raise ValueError(f"config.json must be an object, got {type(top).__name__}")

    kind = params.get("rope_type", params.get("type")) or "default"
    kind = SCALING_ALIASES.get(kind, kind) if isinstance(kind, str) else kind
    if kind not in SCALING_TYPES:
        raise ValueError(
            f"config.json: {where}.rope_type {kind!r} is not supported: blendrt supports "
            + ", ".join(SCALING_TYPES)
            + " (and su, the old name of longrope)"
        )

    for source, name in ((params, where), (top, "config")):
        prf = _get_number(source, "partial_rotary_factor", None, name)
        if prf is not None and int(head_dim * prf) != rotary_dim:
            raise ValueError(
                f"config.json: {name}.partial_rotary_factor {prf} gives "
                f"{int(head_dim * prf)} rotary dims of {head_dim}, but rotary_dim is {rotary_dim}"
            )
    if rotary_dim > head_dim:
        raise ValueError(f"rotary_dim {rotary_dim} exceeds head_dim {head_dim}")

    theta = _get_number(params, "rope_theta", None, where)
    if theta is None:
        theta = _get_number(top, "rope_theta", theta_default, "config")

    fields: dict[str, Any] = {
        "theta": theta,
        "rotary_dim": rotary_dim,
        "interleaved": interleaved,
        "scaling": kind,
        "max_position_embeddings": max_position_embeddings,
        "serving_window": serving_window,
    }
    if kind in ("llama3", "yarn", "longrope"):
        original = _get_int(top, "original_max_position_embeddings", "config")
        if original is None:
            original = _get_int(params, "original_max_position_embeddings", where)
        original = original if original is not None else max_position_embeddings
        _check_positions("original_max_position_embeddings", original)
        fields["original_max_position_embeddings"] = original

    factor = _get_number(params, "factor", None, where)
    if kind in ("linear", "dynamic", "llama3") and factor is None:
        raise ValueError(f"config.json: {where}.factor is required for {kind} rope scaling")
    if kind in ("yarn", "longrope") and factor is None:  # the extended / pretraining ratio
        factor = max_position_embeddings / fields["original_max_position_embeddings"]
    if factor is not None and kind != "default":
        fields["factor"] = factor

    if kind == "llama3":
        for key in ("low_freq_factor", "high_freq_factor"):
            value = _get_number(params, key, None, where)
            if value is None:
                raise ValueError(f"config.json: {where}.{key} is required for llama3 rope scaling")
            fields[key] = value
    if kind == "yarn":
        # as transformers: an absent, null or zero beta means the paper's 32 / 1
        fields["beta_fast"] = _get_number(params, "beta_fast", None, where) or _YARN_BETA_FAST
        fields["beta_slow"] = _get_number(params, "beta_slow", None, where) or _YARN_BETA_SLOW
        fields["mscale"] = _get_number(params, "mscale", None, where)
        fields["mscale_all_dim"] = _get_number(params, "mscale_all_dim", None, where)
        truncate = params.get("truncate")
        if truncate is not None and not isinstance(truncate, bool):
            raise ValueError(
                f"config.json: {where}.truncate must be true or false, got {truncate!r}"
            )
        fields["truncate"] = True if truncate is None else truncate
    if kind in ("yarn", "longrope"):
        fields["attention_factor"] = _get_number(params, "attention_factor", None, where)
    if kind == "longrope":
        fields["short_factor"] = _get_factors(params, "short_factor", rotary_dim, where)
        fields["long_factor"] = _get_factors(params, "long_factor", rotary_dim, where)
    return RopeConfig(**fields)
