"""Rotary position embeddings: which dims rotate, and how the frequencies are scaled.

Scaling types, as transformers names them in config.json (`rope_scaling` in 4.x,
`rope_parameters` in 5.x; the type under `rope_type` or the legacy `type`):

* ``default``  inv_freq[i] = theta^(-2i/d)
* ``linear``   inv_freq / factor (position interpolation)
* ``llama3``   Llama 3.1: low frequencies / factor, high ones kept, a smooth ramp between
* ``dynamic``  NTK-aware: theta grows with the sequence length past max_position_embeddings
* ``yarn``     YaRN: per-dim blend of interpolated and extrapolated frequencies (a ramp between
  beta_fast and beta_slow rotations over the original length), cos/sin times an attention
  factor (0.1 * ln(factor) + 1, or the mscale / mscale_all_dim ratio, or given)
* ``longrope`` (legacy name ``su``) Phi-3: per-dim short_factor or long_factor divisors,
  cos/sin times an attention factor sqrt(1 + ln(factor) / ln(original length)), or given

`rope_inv_freq` and `rope_attention_factor` reproduce transformers 5's
`ROPE_INIT_FUNCTIONS` (and its rotary modules' cos/sin) bit for bit or to float32 rounding:
tests/models/test_rope_scaling.py checks every type against transformers itself.

NOTE (position-dependence policy): paged prefix caching keeps the keys of a conversation's
earlier tokens and reuses them as the conversation grows, so a position's rotation must never
change with the length of the sequence it is part of. transformers makes two types depend on
the current sequence length: ``dynamic`` recomputes its base from the sequence length once it
exceeds max_position_embeddings (and goes back to the original base for shorter sequences),
and ``longrope`` switches from short_factor to long_factor once the sequence is longer than
original_max_position_embeddings. blendrt fixes both once per member, from `serving_window`
(the number of positions the member will actually serve: the declared maximum capped by
max_model_len):

* ``dynamic`` uses transformers' formula at seq_len = max(serving_window,
  max_position_embeddings). It therefore equals transformers exactly for every sequence when
  serving_window <= max_position_embeddings (no scaling, as in transformers), and otherwise
  for a sequence of exactly serving_window tokens (shorter sequences get the base
  transformers would use at the full window: the scaling a long conversation ends up with).
* ``longrope`` uses long_factor iff serving_window > original_max_position_embeddings. It
  equals transformers for every sequence length when the window is within the original
  length, and otherwise for every sequence longer than the original length (shorter ones get
  long_factor too, where transformers would use short_factor).

vLLM makes the same kind of static choice: its LongRoPE embedding uses the long factors iff
max_model_len > original_max_position_embeddings ("to prevent KV cache invalidation when
sequences cross this threshold"), and its dynamic-NTK embedding builds one table with the base
for max_position_embeddings * factor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

#: the scaling types blendrt computes (``su`` is read as ``longrope``)
SCALING_TYPES = ("default", "linear", "llama3", "dynamic", "yarn", "longrope")
#: {legacy name in config.json: the type it means}
SCALING_ALIASES = {"su": "longrope"}

#: Bounds on untrusted numbers: beyond them the tables overflow or stop meaning anything.
MAX_THETA = 1e12
MAX_FACTOR = 1e6  # factor, short_factor/long_factor entries, mscale, attention_factor
MAX_POSITIONS = 1 << 24  # as config.LIMITS["max_position_embeddings"]

_YARN_BETA_FAST = 32.0
_YARN_BETA_SLOW = 1.0


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_number(name: str, value: Any, *, low: float = 0.0, high: float = MAX_FACTOR) -> None:
    """value must be a finite number with low < value <= high."""
    if not (_is_number(value) and math.isfinite(value) and low < value <= high):
        raise ValueError(
            f"rope {name} must be a finite number in ({low:g}, {high:g}], got {value!r}"
        )


def _check_positions(name: str, value: Any, *, low: int = 1) -> None:
    if not (
        isinstance(value, int) and not isinstance(value, bool) and low <= value <= MAX_POSITIONS
    ):
        raise ValueError(f"rope {name} must be an int in [{low}, {MAX_POSITIONS}], got {value!r}")


@dataclass(frozen=True)
class RopeConfig:
    """Rotary embedding of one member: which dims rotate, how pairs are formed, how the
    frequencies scale. Fields a type does not use keep their defaults."""

    theta: float = 10000.0
    rotary_dim: int = 0  # dims of each head that rotate (GPT-J, Phi-3 partial: a prefix)
    interleaved: bool = False  # pairs (0,1),(2,3).. (GPT-J) or halves (0,D/2).. (Llama)
    scaling: str = "default"  # one of SCALING_TYPES
    factor: float = 1.0  # linear, llama3, dynamic, yarn, longrope
    low_freq_factor: float = 1.0  # llama3
    high_freq_factor: float = 4.0  # llama3
    original_max_position_embeddings: int = 8192  # llama3, yarn, longrope: pretraining length
    max_position_embeddings: int = 0  # dynamic: the declared length (not capped); 0 = unknown
    serving_window: int = 0  # positions this member serves (dynamic, longrope); 0 = unknown
    beta_fast: float = _YARN_BETA_FAST  # yarn
    beta_slow: float = _YARN_BETA_SLOW  # yarn
    mscale: float | None = None  # yarn (DeepSeek style attention factor, with mscale_all_dim)
    mscale_all_dim: float | None = None  # yarn
    attention_factor: float | None = None  # yarn, longrope: None = the type's own formula
    truncate: bool = True  # yarn: floor/ceil the correction range
    short_factor: tuple[float, ...] = ()  # longrope: rotary_dim / 2 divisors each
    long_factor: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if self.scaling not in SCALING_TYPES:
            raise ValueError(
                f"unsupported rope scaling {self.scaling!r}: blendrt supports "
                + ", ".join(SCALING_TYPES)
                + " (and su, the old name of longrope)"
            )
        if not (
            isinstance(self.rotary_dim, int)
            and not isinstance(self.rotary_dim, bool)
            and 0 < self.rotary_dim <= 4096
            and self.rotary_dim % 2 == 0
        ):
            raise ValueError(f"rotary_dim must be a positive even number, got {self.rotary_dim!r}")
        if not isinstance(self.interleaved, bool):
            raise ValueError(f"rope interleaved must be true or false, got {self.interleaved!r}")
        if not (
            _is_number(self.theta) and math.isfinite(self.theta) and 1 < self.theta <= MAX_THETA
        ):
            raise ValueError(
                f"rope_theta must be a positive number greater than 1 (at most {MAX_THETA:g}), "
                f"got {self.theta!r}"
            )
        _check_number("factor", self.factor)
        _check_positions("original_max_position_embeddings", self.original_max_position_embeddings)
        _check_positions("max_position_embeddings", self.max_position_embeddings, low=0)
        _check_positions("serving_window", self.serving_window, low=0)
        for name in ("low_freq_factor", "high_freq_factor", "beta_fast", "beta_slow"):
            _check_number(name, getattr(self, name))
        for name in ("mscale", "mscale_all_dim"):
            value = getattr(self, name)
            if value is not None and value != 0:  # 0 means unset, as in transformers
                _check_number(name, value)
        if self.attention_factor is not None:
            _check_number("attention_factor", self.attention_factor)
        if not isinstance(self.truncate, bool):
            raise ValueError(f"rope truncate must be true or false, got {self.truncate!r}")
        for name in ("short_factor", "long_factor"):
            values = getattr(self, name)
            if not isinstance(values, tuple):
                raise ValueError(
                    f"rope {name} must be a tuple of numbers, got {type(values).__name__}"
                )
            expected = self.rotary_dim // 2 if self.scaling == "longrope" else 0
            if len(values) != expected:
                raise ValueError(
                    f"rope {name} must hold {expected} numbers (rotary_dim / 2) for "
                    f"{self.scaling} scaling, got {len(values)}"
                )
            for value in values:
                _check_number(name, value)

        if self.scaling == "llama3" and not 0 < self.low_freq_factor < self.high_freq_factor:
            raise ValueError(
                "llama3 rope scaling needs 0 < low_freq_factor < high_freq_factor, got "
                f"{self.low_freq_factor} and {self.high_freq_factor}"
            )
        if self.scaling == "dynamic":
            if self.rotary_dim < 4:  # the NTK exponent d / (d - 2)
                raise ValueError(
                    f"dynamic rope scaling needs rotary_dim >= 4, got {self.rotary_dim}"
                )
            if self.max_position_embeddings == 0:
                raise ValueError("dynamic rope scaling needs max_position_embeddings")
        if self.scaling in ("dynamic", "longrope") and self.serving_window == 0:
            raise ValueError(f"{self.scaling} rope scaling needs serving_window")
        if self.scaling == "longrope" and self.original_max_position_embeddings < 2:
            raise ValueError(  # its attention factor divides by ln(original length)
                "longrope rope scaling needs original_max_position_embeddings >= 2, got "
                f"{self.original_max_position_embeddings}"
            )


# -- parsing config.json ---------------------------------------------------------------------


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


# -- frequencies -----------------------------------------------------------------------------


def _exponents(dim: int) -> torch.Tensor:  # [dim / 2] float32: 0, 2/d, 4/d, ..
    return torch.arange(0, dim, 2, dtype=torch.int64).float() / dim


def _dynamic_inv_freq(rope: RopeConfig) -> torch.Tensor:
    dim, declared, factor = rope.rotary_dim, rope.max_position_embeddings, rope.factor
    exponent = dim / (dim - 2)
    if rope.serving_window <= declared:
        # transformers' table at load (seq_len = max_position_embeddings), kept for every
        # sequence up to that length: computed in float64 like its init.
        base = rope.theta * ((factor * declared / declared) - (factor - 1)) ** exponent
    else:
        # transformers recomputes from the sequence length as a 0-dim int64 tensor (max
        # position id + 1), i.e. in float32: the same arithmetic gives the same bits.
        seq_len = torch.tensor(rope.serving_window, dtype=torch.int64)
        base = rope.theta * ((factor * seq_len / declared) - (factor - 1)) ** exponent
    return 1.0 / (base ** _exponents(dim))


def _yarn_inv_freq(rope: RopeConfig) -> torch.Tensor:
    dim, theta = rope.rotary_dim, rope.theta
    original = rope.original_max_position_embeddings

    def correction_dim(rotations: float) -> float:
        # the dim whose wavelength fits `rotations` times into the original length
        return dim * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(theta))

    low, high = correction_dim(rope.beta_fast), correction_dim(rope.beta_slow)
    if rope.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # a ramp of width zero
    ramp = torch.clamp((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low), 0, 1)
    keep = 1 - ramp  # 1: extrapolate (high frequencies), 0: interpolate (low ones)

    wavelengths = theta ** _exponents(dim)
    extrapolated = 1.0 / wavelengths
    interpolated = 1.0 / (rope.factor * wavelengths)
    return interpolated * (1 - keep) + extrapolated * keep


def _longrope_inv_freq(rope: RopeConfig) -> torch.Tensor:
    long = rope.serving_window > rope.original_max_position_embeddings
    divisors = torch.tensor(rope.long_factor if long else rope.short_factor, dtype=torch.float32)
    return 1.0 / (divisors * rope.theta ** _exponents(rope.rotary_dim))


def _llama3_inv_freq(rope: RopeConfig, inv_freq: torch.Tensor) -> torch.Tensor:
    old_len = rope.original_max_position_embeddings
    low_wavelen = old_len / rope.low_freq_factor
    high_wavelen = old_len / rope.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_wavelen, inv_freq / rope.factor, inv_freq)
    smooth = (old_len / wavelen - rope.low_freq_factor) / (
        rope.high_freq_factor - rope.low_freq_factor
    )
    smoothed = (1 - smooth) * scaled / rope.factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return torch.where(medium, smoothed, scaled)


def rope_inv_freq(rope: RopeConfig) -> torch.Tensor:
    """The rotary frequencies, [rotary_dim / 2] float32 on the CPU: position p of pair i turns
    by p * inv_freq[i]. Fixed per member (see the module NOTE for dynamic and longrope)."""
    if rope.scaling == "dynamic":
        return _dynamic_inv_freq(rope)
    if rope.scaling == "yarn":
        return _yarn_inv_freq(rope)
    if rope.scaling == "longrope":
        return _longrope_inv_freq(rope)
    inv_freq = 1.0 / (rope.theta ** _exponents(rope.rotary_dim))
    if rope.scaling == "linear":
        return inv_freq / rope.factor
    if rope.scaling == "llama3":
        return _llama3_inv_freq(rope, inv_freq)
    return inv_freq


def _yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def rope_attention_factor(rope: RopeConfig) -> float:
    """What cos and sin are multiplied by (transformers' `attention_scaling`): yarn's mscale
    or attention_factor, longrope's attention_factor (for short and long factors alike), 1.0
    for the other types."""
    if rope.scaling == "yarn":
        if rope.attention_factor is not None:
            return float(rope.attention_factor)
        if rope.mscale and rope.mscale_all_dim:
            return float(
                _yarn_mscale(rope.factor, rope.mscale)
                / _yarn_mscale(rope.factor, rope.mscale_all_dim)
            )
        return _yarn_mscale(rope.factor)
    if rope.scaling == "longrope":
        if rope.attention_factor is not None:
            return float(rope.attention_factor)
        if rope.factor <= 1.0:
            return 1.0
        return math.sqrt(
            1 + math.log(rope.factor) / math.log(rope.original_max_position_embeddings)
        )
    return 1.0
