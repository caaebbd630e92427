"""Sequence classifiers (reward models): *ForSequenceClassification checkpoints loaded with a
score head, scored through the paged path against transformers (float32, < 1e-4).

transformers scores the last non-pad token; blendrt feeds `scoring_length` tokens (trailing
pads dropped) and reads the runner's logits at each sequence's last new token: several
sequences of different lengths in one batch, over pages scattered through a shared pool,
in one forward and in two uneven chunks.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from checkpoints import VOCAB
from family_parity import make_family_checkpoint
from safetensors.torch import load_file, save_file

from blendrt import load_model
from blendrt.cache import KVCacheManager, KVGeometry, PagePool
from blendrt.models.config import ModelConfig
from blendrt.models.hf_config import parse_hf_config
from blendrt.models.loaded import LoadedModel
from blendrt.models.runner import ModelRunner
from blendrt.models.score_head import is_scorer, scoring_length
from blendrt.ops.quant_linear import QuantLinear, quantized_linears
from blendrt.ops.registry import get_backend

SMALL = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4)
PAD = 7  # a pad id that random sequences also hold mid-sequence
#: {case: (config class, model class, config)}
CASES = {
    # tied wte (untied by the head), one label (a reward model)
    "gpt2-d32-1label": ("GPT2Config", "GPT2ForSequenceClassification", dict(
        n_embd=96, n_head=3, n_layer=2, n_positions=96, num_labels=1, pad_token_id=PAD)),
    "gpt2-d20-3labels-untied": ("GPT2Config", "GPT2ForSequenceClassification", dict(
        n_embd=80, n_head=4, n_layer=2, n_inner=100, n_positions=128, num_labels=3,
        tie_word_embeddings=False, pad_token_id=0)),
    "gpt2-d16-2labels-gelu": ("GPT2Config", "GPT2ForSequenceClassification", dict(
        n_embd=64, n_head=4, n_layer=3, n_positions=128, activation_function="gelu",
        pad_token_id=PAD)),  # num_labels: transformers' default 2
    # no pad token: the whole sequence is scored (transformers: batch size 1 only)
    "gpt2-nopad": ("GPT2Config", "GPT2ForSequenceClassification", dict(
        n_embd=64, n_head=4, n_layer=2, n_positions=128, num_labels=2)),
    "llama-tied-1label": ("LlamaConfig", "LlamaForSequenceClassification", SMALL | dict(
        num_key_value_heads=2, tie_word_embeddings=True, num_labels=1, pad_token_id=PAD)),
    "llama-3labels": ("LlamaConfig", "LlamaForSequenceClassification", SMALL | dict(
        num_key_value_heads=1, num_labels=3, pad_token_id=0)),
    "mistral-window": ("MistralConfig", "MistralForSequenceClassification", SMALL | dict(
        num_key_value_heads=2, sliding_window=9, num_labels=2, pad_token_id=PAD)),
    "qwen2-tied-2labels": ("Qwen2Config", "Qwen2ForSequenceClassification", SMALL | dict(
        num_key_value_heads=2, tie_word_embeddings=True, num_labels=2, pad_token_id=PAD)),
    "qwen3-1label": ("Qwen3Config", "Qwen3ForSequenceClassification", SMALL | dict(
        num_key_value_heads=2, head_dim=24, num_labels=1, pad_token_id=PAD)),
    "phi3-fused-3labels": ("Phi3Config", "Phi3ForSequenceClassification", SMALL | dict(
        num_key_value_heads=2, sliding_window=None, num_labels=3, pad_token_id=PAD)),
    # soft-capping configured, unused by the score head; tied by default
    "gemma2-2labels": ("Gemma2Config", "Gemma2ForSequenceClassification", SMALL | dict(
        num_key_value_heads=2, head_dim=16, sliding_window=8, num_labels=2, pad_token_id=PAD,
        final_logit_softcapping=3.0)),
    "gemma3-1label": ("Gemma3TextConfig", "Gemma3TextForSequenceClassification", SMALL | dict(
        num_key_value_heads=2, head_dim=16, sliding_window=8, num_labels=1, pad_token_id=PAD)),
    "neox-untied-2labels": ("GPTNeoXConfig", "GPTNeoXForSequenceClassification", dict(
        hidden_size=80, num_attention_heads=4, num_hidden_layers=2, intermediate_size=96,
        rotary_pct=0.5, num_labels=2, pad_token_id=PAD)),
    "neox-tied-1label": ("GPTNeoXConfig", "GPTNeoXForSequenceClassification", dict(
        hidden_size=96, num_attention_heads=3, num_hidden_layers=2, intermediate_size=64,
        rotary_pct=0.25, tie_word_embeddings=True, num_labels=1, pad_token_id=PAD)),
    # GPT-J's lm_head has a bias: dropped with it
    "gptj-3labels": ("GPTJConfig", "GPTJForSequenceClassification", dict(
        n_embd=64, n_layer=2, n_head=4, rotary_dim=8, n_positions=128, num_labels=3,
        pad_token_id=PAD, tie_word_embeddings=False)),
}  # fmt: skip

#: {case: max |delta score|}, printed at the end of the module (pytest -s)
WORST: dict[str, float] = {}


@pytest.fixture(scope="module", autouse=True)
def _report():
    yield
    for name, worst in sorted(WORST.items()):
        print(f"score parity {name}: max |delta| {worst:.2e}")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """case -> (folder, the transformers model), each written once per module."""
    made: dict[str, tuple[Path, torch.nn.Module]] = {}

    def get(name: str) -> tuple[Path, torch.nn.Module]:
        if name not in made:
            config_class, model_class, config = CASES[name]
            folder = tmp_path_factory.mktemp(name)
            made[name] = folder, make_family_checkpoint(folder, config_class, model_class, **config)
        return made[name]

    return get


def _sequences(pad: int | None) -> list[list[int]]:
    """Sequences of different lengths: plain, ending with pads, left-padded, pads inside."""
    rng = np.random.default_rng(3)
    seqs = [rng.integers(3, VOCAB, n).tolist() for n in (37, 5, 60, 1, 23)]
    if pad is not None:
        seqs += [
            rng.integers(3, VOCAB, 19).tolist() + [pad] * 6,  # right-padded
            [pad] * 4 + rng.integers(3, VOCAB, 30).tolist(),  # left-padded
            rng.integers(3, VOCAB, 9).tolist() + [pad] * 3 + rng.integers(3, VOCAB, 8).tolist()
            + [pad],  # pads inside and after
            [pad] * 3,  # all pads: transformers scores the first token
        ]  # fmt: skip
    return seqs


def hf_scores(model: torch.nn.Module, seqs: list[list[int]], pad: int | None) -> torch.Tensor:
    """transformers' scores [N, num_labels]: one right-padded batch with a pad token (the
    way reward models are run), one sequence at a time without."""
    with torch.no_grad():
        if pad is None:
            return torch.cat([model(torch.tensor([s])).logits for s in seqs]).float()
        width = max(map(len, seqs))
        batch = torch.tensor([s + [pad] * (width - len(s)) for s in seqs])
        return model(batch).logits.float()


def paged_scores(
    loaded: LoadedModel, seqs: list[list[int]], chunks: int = 1, backend: str = "torch"
) -> torch.Tensor:
    """blendrt's scores [N, num_labels]: every sequence's scoring_length tokens in one batch,
    over pages scattered through a pool shared with another member, fed in `chunks` uneven
    steps (each step's logits are at each sequence's last new token: the last step's are
    the scores)."""
    c = loaded.config
    lengths = [loaded.scoring_length(s) for s in seqs]
    geometry = KVGeometry(c.num_layers, c.num_kv_heads, c.head_dim, torch.float32)
    page_bytes = -(-5 * geometry.bytes_per_token // 256) * 256  # >= 5 tokens, 256-aligned
    pool = PagePool(page_bytes, num_pages=2 * (sum(lengths) // 5 + 2 * len(seqs) + 4))
    pool.buffer.view(torch.float32).fill_(float("nan"))  # unwritten memory is poison
    kv = pool.register_member("m", geometry)
    pool.register_member("other", KVGeometry(1, 1, 16, torch.float32))
    runner = ModelRunner(loaded.model, kv, get_backend(backend, torch.device("cpu")))
    manager = KVCacheManager(pool.num_pages, hash_seed=5)
    manager.register_member("m", kv.tokens_per_page, window=c.release_window)
    manager.register_member("other", pool.members["other"].tokens_per_page)
    for page in range(pool.num_pages):  # m's pages: non-contiguous, out of order
        manager.add_sequence(1000 + page, "other", [1])
        assert manager.allocate(1000 + page, 1)
    for page in np.random.default_rng(0).permutation(pool.num_pages // 2) * 2:
        manager.free(1000 + int(page))
    ids = list(range(len(seqs)))
    for i, (s, n) in enumerate(zip(seqs, lengths, strict=True)):
        manager.add_sequence(i, "m", s[:n], use_prefix_cache=False)
    done = [0] * len(seqs)
    for step in range(chunks):
        last = step == chunks - 1
        # uneven splits: sequence i gets (i + 2) / (i + 3) of its tokens first (a sequence
        # of one token waits for the last step)
        todo = [n - d if last else min(n - 1, n * (i + 2) // (i + 3)) - d
                for i, (n, d) in enumerate(zip(lengths, done, strict=True))]  # fmt: skip
        live = [i for i in ids if todo[i] > 0]
        for i in live:
            assert manager.allocate(i, todo[i])
        out = runner.forward(manager.build_batch(live, [todo[i] for i in live]))
        for i in live:
            manager.commit(i, todo[i])
            done[i] += todo[i]
    assert done == lengths and len(live) == len(seqs)
    manager.check_invariants()
    return out


@pytest.mark.parametrize("name", sorted(CASES))
def test_scores_match_transformers(checkpoint, name: str) -> None:
    folder, hf_model = checkpoint(name)
    pad = CASES[name][2].get("pad_token_id")
    labels = CASES[name][2].get("num_labels", 2)
    loaded = load_model(folder)
    c = loaded.config
    assert loaded.is_classifier and loaded.num_labels == labels == c.num_labels
    assert c.pad_token_id == pad and c.hf_architecture == CASES[name][1]
    head = loaded.model.lm_head
    assert is_scorer(loaded.model)
    assert (head.out_features, head.in_features) == (labels, c.hidden_size)
    assert CASES[name][1] in repr(loaded)
    seqs = _sequences(pad)
    ref = hf_scores(hf_model, seqs, pad)
    assert ref.shape == (len(seqs), labels) and ref.std() > 0.1
    worst = 0.0
    for chunks, backend in ((1, "torch"), (2, "torch"), (2, "reference")):
        ours = paged_scores(loaded, seqs, chunks, backend)
        assert ours.shape == ref.shape and torch.isfinite(ours).all()
        worst = max(worst, (ours - ref).abs().max().item())
    WORST[name] = worst
    assert worst < 1e-4, f"max |delta score| {worst:.2e}"


def test_scoring_length() -> None:
    assert scoring_length([5, 6, 7], None) == 3
    assert scoring_length([5, 0, 0], None) == 3  # no pad token: every token counts
    assert scoring_length([5, 6, 0, 0], 0) == 2
    assert scoring_length([0, 0, 5, 6], 0) == 4  # left padding
    assert scoring_length([5, 0, 6, 0], 0) == 3
    assert scoring_length(np.array([0, 0, 0]), 0) == 1  # all pads: the first token
    assert scoring_length([9], 9) == 1
    # transformers' own rule, on random rows
    rng = np.random.default_rng(1)
    rows = torch.tensor(rng.integers(0, 3, (200, 6)))
    last = (torch.arange(6) * (rows != 0)).argmax(-1)
    assert [scoring_length(r.tolist(), 0) for r in rows] == (last + 1).tolist()
    with pytest.raises(ValueError, match="empty"):
        scoring_length([], 0)


def test_quantized_classifier_keeps_a_float_score_head(checkpoint) -> None:
    folder, hf_model = checkpoint("llama-3labels")
    loaded = load_model(folder, quantization="int8")
    assert quantized_linears(loaded.model)  # the decoder's linears
    head = loaded.model.lm_head
    assert not isinstance(head, QuantLinear) and head not in quantized_linears(loaded.model)
    assert (head.out_features, head.in_features) == (3, 64)
    seqs = _sequences(0)
    ours, ref = paged_scores(loaded, seqs), hf_scores(hf_model, seqs, 0)
    assert ours.shape == ref.shape and torch.isfinite(ours).all()


def test_config_fields() -> None:
    base = dict(architectures=["LlamaForSequenceClassification"], vocab_size=VOCAB,
                hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                num_attention_heads=4, pad_token_id=5)  # fmt: skip
    c = parse_hf_config(base)
    assert (c.architecture, c.num_labels, c.pad_token_id) == ("LlamaForCausalLM", 2, 5)
    assert c.hf_architecture == "LlamaForSequenceClassification" and c.is_classifier
    assert parse_hf_config(base | dict(num_labels=4)).num_labels == 4
    id2label = {"0": "bad", "1": "ok", "2": "good"}
    assert parse_hf_config(base | dict(id2label=id2label)).num_labels == 3
    # a causal LM: no labels, its pad id kept when valid and dropped when not
    lm = base | dict(architectures=["LlamaForCausalLM"])
    assert (parse_hf_config(lm).num_labels, parse_hf_config(lm).pad_token_id) == (0, 5)
    assert parse_hf_config(lm | dict(pad_token_id=-1)).pad_token_id is None
    assert not parse_hf_config(lm).is_classifier
    # Gemma 2's final soft-cap is not applied by the score head
    gemma = dict(architectures=["Gemma2ForSequenceClassification"], vocab_size=VOCAB,
                 hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                 num_attention_heads=4)  # fmt: skip
    assert parse_hf_config(gemma).final_logit_softcap == 0.0
    assert parse_hf_config(gemma | dict(architectures=["Gemma2ForCausalLM"])).final_logit_softcap
    # Phi-3's fused weights are keyed by its causal LM's name
    phi3 = base | dict(architectures=["Phi3ForSequenceClassification"])
    assert parse_hf_config(phi3).architecture == "Phi3ForCausalLM"


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (dict(num_labels=0), r"num_labels must be an int in \[1, 4096\]"),
        (dict(num_labels=5000), r"num_labels must be an int in \[1, 4096\]"),
        (dict(num_labels="2"), r"num_labels must be an int"),
        (dict(id2label={}), r"id2label must map 1 to 4096 labels"),
        (dict(id2label=["a", "b"]), r"id2label must map"),
        (dict(pad_token_id=VOCAB), r"pad token id must be an int in \[0, 320\)"),
        (dict(pad_token_id=-1), r"pad token id must be an int in \[0, 320\)"),
        (dict(pad_token_id=[0]), r"pad token id must be an int"),
    ],
)
def test_untrusted_classifier_configs_are_refused(edit: dict, match: str) -> None:
    hf = dict(architectures=["GPT2ForSequenceClassification"], vocab_size=VOCAB, n_embd=64,
              n_layer=2, n_head=4) | edit  # fmt: skip
    with pytest.raises(ValueError, match=match):
        parse_hf_config(hf)


def test_model_config_refusals() -> None:
    fields = dict(vocab_size=VOCAB, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=4,
                  head_dim=16, intermediate_size=96, max_position_embeddings=64, rope=None,
                  norm_eps=1e-5)  # fmt: skip
    with pytest.raises(ValueError, match="is a sequence classifier: num_labels must be > 0"):
        ModelConfig(architecture="GPT2ForSequenceClassification", **fields)
    for bad in (-1, 4097, 1.0, True):
        with pytest.raises(ValueError, match=r"num_labels must be an int in \[0, 4096\]"):
            ModelConfig(architecture="GPT2LMHeadModel", num_labels=bad, **fields)
    c = ModelConfig(architecture="GPT2ForSequenceClassification", num_labels=3, **fields)
    assert (c.architecture, c.family) == ("GPT2LMHeadModel", "gpt2")
    assert c.hf_architecture == "GPT2ForSequenceClassification"


def _edit_weights(folder: Path, drop: str = "", add: dict | None = None) -> None:
    path = folder / "model.safetensors"
    tensors = {k: v for k, v in load_file(path).items() if k != drop} | (add or {})
    save_file(tensors, path, metadata={"format": "pt"})


def _copy(folder: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(folder, tmp_path / "copy"))


@pytest.mark.parametrize("name", ["gpt2-d32-1label", "llama-tied-1label", "gptj-3labels"])
def test_checkpoint_without_score_is_refused(checkpoint, tmp_path: Path, name: str) -> None:
    folder = _copy(checkpoint(name)[0], tmp_path)
    _edit_weights(folder, drop="score.weight")
    with pytest.raises(ValueError, match=r"lacks 1 weights, e\.g\. (transformer\.)?score\.weight"):
        load_model(folder)


def test_score_of_the_wrong_shape_is_refused(checkpoint, tmp_path: Path) -> None:
    folder = _copy(checkpoint("qwen2-tied-2labels")[0], tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config["id2label"] = {str(i): f"L{i}" for i in range(5)}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"score\.weight has shape \(2, 64\), expected \(5, 64\)"):
        load_model(folder)


def test_causal_lm_weights_under_a_classifier_config_are_refused(checkpoint, tmp_path) -> None:
    """A causal LM's checkpoint named a classifier: no score, and an lm_head it doesn't use."""
    folder = _copy(checkpoint("gptj-3labels")[0], tmp_path)
    _edit_weights(folder, drop="score.weight", add={
        "lm_head.weight": torch.zeros(VOCAB, 64), "lm_head.bias": torch.zeros(VOCAB)})  # fmt: skip
    with pytest.raises(ValueError, match=r"lacks 1 weights, e\.g\. score\.weight"):
        load_model(folder)
