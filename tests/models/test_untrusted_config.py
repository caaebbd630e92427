"""config.json is untrusted: every value is checked before anything is sized from it (type,
bounds, consistency, and against the checkpoint's own tensor headers), errors name the
field, and the rotary tables grow with the positions used, not the declared maximum."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import torch
from checkpoints import make_checkpoint
from scoring import score

from blendrt import load_model
from blendrt.models.layers import RotaryEmbedding


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("good")
    make_checkpoint(folder, "LlamaConfig", num_key_value_heads=2)
    return folder


@pytest.fixture(scope="module")
def gptj(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("gptj")
    make_checkpoint(folder, "GPTJConfig")
    return folder


def edited(src: Path, tmp_path: Path, **changes: object) -> Path:
    folder = tmp_path / "m"
    shutil.copytree(src, folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


LLAMA3_EQUAL_FACTORS = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 4.0,
    "high_freq_factor": 4.0,
    "rope_theta": 10000.0,
}
BAD_LLAMA = [
    (
        {"max_position_embeddings": 10**9},
        r"max_position_embeddings must be an int in \[1, 16777216",
    ),
    ({"num_hidden_layers": 10**5}, r"num_layers must be an int in \[1, 1024\]"),
    ({"num_hidden_layers": 3}, "declares 3 layers but the checkpoint holds 2 layers"),
    ({"vocab_size": 10**6}, r"has shape \(320, 64\), expected \(1000000, 64\)"),
    ({"hidden_size": "64"}, "hidden_size must be a positive int, got '64'"),
    ({"num_attention_heads": 0}, "num_attention_heads must be a positive int, got 0"),
    ({"num_attention_heads": 3, "head_dim": None}, "hidden_size 64 is not a multiple of 3 heads"),
    ({"num_key_value_heads": 3}, r"num_heads \(4\) must be a multiple of num_kv_heads \(3\)"),
    ({"num_key_value_heads": True}, "num_key_value_heads must be a positive int, got True"),
    ({"rms_norm_eps": "tiny"}, "rms_norm_eps must be a finite number"),
    ({"rope_parameters": "fast"}, "rope_parameters must be an object"),
    ({"rope_parameters": LLAMA3_EQUAL_FACTORS}, "low_freq_factor < high_freq_factor"),
    ({"rope_parameters": {"rope_theta": -1.0}}, "rope_theta must be a positive number"),
    ({"tie_word_embeddings": "yes"}, "tie_word_embeddings must be true or false"),
    ({"eos_token_id": 99999}, r"bos/eos token ids must be ints in \[0, 320\)"),
    ({"head_dim": 4096}, r"head_dim must be an int in \[1, 1024\]"),
]


@pytest.mark.parametrize(("changes", "message"), BAD_LLAMA, ids=[str(c) for c, _ in BAD_LLAMA])
def test_bad_llama_configs_are_refused_by_name(good, tmp_path, changes, message) -> None:
    start = time.monotonic()
    with pytest.raises(ValueError, match=message):
        load_model(edited(good, tmp_path, **changes))
    assert time.monotonic() - start < 5  # refused before anything big is built


BAD_GPTJ = [
    ({"n_layer": 10**5}, r"num_layers must be an int in \[1, 1024\]"),
    ({"n_head": 0}, "n_head must be a positive int"),
    ({"n_embd": 64, "n_head": 5}, "n_embd 64 is not a multiple of 5 heads"),
    ({"rotary_dim": 7}, "rotary_dim must be a positive even number"),
    ({"n_positions": -4}, "n_positions must be a positive int"),
]


@pytest.mark.parametrize(("changes", "message"), BAD_GPTJ, ids=[str(c) for c, _ in BAD_GPTJ])
def test_bad_gptj_configs_are_refused_by_name(gptj, tmp_path, changes, message) -> None:
    with pytest.raises(ValueError, match=message):
        load_model(edited(gptj, tmp_path, **changes))


def test_a_million_declared_positions_cost_a_table_for_what_is_used(good, tmp_path) -> None:
    model = load_model(edited(good, tmp_path, max_position_embeddings=1 << 20))
    rotary = model.model.rotary
    assert model.config.max_position_embeddings == 1 << 20
    assert rotary.cos.shape[0] == RotaryEmbedding.INITIAL_POSITIONS  # not 1M rows
    logprobs = score(model, list(range(3, 40)))  # a short sequence runs as before
    assert torch.isfinite(logprobs).all()
    rotary.ensure(5000)  # a longer step grows the tables by doubling
    assert rotary.cos.shape[0] == 5000
    rotary.ensure(6000)
    assert rotary.cos.shape[0] == 10000
    with pytest.raises(ValueError, match="beyond the model"):
        rotary.ensure((1 << 20) + 1)
