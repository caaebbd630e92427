"""Bad model folders give clear errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from checkpoints import make_checkpoint
from scoring import score

from blendrt import load_model


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("good")
    make_checkpoint(folder, "LlamaConfig")
    return folder


def copy(good: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "m"
    shutil.copytree(good, folder)
    return folder


def edit_config(folder: Path, **changes: object) -> None:
    path = folder / "config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


def test_missing_folder_and_config(good: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model(tmp_path / "nowhere")
    folder = copy(good, tmp_path)
    (folder / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"config\.json not found"):
        load_model(folder)


def test_missing_weights(good: Path, tmp_path: Path) -> None:
    folder = copy(good, tmp_path)
    (folder / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="no model weights"):
        load_model(folder)


def test_pickle_weights_refused(good: Path, tmp_path: Path) -> None:
    folder = copy(good, tmp_path)
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    with pytest.raises(ValueError, match="arbitrary code"):
        load_model(folder)


def test_wrong_shapes(good: Path, tmp_path: Path) -> None:
    folder = copy(good, tmp_path)
    edit_config(folder, intermediate_size=100)
    with pytest.raises(ValueError, match=r"mlp\.\w+_proj\.weight has shape"):
        load_model(folder)


def test_unknown_architecture(good: Path, tmp_path: Path) -> None:
    folder = copy(good, tmp_path)
    edit_config(folder, architectures=["BertForMaskedLM"], model_type="bert")
    with pytest.raises(
        ValueError,
        match=r"unsupported architecture \(BertForMaskedLM\); supported: GPT2LMHeadModel, "
        r"GPTJForCausalLM, GPTNeoXForCausalLM, Gemma2ForCausalLM",
    ):
        load_model(folder)


def test_weights_of_another_architecture(good: Path, tmp_path: Path) -> None:
    folder = copy(good, tmp_path)
    edit_config(
        folder,
        architectures=["GPTJForCausalLM"],
        model_type="gptj",
        n_embd=64,
        n_layer=2,
        n_head=4,
        rotary_dim=8,
    )
    with pytest.raises(ValueError, match=r"lacks .* weights"):
        load_model(folder)


def test_sliding_window_below_context(good: Path, tmp_path: Path) -> None:
    folder = copy(good, tmp_path)
    edit_config(
        folder, architectures=["MistralForCausalLM"], model_type="mistral", sliding_window=64
    )
    config = load_model(folder).config
    assert config.layer_windows == (64,) * config.num_layers and config.release_window == 64
    # a window covering the whole served context is no window
    assert load_model(folder, max_model_len=64).config.layer_windows == ()
    edit_config(folder, sliding_window=0)
    with pytest.raises(ValueError, match="sliding_window must be a positive int"):
        load_model(folder)


def test_sharded_checkpoint_and_missing_shard(good: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    folder = copy(good, tmp_path)
    tensors = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    names = sorted(tensors)
    shards = {
        "model-00001-of-00002.safetensors": names[::2],
        "model-00002-of-00002.safetensors": names[1::2],
    }
    for shard, keys in shards.items():
        save_file({k: tensors[k] for k in keys}, folder / shard)
    index = {"weight_map": {k: shard for shard, keys in shards.items() for k in keys}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    ref = score(load_model(good), [1, 2, 3])
    assert (score(load_model(folder), [1, 2, 3]) - ref).abs().max() == 0
    (folder / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model-00002-of-00002"):
        load_model(folder)


def test_corrupt_safetensors(good: Path, tmp_path: Path) -> None:
    folder = copy(good, tmp_path)
    (folder / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        load_model(folder)


def test_bad_dtype(good: Path) -> None:
    with pytest.raises(ValueError, match="dtype 'int8' not supported"):
        load_model(good, dtype="int8")
