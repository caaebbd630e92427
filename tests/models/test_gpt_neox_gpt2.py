"""Parity with transformers for GPT-NeoX (Pythia) and GPT-2, float32, through the paged path
(tests/family_parity.py: at once, in uneven chunks over scattered pages on each CPU backend,
and greedy generation): odd head dims, partial rotary, parallel and sequential residuals, tied
and untied heads, GPT-2's Conv1D layout with and without n_inner; the transformers 4 config
layout; GPT-2's learned-position limit and checkpoints saved without the `transformer.`
prefix; int8 quantization of both (Conv1D weights quantized after their transpose)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from checkpoints import VOCAB
from family_parity import check_parity, hf_logprobs, make_family_checkpoint
from safetensors.torch import load_file, save_file
from scoring import score

from blendrt import load_model
from blendrt.models.gpt2 import GPT2Model
from blendrt.models.hf_config import parse_hf_config
from blendrt.ops.quant_linear import QuantLinear, quantized_linears

NEOX = ("GPTNeoXConfig", "GPTNeoXForCausalLM")
GPT2 = ("GPT2Config", "GPT2LMHeadModel")
#: {case: (config class, model class, config)}
CASES = {
    # head_dim 20, 10 of them rotating; parallel residual, untied embed_out
    "neox-d20-rot0.5": (*NEOX, dict(
        hidden_size=80, num_attention_heads=4, num_hidden_layers=2, intermediate_size=96,
        rotary_pct=0.5)),
    # every dim rotating, sequential residual, another rotary base
    "neox-d20-rot1-sequential": (*NEOX, dict(
        hidden_size=80, num_attention_heads=4, num_hidden_layers=2, intermediate_size=72,
        rotary_pct=1.0, use_parallel_residual=False, rotary_emb_base=500)),
    # 3 heads of 32, Pythia's 0.25 (8 dims), tied head
    "neox-d32-rot0.25-tied": (*NEOX, dict(
        hidden_size=96, num_attention_heads=3, num_hidden_layers=3, intermediate_size=128,
        rotary_pct=0.25, tie_word_embeddings=True)),
    # sequential, tied, no attention biases
    "neox-d32-sequential-tied-nobias": (*NEOX, dict(
        hidden_size=96, num_attention_heads=3, num_hidden_layers=2, intermediate_size=64,
        rotary_pct=0.5, use_parallel_residual=False, tie_word_embeddings=True,
        attention_bias=False)),
    # n_inner unset (4 x 96)
    "gpt2-d32": (*GPT2, dict(n_embd=96, n_head=3, n_layer=2, n_positions=96)),
    # head_dim 20, n_inner set
    "gpt2-d20-inner": (*GPT2, dict(n_embd=80, n_head=4, n_layer=2, n_inner=100,
                                   n_positions=128)),
    # untied lm_head, exact GELU
    "gpt2-d20-untied-gelu": (*GPT2, dict(n_embd=80, n_head=4, n_layer=2, n_inner=64,
                                         n_positions=128, tie_word_embeddings=False,
                                         activation_function="gelu")),
}  # fmt: skip

#: {case: max |delta logprob|}, printed at the end of the module (pytest -s)
WORST: dict[str, float] = {}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Callable[[str], tuple[Path, torch.nn.Module]]:
    """case -> (folder, the transformers model), each written once per module."""
    made: dict[str, tuple[Path, torch.nn.Module]] = {}

    def get(name: str) -> tuple[Path, torch.nn.Module]:
        if name not in made:
            config_class, model_class, config = CASES[name]
            folder = tmp_path_factory.mktemp(name)
            made[name] = folder, make_family_checkpoint(folder, config_class, model_class, **config)
        return made[name]

    return get


@pytest.fixture(scope="module", autouse=True)
def _report():
    yield
    for family in ("neox", "gpt2"):
        found = {k: v for k, v in WORST.items() if k.startswith(family)}
        for name, worst in sorted(found.items()):
            print(f"{name}: max |delta logprob| {worst:.2e}")
        if found:
            print(f"{family}: largest {max(found.values()):.2e}")


@pytest.mark.parametrize("name", sorted(CASES))
def test_parity_with_transformers(checkpoint, name: str) -> None:
    folder, hf_model = checkpoint(name)
    WORST[name] = check_parity(folder, hf_model)


@pytest.mark.parametrize("name", sorted(CASES))
def test_config_reads_the_family(checkpoint, name: str) -> None:
    folder, hf_model = checkpoint(name)
    c = load_model(folder).config
    hf = hf_model.config
    head_dim = hf.hidden_size // hf.num_attention_heads
    assert c.head_dim == head_dim
    if name.startswith("neox"):
        assert c.family == "gpt_neox"
        pct = hf.rope_parameters["partial_rotary_factor"]
        assert c.rope.rotary_dim == int(head_dim * pct) and not c.rope.interleaved
        assert c.parallel_residual == hf.use_parallel_residual
        assert c.qkv_bias == c.o_proj_bias == hf.attention_bias
    else:
        assert c.family == "gpt2" and c.rope is None
        assert c.intermediate_size == (hf.n_inner or 4 * hf.n_embd)
    assert c.tie_word_embeddings == hf.tie_word_embeddings


# ---- GPT-NeoX: config layouts and refusals -----------------------------------------------


def _neox_config(**overrides) -> dict:
    base = dict(
        architectures=["GPTNeoXForCausalLM"], vocab_size=VOCAB, hidden_size=80,
        num_attention_heads=4, num_hidden_layers=2, intermediate_size=96,
        max_position_embeddings=256,
    )  # fmt: skip
    return base | overrides


@pytest.mark.parametrize("name", sorted(n for n in CASES if n.startswith("neox")))
def test_neox_transformers4_layout_keeps_parity(checkpoint, name: str, tmp_path: Path) -> None:
    """rotary_pct and rotary_emb_base at the top level (Pythia's config.json on the hub)."""
    folder, hf_model = checkpoint(name)
    old = tmp_path / "v4"
    shutil.copytree(folder, old)
    hf = json.loads((folder / "config.json").read_text())
    rope = hf.pop("rope_parameters")
    hf |= dict(rotary_pct=rope["partial_rotary_factor"], rotary_emb_base=rope["rope_theta"])
    (old / "config.json").write_text(json.dumps(hf))
    assert load_model(old).config.rope == load_model(folder).config.rope
    WORST[name + " (4.x config)"] = check_parity(old, hf_model, backends=("torch",), greedy=0)


def test_neox_rotary_fraction_defaults_to_a_quarter() -> None:
    """transformers reads a config.json without rotary_pct as 0.25, not 1."""
    assert parse_hf_config(_neox_config(hidden_size=128)).rope.rotary_dim == 8


def test_neox_odd_rotary_dims_are_refused() -> None:
    """20 x 0.25 = 5 dims: transformers 5 would rotate 6 at frequencies over 5 (4 crashed)."""
    with pytest.raises(ValueError, match="odd 5 rotary dims of 20"):
        parse_hf_config(_neox_config(rotary_pct=0.25))
    with pytest.raises(ValueError, match="odd 5 rotary dims"):
        parse_hf_config(_neox_config(rope_parameters={"partial_rotary_factor": 0.25}))


# ---- GPT-2: learned positions, checkpoint names --------------------------------------------


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory) -> tuple[Path, torch.nn.Module]:
    folder = tmp_path_factory.mktemp("gpt2-positions")
    config = dict(n_embd=64, n_head=4, n_layer=2, n_positions=40)
    return folder, make_family_checkpoint(folder, *GPT2, seed=1, **config)


def test_gpt2_positions_beyond_n_positions_are_refused(gpt2) -> None:
    folder, _ = gpt2
    loaded = load_model(folder)
    loaded.model.ensure_positions(40)
    with pytest.raises(ValueError, match="beyond the model's 40 learned positions"):
        loaded.model.ensure_positions(41)
    with pytest.raises(ValueError, match="exceed the context length 40"):
        score(loaded, list(range(3, 44)))


def test_gpt2_max_model_len_keeps_the_first_positions(gpt2) -> None:
    """A member served below n_positions loads the start of the position table."""
    folder, hf_model = gpt2
    loaded = load_model(folder, max_model_len=24)
    assert loaded.model.wpe.num_embeddings == 24
    ids = np.random.default_rng(2).integers(3, VOCAB, 24)
    delta = (score(loaded, ids.tolist()) - hf_logprobs(hf_model, ids)).abs().max().item()
    assert delta < 1e-4
    with pytest.raises(ValueError, match="beyond the model's 24 learned positions"):
        loaded.model.ensure_positions(25)


def _bare_names(folder: Path, to: Path) -> dict[str, torch.Tensor]:
    """The checkpoint as GPT2Model saves it (openai-community/gpt2's layout): no
    `transformer.` prefix, no lm_head, the causal-mask buffers included."""
    shutil.copytree(folder, to)
    tensors = load_file(folder / "model.safetensors")
    bare = {k.removeprefix("transformer."): v for k, v in tensors.items() if k != "lm_head.weight"}
    n = max(int(k.split(".")[1]) for k in bare if k.startswith("h.")) + 1
    for i in range(n):
        bare[f"h.{i}.attn.bias"] = torch.tril(torch.ones(1, 1, 40, 40, dtype=torch.bool))
        bare[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    save_file(bare, to / "model.safetensors", metadata={"format": "pt"})
    return bare


def test_gpt2_weight_map_reads_names_without_prefix(gpt2, tmp_path: Path) -> None:
    folder, _ = gpt2
    bare = _bare_names(folder, tmp_path / "bare")
    config = load_model(folder).config
    models = []
    for tensors in (load_file(folder / "model.safetensors"), bare):
        model = GPT2Model(config)
        wm = model.weight_map()
        wm.check({k: tuple(v.shape) for k, v in tensors.items()})
        wm.load(iter(tensors.items()))
        models.append(model.state_dict())
    assert models[0].keys() == models[1].keys()
    for key, value in models[0].items():
        assert torch.equal(value, models[1][key]), key


def test_gpt2_loads_a_checkpoint_saved_without_prefix(gpt2, tmp_path: Path) -> None:
    folder, hf_model = gpt2
    _bare_names(folder, tmp_path / "bare")
    ids = np.random.default_rng(3).integers(3, VOCAB, 30)
    delta = score(load_model(tmp_path / "bare"), ids.tolist()) - hf_logprobs(hf_model, ids)
    assert delta.abs().max() < 1e-4


# ---- int8 --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["neox-d20-rot0.5", "gpt2-d20-inner"])
def test_int8_quantized_member(checkpoint, name: str) -> None:
    """Every decoder linear becomes int8 (GPT-2's Conv1D weights transposed first, NeoX's
    query_key_value regrouped first); the logits stay close to the float model's."""
    folder, _ = checkpoint(name)
    ref, quant = load_model(folder), load_model(folder, quantization="int8")
    layers = quantized_linears(quant.model)
    assert len(layers) == 4 * quant.config.num_layers
    assert not isinstance(quant.model.lm_head, QuantLinear)
    ids = np.random.default_rng(4).integers(3, VOCAB, 50).tolist()
    lp, lp0 = score(quant, ids), score(ref, ids)
    assert torch.isfinite(lp).all()
    delta = (lp - lp0).abs()
    # measured: max 0.3, mean 0.04; GPT-2 with its square c_proj left untransposed: max 14,
    # mean 3, 6% of the argmaxes
    assert 0 < delta.max() < 1 and delta.mean() < 0.1, (delta.max(), delta.mean())
    assert (lp.argmax(-1) == lp0.argmax(-1)).float().mean() > 0.9
    print(f"{name} int8: |delta logprob| vs float max {delta.max():.3f} mean {delta.mean():.3f}")
