"""The paged forward gives the same logits however a sequence reaches the pool: at once, in
chunks, from a cached prefix then decode steps, mixed in one batch with another sequence, and
with its pages scattered through a pool shared with another member."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from checkpoints import VOCAB, make_checkpoint

from blendrt.cache import KVCacheManager, KVGeometry, PagePool
from blendrt.models.loader import load_weights, read_config
from blendrt.models.runner import ModelRunner
from blendrt.ops.registry import get_backend

N = 45  # not a multiple of any tokens_per_page below


@pytest.fixture(scope="module", params=["LlamaConfig", "GPTJConfig"])
def setup(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp(request.param)
    make_checkpoint(folder, request.param, seed=3)
    config = read_config(folder)
    model = load_weights(folder, config, device=torch.device("cpu"), dtype=torch.float32)
    geometry = KVGeometry(config.num_layers, config.num_kv_heads, config.head_dim, torch.float32)
    # A second member of another geometry shares the pool; pages per token differ (5 vs 7).
    other = KVGeometry(3, 1, 16, torch.float32)
    pool = PagePool(5 * geometry.bytes_per_token, num_pages=64)
    pool.buffer.view(torch.float32).fill_(float("nan"))  # unwritten memory is poison
    kv = pool.register_member("m", geometry)
    pool.register_member("other", other)
    return model, kv, pool


class Harness:
    def __init__(self, model, kv, pool, backend: str = "torch") -> None:
        self.runner = ModelRunner(model, kv, get_backend(backend, torch.device("cpu")))
        self.pool = pool
        self.manager = KVCacheManager(pool.num_pages, hash_seed=5)
        self.manager.register_member("m", kv.tokens_per_page)
        self.manager.register_member("other", pool.members["other"].tokens_per_page)
        # Scatter: take every page, keep every second one for "other", and free the rest in
        # a random order, so m's pages come non-contiguous and out of order.
        for page in range(pool.num_pages):
            self.manager.add_sequence(1000 + page, "other", [1])
            assert self.manager.allocate(1000 + page, 1)
        for page in np.random.default_rng(0).permutation(pool.num_pages // 2) * 2:
            self.manager.free(1000 + int(page))

    def step(self, seq_chunks: dict[int, int]) -> torch.Tensor:
        ids, n = list(seq_chunks), list(seq_chunks.values())
        assert self.manager.allocate_batch(ids, n) == len(ids)
        for src, dst in self.manager.take_copies():  # partial prefix hits, copied on write
            self.pool.copy_page(src, dst)
        logits = self.runner.forward(self.manager.build_batch(ids, n), all_logits=True)
        self.manager.commit_batch(ids, n)
        return logits


def test_at_once_chunks_cache_and_decode_agree(setup) -> None:
    model, kv, pool = setup
    tokens = np.random.default_rng(1).integers(0, VOCAB, N)
    h = Harness(model, kv, pool)
    h.manager.add_sequence(1, "m", tokens)
    at_once = h.step({1: N})
    assert torch.isfinite(at_once).all()
    table = h.manager.block_table(1)
    assert np.all(table % 2 == 0) and np.any(np.diff(table) < 0), "pages should be scattered"

    h.manager.free(1)
    h.manager.clear_prefix_cache()

    # In uneven chunks.
    h.manager.add_sequence(3, "m", tokens)
    chunks = [torch.cat([h.step({3: c}) for c in (7, 1, 13, 24)])][0]
    torch.testing.assert_close(chunks, at_once, atol=1e-4, rtol=1e-4)
    h.manager.free(3)

    # From the cached prefix (seq 3's full pages, then the first tokens of the next one,
    # copied on write), then token-by-token decode steps.
    prompt = 23
    h.manager.add_sequence(4, "m", tokens[:prompt])
    cached = h.manager.num_cached_tokens(4)
    assert cached == prompt - 1 and cached % kv.tokens_per_page  # ends inside a page
    rows = [h.step({4: prompt - cached})]
    for pos in range(prompt, N):
        h.manager.append_tokens(4, [int(tokens[pos])])
        rows.append(h.step({4: 1}))
    stepped = torch.cat(rows)
    torch.testing.assert_close(stepped, at_once[cached:], atol=1e-4, rtol=1e-4)
    h.manager.free(4)


def test_mixed_batch_prefill_and_decode(setup) -> None:
    model, kv, pool = setup
    rng = np.random.default_rng(2)
    a, b = rng.integers(0, VOCAB, 30), rng.integers(0, VOCAB, 12)
    h = Harness(model, kv, pool)
    h.manager.clear_prefix_cache()
    ref_a = h_alone(h, 10, a)
    ref_b = h_alone(h, 11, b)
    # a decodes its last token while b prefills all of its tokens, in one forward.
    h.manager.add_sequence(20, "m", a[:-1])
    h.step({20: len(a) - 1})
    h.manager.append_tokens(20, [int(a[-1])])
    h.manager.add_sequence(21, "m", b)
    mixed = h.step({20: 1, 21: len(b)})
    torch.testing.assert_close(mixed[0], ref_a[-1], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(mixed[1:], ref_b, atol=1e-4, rtol=1e-4)
    h.manager.free(20)
    h.manager.free(21)
    h.manager.check_invariants()


def h_alone(h: Harness, seq_id: int, tokens: np.ndarray) -> torch.Tensor:
    h.manager.add_sequence(seq_id, "m", tokens)
    out = h.step({seq_id: len(tokens)})
    h.manager.free(seq_id)
    h.manager.clear_prefix_cache()
    return out


def test_cpu_backend_matches_the_reference_backend(setup) -> None:
    """The CPU kernels (C++ decode, SDPA prefill) inside a whole model against the slow
    reference path, over a prefill, short extends and decode steps in one batch."""
    model, kv, pool = setup
    rng = np.random.default_rng(3)
    a, b = rng.integers(0, VOCAB, 40), rng.integers(0, VOCAB, 30)
    outputs = {}
    for backend in ("reference", "torch"):
        h = Harness(model, kv, pool, backend)
        h.manager.clear_prefix_cache()
        h.manager.add_sequence(30, "m", a[:20])
        h.manager.add_sequence(31, "m", b)
        rows = [h.step({30: 20, 31: 30})]  # two long prefills (the SDPA path)
        h.manager.append_tokens(30, [int(t) for t in a[20:24]])
        rows.append(h.step({30: 4}))  # a short extend (the C++ kernel)
        for pos in range(24, 40):
            h.manager.append_tokens(30, [int(a[pos])])
            rows.append(h.step({30: 1}))  # decode steps
        outputs[backend] = torch.cat(rows)
        h.manager.free(30)
        h.manager.free(31)
    assert torch.isfinite(outputs["torch"]).all()
    torch.testing.assert_close(outputs["torch"], outputs["reference"], atol=1e-4, rtol=1e-4)


def test_unknown_backend_is_named() -> None:
    with pytest.raises(ValueError, match="'torch', 'triton', 'reference'"):
        get_backend("cuda-graphs", torch.device("cpu"))
