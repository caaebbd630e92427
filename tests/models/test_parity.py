"""Log-prob parity with transformers on random tiny checkpoints of every supported variant,
and the real pretrained stories260K reproducing its reference greedy text."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from checkpoints import VOCAB
from scoring import score

from blendrt import load_model
from blendrt.cache import KVCacheManager, PagePool, page_bytes_for
from blendrt.models.runner import ModelRunner


def hf_logprobs(model, ids: np.ndarray) -> torch.Tensor:
    with torch.no_grad():
        return torch.log_softmax(model(torch.tensor(ids)[None]).logits[0].float(), dim=-1)


def test_logprobs_match_transformers(checkpoint) -> None:
    name, folder, hf_model = checkpoint
    ids = np.random.default_rng(0).integers(0, VOCAB, 70)
    ours = score(load_model(folder), ids)
    ref = hf_logprobs(hf_model, ids)
    assert ours.shape == (70, VOCAB) and ours.dtype == torch.float32
    # The test is only meaningful if the model is far from uniform.
    assert ref.std() > 1.0
    diff = (ours - ref).abs().max().item()
    print(f"{name}: max |log-prob difference| = {diff:.2e}")
    assert diff < 1e-4


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_loads_and_tracks_float32(checkpoint, dtype: torch.dtype) -> None:
    name, folder, hf_model = checkpoint
    model = load_model(folder, dtype=dtype)
    assert {p.dtype for p in model.model.parameters()} == {dtype}
    ids = np.random.default_rng(1).integers(0, VOCAB, 20)
    ours, ref = score(model, ids), hf_logprobs(hf_model, ids)
    assert torch.isfinite(ours).all()
    # Half precision moves log-probs a little; the argmax mostly agrees.
    agree = (ours.argmax(-1) == ref.argmax(-1)).float().mean().item()
    assert agree >= 0.75, f"{name} {dtype}: argmax agreement {agree:.2f}"


def test_tied_embeddings_share_one_tensor(tmp_path) -> None:
    from checkpoints import make_checkpoint

    make_checkpoint(tmp_path, "LlamaConfig", tie_word_embeddings=True)
    model = load_model(tmp_path).model
    assert model.lm_head.weight is model.embed_tokens.weight
    names = [n for n, _ in model.named_parameters()]
    assert "lm_head.weight" not in names  # one copy only


def test_invalid_token_ids(checkpoint) -> None:
    _, folder, _ = checkpoint
    model = load_model(folder)
    for bad, match in [
        ([], "non-empty"),
        ([0, VOCAB], r"\[0, 320\)"),
        ([-1], r"\[0, 320\)"),
        (list(range(129)), "exceed the context length 128"),
    ]:
        with pytest.raises(ValueError, match=match):
            score(model, bad)


def greedy(model, prompt: list[int], num_tokens: int) -> list[int]:
    """Greedy decoding one token per step through the paged path (prefill, then decode)."""
    pool = PagePool(page_bytes_for([model.geometry]), num_pages=64)
    kv = pool.register_member("m", model.geometry)
    manager = KVCacheManager(pool.num_pages)
    manager.register_member("m", kv.tokens_per_page)
    runner = ModelRunner(model.model, kv, model.backend)
    manager.add_sequence(0, "m", prompt)
    out: list[int] = []
    new = len(prompt)
    for _ in range(num_tokens):
        assert manager.allocate(0, new)
        logits = runner.forward(manager.build_batch([0], [new]))
        manager.commit(0, new)
        token = int(logits[0].argmax())
        out.append(token)
        manager.append_tokens(0, [token])
        new = 1
    return out


def test_stories260k_greedy_reference(shared_models) -> None:
    folder = shared_models / "stories260K"
    model = load_model(folder)
    ids = greedy(model, [1], 200)
    assert ids[:10] == [403, 407, 261, 378, 432, 383, 286, 261, 376, 298]
    expected = (folder / "expected_greedy_t0_n200.txt").read_text()
    assert model.tokenizer.decode(ids) == expected
