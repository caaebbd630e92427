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
The settings are a `RopeConfig` (rope_config.py), read from config.json by `rope_from_hf`
(rope_hf.py).

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

import torch

from blendrt.models.rope_config import RopeConfig

__all__ = ["RopeConfig", "rope_attention_factor", "rope_inv_freq"]


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
