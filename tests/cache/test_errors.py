"""Bad input raises a clear Python exception and leaves the cache consistent."""

from __future__ import annotations

import pytest

from blendrt.cache import KVCacheManager


@pytest.fixture
def m() -> KVCacheManager:
    m = KVCacheManager(4, hash_seed=3)
    m.register_member("a", 4)
    m.add_sequence(1, "a", [1, 2, 3, 4, 5])
    assert m.allocate(1, 5)
    m.commit(1, 5)
    return m


def test_unknown_member(m: KVCacheManager) -> None:
    with pytest.raises(KeyError, match=r"unknown member 'zz'.*registered: a"):
        m.add_sequence(2, "zz", [1])
    with pytest.raises(KeyError, match="unknown member id 9"):
        m._core.add_sequence(2, 9, [1])


def test_unknown_sequence_and_double_free(m: KVCacheManager) -> None:
    for call in (
        lambda: m.allocate(99, 1),
        lambda: m.commit(99, 1),
        lambda: m.append_tokens(99, [1]),
        lambda: m.block_table(99),
        lambda: m.build_batch([99], [1]),
    ):
        with pytest.raises(KeyError, match="unknown sequence 99"):
            call()
    m.free(1)
    with pytest.raises(KeyError, match="already freed"):
        m.free(1)
    m.check_invariants()
    assert m.stats().pages_in_use == 0


def test_more_pages_than_exist(m: KVCacheManager) -> None:
    m.add_sequence(2, "a", list(range(40)))
    with pytest.raises(ValueError, match="needs 10 pages but the pool has only 4"):
        m.allocate(2, 40)
    with pytest.raises(ValueError, match="pool has only 4"):
        m.can_allocate(2, 40)
    m.check_invariants()
    assert m.block_table(2).size == 0
    assert m.allocate(2, 8)  # a smaller request still works: 2 pages are free


def test_bad_arguments(m: KVCacheManager) -> None:
    with pytest.raises(ValueError, match="already exists"):
        m.add_sequence(1, "a", [1])
    with pytest.raises(ValueError, match="must not be empty"):
        m.add_sequence(5, "a", [])
    with pytest.raises(ValueError, match=r"\[0, 2\*\*31\)"):
        m.add_sequence(5, "a", [1, -2])
    with pytest.raises(ValueError, match="integers"):
        m.add_sequence(5, "a", [1.5])
    with pytest.raises(ValueError, match="known tokens"):
        m.allocate(1, 1)  # all 5 known tokens are computed
    with pytest.raises(ValueError, match="cannot commit"):
        m.commit(1, 4)  # beyond the allocated pages
    with pytest.raises(ValueError, match="num_new_tokens must be >= 0"):
        m.allocate(1, -1)
    with pytest.raises(ValueError, match="already registered"):
        m.register_member("a", 4)
    with pytest.raises(ValueError, match="tokens_per_page must be positive"):
        m.register_member("b", 0)
    with pytest.raises(IndexError, match="page id 7 out of range"):
        m.page_info(7)
    with pytest.raises(ValueError, match="num_pages must be positive"):
        KVCacheManager(0)
    m.check_invariants()
    assert m.num_computed_tokens(1) == 5
