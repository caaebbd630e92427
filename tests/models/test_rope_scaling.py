"""RoPE scaling (default, linear, llama3, dynamic, yarn, longrope / su) against transformers:
frequencies and attention factors against its own ROPE_INIT_FUNCTIONS built from a real
config object, cos/sin tables against its rotary modules, the serving-window policy of
dynamic and longrope (see blendrt/models/rope.py), and refusals of bad config.json values."""

from __future__ import annotations

import copy
import itertools
import math
import random
from typing import Any

import pytest
import torch
from transformers import LlamaConfig, Phi3Config
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding
from transformers.models.phi3.modeling_phi3 import Phi3RotaryEmbedding

from blendrt.models.rope import RopeConfig, rope_attention_factor, rope_inv_freq
from blendrt.models.rope_hf import rope_from_hf

HEADS = 4


def hf_config(kind: str, head_dim: int, rope: dict[str, Any], prf: float = 1.0, **top: Any):
    """A transformers config as loaded from a config.json holding `rope` as rope_parameters
    (plus `top` at the top level): Phi3Config for default / longrope (its default rope honours
    partial_rotary_factor), LlamaConfig for the rest."""
    rope = copy.deepcopy(rope)
    extra = {} if prf == 1.0 else {"partial_rotary_factor": prf}
    if kind in ("default", "longrope", "su"):
        return Phi3Config(
            hidden_size=head_dim * HEADS,
            num_attention_heads=HEADS,
            rope_parameters=rope,
            **extra,
            **top,
        )
    return LlamaConfig(
        hidden_size=head_dim * HEADS,
        num_attention_heads=HEADS,
        head_dim=head_dim,
        rope_parameters=rope,
        **extra,
        **top,
    )


def reference(config, seq_len: int | None = None) -> tuple[torch.Tensor, float]:
    kind = config.rope_parameters["rope_type"]
    if kind == "default":
        return Phi3RotaryEmbedding.compute_default_rope_parameters(config)
    return ROPE_INIT_FUNCTIONS[kind](config, None, seq_len=seq_len)


def blendrt_rope(
    kind: str,
    head_dim: int,
    rope: dict[str, Any],
    prf: float = 1.0,
    *,
    window: int | None = None,
    **top: Any,
) -> RopeConfig:
    declared = top.get("max_position_embeddings", 4096 if kind in ("default", "longrope") else 2048)
    return rope_from_hf(
        copy.deepcopy(rope),
        theta_default=10000.0,
        head_dim=head_dim,
        rotary_dim=int(head_dim * prf),
        max_position_embeddings=declared,
        serving_window=window if window is not None else declared,
        top_level={**top, "partial_rotary_factor": prf},
    )


def assert_inv_freq(mine: torch.Tensor, ref: torch.Tensor) -> None:
    assert mine.dtype == torch.float32 and mine.shape == ref.shape
    torch.testing.assert_close(mine, ref.float(), rtol=1e-6, atol=0)


def longrope_factors(n: int, seed: int) -> tuple[list[float], list[float]]:
    rng = random.Random(seed)
    short = [round(1.0 + 0.1 * rng.random(), 6) for _ in range(n)]
    long = sorted(round(1.0 + 60 * rng.random() ** 2, 6) for _ in range(n))
    return short, long


def cases() -> list[tuple[str, int, float, dict[str, Any], dict[str, Any]]]:
    """(type, head_dim, partial_rotary_factor, rope object, top-level keys)"""
    out = []
    for head_dim, prf, theta in itertools.product((64, 80, 128), (1.0, 0.5), (10000.0, 500000.0)):
        dim = int(head_dim * prf)
        base = {"rope_theta": theta}
        out.append(("default", head_dim, prf, {**base, "rope_type": "default"}, {}))
        for factor in (2.0, 8.0):
            out.append(
                ("linear", head_dim, prf, {**base, "rope_type": "linear", "factor": factor}, {})
            )
            out.append(
                (
                    "llama3",
                    head_dim,
                    prf,
                    {
                        **base,
                        "rope_type": "llama3",
                        "factor": factor,
                        "low_freq_factor": 1.0,
                        "high_freq_factor": 4.0,
                        "original_max_position_embeddings": 1024 if factor == 2.0 else 8192,
                    },
                    {"max_position_embeddings": 16384},
                )
            )
            out.append(
                ("dynamic", head_dim, prf, {**base, "rope_type": "dynamic", "factor": factor}, {})
            )
            yarn = {
                **base,
                "rope_type": "yarn",
                "factor": factor,
                "original_max_position_embeddings": 1024,
            }
            out.append(("yarn", head_dim, prf, yarn, {"max_position_embeddings": 8192}))
        short, long = longrope_factors(dim // 2, seed=head_dim + dim)
        longrope = {
            **base,
            "rope_type": "longrope",
            "short_factor": short,
            "long_factor": long,
        }
        # Phi-3 keeps the original length at the top level (Phi3Config defaults it to 4096)
        top = {"max_position_embeddings": 32768, "original_max_position_embeddings": 1024}
        out.append(("longrope", head_dim, prf, longrope, top))
        out.append(("longrope", head_dim, prf, {**longrope, "factor": 4.0}, top))
        out.append(("longrope", head_dim, prf, longrope, {**top, "max_position_embeddings": 1024}))
    # yarn variants: beta window, truncate off, mscale / mscale_all_dim, explicit attention factor
    for head_dim in (64, 80, 128):
        y = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 4096}
        top = {"max_position_embeddings": 16384}
        out.append(("yarn", head_dim, 1.0, {**y, "beta_fast": 16, "beta_slow": 2}, top))
        out.append(("yarn", head_dim, 1.0, {**y, "truncate": False}, top))
        out.append(("yarn", head_dim, 1.0, {**y, "mscale": 0.707, "mscale_all_dim": 1.0}, top))
        out.append(("yarn", head_dim, 1.0, {**y, "mscale": 1.0}, top))  # mscale alone: ignored
        out.append(("yarn", head_dim, 1.0, {**y, "attention_factor": 1.25}, top))
        out.append(("yarn", head_dim, 0.5, {**y, "factor": None}, top))  # factor = 16384 / 4096
        out.append(("yarn", head_dim, 1.0, {**y, "factor": 40.0, "rope_theta": 1e6}, top))
    return out


CASES = cases()


@pytest.mark.parametrize(
    ("kind", "head_dim", "prf", "rope", "top"),
    CASES,
    ids=[f"{c[0]}-d{c[1]}-p{c[2]}-{i}" for i, c in enumerate(CASES)],
)
def test_frequencies_and_attention_factor_match_transformers(
    kind, head_dim, prf, rope, top
) -> None:
    config = hf_config(kind, head_dim, rope, prf, **top)
    mine = blendrt_rope(kind, head_dim, rope, prf, **top)  # serving the declared length
    ref_inv_freq, ref_attention = reference(config, mine.serving_window)
    assert mine.scaling == kind and mine.rotary_dim == int(head_dim * prf)
    assert_inv_freq(rope_inv_freq(mine), ref_inv_freq)
    assert rope_attention_factor(mine) == pytest.approx(ref_attention, rel=1e-12)


def test_nontrivial_attention_factors_are_exercised() -> None:
    factors = {
        rope_attention_factor(blendrt_rope(kind, d, rope, prf, **top))
        for kind, d, prf, rope, top in CASES
        if kind in ("yarn", "longrope")
    }
    assert len({f for f in factors if f > 1.0}) >= 5 and 1.0 in factors


# -- the serving-window policy -----------------------------------------------------------------


@pytest.mark.parametrize("head_dim", [64, 80, 128])
@pytest.mark.parametrize("factor", [2.0, 3.3])
def test_dynamic_within_declared_length_equals_transformers_for_every_sequence(
    head_dim, factor
) -> None:
    rope = {"rope_type": "dynamic", "factor": factor, "rope_theta": 10000.0}
    config = hf_config("dynamic", head_dim, rope, max_position_embeddings=2000)
    for window in (500, 2000):  # at most max_position_embeddings: no rescaling
        mine = rope_inv_freq(
            blendrt_rope("dynamic", head_dim, rope, window=window, max_position_embeddings=2000)
        )
        for seq_len in (None, 1, window // 2, window):
            assert torch.equal(mine, reference(config, seq_len)[0])


@pytest.mark.parametrize("head_dim", [64, 80, 128])
@pytest.mark.parametrize(("factor", "window"), [(2.0, 2001), (2.0, 6000), (3.3, 9000)])
def test_dynamic_beyond_declared_length_is_fixed_at_the_window(head_dim, factor, window) -> None:
    rope = {"rope_type": "dynamic", "factor": factor, "rope_theta": 10000.0}
    config = hf_config("dynamic", head_dim, rope, max_position_embeddings=2000)
    blend = blendrt_rope("dynamic", head_dim, rope, window=window, max_position_embeddings=2000)
    mine = rope_inv_freq(blend)
    assert rope_attention_factor(blend) == 1.0
    assert_inv_freq(mine, reference(config, window)[0])
    # bit for bit what transformers' rotary module runs for a sequence of `window` tokens
    module = LlamaRotaryEmbedding(config)
    module(torch.zeros(1), torch.arange(window)[None])
    assert torch.equal(mine, module.inv_freq)
    # shorter sequences keep the window's base (transformers would go back to the original)
    assert not torch.equal(mine, reference(config, 2000)[0])


@pytest.mark.parametrize("head_dim", [64, 80, 128])
@pytest.mark.parametrize("prf", [1.0, 0.5])
def test_longrope_uses_the_long_factors_iff_the_window_exceeds_the_original_length(
    head_dim, prf
) -> None:
    short, long = longrope_factors(int(head_dim * prf) // 2, seed=head_dim)
    rope = {"rope_type": "longrope", "short_factor": short, "long_factor": long}
    top = {"max_position_embeddings": 65536, "original_max_position_embeddings": 4096}
    config = hf_config("longrope", head_dim, rope, prf, **top)
    for window in (1000, 4096):  # within the original length: equal for every sequence
        mine = rope_inv_freq(blendrt_rope("longrope", head_dim, rope, prf, window=window, **top))
        for seq_len in (None, 1, window // 2, window):
            assert torch.equal(mine, reference(config, seq_len)[0])
    for window in (4097, 65536, 10000):  # beyond: equal for every sequence past the original length
        blend = blendrt_rope("longrope", head_dim, rope, prf, window=window, **top)
        mine = rope_inv_freq(blend)
        for seq_len in (4097, window):
            assert torch.equal(mine, reference(config, seq_len)[0])
        assert not torch.equal(mine, reference(config, 4096)[0])  # short sequences: long too
        expected = math.sqrt(1 + math.log(65536 / 4096) / math.log(4096))
        assert rope_attention_factor(blend) == pytest.approx(expected, rel=1e-12)
        assert rope_attention_factor(blend) == reference(config, window)[1]


# -- cos/sin tables against transformers' rotary modules ---------------------------------------


def blendrt_tables(rope: RopeConfig, num_positions: int) -> tuple[torch.Tensor, torch.Tensor]:
    """As blendrt.models.layers.RotaryEmbedding builds them (halves layout), times the
    attention factor."""
    positions = torch.arange(num_positions).float()
    freqs = torch.outer(positions, rope_inv_freq(rope))
    freqs = torch.cat([freqs, freqs], dim=-1)
    scale = rope_attention_factor(rope)
    return freqs.cos() * scale, freqs.sin() * scale


TABLE_CASES = [
    # (type, head_dim, prf, rope object, top-level keys, serving window, sequence lengths)
    (
        "default",
        128,
        1.0,
        {"rope_theta": 500000.0},
        {"max_position_embeddings": 4096},
        4096,
        [4096],
    ),
    ("default", 80, 0.5, {"rope_theta": 10000.0}, {"max_position_embeddings": 4096}, 4096, [4096]),
    (
        "linear",
        64,
        1.0,
        {"rope_type": "linear", "factor": 4.0},
        {"max_position_embeddings": 8192},
        8192,
        [8192],
    ),
    (
        "llama3",
        128,
        1.0,
        {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
            "rope_theta": 500000.0,
        },
        {"max_position_embeddings": 131072},
        12000,
        [12000],
    ),
    (
        "dynamic",
        80,
        1.0,
        {"rope_type": "dynamic", "factor": 2.0},
        {"max_position_embeddings": 2048},
        2048,
        [100, 2048],
    ),
    (
        "dynamic",
        128,
        0.5,
        {"rope_type": "dynamic", "factor": 4.0},
        {"max_position_embeddings": 2048},
        7000,
        [7000],
    ),
    (
        "dynamic",
        64,
        1.0,
        {"rope_type": "dynamic", "factor": 3.3},
        {"max_position_embeddings": 1000},
        5000,
        [5000],
    ),
    (
        "yarn",
        128,
        1.0,
        {
            "rope_type": "yarn",
            "factor": 4.0,
            "original_max_position_embeddings": 2048,
            "rope_theta": 1e6,
        },
        {"max_position_embeddings": 8192},
        8192,
        [8192],
    ),
    (
        "yarn",
        64,
        0.5,
        {
            "rope_type": "yarn",
            "factor": 8.0,
            "original_max_position_embeddings": 1024,
            "mscale": 0.707,
            "mscale_all_dim": 1.0,
        },
        {"max_position_embeddings": 8192},
        8192,
        [8192],
    ),
    (
        "longrope",
        96,
        1.0,
        "factors",
        {"max_position_embeddings": 32768, "original_max_position_embeddings": 4096},
        4096,
        [10, 4096],
    ),
    (
        "longrope",
        96,
        1.0,
        "factors",
        {"max_position_embeddings": 32768, "original_max_position_embeddings": 4096},
        9000,
        [4097, 9000],
    ),
    (
        "longrope",
        80,
        0.5,
        "factors",
        {"max_position_embeddings": 32768, "original_max_position_embeddings": 2048},
        6000,
        [6000],
    ),
]


@pytest.mark.parametrize(
    ("kind", "head_dim", "prf", "rope", "top", "window", "lengths"),
    TABLE_CASES,
    ids=[f"{c[0]}-d{c[1]}-p{c[2]}-w{c[5]}" for c in TABLE_CASES],
)
def test_cos_sin_tables_match_transformers_rotary_module(
    kind, head_dim, prf, rope, top, window, lengths
) -> None:
    if rope == "factors":
        short, long = longrope_factors(int(head_dim * prf) // 2, seed=7)
        rope = {"rope_type": "longrope", "short_factor": short, "long_factor": long}
    config = hf_config(kind, head_dim, rope, prf, **top)
    module_class = Phi3RotaryEmbedding if kind in ("default", "longrope") else LlamaRotaryEmbedding
    cos, sin = blendrt_tables(blendrt_rope(kind, head_dim, rope, prf, window=window, **top), window)
    for length in lengths:  # each a fresh module: transformers' state follows the lengths it saw
        ref_cos, ref_sin = module_class(config)(torch.zeros(1), torch.arange(length)[None])
        assert ref_cos.shape == (1, length, int(head_dim * prf))
        torch.testing.assert_close(cos[:length], ref_cos[0], rtol=0, atol=1e-6)
        torch.testing.assert_close(sin[:length], ref_sin[0], rtol=0, atol=1e-6)


# -- config.json as real models write it -------------------------------------------------------


def phi3_mini_128k(kind: str) -> dict[str, Any]:  # rope_scaling + top-level original length
    short, long = longrope_factors(48, seed=3)
    return {
        "hidden_size": 3072,
        "num_attention_heads": 32,
        "max_position_embeddings": 131072,
        "original_max_position_embeddings": 4096,
        "rope_theta": 10000.0,
        "rope_scaling": {"type": kind, "short_factor": short, "long_factor": long},
    }


REAL_CONFIGS = {
    "phi3-su": (Phi3Config, phi3_mini_128k("su")),
    "phi3-longrope": (Phi3Config, phi3_mini_128k("longrope")),
    "phi3.5-tf5": (  # transformers 5 writes rope_parameters, original length kept at the top
        Phi3Config,
        {
            **{
                k: v
                for k, v in phi3_mini_128k("longrope").items()
                if k not in ("rope_scaling", "rope_theta")
            },
            "rope_parameters": {
                "rope_type": "longrope",
                "rope_theta": 10000.0,
                "partial_rotary_factor": 1.0,
                **{
                    k: v
                    for k, v in phi3_mini_128k("longrope")["rope_scaling"].items()
                    if k != "type"
                },
            },
        },
    ),
    "qwen2.5-yarn": (  # the Qwen2.5 README's long-context snippet: original length inside
        LlamaConfig,
        {
            "hidden_size": 3584,
            "num_attention_heads": 28,
            "max_position_embeddings": 32768,
            "rope_theta": 1000000.0,
            "rope_scaling": {
                "factor": 4.0,
                "original_max_position_embeddings": 32768,
                "type": "yarn",
            },
        },
    ),
    "deepseek-style-yarn": (
        LlamaConfig,
        {
            "hidden_size": 2048,
            "num_attention_heads": 16,
            "max_position_embeddings": 163840,
            "rope_theta": 10000.0,
            "rope_scaling": {
                "type": "yarn",
                "factor": 40,
                "original_max_position_embeddings": 4096,
                "beta_fast": 32,
                "beta_slow": 1,
                "mscale": 0.707,
                "mscale_all_dim": 1.0,
            },
        },
    ),
    "llama-3.1": (
        LlamaConfig,
        {
            "hidden_size": 4096,
            "num_attention_heads": 32,
            "max_position_embeddings": 131072,
            "rope_theta": 500000.0,
            "rope_scaling": {
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192,
                "rope_type": "llama3",
            },
        },
    ),
    "llama-2-dynamic-tf4": (
        LlamaConfig,
        {
            "hidden_size": 4096,
            "num_attention_heads": 32,
            "max_position_embeddings": 4096,
            "rope_theta": 10000.0,
            "rope_scaling": {"type": "dynamic", "factor": 2.0},
        },
    ),
}


@pytest.mark.parametrize("name", list(REAL_CONFIGS))
def test_config_json_as_models_write_it(name) -> None:
    config_class, config_json = REAL_CONFIGS[name]
    hf_json = copy.deepcopy(config_json)
    if hf_json.get("rope_scaling", {}).get("type") == "su":
        # transformers 5.24 renames su to longrope only after it has placed the top-level
        # original length, and then refuses the config; the same config saying longrope loads
        hf_json["rope_scaling"]["type"] = "longrope"
    config = config_class(**hf_json)
    head_dim = config_json["hidden_size"] // config_json["num_attention_heads"]
    declared = config_json["max_position_embeddings"]
    rope = rope_from_hf(
        copy.deepcopy(config_json.get("rope_parameters") or config_json.get("rope_scaling")),
        theta_default=10000.0,
        head_dim=head_dim,
        rotary_dim=head_dim,
        max_position_embeddings=declared,
        serving_window=declared,
        top_level=copy.deepcopy(config_json),
    )
    assert rope.scaling == config.rope_parameters["rope_type"]
    ref_inv_freq, ref_attention = ROPE_INIT_FUNCTIONS[rope.scaling](config, None, seq_len=declared)
    assert_inv_freq(rope_inv_freq(rope), ref_inv_freq)
    assert rope_attention_factor(rope) == pytest.approx(ref_attention, rel=1e-12)


def test_su_is_longrope_and_rope_type_wins_over_type() -> None:
    short, long = longrope_factors(32, seed=1)
    kwargs = dict(
        theta_default=10000.0,
        head_dim=64,
        rotary_dim=64,
        max_position_embeddings=8192,
        serving_window=8192,
        top_level={"original_max_position_embeddings": 2048},
    )
    su = rope_from_hf({"type": "su", "short_factor": short, "long_factor": long}, **kwargs)
    lr = rope_from_hf(
        {"rope_type": "longrope", "short_factor": short, "long_factor": long}, **kwargs
    )
    assert su == lr and su.scaling == "longrope"
    both = rope_from_hf({"type": "linear", "rope_type": "dynamic", "factor": 2.0}, **kwargs)
    assert both.scaling == "dynamic"
    assert rope_from_hf(None, **kwargs) == rope_from_hf({}, **kwargs)
    assert rope_from_hf({}, **kwargs).scaling == "default"


def test_top_level_original_length_wins_as_in_transformers() -> None:
    rope = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 2048}
    top = {"max_position_embeddings": 8192, "original_max_position_embeddings": 1024}
    mine = blendrt_rope("yarn", 64, rope, **top)
    assert mine.original_max_position_embeddings == 1024
    assert_inv_freq(rope_inv_freq(mine), reference(hf_config("yarn", 64, rope, **top))[0])
    theta = rope_from_hf(
        {"rope_type": "linear", "factor": 2.0},
        theta_default=10000.0,
        head_dim=64,
        rotary_dim=64,
        max_position_embeddings=2048,
        serving_window=2048,
        top_level={"rope_theta": 123456.0},
    ).theta
    assert theta == 123456.0  # transformers 4.x keeps rope_theta at the top level


# -- refusals ---------------------------------------------------------------------------------


def parse(params: Any, **overrides: Any) -> RopeConfig:
    kwargs: dict[str, Any] = dict(
        theta_default=10000.0,
        head_dim=64,
        rotary_dim=64,
        max_position_embeddings=8192,
        serving_window=8192,
        top_level={},
    )
    kwargs.update(overrides)
    return rope_from_hf(params, **kwargs)


LR = {
    "rope_type": "longrope",
    "short_factor": [1.0] * 32,
    "long_factor": [2.0] * 32,
    "original_max_position_embeddings": 2048,
}
YARN = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 2048}
L3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0}
BAD = [
    ({"rope_type": "mrope"}, r"rope_type 'mrope' is not supported: .*dynamic, yarn, longrope"),
    ({"rope_type": "proportional"}, r"rope_type 'proportional' is not supported"),
    ({"type": 7}, r"rope_type 7 is not supported"),
    ("fast", "rope_parameters must be an object"),
    ({"rope_type": "linear"}, r"rope_parameters\.factor is required for linear"),
    ({"rope_type": "dynamic"}, r"rope_parameters\.factor is required for dynamic"),
    ({"rope_type": "linear", "factor": "2"}, r"rope_parameters\.factor must be a finite number"),
    ({"rope_type": "linear", "factor": True}, r"rope_parameters\.factor must be a finite number"),
    ({"rope_type": "linear", "factor": -2.0}, r"rope factor must be a finite number in \(0"),
    (
        {"rope_type": "linear", "factor": float("inf")},
        r"rope_parameters\.factor must be a finite number",
    ),
    (
        {"rope_type": "dynamic", "factor": float("nan")},
        r"rope_parameters\.factor must be a finite number",
    ),
    (
        {"rope_type": "dynamic", "factor": 1e300},
        r"rope factor must be a finite number in \(0, 1e\+06\]",
    ),
    ({"rope_theta": -1.0}, "rope_theta must be a positive number"),
    ({"rope_theta": 1.0}, "rope_theta must be a positive number greater than 1"),
    ({"rope_theta": 1e300}, "rope_theta must be a positive number"),
    ({**L3, "high_freq_factor": 1.0}, "low_freq_factor < high_freq_factor"),
    (
        {k: v for k, v in L3.items() if k != "low_freq_factor"},
        r"low_freq_factor is required for llama3",
    ),
    (
        {**YARN, "original_max_position_embeddings": 0},
        r"original_max_position_embeddings must be an int in \[1",
    ),
    (
        {**YARN, "original_max_position_embeddings": 10**9},
        r"original_max_position_embeddings must be an int",
    ),
    (
        {**YARN, "original_max_position_embeddings": 1.5},
        r"original_max_position_embeddings must be an int",
    ),
    ({**YARN, "beta_fast": "x"}, r"rope_parameters\.beta_fast must be a finite number"),
    ({**YARN, "beta_slow": -1}, r"rope beta_slow must be a finite number in \(0"),
    ({**YARN, "mscale": -0.5, "mscale_all_dim": 1.0}, r"rope mscale must be a finite number"),
    ({**YARN, "attention_factor": 0.0}, r"rope attention_factor must be a finite number in \(0"),
    ({**YARN, "truncate": "yes"}, r"rope_parameters\.truncate must be true or false"),
    (
        {**LR, "short_factor": [1.0] * 31},
        r"short_factor must hold rotary_dim / 2 = 32 numbers, got 31",
    ),
    ({**LR, "long_factor": [1.0] * 10**6}, r"long_factor must hold rotary_dim / 2 = 32 numbers"),
    ({**LR, "long_factor": "2"}, r"long_factor must be a list of numbers"),
    ({**LR, "long_factor": [1.0] * 31 + [None]}, r"long_factor must be a list of finite numbers"),
    (
        {**LR, "short_factor": [1.0] * 31 + [0.0]},
        r"rope short_factor must be a finite number in \(0",
    ),
    ({**LR, "long_factor": [1.0] * 31 + [1e9]}, r"rope long_factor must be a finite number"),
    (
        {**LR, "original_max_position_embeddings": 1},
        "longrope rope scaling needs original_max_position_embeddings >= 2",
    ),
    (
        {"partial_rotary_factor": 0.5},
        r"rope_parameters\.partial_rotary_factor 0\.5 gives 32 rotary dims",
    ),
]


@pytest.mark.parametrize(("params", "message"), BAD, ids=[m[:40] for _, m in BAD])
def test_bad_rope_values_are_refused_by_name(params, message) -> None:
    with pytest.raises(ValueError, match=message):
        parse(copy.deepcopy(params))


def test_bad_arguments_are_refused_by_name() -> None:
    with pytest.raises(ValueError, match="rotary_dim 96 exceeds head_dim 64"):
        parse({}, rotary_dim=96)
    with pytest.raises(ValueError, match=r"config\.partial_rotary_factor 0\.25 gives 16"):
        parse({}, rotary_dim=32, top_level={"partial_rotary_factor": 0.25})
    with pytest.raises(ValueError, match=r"rope serving_window must be an int"):
        parse({}, serving_window=-1)
    with pytest.raises(ValueError, match="rotary_dim must be a positive even number"):
        RopeConfig(rotary_dim=7)
    with pytest.raises(ValueError, match="dynamic rope scaling needs rotary_dim >= 4"):
        RopeConfig(
            rotary_dim=2,
            scaling="dynamic",
            factor=2.0,
            max_position_embeddings=2048,
            serving_window=2048,
        )
    with pytest.raises(ValueError, match="dynamic rope scaling needs max_position_embeddings"):
        RopeConfig(rotary_dim=64, scaling="dynamic", factor=2.0, serving_window=2048)
    with pytest.raises(ValueError, match="longrope rope scaling needs serving_window"):
        RopeConfig(
            rotary_dim=4, scaling="longrope", short_factor=(1.0, 1.0), long_factor=(1.0, 1.0)
        )
    with pytest.raises(ValueError, match=r"rope short_factor must hold 0 numbers .* for linear"):
        RopeConfig(rotary_dim=4, scaling="linear", short_factor=(1.0, 1.0))
    with pytest.raises(ValueError, match=r"unsupported rope scaling 'su'"):
        RopeConfig(rotary_dim=4, scaling="su")  # the alias is read by rope_from_hf only
