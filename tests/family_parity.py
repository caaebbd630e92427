"""Parity of any supported family with transformers, through the paged path.

`make_family_checkpoint` writes a random model of a transformers class (safetensors + a tiny
tokenizer); `check_parity` then compares blendrt's float32 log-probs with transformers' at
every position: all at once through the engine, and in uneven chunks over pages scattered
through a pool shared with another member, on each CPU backend; and greedy generation token
for token. Imported by tests as `family_parity` (tests/ is on the test path).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import transformers
from checkpoints import VOCAB, randomize, save_tiny_tokenizer
from scoring import score

from blendrt import load_model
from blendrt.cache import KVCacheManager, KVGeometry, PagePool
from blendrt.config import EngineConfig
from blendrt.engine.engine import LLMEngine
from blendrt.models.runner import ModelRunner
from blendrt.ops.registry import get_backend
from blendrt.sampling import SamplingParams

#: Chunk sizes of the chunked pass (uneven, none a multiple of tokens per page).
CHUNKS = (7, 1, 13, 24, 5, 19, 11, 9, 17)


def make_family_checkpoint(
    folder: Path, config_class: str, model_class: str, seed: int = 0, **config: object
) -> torch.nn.Module:
    """A random `model_class` (e.g. "Qwen2ForCausalLM") of `config_class(**config)` saved
    to folder; weights drawn large enough that every term moves the logits. Returns it."""
    torch.manual_seed(seed)
    base = dict(vocab_size=VOCAB, bos_token_id=1, eos_token_id=2)
    hf_config = getattr(transformers, config_class)(**(base | config))
    model = randomize(getattr(transformers, model_class)(hf_config).eval())
    model.save_pretrained(folder, safe_serialization=True)
    save_tiny_tokenizer(folder)
    return model


def hf_logprobs(model: torch.nn.Module, ids: np.ndarray) -> torch.Tensor:
    with torch.no_grad():
        logits = model(torch.tensor(ids)[None]).logits[0].float()
    return torch.log_softmax(logits, dim=-1)


def _scattered_chunks(folder: Path, ids: np.ndarray, backend: str) -> torch.Tensor:
    """Log-probs at every position, computed chunk by chunk over scattered pages."""
    loaded = load_model(folder)
    c = loaded.config
    geometry = KVGeometry(c.num_layers, c.num_kv_heads, c.head_dim, torch.float32)
    page_bytes = -(-5 * geometry.bytes_per_token // 256) * 256  # >= 5 tokens, 256-aligned
    pool = PagePool(page_bytes, num_pages=2 * (len(ids) // 5 + 4))
    pool.buffer.view(torch.float32).fill_(float("nan"))  # unwritten memory is poison
    kv = pool.register_member("m", geometry)
    pool.register_member("other", KVGeometry(1, 1, 16, torch.float32))
    runner = ModelRunner(loaded.model, kv, get_backend(backend, torch.device("cpu")))
    manager = KVCacheManager(pool.num_pages, hash_seed=5)
    manager.register_member("m", kv.tokens_per_page, window=c.release_window)
    manager.register_member("other", pool.members["other"].tokens_per_page)
    # Scatter: every page taken, every second one kept by "other", the rest freed in a
    # random order, so m's pages come non-contiguous and out of order.
    for page in range(pool.num_pages):
        manager.add_sequence(1000 + page, "other", [1])
        assert manager.allocate(1000 + page, 1)
    for page in np.random.default_rng(0).permutation(pool.num_pages // 2) * 2:
        manager.free(1000 + int(page))
    manager.add_sequence(1, "m", ids)
    rows, done = [], 0
    for chunk in CHUNKS * (len(ids) // sum(CHUNKS) + 1):
        n = min(chunk, len(ids) - done)
        if n == 0:
            break
        assert manager.allocate(1, n)
        batch = manager.build_batch([1], [n])
        rows.append(torch.log_softmax(runner.forward(batch, all_logits=True), dim=-1))
        manager.commit(1, n)
        done += n
    manager.check_invariants()
    return torch.cat(rows)


def greedy_tokens(folder: Path, prompt: list[int], max_tokens: int) -> list[int]:
    engine = LLMEngine({"m": load_model(folder)}, EngineConfig(device="cpu", num_pages=64))
    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    request = engine.add_request("m", prompt, params)
    tokens: list[int] = []
    for _ in range(10_000):
        for out in engine.step():
            if out.request_id == request.request_id:
                tokens += out.new_token_ids
                if out.finished:
                    return tokens
    raise AssertionError("generation did not finish")


def check_parity(
    folder: Path,
    hf_model: torch.nn.Module,
    *,
    num_tokens: int = 70,
    backends: tuple[str, ...] = ("torch", "reference"),
    greedy: int = 12,
    greedy_prompt: int = 20,
) -> float:
    """Asserts log-prob parity (< 1e-4) at once and in scattered chunks on each backend,
    and identical greedy tokens; returns the largest |delta logprob| seen."""
    ids = np.random.default_rng(0).integers(3, VOCAB, num_tokens)
    ref = hf_logprobs(hf_model, ids)
    assert ref.std() > 1.0, "the random model is too close to uniform to test anything"
    worst = 0.0
    ours = score(load_model(folder), ids.tolist())
    worst = max(worst, (ours - ref).abs().max().item())
    for backend in backends:
        chunked = _scattered_chunks(folder, ids, backend)
        assert torch.isfinite(chunked).all()
        worst = max(worst, (chunked - ref).abs().max().item())
    assert worst < 1e-4, f"max |delta logprob| {worst:.2e}"
    if greedy:
        prompt = ids[:greedy_prompt].tolist()
        with torch.no_grad():
            out = hf_model.generate(
                torch.tensor([prompt]), max_new_tokens=greedy, do_sample=False,
                min_new_tokens=greedy, pad_token_id=0,
            )  # fmt: skip
        assert greedy_tokens(folder, prompt, greedy) == out[0, len(prompt) :].tolist()
    return worst
