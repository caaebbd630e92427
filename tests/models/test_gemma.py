"""Gemma 2 and Gemma 3 (text) at parity with transformers: local layers with windows shorter
than the sequence (pages released as it runs when every layer is local), attention and final
soft-caps on and off, head_dim unrelated to hidden / heads, GQA 1, 2 and 4, tied and untied
lm_heads, query_pre_attn_scalar apart from head_dim, Gemma 3's q/k norms, its local rotary
base and linear scaling on the global layers; float32 through the paged path
(tests/family_parity.py). Then the config reading, the 1 + w norms, the embedding factor,
half precision, int8 members and configs as the Hub holds them."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from checkpoints import VOCAB
from family_parity import check_parity, hf_logprobs, make_family_checkpoint
from scoring import score

from blendrt import load_model
from blendrt.models.hf_config import parse_hf_config

SMALL = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
             max_position_embeddings=256)  # fmt: skip
G2 = ("Gemma2Config", "Gemma2ForCausalLM")
G3 = ("Gemma3TextConfig", "Gemma3ForCausalLM")
LINEAR = {"rope_type": "linear", "factor": 2.0}
# NOTE: the harness's pool takes 5 tokens a page, and pages are multiples of 256 bytes:
# layers x kv heads x head_dim is a multiple of 32 in every case.
#: {case: (config class, model class, config)}
CASES = {
    "gemma2-gqa2-caps": (*G2, SMALL | dict(
        num_key_value_heads=2, head_dim=24, sliding_window=16, query_pre_attn_scalar=20)),
    "gemma2-mha-untied-tight-caps": (*G2, SMALL | dict(
        num_hidden_layers=3, num_key_value_heads=4, head_dim=40, sliding_window=24,
        attn_logit_softcapping=5.0, final_logit_softcapping=8.0, tie_word_embeddings=False)),
    "gemma2-gqa4-no-caps": (*G2, SMALL | dict(
        hidden_size=48, num_attention_heads=8, num_key_value_heads=2, head_dim=24,
        sliding_window=20, attn_logit_softcapping=None, final_logit_softcapping=None)),
    "gemma3-every2-linear": (*G3, SMALL | dict(
        num_hidden_layers=4, num_key_value_heads=1, head_dim=40, sliding_window=16,
        sliding_window_pattern=2, rope_scaling=LINEAR, query_pre_attn_scalar=32)),
    "gemma3-every3-caps-untied": (*G3, SMALL | dict(
        num_hidden_layers=4, num_key_value_heads=2, head_dim=24, sliding_window=20,
        sliding_window_pattern=3, rope_scaling=LINEAR | {"factor": 4.0},
        attn_logit_softcapping=20.0, final_logit_softcapping=15.0, tie_word_embeddings=False)),
    "gemma2-all-local-gqa4": (*G2, SMALL | dict(
        num_key_value_heads=1, head_dim=32, sliding_window=16,
        layer_types=["sliding_attention"] * 2)),
    "gemma3-all-local": (*G3, SMALL | dict(
        num_hidden_layers=3, num_key_value_heads=2, head_dim=16, sliding_window=21,
        layer_types=["sliding_attention"] * 3, rope_scaling=LINEAR)),
    "gemma3-window-covers-context": (*G3, SMALL | dict(
        hidden_size=48, max_position_embeddings=96, num_key_value_heads=4, head_dim=16,
        sliding_window=128, sliding_window_pattern=2)),
}  # fmt: skip
#: {case: (layer windows, release window, attn soft-cap, final soft-cap, local rope)}
EXPECTED = {
    "gemma2-gqa2-caps": ((16, 0), 0, 50.0, 30.0, False),
    "gemma2-mha-untied-tight-caps": ((24, 0, 24), 0, 5.0, 8.0, False),
    "gemma2-gqa4-no-caps": ((20, 0), 0, 0.0, 0.0, False),
    # every layer local: pages wholly before the window are released as the sequence runs
    "gemma2-all-local-gqa4": ((16, 16), 16, 50.0, 30.0, False),
    "gemma3-all-local": ((21, 21, 21), 21, 0.0, 0.0, True),
    "gemma3-every2-linear": ((16, 0, 16, 0), 0, 0.0, 0.0, True),
    # transformers' Gemma 3 ignores attn_logit_softcapping (its attention never reads it)
    "gemma3-every3-caps-untied": ((20, 20, 0, 20), 0, 0.0, 15.0, True),
    # the window is no window, but it marks the layers that take the local rope
    "gemma3-window-covers-context": ((96, 0), 0, 0.0, 0.0, True),
}
#: {case: max |delta logprob|}, printed at the end of the module
WORST: dict[str, float] = {}


def make_gemma_checkpoint(folder: Path, config_class: str, model_class: str, **config):
    """The harness's random model, its norm weights redrawn as 0.2 randn: a Gemma norm
    scales by 1 + w, so the harness's 1 + 0.2 randn would double every norm and leave the
    float32 reference itself off float64 by more than 1e-4."""
    model = make_family_checkpoint(folder, config_class, model_class, **config)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.copy_(0.2 * torch.randn_like(param))
    model.save_pretrained(folder, safe_serialization=True)
    return model


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request, tmp_path_factory) -> tuple[str, Path, object]:
    config_class, model_class, config = CASES[request.param]
    folder = tmp_path_factory.mktemp(request.param)
    return request.param, folder, make_gemma_checkpoint(folder, config_class, model_class, **config)


@pytest.fixture(scope="module", autouse=True)
def report_worst():
    yield
    for name, worst in sorted(WORST.items()):
        print(f"{name}: max |delta logprob| = {worst:.2e}")


def test_parity_with_transformers(case) -> None:
    name, folder, hf_model = case
    worst = check_parity(folder, hf_model, num_tokens=70, greedy=12)
    WORST[name] = worst
    print(f"{name}: max |delta logprob| = {worst:.2e}")


def test_config_is_read_as_transformers_builds_it(case) -> None:
    name, folder, hf_model = case
    config = load_model(folder).config
    windows, release, attn_cap, final_cap, local = EXPECTED[name]
    assert (config.layer_windows, config.release_window) == (windows, release)
    assert (config.attn_logit_softcap, config.final_logit_softcap) == (attn_cap, final_cap)
    assert (config.local_rope is not None) == local == config.qk_norm
    hf = hf_model.config
    assert config.softmax_scale == hf.query_pre_attn_scalar**-0.5
    assert config.tie_word_embeddings == hf.tie_word_embeddings
    sliding = [w > 0 for w in config.layer_windows]
    assert sliding == [t == "sliding_attention" for t in hf.layer_types]


def test_norms_scale_by_one_plus_w(case) -> None:
    """The + 1 is added at load; a norm's float32 output matches transformers' to 1e-6,
    and stays within bfloat16 rounding in bfloat16."""
    _, folder, hf_model = case
    ours = load_model(folder).model
    hf_layer, layer = hf_model.model.layers[0], ours.layers[0]
    assert torch.equal(layer.input_layernorm.weight, 1.0 + hf_layer.input_layernorm.weight)
    x = torch.randn(5, hf_model.config.hidden_size) * 3
    pairs = [(layer.pre_feedforward_layernorm, hf_layer.pre_feedforward_layernorm, x)]
    if ours.config.qk_norm:  # Gemma 3's q/k norms: 1 + w too
        head = torch.randn(5, ours.config.head_dim) * 3
        pairs.append((layer.self_attn.k_norm, hf_layer.self_attn.k_norm, head))
    for norm, hf_norm, inp in pairs:
        with torch.no_grad():
            assert (norm(inp)[0] - hf_norm(inp[None])[0]).abs().max() < 1e-6
    half = load_model(folder, dtype=torch.bfloat16).model.layers[0].pre_feedforward_layernorm
    hf_half = copy.deepcopy(hf_layer.pre_feedforward_layernorm).to(torch.bfloat16)
    with torch.no_grad():
        got, want = half(x.bfloat16())[0].float(), hf_half(x.bfloat16()[None])[0].float()
    assert ((got - want).abs() <= want.abs() * 2**-6 + 1e-3).all()


def test_embedding_factor_is_rounded_to_the_dtype(case) -> None:
    name, folder, hf_model = case
    ids = torch.arange(3, 40)
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        ours = load_model(folder, dtype=dtype).model
        hf_embed = copy.deepcopy(hf_model.model.embed_tokens).to(dtype)
        with torch.no_grad():
            assert torch.equal(ours.embed(ids), hf_embed(ids)), (name, dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_tracks_transformers(case, dtype: torch.dtype) -> None:
    """In half precision blendrt strays from the float32 log-probs about as far as
    transformers does in the same dtype."""
    name, folder, hf_model = case
    ids = np.random.default_rng(1).integers(3, VOCAB, 30)
    ref = hf_logprobs(hf_model, ids)
    hf_half = hf_logprobs(copy.deepcopy(hf_model).to(dtype), ids)
    ours = score(load_model(folder, dtype=dtype), ids.tolist())
    assert torch.isfinite(ours).all()
    ours_err, hf_err = (ours - ref).abs().mean().item(), (hf_half - ref).abs().mean().item()
    print(f"{name} {dtype}: mean |delta logprob| blendrt {ours_err:.3f}, transformers {hf_err:.3f}")
    assert ours_err <= 2 * hf_err + 0.02
    agree = (ours.argmax(-1) == ref.argmax(-1)).float().mean().item()
    assert agree >= 0.75, f"{name} {dtype}: argmax agreement {agree:.2f}"


def test_int8_member_runs(case) -> None:
    _, folder, hf_model = case
    ids = np.random.default_rng(2).integers(3, VOCAB, 30)
    ours = score(load_model(folder, quantization="int8"), ids.tolist())
    ref = hf_logprobs(hf_model, ids)
    assert (ours.argmax(-1) == ref.argmax(-1)).float().mean().item() >= 0.75


# ---- configs as the Hub holds them -------------------------------------------------------


def test_transformers4_layout_reads_the_same(case) -> None:
    """Gemma 3 configs saved by transformers 4 (rope_theta, rope_local_base_freq,
    rope_scaling for the global layers, sliding_window_pattern, no layer_types) and Gemma 2
    ones (rope_theta, no layer_types) give the same ModelConfig."""
    name, folder, _ = case
    if "layer_types" in CASES[name][2]:
        pytest.skip("transformers 4 configs had no layer_types: every pattern was the default")
    hf = json.loads((folder / "config.json").read_text())
    old = {k: v for k, v in hf.items() if k not in ("layer_types", "rope_parameters")}
    params = hf["rope_parameters"]
    if "full_attention" in params:
        full = dict(params["full_attention"])
        old["rope_theta"] = full.pop("rope_theta")
        old["rope_local_base_freq"] = params["sliding_attention"]["rope_theta"]
        old["rope_scaling"] = full if full.get("rope_type") != "default" else None
    else:
        old["rope_theta"] = params["rope_theta"]
    assert parse_hf_config(old) == parse_hf_config(hf)


@pytest.mark.parametrize("names", [G2, G3])
def test_absent_keys_take_transformers_defaults(names) -> None:
    """A config.json without head_dim, windows, soft-caps or query_pre_attn_scalar reads as
    transformers fills them in."""
    config_class, arch = names
    sizes = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=6,
                 num_attention_heads=8)  # fmt: skip
    ours = parse_hf_config(sizes | {"architectures": [arch]})
    hf = getattr(transformers, config_class)(**sizes)
    assert (ours.head_dim, ours.num_kv_heads) == (hf.head_dim, hf.num_key_value_heads)
    assert ours.max_position_embeddings == hf.max_position_embeddings
    assert ours.softmax_scale == hf.query_pre_attn_scalar**-0.5
    assert ours.attn_logit_softcap == (hf.attn_logit_softcapping or 0.0)
    assert ours.final_logit_softcap == (hf.final_logit_softcapping or 0.0)
    expected = [hf.sliding_window if t == "sliding_attention" else 0 for t in hf.layer_types]
    assert list(ours.layer_windows) == expected


def test_bidirectional_gemma_is_refused() -> None:
    hf = dict(architectures=["Gemma3ForCausalLM"], vocab_size=VOCAB, hidden_size=64,
              intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
              use_bidirectional_attention=True)  # fmt: skip
    with pytest.raises(ValueError, match="use_bidirectional_attention"):
        parse_hf_config(hf)
