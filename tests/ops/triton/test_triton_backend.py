"""A tiny model gives the same logits through the Triton backend as through the torch
reference backend: prefills, a mixed prefill + decode batch over a cached prefix, and a
decode-only step, with pages scattered through a pool shared with another member."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from checkpoints import VOCAB, make_checkpoint

from blendrt.cache import KVCacheManager, KVGeometry, PagePool
from blendrt.models.loader import load_weights, read_config
from blendrt.models.runner import ModelRunner
from blendrt.ops.registry import get_backend

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


class Engine:
    """One member's runner, pool and cache manager; identical setups allocate alike."""

    def __init__(self, model, config, backend: str) -> None:
        geometry = KVGeometry(config.num_layers, config.num_kv_heads, config.head_dim,
                              torch.float32)  # fmt: skip
        # 7 tokens per page: sequences end mid-page; the other member gets 10 per page.
        pool = PagePool(7 * geometry.bytes_per_token, num_pages=48, device=DEVICE)
        pool.buffer.view(torch.float32).fill_(float("nan"))
        kv = pool.register_member("m", geometry)
        other = pool.register_member("other", KVGeometry(1, 1, 16, torch.float32))
        self.runner = ModelRunner(model, kv, get_backend(backend, DEVICE))
        self.manager = KVCacheManager(pool.num_pages, hash_seed=1)
        self.manager.register_member("m", kv.tokens_per_page)
        self.manager.register_member("other", other.tokens_per_page)
        # Hold every page, then free a shuffled half: m's pages come scattered.
        for page in range(pool.num_pages):
            self.manager.add_sequence(1000 + page, "other", [1])
            assert self.manager.allocate(1000 + page, 1)
        for page in np.random.default_rng(0).permutation(pool.num_pages)[::2]:
            self.manager.free(1000 + int(page))

    def step(self, chunks: dict[int, int]) -> torch.Tensor:
        ids, counts = list(chunks), list(chunks.values())
        assert self.manager.allocate_batch(ids, counts) == len(ids)
        batch = self.manager.build_batch(ids, counts)
        logits = self.runner.forward(batch, all_logits=True)
        self.manager.commit_batch(ids, counts)
        return logits


@pytest.fixture(scope="module", params=["LlamaConfig", "GPTJConfig"])
def engines(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp(request.param)
    overrides = {"num_key_value_heads": 2} if request.param == "LlamaConfig" else {}
    make_checkpoint(folder, request.param, seed=4, **overrides)
    config = read_config(folder)
    model = load_weights(folder, config, device=DEVICE, dtype=torch.float32)
    return Engine(model, config, "triton"), Engine(model, config, "torch")


def test_prefill_mixed_and_decode_steps(engines) -> None:
    triton_engine, torch_engine = engines
    rng = np.random.default_rng(5)
    a, b, c = (rng.integers(0, VOCAB, n) for n in (30, 19, 12))
    steps = [
        ("add", {1: a[:-1], 2: b[:12]}, {1: 29, 2: 12}),  # two prefills
        ("append", {1: a[-1:], 2: b[12:]}, {1: 1, 2: 7}),  # decode + extend mid-page
        ("add", {3: c}, {1: 0, 3: 12}),  # a prefill beside nothing else
        ("append", {1: [5], 2: [6], 3: [7]}, {1: 1, 2: 1, 3: 1}),  # decode only
        ("append", {1: [8], 2: [9], 3: [10]}, {1: 1, 2: 1, 3: 1}),
    ]
    for kind, tokens, chunks in steps:
        chunks = {seq: n for seq, n in chunks.items() if n}
        outs = []
        for engine in (triton_engine, torch_engine):
            for seq, toks in tokens.items():
                if kind == "add":
                    engine.manager.add_sequence(seq, "m", toks)
                else:
                    engine.manager.append_tokens(seq, toks)
            outs.append(engine.step(chunks))
        got, want = outs
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got, want, atol=2e-4, rtol=2e-4)
