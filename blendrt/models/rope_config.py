"""RopeConfig: one member's rotary embedding settings, and the bounds every field is checked
against (what each scaling type computes, and why dynamic and longrope are fixed per member:
blendrt/models/rope.py)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

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
