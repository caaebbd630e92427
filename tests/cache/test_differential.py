"""The C++ core against benchmarks/bench_cache.py's plain-Python model of the same rules
(full-page chains, partial hits copied on write, LRU eviction, FIFO page order): on a pool so
tight that cached pages get evicted, every batch's metadata, every page copy, the free count
and the LRU order must agree exactly."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_cache.py"


@pytest.fixture(scope="module")
def bench_cache():
    spec = importlib.util.spec_from_file_location("bench_cache", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[spec.name]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_core_matches_python_model(bench_cache, seed: int) -> None:
    wl = bench_cache.make_workload(24, 40, 4, seed)  # 40 steps, 9 churns: frees and hits
    num_pages = bench_cache.tight_pool(wl, 40)
    bench_cache.verify(wl, 40, num_pages)  # raises on the first difference


def test_python_model_is_sensitive(bench_cache) -> None:
    """The check can fail: a model that never reuses partial pages disagrees with the core."""
    wl = bench_cache.make_workload(24, 40, 4, 0)
    num_pages = bench_cache.tight_pool(wl, 40)

    class NoPartial(bench_cache.PyCache):
        def _longest_child(self, parent, tokens):
            return -1, 0

    impls = dict(bench_cache.IMPLS)
    bench_cache.IMPLS["python (PyCache)"] = NoPartial
    try:
        with pytest.raises(AssertionError):
            bench_cache.verify(wl, 40, num_pages)
    finally:
        bench_cache.IMPLS.clear()
        bench_cache.IMPLS.update(impls)
